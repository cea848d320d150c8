//! The pass-through fast path. Pingora's proxy spends most of a proxied request's CPU on its
//! general machinery (a task and two channels per request, header maps, a pooled-connection
//! probe and an idle-watch task per reuse); for the plain requests that are most of a web
//! app's traffic none of it decides anything. This app sits in front of Pingora's: it reads
//! each request head of a client connection itself, and when `h1::request` takes it (HTTP/1.1
//! GET/HEAD, no body, no upgrade, not the native route) relays it over a pooled upstream
//! connection with one write each way; the first request it does not take is put back
//! (`Stream::rewind`) and the connection goes to Pingora's proxy for good, which serves it
//! exactly as before. Both paths send the same head upstream, the same answer head to the
//! client, the same error answers, metrics and access-log lines.

use crate::config::UpstreamTimeouts;
use crate::h1::{self, Framing, RequestHead, ResponseHead};
use crate::metrics::{self, RouteKind};
use crate::proxy::{self, RequestIds};
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a client connection may sit idle between requests (Pingora's own keep-alive).
const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// The upstream read buffer starts at [`BUF`] and grows to [`BODY_BUF`] the first time a body
/// fills it (then a 64 KiB body takes one or two reads); an answer head may grow it up to
/// [`MAX_RESPONSE_HEAD`].
const BUF: usize = 16 * 1024;
const BODY_BUF: usize = 64 * 1024;
/// Pingora's own limit for a head.
const MAX_RESPONSE_HEAD: usize = 1024 * 1024;
/// A first body piece up to this size is copied behind the answer head (one plain write);
/// a larger one is sent with the head in one vectored write, without the copy.
const SMALL_BODY: usize = 4096;

pub struct FastPath<A> {
    /// Pingora's proxy app: the requests this one does not take.
    pub inner: Arc<A>,
    pub upstream: SocketAddr,
    pub timeouts: UpstreamTimeouts,
    pub native_disconnect: bool,
    pub access_log: bool,
    pub request_ids: Arc<RequestIds>,
    pub pool: Pool,
}

/// Idle upstream connections, most recently used first out. A connection the upstream
/// closed while it sat here is noticed when it is taken: tokio has recorded the readiness,
/// so the check costs no system call for a live one.
pub struct Pool {
    idle: Mutex<Vec<TcpStream>>,
    capacity: usize,
}

impl Pool {
    pub fn new(capacity: usize) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            capacity,
        }
    }

    fn take(&self) -> Option<TcpStream> {
        loop {
            let conn = self.idle.lock().ok()?.pop()?;
            let mut probe = [0u8; 1];
            match conn.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(conn),
                // Closed, failed, or sent bytes nobody asked for: not reusable.
                _ => continue,
            }
        }
    }

    fn put(&self, conn: TcpStream) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.capacity {
                idle.push(conn);
            }
        }
    }
}

/// Buffers of one client connection, reused by each of its requests.
struct Conn {
    /// The client's address as X-Forwarded-For writes it, formatted once per connection.
    client: Option<String>,
    /// Bytes read from the client: `input[..filled]`.
    input: Vec<u8>,
    filled: usize,
    /// The head being sent (upstream, then to the client).
    out: Vec<u8>,
    /// Bytes read from the upstream.
    buf: Vec<u8>,
    request_id: Vec<u8>,
}

/// Why an exchange could not be completed.
enum Failure {
    /// Before the answer head was sent: the client gets a 502 or 504 and the connection closes.
    Upstream { code: u16, error: io::Error },
    /// After it (or the client went away): the connection closes.
    Broken,
}

struct Outcome {
    status: u16,
    body_bytes: u64,
    keep_client: bool,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for FastPath<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Only a plain TCP stream can have its bytes put back for Pingora.
        if !stream.as_any().is::<L4Stream>() {
            return self.inner.process_new(stream, shutdown).await;
        }
        let client = stream.get_socket_digest().and_then(|d| {
            d.peer_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string())
        });
        let mut conn = Conn {
            client,
            input: vec![0; 4096],
            filled: 0,
            out: Vec::with_capacity(1024),
            // Allocated by the first request the fast path takes (a connection handed to
            // Pingora at once never needs it).
            buf: Vec::new(),
            request_id: Vec::with_capacity(64),
        };
        loop {
            conn.out.clear();
            let taken = match self.read_request(&mut stream, &mut conn).await {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    let buffered = &conn.input[..conn.filled];
                    return self.hand_over(stream, buffered, shutdown).await;
                }
                Err(_) => return None,
            };
            let closing = *shutdown.borrow();
            let started = self.access_log.then(Instant::now);
            conn.request_id.clear();
            conn.request_id
                .extend_from_slice(&conn.out[taken.request_id.clone()]);
            let outcome = self
                .exchange(&mut stream, &mut conn, taken.is_head, closing)
                .await;
            let (status, body_bytes, keep) = match &outcome {
                Ok(o) => (o.status, o.body_bytes, o.keep_client && !closing),
                Err(Failure::Upstream { code, error }) => {
                    metrics::count_upstream_error(*code);
                    tracing::error!(error = %error, code, "upstream request failed");
                    let answered = write_error(&mut stream, *code, &conn.request_id).await;
                    (if answered { *code } else { 0 }, 0, false)
                }
                Err(Failure::Broken) => (0, 0, false),
            };
            metrics::count_request(RouteKind::Proxied, status);
            if let Some(started) = started {
                log_access(&conn, taken.head_len, status, started, body_bytes);
            }
            if !keep {
                return None;
            }
            conn.input.copy_within(taken.head_len..conn.filled, 0);
            conn.filled -= taken.head_len;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

impl<A: ServerApp + Send + Sync + 'static> FastPath<A> {
    /// Reads until a whole request head is buffered. `Ok(None)`: not one for the fast path.
    /// `Err`: the client closed, failed or idled out.
    async fn read_request(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
    ) -> io::Result<Option<h1::Taken>> {
        loop {
            let head = h1::request(
                &conn.input[..conn.filled],
                conn.client.as_deref(),
                self.native_disconnect,
                |out| self.request_ids.write_next(out),
                &mut conn.out,
            );
            match head {
                RequestHead::Taken(taken) => return Ok(Some(taken)),
                RequestHead::NotTaken => return Ok(None),
                RequestHead::Partial => {}
            }
            if conn.filled == conn.input.len() {
                conn.input.resize(conn.input.len() * 2, 0);
            }
            let n = fast_timeout(CLIENT_IDLE, stream.read(&mut conn.input[conn.filled..]))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            conn.filled += n;
        }
    }

    /// Gives the connection to Pingora's proxy, with the bytes read so far put back.
    async fn hand_over(
        self: &Arc<Self>,
        stream: Stream,
        buffered: &[u8],
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
        if !buffered.is_empty() {
            l4.rewind(buffered);
        }
        self.inner.process_new(l4, shutdown).await
    }

    /// Sends the request head in `conn.out` upstream and relays the answer. A pooled
    /// connection that turns out closed before any answer byte is replaced by a new one
    /// once: GET and HEAD may be sent again.
    async fn exchange(
        &self,
        client: &mut Stream,
        conn: &mut Conn,
        is_head: bool,
        closing: bool,
    ) -> Result<Outcome, Failure> {
        if conn.buf.is_empty() {
            conn.buf.resize(BUF, 0);
        }
        let (mut upstream, mut reused) = match self.pool.take() {
            Some(c) => (c, true),
            None => (self.connect().await?, false),
        };
        let mut filled = loop {
            match self.send_and_read(&mut upstream, conn).await {
                Ok(filled) => break filled,
                Err(e) if reused && e.kind() != io::ErrorKind::TimedOut => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; retrying");
                    upstream = self.connect().await?;
                    reused = false;
                }
                Err(error) => return Err(upstream_failure(error)),
            }
        };
        loop {
            conn.out.clear();
            let head = h1::response(
                &conn.buf[..filled],
                is_head,
                &conn.request_id,
                closing,
                |out| out.extend_from_slice(get_cached_date().as_bytes()),
                &mut conn.out,
            );
            let resp = match head {
                ResponseHead::Ready(resp) => resp,
                ResponseHead::Invalid => {
                    return Err(Failure::Upstream {
                        code: 502,
                        error: io::Error::new(io::ErrorKind::InvalidData, "invalid answer head"),
                    })
                }
                ResponseHead::Partial => {
                    if filled == conn.buf.len() {
                        if filled >= MAX_RESPONSE_HEAD {
                            return Err(Failure::Upstream {
                                code: 502,
                                error: io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "answer head too large",
                                ),
                            });
                        }
                        conn.buf.resize(filled * 2, 0);
                    }
                    filled += self
                        .read_upstream(&mut upstream, &mut conn.buf[filled..])
                        .await
                        .and_then(eof_is_error)
                        .map_err(upstream_failure)?;
                    continue;
                }
            };
            if resp.is_interim() {
                write_client(client, &conn.out).await?;
                conn.buf.copy_within(resp.head_len..filled, 0);
                filled -= resp.head_len;
                if filled == 0 {
                    filled = self
                        .read_upstream(&mut upstream, &mut conn.buf)
                        .await
                        .and_then(eof_is_error)
                        .map_err(upstream_failure)?;
                }
                continue;
            }
            let body_bytes = self
                .relay_body(
                    client,
                    &mut upstream,
                    conn,
                    resp.head_len,
                    filled,
                    resp.framing,
                )
                .await?;
            if resp.upstream_reusable && body_bytes.clean_end {
                self.pool.put(upstream);
            }
            return Ok(Outcome {
                status: resp.status,
                body_bytes: body_bytes.sent,
                keep_client: resp.framing != Framing::UntilClose,
            });
        }
    }

    async fn connect(&self) -> Result<TcpStream, Failure> {
        let connect_timeout = Duration::from_millis(self.timeouts.connect_ms);
        let conn = fast_timeout(connect_timeout, TcpStream::connect(self.upstream))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))
            .and_then(|r| r)
            .map_err(upstream_failure)?;
        // Best effort, as Pingora's connector: a request head must not wait for an ACK.
        let _ = conn.set_nodelay(true);
        Ok(conn)
    }

    /// Writes the request head and reads the first bytes of the answer.
    async fn send_and_read(&self, upstream: &mut TcpStream, conn: &mut Conn) -> io::Result<usize> {
        let write_timeout = Duration::from_millis(self.timeouts.write_ms);
        fast_timeout(write_timeout, upstream.write_all(&conn.out))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        self.read_upstream(upstream, &mut conn.buf)
            .await
            .and_then(eof_is_error)
    }

    async fn read_upstream(&self, upstream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let read_timeout = Duration::from_millis(self.timeouts.read_ms);
        fast_timeout(read_timeout, upstream.read(buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    /// Sends the answer head (in `conn.out`) with the body bytes already read, then the rest
    /// of the body as it comes.
    async fn relay_body(
        &self,
        client: &mut Stream,
        upstream: &mut TcpStream,
        conn: &mut Conn,
        head_len: usize,
        filled: usize,
        framing: Framing,
    ) -> Result<Relayed, Failure> {
        let mut relay = Relayed {
            sent: 0,
            clean_end: true,
        };
        let mut scanner = h1::ChunkedScanner::default();
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        // Body bytes in the buffer: [start, end).
        let mut start = head_len;
        let mut end = filled;
        // A small answer whose body came a moment after its head (an upstream that writes
        // them apart, as nginx does with writev and sendfile) is completed before anything is
        // written: one write to the client instead of two, a segment and an ACK fewer. If the
        // upstream fails meanwhile, what came is still sent before the connection ends.
        let mut cut_short = None;
        if let Framing::Length(n) = framing {
            let whole = usize::try_from(n).map_or(usize::MAX, |n| head_len.saturating_add(n));
            while end < whole && whole <= conn.buf.len() {
                match self
                    .read_body(upstream, &mut conn.buf[end..whole], framing)
                    .await
                {
                    Ok(n) => end += n,
                    Err(failure) => {
                        cut_short = Some(failure);
                        break;
                    }
                }
            }
        }
        let mut first = true;
        loop {
            let available = &conn.buf[start..end];
            let (chunk, done) = match framing {
                Framing::Empty => (&available[..0], true),
                Framing::Length(_) => {
                    let n = left.min(available.len() as u64) as usize;
                    left -= n as u64;
                    (&available[..n], left == 0)
                }
                Framing::Chunked => match scanner.feed(available) {
                    Ok(Some(n)) => (&available[..n], true),
                    Ok(None) => (available, false),
                    Err(h1::BadChunk) => {
                        tracing::error!("upstream sent a broken chunked body");
                        return Err(Failure::Broken);
                    }
                },
                Framing::UntilClose => (available, false),
            };
            if done && chunk.len() < available.len() {
                // Bytes past the end of the answer: that connection cannot be trusted again.
                relay.clean_end = false;
            }
            relay.sent += chunk.len() as u64;
            if first {
                if chunk.len() <= SMALL_BODY {
                    conn.out.extend_from_slice(chunk);
                    write_client(client, &conn.out).await?;
                } else {
                    write_client_parts(client, &conn.out, chunk).await?;
                }
                first = false;
            } else if !chunk.is_empty() {
                write_client(client, chunk).await?;
            }
            if done {
                return Ok(relay);
            }
            if let Some(failure) = cut_short.take() {
                return Err(failure);
            }
            if end == conn.buf.len() && conn.buf.len() < BODY_BUF {
                conn.buf.resize(BODY_BUF, 0);
            }
            start = 0;
            end = match self.read_body(upstream, &mut conn.buf, framing).await? {
                0 => {
                    relay.clean_end = false;
                    return Ok(relay);
                }
                n => n,
            };
        }
    }

    /// Reads more of the answer body; `Ok(0)` only at the end of an until-close body.
    async fn read_body(
        &self,
        upstream: &mut TcpStream,
        buf: &mut [u8],
        framing: Framing,
    ) -> Result<usize, Failure> {
        match self.read_upstream(upstream, buf).await {
            Ok(0) if framing == Framing::UntilClose => Ok(0),
            Ok(0) => {
                tracing::error!("upstream closed before the end of the answer");
                Err(Failure::Broken)
            }
            Ok(n) => Ok(n),
            Err(e) => {
                tracing::error!(error = %e, "upstream failed during the answer body");
                Err(Failure::Broken)
            }
        }
    }
}

struct Relayed {
    sent: u64,
    /// The body ended where its framing said, and nothing followed.
    clean_end: bool,
}

fn eof_is_error(n: usize) -> io::Result<usize> {
    if n == 0 {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "upstream closed the connection before answering",
        ))
    } else {
        Ok(n)
    }
}

fn upstream_failure(error: io::Error) -> Failure {
    let code = if error.kind() == io::ErrorKind::TimedOut {
        504
    } else {
        502
    };
    Failure::Upstream { code, error }
}

async fn write_client(client: &mut Stream, bytes: &[u8]) -> Result<(), Failure> {
    client.write_all(bytes).await.map_err(|_| Failure::Broken)?;
    client.flush().await.map_err(|_| Failure::Broken)
}

/// Writes `head` then `body` with vectored writes (no copy into one buffer).
async fn write_client_parts(client: &mut Stream, head: &[u8], body: &[u8]) -> Result<(), Failure> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() {
        let parts = [io::IoSlice::new(head), io::IoSlice::new(body)];
        let n = client
            .write_vectored(&parts)
            .await
            .map_err(|_| Failure::Broken)?;
        if n == 0 {
            return Err(Failure::Broken);
        }
        if n < head.len() {
            head = &head[n..];
        } else {
            body = &body[n - head.len()..];
            head = &[];
        }
    }
    write_client(client, body).await
}

/// The same answer Pingora's path gives (`proxy::error_answer`). `false` if the client is gone.
async fn write_error(client: &mut Stream, code: u16, request_id: &[u8]) -> bool {
    let body = proxy::error_body(code);
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         X-Request-Id: {}\r\nConnection: close\r\n\r\n{body}",
        http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
        body.len(),
        String::from_utf8_lossy(request_id),
    );
    write_client(client, head.as_bytes()).await.is_ok()
}

fn log_access(conn: &Conn, head_len: usize, status: u16, started: Instant, bytes: u64) {
    let head = &conn.input[..head_len.min(conn.filled)];
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let uri = String::from_utf8_lossy(parts.next().unwrap_or_default());
    tracing::info!(
        target: "access",
        method = %method,
        uri = %uri,
        status,
        route = RouteKind::Proxied.as_str(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        bytes,
        request_id = %String::from_utf8_lossy(&conn.request_id),
    );
}
