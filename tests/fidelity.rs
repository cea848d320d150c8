//! Pass-through fidelity, byte for byte: what a client sends through the gateway is what the
//! upstream receives, and the upstream's answer is what the client gets. Each test puts the
//! gateway in front of an upstream written here: raw tokio TCP where the exact bytes matter
//! (request lines, framing, 100-continue, WebSocket), hyper where a real server is enough.
//! The client side is raw TCP throughout. Every read is bounded ([`IO_LIMIT`]), every loop
//! bounded in count.
//!
//! Cases: a 50 MiB chunked upload with the gateway's memory watched; WebSocket upgrades
//! (including Pingora bug #946's ordering); `Expect: 100-continue`; compressed bodies left
//! alone; request targets never normalised; HTTP/1.0 clients; upstream connection reuse;
//! hop-by-hop fields.
//!
//! Gateway bugs found here are tests marked `#[ignore = "gateway bug: ..."]` that assert the
//! correct behaviour: `cargo test --test fidelity -- --ignored` shows them failing.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::db::{Backend, TestDb};
use support::orchestrator::FakeOrchestrator;
use support::{find, Gateway, GatewayOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest wait for any single read or write in these tests.
const IO_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

/// A gateway in front of `upstream`, with the orchestrator and the database it needs to start.
struct Harness {
    gw: Gateway,
    _orchestrator: FakeOrchestrator,
    _db: TestDb,
}

async fn gateway_to(upstream: SocketAddr) -> Harness {
    let orchestrator = FakeOrchestrator::start().await;
    let db = TestDb::new(Backend::Sqlite, None).await;
    let gw = Gateway::start(&GatewayOptions::new(upstream, orchestrator.url(), &db.url)).await;
    Harness {
        gw,
        _orchestrator: orchestrator,
        _db: db,
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1 on TCP: both the test clients and the raw upstreams use this
// ---------------------------------------------------------------------------------------------

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: nothing within {IO_LIMIT:?}"),
    )
}

/// A TCP connection with a read buffer, read and written with bounded waits.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    async fn connect(addr: SocketAddr) -> Wire {
        let stream = tokio::time::timeout(IO_LIMIT, TcpStream::connect(addr))
            .await
            .expect("connect within the limit")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Wire::new(stream)
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        tokio::time::timeout(IO_LIMIT, self.stream.write_all(bytes))
            .await
            .map_err(|_| timed_out("write"))?
    }

    /// One read into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(IO_LIMIT, self.stream.read(&mut chunk))
            .await
            .map_err(|_| timed_out("read"))??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next message head (without its blank line); `None` at a clean EOF.
    async fn head(&mut self) -> io::Result<Option<Head>> {
        for _ in 0..10_000 {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Ok(Some(Head::parse(&raw[..end])));
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::other("head over 64 KiB"));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "EOF inside a head: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ),
                    ))
                };
            }
        }
        Err(io::Error::other("head: too many reads"))
    }

    async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        for _ in 0..1_000_000 {
            if self.buf.len() >= n {
                return Ok(self.buf.drain(..n).collect());
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} bytes", self.buf.len()),
                ));
            }
        }
        Err(io::Error::other("exact: too many reads"))
    }

    /// One line, without its CRLF.
    async fn line(&mut self) -> io::Result<Vec<u8>> {
        for _ in 0..10_000 {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Ok(line[..end].to_vec());
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF in a line",
                ));
            }
        }
        Err(io::Error::other("line: too many reads"))
    }

    /// A chunked body, decoded (trailers read and dropped).
    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        for _ in 0..1_000_000 {
            let line = self.line().await?;
            let size = String::from_utf8_lossy(&line);
            let size = size.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                for _ in 0..100 {
                    if self.line().await?.is_empty() {
                        return Ok(body);
                    }
                }
                return Err(io::Error::other("too many trailers"));
            }
            body.extend_from_slice(&self.exact(size).await?);
            if !self.exact(2).await?.eq(b"\r\n") {
                return Err(io::Error::other("chunk not followed by CRLF"));
            }
        }
        Err(io::Error::other("chunked: too many chunks"))
    }

    /// Everything until the peer closes.
    async fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        for _ in 0..1_000_000 {
            if self.fill().await? == 0 {
                return Ok(std::mem::take(&mut self.buf));
            }
        }
        Err(io::Error::other("read_to_close: too many reads"))
    }

    /// Whether the peer closes (EOF or reset) within `limit` without sending anything more.
    async fn closes_within(&mut self, limit: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(_) => false,
        }
    }

    /// A request's body, as its head frames it.
    async fn request_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.is_chunked() {
            self.chunked().await
        } else if let Some(n) = head.content_length() {
            self.exact(n).await
        } else {
            Ok(Vec::new())
        }
    }

    /// A response: its head and its body, as the head frames it (RFC 9112 §6.3).
    async fn response(&mut self, to_head_request: bool) -> io::Result<(Head, Vec<u8>)> {
        let head = self
            .head()
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
        let status = head.status();
        let body = if to_head_request || status < 200 || status == 204 || status == 304 {
            Vec::new()
        } else if head.is_chunked() {
            self.chunked().await?
        } else if let Some(n) = head.content_length() {
            self.exact(n).await?
        } else {
            self.read_to_close().await?
        };
        Ok((head, body))
    }
}

/// A parsed message head. Values are kept as sent (bytes as Latin-1 would map them).
#[derive(Clone)]
struct Head {
    /// The request line or status line, exactly as it came.
    start: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:?}", self.start(), self.headers)
    }
}

impl Head {
    fn parse(raw: &[u8]) -> Head {
        let mut lines = raw
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let start = lines.next().unwrap_or_default().to_vec();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let colon = l.iter().position(|&b| b == b':').unwrap_or(l.len());
                let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
                let value = l.get(colon + 1..).unwrap_or_default();
                let value: String = value.iter().map(|&b| b as char).collect();
                (name, value.trim().to_owned())
            })
            .collect();
        Head { start, headers }
    }

    fn start(&self) -> String {
        String::from_utf8_lossy(&self.start).into_owned()
    }

    fn status(&self) -> u16 {
        let start = self.start();
        start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {start:?}"))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn is_chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }
}

/// A raw TCP upstream: every accepted connection goes to `handler`; accepts are counted.
struct RawUpstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start<F, Fut>(handler: F) -> RawUpstream
    where
        F: Fn(Wire) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                tokio::spawn(handler(Wire::new(stream)));
            }
        });
        RawUpstream {
            addr,
            accepts,
            task,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a raw upstream saw: request lines and heads, in arrival order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Request>>>);

/// A request head and its body.
type Request = (Head, Vec<u8>);

impl Seen {
    fn push(&self, head: &Head, body: &[u8]) {
        self.0.lock().unwrap().push((head.clone(), body.to_vec()));
    }

    fn all(&self) -> Vec<Request> {
        self.0.lock().unwrap().clone()
    }

    fn last(&self) -> Request {
        self.all().pop().expect("the upstream saw a request")
    }
}

/// A raw upstream that records every request and answers each with `answer(&head)`: the bytes
/// to send and whether to close the connection after them. Keep-alive, at most 1000 requests
/// per connection.
async fn scripted_upstream<A>(answer: A) -> (RawUpstream, Seen)
where
    A: Fn(&Head) -> (Vec<u8>, bool) + Send + Sync + 'static,
{
    let seen = Seen::default();
    let record = seen.clone();
    let answer = Arc::new(answer);
    let upstream = RawUpstream::start(move |mut wire: Wire| {
        let (record, answer) = (record.clone(), answer.clone());
        async move {
            for _ in 0..1000 {
                let Ok(Some(head)) = wire.head().await else {
                    return;
                };
                let Ok(body) = wire.request_body(&head).await else {
                    return;
                };
                record.push(&head, &body);
                let (bytes, close) = answer(&head);
                if wire.send(&bytes).await.is_err() || close {
                    return;
                }
            }
        }
    })
    .await;
    (upstream, seen)
}

// ---------------------------------------------------------------------------------------------
// 1. A 50 MiB chunked upload, streamed, with the gateway's RSS watched
// ---------------------------------------------------------------------------------------------

const UPLOAD_BYTES: usize = 50 * 1024 * 1024;
const UPLOAD_CHUNK: usize = 64 * 1024;

/// Fills `out` with chunk `index` of the upload: byte `i` is `(i % 251 + i / 65536) % 256`.
fn upload_chunk(index: usize, out: &mut [u8]) {
    let base = index * UPLOAD_CHUNK;
    for (j, b) in out.iter_mut().enumerate() {
        let i = base + j;
        *b = ((i % 251) as u8).wrapping_add((i >> 16) as u8);
    }
}

fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// An upstream (hyper) that reads the whole request body frame by frame, a little slower than
/// loopback can deliver it (so the gateway has to hold back the client rather than buffer),
/// and answers `{"len":…,"fnv":"…"}`.
async fn hashing_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut body = req.into_body();
                        let (mut len, mut hash, mut since_pause) = (0usize, FNV_OFFSET, 0usize);
                        while let Some(frame) = body.frame().await {
                            if let Ok(data) = frame?.into_data() {
                                len += data.len();
                                fnv1a(&mut hash, &data);
                                since_pause += data.len();
                                if since_pause >= 1024 * 1024 {
                                    since_pause = 0;
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        }
                        let json = format!(r#"{{"len":{len},"fnv":"{hash:016x}"}}"#);
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(json))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_chunked_upload_streams_through_without_buffering() {
    let (upstream, upstream_task) = hashing_upstream().await;
    let h = gateway_to(upstream).await;
    let pid = h.gw.child.id();

    // Warm up: one small upload, so worker threads and the upstream pool exist before the
    // baseline is taken.
    let mut warm = Wire::connect(h.gw.addr).await;
    warm.send(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = warm.response(false).await.unwrap();
    assert_eq!(head.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = rss_kib(pid).expect("VmRSS of the gateway");

    // Sample the gateway's RSS every 20 ms until the upload is answered (at most 3 minutes).
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0usize);
            for _ in 0..9_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Some(kib) = rss_kib(pid) {
                    peak = peak.max(kib);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak, samples)
        })
    };

    let started = Instant::now();
    let mut conn = Wire::connect(h.gw.addr).await;
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut chunk = vec![0u8; UPLOAD_CHUNK];
    let mut expected = FNV_OFFSET;
    for index in 0..UPLOAD_BYTES / UPLOAD_CHUNK {
        upload_chunk(index, &mut chunk);
        fnv1a(&mut expected, &chunk);
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        conn.send(&frame)
            .await
            .unwrap_or_else(|e| panic!("upload stalled at chunk {index}: {e}"));
    }
    conn.send(b"0\r\n\r\n").await.unwrap();
    let (head, body) = conn.response(false).await.expect("the upload's answer");
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (peak, samples) = sampler.join().unwrap();
    upstream_task.abort();

    assert_eq!(head.status(), 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON answer");
    assert_eq!(answer["len"], UPLOAD_BYTES, "the upstream got every byte");
    assert_eq!(
        answer["fnv"],
        format!("{expected:016x}"),
        "and the same bytes"
    );

    let growth = peak.saturating_sub(baseline);
    println!(
        "50 MiB chunked upload through the gateway: {:.2} s ({:.0} MiB/s); gateway VmRSS \
         baseline {baseline} KiB ({:.1} MiB), peak {peak} KiB ({:.1} MiB), growth {growth} KiB \
         ({:.1} MiB), {samples} samples every 20 ms",
        elapsed.as_secs_f64(),
        50.0 / elapsed.as_secs_f64(),
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        growth as f64 / 1024.0,
    );
    assert!(samples >= 5, "only {samples} RSS samples");
    assert!(
        growth < 25 * 1024,
        "the gateway's RSS grew by {growth} KiB during a 50 MiB upload: it buffers the body"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. WebSocket upgrades
// ---------------------------------------------------------------------------------------------

/// SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept only.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in data.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn websocket_accept(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

#[test]
fn sha1_base64_and_the_accept_key_match_their_references() {
    let hex: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    let hex: String = sha1(&[b'a'; 1000])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, "291e9a6c66994949b57ba5e650361e98fc36b1ba");
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    // The example of RFC 6455 §1.3.
    assert_eq!(
        websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

const WS_TEXT: u8 = 0x1;
const WS_BINARY: u8 = 0x2;
const WS_CLOSE: u8 = 0x8;
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One final frame; masked (as a client must) when `mask` is given.
fn ws_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// One frame: (FIN + opcode byte, masked?, payload unmasked).
async fn ws_read(wire: &mut Wire) -> io::Result<(u8, bool, Vec<u8>)> {
    let first = wire.exact(2).await?;
    let masked = first[1] & 0x80 != 0;
    let len = match first[1] & 0x7F {
        126 => u16::from_be_bytes(wire.exact(2).await?.try_into().unwrap()) as usize,
        127 => u64::from_be_bytes(wire.exact(8).await?.try_into().unwrap()) as usize,
        n => n as usize,
    };
    if len > 16 * 1024 * 1024 {
        return Err(io::Error::other(format!("frame of {len} bytes")));
    }
    let key = if masked {
        Some(wire.exact(4).await?)
    } else {
        None
    };
    let mut payload = wire.exact(len).await?;
    if let Some(key) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok((first[0], masked, payload))
}

/// How the WebSocket upstream behaves.
#[derive(Clone, Copy)]
struct WsUpstream {
    /// Wait before the 101.
    delay_101: Duration,
    /// Send a text frame `hello from upstream` right behind the 101, in the same write.
    greet: bool,
}

/// What the WebSocket upstream observed on one connection.
#[derive(Debug, Default, Clone)]
struct WsLog {
    head: Option<String>,
    /// The upgrade request's body, if it had one.
    body: Vec<u8>,
    /// Frames received from the client (through the gateway): (opcode, was masked, payload).
    frames: Vec<(u8, bool, Vec<u8>)>,
    /// How the connection ended, as the upstream saw it.
    end: String,
}

/// A WebSocket echo server on raw TCP: RFC 6455 handshake, then every data frame is echoed
/// (unmasked, as a server must), a close frame is answered with a close frame.
async fn ws_upstream(how: WsUpstream) -> (RawUpstream, Arc<Mutex<Vec<WsLog>>>) {
    let logs: Arc<Mutex<Vec<WsLog>>> = Arc::default();
    let shared = logs.clone();
    let upstream = RawUpstream::start(move |mut wire: Wire| {
        let logs = shared.clone();
        async move {
            let index = {
                let mut logs = logs.lock().unwrap();
                logs.push(WsLog::default());
                logs.len() - 1
            };
            let set = |f: &dyn Fn(&mut WsLog)| f(&mut logs.lock().unwrap()[index]);
            let Ok(Some(head)) = wire.head().await else {
                set(&|l| l.end = "no request head".into());
                return;
            };
            set(&|l| l.head = Some(head.start()));
            let key = head.get("sec-websocket-key").unwrap_or_default().to_owned();
            if !head.has_token("upgrade", "websocket") || key.is_empty() {
                let _ = wire
                    .send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                set(&|l| l.end = "not an upgrade".into());
                return;
            }
            tokio::time::sleep(how.delay_101).await;
            let mut answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                websocket_accept(&key)
            )
            .into_bytes();
            if how.greet {
                answer.extend_from_slice(&ws_frame(WS_TEXT, b"hello from upstream", None));
            }
            if let Err(e) = wire.send(&answer).await {
                set(&|l| l.end = format!("writing the 101: {e}"));
                return;
            }
            // A request body (unusual on an upgrade) comes before the new protocol's bytes;
            // this upstream switched without waiting for it.
            if let Some(n) = head.content_length().filter(|&n| n > 0) {
                match wire.exact(n).await {
                    Ok(body) => set(&|l| l.body = body.clone()),
                    Err(e) => {
                        set(&|l| l.end = format!("reading the request body: {e}"));
                        return;
                    }
                }
            }
            for _ in 0..1000 {
                match ws_read(&mut wire).await {
                    Ok((first, masked, payload)) => {
                        let opcode = first & 0x0F;
                        let frame = (opcode, masked, payload.clone());
                        set(&|l| l.frames.push(frame.clone()));
                        if opcode == WS_CLOSE {
                            let _ = wire.send(&ws_frame(WS_CLOSE, &payload, None)).await;
                            set(&|l| l.end = "close frame".into());
                            return;
                        }
                        if let Err(e) = wire.send(&ws_frame(opcode, &payload, None)).await {
                            set(&|l| l.end = format!("echo failed: {e}"));
                            return;
                        }
                    }
                    Err(e) => {
                        set(&|l| l.end = format!("read: {e}"));
                        return;
                    }
                }
            }
        }
    })
    .await;
    (upstream, logs)
}

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /api/ws?room=1 HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\
         Origin: http://app.test\r\n{extra}\r\n"
    )
}

fn assert_switched(head: &Head) {
    assert_eq!(head.status(), 101, "{head:?}");
    assert!(head.has_token("upgrade", "websocket"), "{head:?}");
    assert!(head.has_token("connection", "upgrade"), "{head:?}");
    assert_eq!(
        head.get("sec-websocket-accept"),
        Some(websocket_accept(WS_KEY).as_str()),
        "{head:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_and_echo_round_trips() {
    // The upstream waits 50 ms before its 101 so the gateway has forwarded the request's
    // (empty) body first: the ordering Pingora handles (see the #946 tests below).
    let (upstream, logs) = ws_upstream(WsUpstream {
        delay_101: Duration::from_millis(50),
        greet: false,
    })
    .await;
    let h = gateway_to(upstream.addr).await;

    let mut ws = Wire::connect(h.gw.addr).await;
    ws.send(upgrade_request("").as_bytes()).await.unwrap();
    let head = ws.head().await.unwrap().expect("an answer to the upgrade");
    assert_switched(&head);

    // A text frame, a 70 000-byte binary frame (64-bit length) and a 300-byte one (16-bit).
    let text = "¡hola, gateway! ✓".as_bytes().to_vec();
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let medium: Vec<u8> = (0..300u32).map(|i| (i % 256) as u8).collect();
    for (n, (opcode, payload)) in [(WS_TEXT, &text), (WS_BINARY, &big), (WS_BINARY, &medium)]
        .into_iter()
        .enumerate()
    {
        let mask = [0x37, 0xfa, 0x21, n as u8];
        ws.send(&ws_frame(opcode, payload, Some(mask)))
            .await
            .unwrap();
        let (first, masked, echoed) = ws_read(&mut ws).await.unwrap_or_else(|e| {
            panic!(
                "echo of frame {n}: {e}; upstream saw {:?}",
                logs.lock().unwrap()
            )
        });
        assert_eq!(first, 0x80 | opcode, "frame {n}");
        assert!(!masked, "a server's frame is not masked");
        assert_eq!(&echoed, payload, "frame {n} came back unchanged");
    }

    // Closing handshake, then the tunnel ends.
    ws.send(&ws_frame(
        WS_CLOSE,
        &1000u16.to_be_bytes(),
        Some([1, 2, 3, 4]),
    ))
    .await
    .unwrap();
    let (first, _, payload) = ws_read(&mut ws).await.unwrap();
    assert_eq!(
        (first, payload.as_slice()),
        (0x80 | WS_CLOSE, &1000u16.to_be_bytes()[..])
    );
    drop(ws);

    let logs = logs.lock().unwrap().clone();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].head.as_deref(), Some("GET /api/ws?room=1 HTTP/1.1"));
    let frames: Vec<_> = logs[0]
        .frames
        .iter()
        .map(|f| (f.0, f.1, f.2.len()))
        .collect();
    assert_eq!(
        frames,
        [
            (WS_TEXT, true, text.len()),
            (WS_BINARY, true, big.len()),
            (WS_BINARY, true, medium.len()),
            (WS_CLOSE, true, 2)
        ],
        "the client's frames reach the upstream still masked, unchanged"
    );
}

/// How the client side of a WebSocket attempt behaves.
#[derive(Clone, Copy, Debug)]
enum WsClient {
    /// Sends the upgrade request, waits for the 101, then sends its first frame.
    WaitFor101,
    /// Sends its first frame in the same write as the upgrade request, without waiting.
    FrameWithHead,
    /// Sends the request with `Content-Length: 5` and its 5-byte body at once.
    SmallBody,
    /// Sends the request with `Content-Length: 5`, waits for the 101, then sends the body
    /// and its first frame.
    SmallBodyAfter101,
}

/// How a WebSocket attempt through the gateway ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WsOutcome {
    /// The frame went through the tunnel and its echo came back.
    Tunnel,
    /// Pingora #946's signature: the client got the 101, then EOF; the upstream got the
    /// request (and its body, if any), then EOF.
    TornDown,
    /// Anything else.
    Other(String),
}

/// One upgrade and one echo through the gateway, to an upstream that answers 101 at once.
async fn ws_attempt(gw: SocketAddr, client: WsClient, greet: bool) -> WsOutcome {
    let mut ws = Wire::connect(gw).await;
    let frame = ws_frame(WS_TEXT, b"ping", Some([9, 4, 6, 0]));
    let mut request = match client {
        WsClient::SmallBody | WsClient::SmallBodyAfter101 => {
            upgrade_request("Content-Length: 5\r\n").into_bytes()
        }
        WsClient::WaitFor101 | WsClient::FrameWithHead => upgrade_request("").into_bytes(),
    };
    match client {
        WsClient::FrameWithHead => request.extend_from_slice(&frame),
        WsClient::SmallBody => request.extend_from_slice(b"hello"),
        WsClient::WaitFor101 | WsClient::SmallBodyAfter101 => {}
    }
    if let Err(e) = ws.send(&request).await {
        return WsOutcome::Other(format!("sending the request: {e}"));
    }
    let head = match ws.head().await {
        Ok(Some(head)) if head.status() == 101 => head,
        other => return WsOutcome::Other(format!("no 101: {other:?}")),
    };
    assert_switched(&head);
    if greet {
        match ws_read(&mut ws).await {
            Ok((0x81, false, p)) if p == b"hello from upstream" => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return WsOutcome::TornDown,
            other => return WsOutcome::Other(format!("greeting: {other:?}")),
        }
    }
    let rest = match client {
        WsClient::WaitFor101 | WsClient::SmallBody => frame,
        WsClient::SmallBodyAfter101 => [&b"hello"[..], &frame].concat(),
        WsClient::FrameWithHead => Vec::new(),
    };
    if let Err(e) = ws.send(&rest).await {
        return WsOutcome::Other(format!("sending after the 101: {e}"));
    }
    match ws_read(&mut ws).await {
        Ok((0x81, false, payload)) if payload == b"ping" => WsOutcome::Tunnel,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => WsOutcome::TornDown,
        other => WsOutcome::Other(format!("echo: {other:?}")),
    }
}

/// The upgrade variants where the upstream answers 101 the moment it has the request head:
/// frame sent right behind the head, request with a small body (sent at once or after the
/// 101), upstream greeting in the same write as its 101. Each must keep the tunnel.
///
/// Pingora #946 (see the next test) can tear any of these down when the gateway's threads
/// are starved between forwarding the request and reading the 101; that ordering does not
/// happen here on an idle machine (0 in 1,600 attempts when this was written), but it could
/// on a loaded CI runner, so an attempt that ends with #946's exact signature is counted and
/// printed, not failed; any other ending fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnel_survives_an_upstream_that_answers_101_at_once() {
    for greet in [false, true] {
        let (upstream, logs) = ws_upstream(WsUpstream {
            delay_101: Duration::ZERO,
            greet,
        })
        .await;
        let h = gateway_to(upstream.addr).await;
        for client in [
            WsClient::WaitFor101,
            WsClient::FrameWithHead,
            WsClient::SmallBody,
            WsClient::SmallBodyAfter101,
        ] {
            let mut torn = 0;
            for attempt in 0..10 {
                match ws_attempt(h.gw.addr, client, greet).await {
                    WsOutcome::Tunnel => {}
                    WsOutcome::TornDown => torn += 1,
                    WsOutcome::Other(what) => panic!(
                        "{client:?}, greeting {greet}, attempt {attempt}: {what}\nupstream: {:?}",
                        logs.lock().unwrap().last()
                    ),
                }
            }
            println!("{client:?}, upstream greeting {greet}: {torn} of 10 torn down (#946)");
        }
        // The upstream got each small body before the client's frame.
        let logs = logs.lock().unwrap();
        assert!(
            logs.iter().all(|l| l.body.is_empty() || l.body == b"hello"),
            "{logs:?}"
        );
        assert!(logs.iter().filter(|l| l.body == b"hello").count() >= 10);
    }
}

/// The ordering of Pingora bug #946, made to happen: the upgrade request has a 5-byte body;
/// the client sends 2 bytes with the head and the other 3 at the same moment the upstream
/// sends its 101 (the test holds both sockets). In Pingora 0.9.1's `proxy_handle_upstream`
/// (pingora-proxy/src/proxy_h1.rs), when the 101 is read before the task carrying the end
/// of the request body, that end (`HttpTask::Body(_, true)`, queued before the downstream
/// session knew of the upgrade) is taken for the end of the upgraded tunnel:
/// `request_done && client_session.was_upgraded()` sets `response_done`, the duplex loop
/// exits, and both connections are closed right after the 101.
///
/// Returns how it ended; panics on anything but a working tunnel or that teardown.
async fn coordinated_946_attempt(
    gw: SocketAddr,
    upstreams: &mut tokio::sync::mpsc::Receiver<Wire>,
) -> WsOutcome {
    let mut client = Wire::connect(gw).await;
    let mut request = upgrade_request("Content-Length: 5\r\n").into_bytes();
    request.extend_from_slice(b"he");
    client.send(&request).await.unwrap();
    let mut up = tokio::time::timeout(IO_LIMIT, upstreams.recv())
        .await
        .expect("the gateway connects to the upstream")
        .unwrap();
    let head = up.head().await.unwrap().expect("the upgrade request");
    assert_eq!(head.content_length(), Some(5), "{head:?}");
    let key = head.get("sec-websocket-key").unwrap().to_owned();
    assert_eq!(up.exact(2).await.unwrap(), b"he");

    // Now the gateway waits for both sides; give it the rest of the body and the 101
    // back to back.
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        websocket_accept(&key)
    );
    client.send(b"llo").await.unwrap();
    up.send(answer.as_bytes()).await.unwrap();

    let head = client.head().await.unwrap().expect("an answer");
    assert_switched(&head);
    assert_eq!(up.exact(3).await.unwrap(), b"llo", "the rest of the body");
    client
        .send(&ws_frame(WS_TEXT, b"ping", Some([1, 2, 3, 4])))
        .await
        .unwrap();
    match ws_read(&mut up).await {
        Ok((0x81, true, payload)) if payload == b"ping" => {
            up.send(&ws_frame(WS_TEXT, &payload, None)).await.unwrap();
            match ws_read(&mut client).await {
                Ok((0x81, false, p)) if p == b"ping" => WsOutcome::Tunnel,
                other => WsOutcome::Other(format!("client, echo: {other:?}")),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            // The upstream side was closed; the client side must be too.
            match client.read_to_close().await {
                Ok(rest) if rest.is_empty() => WsOutcome::TornDown,
                other => WsOutcome::Other(format!("upstream got EOF, client got {other:?}")),
            }
        }
        other => WsOutcome::Other(format!("upstream, frame: {other:?}")),
    }
}

/// A raw upstream that hands every accepted connection to the test.
async fn handing_upstream() -> (RawUpstream, tokio::sync::mpsc::Receiver<Wire>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Wire>(8);
    let upstream = RawUpstream::start(move |wire: Wire| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(wire).await;
        }
    })
    .await;
    (upstream, rx)
}

const ATTEMPTS_946: usize = 100;

/// Documents Pingora bug #946 as it stands in pingora-proxy 0.9.1: with the ordering above,
/// some upgrades are torn down right after their 101 (about half of them when this was
/// written). If this test fails because none was, the bug is fixed (the gateway moved to a
/// Pingora with cloudflare/pingora#947 or #1016, or works around it): delete this test and
/// remove the `#[ignore]` of the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingora_946_tears_down_an_upgrade_whose_body_ends_after_the_101() {
    let (upstream, mut upstreams) = handing_upstream().await;
    let h = gateway_to(upstream.addr).await;
    let mut torn = 0;
    for attempt in 0..ATTEMPTS_946 {
        match coordinated_946_attempt(h.gw.addr, &mut upstreams).await {
            WsOutcome::Tunnel => {}
            WsOutcome::TornDown => torn += 1,
            WsOutcome::Other(what) => panic!("attempt {attempt}: {what}"),
        }
    }
    println!("Pingora #946: {torn} of {ATTEMPTS_946} upgrades torn down right after the 101");
    assert!(
        torn > 0,
        "no upgrade was torn down in {ATTEMPTS_946} attempts: Pingora #946 looks fixed; \
         delete this test and un-ignore websocket_tunnel_survives_a_body_that_ends_after_the_101"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "gateway bug: Pingora #946 (pingora-proxy 0.9.1, proxy_h1.rs proxy_handle_upstream): \
            an upgrade request whose body end is read after the upstream's 101 is torn down \
            right after the 101 (client: 101 then EOF; upstream: body then EOF)"]
async fn websocket_tunnel_survives_a_body_that_ends_after_the_101() {
    let (upstream, mut upstreams) = handing_upstream().await;
    let h = gateway_to(upstream.addr).await;
    for attempt in 0..ATTEMPTS_946 {
        let outcome = coordinated_946_attempt(h.gw.addr, &mut upstreams).await;
        assert_eq!(outcome, WsOutcome::Tunnel, "attempt {attempt}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Expect: 100-continue
// ---------------------------------------------------------------------------------------------

/// A raw upstream for `Expect: 100-continue`, one request per connection:
/// - `/continue`: sends `100 Continue` when asked, reads the body, answers 200 with it;
/// - `/refuse`: answers `413` (with `Connection: close`) at once, without reading the body.
///
/// Records each request head and how many body bytes it read.
async fn continue_upstream() -> (RawUpstream, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let upstream = RawUpstream::start(move |mut wire: Wire| {
        let record = record.clone();
        async move {
            let Ok(Some(head)) = wire.head().await else {
                return;
            };
            let path = head.start();
            if path.starts_with("POST /refuse") {
                record.push(&head, b"");
                let body = r#"{"error":"too large"}"#;
                let _ = wire
                    .send(
                        format!(
                            "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                // Linger a moment so the answer is not lost to a reset, then close.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            let mut head = head;
            for _ in 0..100 {
                if head.has_token("expect", "100-continue")
                    && wire.send(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
                {
                    return;
                }
                let Ok(body) = wire.request_body(&head).await else {
                    record.push(&head, b"<body read failed>");
                    return;
                };
                record.push(&head, &body);
                let json = format!(r#"{{"received":{}}}"#, body.len());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                    json.len()
                );
                if wire.send(answer.as_bytes()).await.is_err() {
                    return;
                }
                // Keep-alive: the gateway may send the next request on this connection.
                match wire.head().await {
                    Ok(Some(next)) => head = next,
                    _ => return,
                }
            }
        }
    })
    .await;
    (upstream, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_relayed_and_the_body_follows() {
    let (upstream, seen) = continue_upstream().await;
    let h = gateway_to(upstream.addr).await;
    let body = "{\"texto\":\"después del 100\"}";

    let mut conn = Wire::connect(h.gw.addr).await;
    conn.send(
        format!(
            "POST /continue HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Wait (bounded) for the interim answer before sending the body, as curl does.
    let interim = tokio::time::timeout(Duration::from_secs(5), conn.head())
        .await
        .expect("100 Continue within 5 s")
        .unwrap()
        .expect("an interim answer");
    assert_eq!(interim.status(), 100, "{interim:?}");
    conn.send(body.as_bytes()).await.unwrap();
    let (head, answer) = conn.response(false).await.unwrap();
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(
        String::from_utf8_lossy(&answer),
        format!(r#"{{"received":{}}}"#, body.len())
    );

    let (up_head, up_body) = seen.last();
    assert_eq!(up_head.start(), "POST /continue HTTP/1.1");
    assert_eq!(up_head.get("expect"), Some("100-continue"), "{up_head:?}");
    assert_eq!(up_body, body.as_bytes());

    // Pingora 0.9.1 turns keep-alive off once it has relayed a 1xx before the request body
    // was read (`close_on_response_before_downstream_finish`), so this answer says
    // `Connection: close`. Either way the client must be able to tell what comes next.
    if head.has_token("connection", "close") {
        assert!(
            conn.closes_within(Duration::from_secs(5)).await,
            "answered Connection: close but kept the connection"
        );
    } else {
        conn.send(b"POST /continue HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let (head, answer) = conn.response(false).await.unwrap();
        assert_eq!(
            (head.status(), answer.as_slice()),
            (200, &br#"{"received":2}"#[..])
        );
    }
}

/// Sends a POST with `Expect: 100-continue` for a 10 MB body to `/refuse` and returns the
/// connection once the final answer is read (without sending any body).
async fn refused_expectation(gw: SocketAddr) -> (Wire, Head, Vec<u8>) {
    let mut conn = Wire::connect(gw).await;
    conn.send(
        b"POST /refuse HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\n\
          Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The client sends no body: it waits for the answer, which must come (bounded) and be
    // the upstream's final one, with no 100 before it.
    let (head, body) = tokio::time::timeout(Duration::from_secs(5), conn.response(false))
        .await
        .expect("the final answer within 5 s, without a body sent")
        .unwrap();
    (conn, head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_refused_by_the_upstream_gets_its_final_answer() {
    let (upstream, seen) = continue_upstream().await;
    let h = gateway_to(upstream.addr).await;

    let (_conn, head, body) = refused_expectation(h.gw.addr).await;
    assert_eq!(head.status(), 413, "{head:?}");
    assert_eq!(body, br#"{"error":"too large"}"#);
    assert_eq!(head.get("content-type"), Some("application/json"));
    // The body never came, so the connection cannot carry another request.
    assert!(head.has_token("connection", "close"), "{head:?}");
    let (up_head, up_body) = seen.last();
    assert_eq!(up_head.start(), "POST /refuse HTTP/1.1");
    assert_eq!(up_head.get("expect"), Some("100-continue"));
    assert!(up_body.is_empty());

    // The gateway is fine afterwards.
    let mut next = Wire::connect(h.gw.addr).await;
    next.send(b"POST /continue HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let (head, answer) = next.response(false).await.unwrap();
    assert_eq!(
        (head.status(), answer.as_slice()),
        (200, &br#"{"received":3}"#[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "gateway bug: after relaying the upstream's final answer (413, Connection: close) to \
            an Expect: 100-continue request whose body the client never sent, the gateway \
            keeps the client connection open waiting for that body until the 60 s downstream \
            read timeout (then logs ERROR Fail to proxy: Downstream ReadTimedout and an access \
            line of 60 s); it should close the connection right after the answer"]
async fn expect_100_continue_refused_closes_the_connection() {
    let (upstream, _seen) = continue_upstream().await;
    let h = gateway_to(upstream.addr).await;
    let (mut conn, head, _) = refused_expectation(h.gw.addr).await;
    assert_eq!(head.status(), 413, "{head:?}");
    let started = Instant::now();
    assert!(
        conn.closes_within(Duration::from_secs(5)).await,
        "the gateway answered Connection: close but kept the connection open for {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Compressed bodies pass through as they are
// ---------------------------------------------------------------------------------------------

/// `gzip -9` of [`COMPRESSED_TEXT`] (mtime 0), computed with Node's zlib.
const GZIP_BODY: [u8; 79] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xab, 0x56, 0xca, 0x4d, 0xcd, 0x2b,
    0x4e, 0xcc, 0x4a, 0x55, 0xb2, 0x52, 0x3a, 0xb4, 0x30, 0x23, 0x3f, 0x27, 0x51, 0x21, 0x25, 0xb5,
    0x38, 0x25, 0x55, 0xc1, 0x2f, 0xb5, 0xa2, 0x44, 0x2f, 0xab, 0x58, 0x51, 0x49, 0x47, 0xa9, 0x38,
    0xb5, 0x38, 0x33, 0x3f, 0x2f, 0xb5, 0x58, 0xc9, 0x2a, 0x1a, 0xc4, 0x06, 0x71, 0xe2, 0x0d, 0x21,
    0xe2, 0x04, 0xd8, 0xb1, 0xb5, 0x5c, 0x00, 0x4f, 0xe2, 0xa5, 0xfb, 0x61, 0x00, 0x00, 0x00,
];

/// Brotli of [`COMPRESSED_TEXT`], computed with Node's zlib.
const BROTLI_BODY: [u8; 77] = [
    0x1b, 0x60, 0x00, 0xe0, 0x8d, 0xd3, 0x15, 0xf3, 0x23, 0x84, 0x75, 0x1f, 0xa1, 0xd2, 0xe1, 0x3f,
    0x6f, 0x29, 0x7b, 0xf9, 0x8a, 0x96, 0xcd, 0x4c, 0xb8, 0x0d, 0x33, 0x17, 0x7e, 0xd4, 0x92, 0x54,
    0xa5, 0x8e, 0x42, 0x1f, 0x6c, 0xc0, 0x01, 0x7b, 0xe0, 0xc9, 0xa4, 0x1b, 0x8f, 0x78, 0xec, 0x7a,
    0x91, 0x82, 0xc5, 0x78, 0x89, 0x72, 0x83, 0xff, 0x46, 0xec, 0xfe, 0xc1, 0x08, 0xf1, 0x8e, 0xa5,
    0x84, 0x21, 0xd7, 0x8c, 0xe3, 0x42, 0x41, 0x6a, 0x6d, 0x19, 0x23, 0xf5, 0x00,
];

/// What both bodies decompress to (for the record: the gateway must never produce it).
const COMPRESSED_TEXT: &str = "{\"mensaje\":\"¡hola desde Next.js!\",\"sesiones\":[\"session_1\",\"session_1\",\"session_1\",\"session_1\"]}\n";

/// 200 KiB of bytes labelled `gzip` that are not gzip: a gateway that decoded would fail.
fn fake_gzip() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..200 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A raw upstream that answers compressed bodies, keep-alive:
/// `/gz` and `/br` with Content-Length, `/gz-chunked` chunked (200 KiB, in 7 chunks).
async fn compressed_upstream() -> (RawUpstream, Seen) {
    scripted_upstream(|head| (compressed_answer(head), false)).await
}

fn compressed_answer(head: &Head) -> Vec<u8> {
    let is_head = head.start().starts_with("HEAD ");
    let path = head
        .start()
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut out = Vec::new();
    match path.as_str() {
        "/gz" | "/br" => {
            let (encoding, bytes) = if path == "/gz" {
                ("gzip", &GZIP_BODY[..])
            } else {
                ("br", &BROTLI_BODY[..])
            };
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
                     Content-Encoding: {encoding}\r\nVary: Accept-Encoding\r\n\
                     ETag: W/\"{encoding}-61\"\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                )
                .as_bytes(),
            );
            if !is_head {
                out.extend_from_slice(bytes);
            }
        }
        "/gz-chunked" => {
            out.extend_from_slice(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                  Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
            );
            for chunk in fake_gzip().chunks(30_000) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        _ => out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_pass_through_untouched() {
    let (upstream, seen) = compressed_upstream().await;
    let h = gateway_to(upstream.addr).await;
    let mut conn = Wire::connect(h.gw.addr).await;
    let fake = fake_gzip();

    for accept in [None, Some("gzip, deflate, br, zstd"), Some("identity")] {
        for (path, encoding, expected) in [
            ("/gz", "gzip", &GZIP_BODY[..]),
            ("/br", "br", &BROTLI_BODY[..]),
            ("/gz-chunked", "gzip", &fake[..]),
        ] {
            let accept_line = accept
                .map(|a| format!("Accept-Encoding: {a}\r\n"))
                .unwrap_or_default();
            conn.send(
                format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{accept_line}\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let (head, body) = conn.response(false).await.unwrap();
            let case = format!("{path} with Accept-Encoding {accept:?}");
            assert_eq!(head.status(), 200, "{case}: {head:?}");
            assert_eq!(head.all("content-encoding"), [encoding], "{case}: {head:?}");
            assert_eq!(head.get("vary"), Some("Accept-Encoding"), "{case}");
            assert!(
                body == expected,
                "{case}: the body changed ({} bytes, {} expected)",
                body.len(),
                expected.len()
            );
            if path == "/gz-chunked" {
                assert!(
                    head.content_length().is_none() || head.content_length() == Some(fake.len()),
                    "{case}: {head:?}"
                );
            } else {
                assert_eq!(
                    head.content_length(),
                    Some(expected.len()),
                    "{case}: {head:?}"
                );
                assert_eq!(
                    head.get("etag"),
                    Some(format!("W/\"{encoding}-61\"").as_str()),
                    "{case}"
                );
                assert!(!head.is_chunked(), "{case}: {head:?}");
            }
            // What the upstream was asked: the client's Accept-Encoding, as sent, or none.
            let (up_head, _) = seen.last();
            assert_eq!(
                up_head.all("accept-encoding"),
                accept.into_iter().collect::<Vec<_>>(),
                "{case}: {up_head:?}"
            );
        }
    }
    // HEAD keeps the encoded representation's length.
    conn.send(b"HEAD /gz HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = conn.response(true).await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.get("content-encoding"), Some("gzip"));
    assert_eq!(head.content_length(), Some(GZIP_BODY.len()), "{head:?}");
    assert!(body.is_empty());
    // And the next response on the same connection is intact (nothing was left unread).
    conn.send(b"GET /br HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = conn.response(false).await.unwrap();
    assert_eq!((head.status(), body.as_slice()), (200, &BROTLI_BODY[..]));
    assert_ne!(body, COMPRESSED_TEXT.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// 5. Request targets byte for byte
// ---------------------------------------------------------------------------------------------

/// A raw upstream that records every request head and answers `200 ok`, keep-alive.
async fn recording_upstream() -> (RawUpstream, Seen) {
    scripted_upstream(|head| {
        let answer: &[u8] = if head.start().starts_with("HEAD ") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        (answer.to_vec(), false)
    })
    .await
}

/// Request targets a normalising proxy would change. None has a fragment (clients do not
/// send them).
const TARGETS: &[&str] = &[
    "//a",
    "//a//b///c",
    "/a/../b",
    "/a/./b",
    "/a/b/../../../c",
    "/a//../b",
    "/a/b/",
    "/A/B",
    "/a%2Fb",
    "/a%2fb",
    "/a%20b",
    "/%7Euser",
    "/~user",
    "/a;params",
    "/a;b=1;c/d;e",
    "/%2e%2e/b",
    "/a%2e%2e/b",
    "/%00%ff/%E2%82%AC",
    "/q?a=1&a=2&b=%ZZ&c=+&d",
    "/q?",
    "/?",
    "/q??x",
    "/q?a=%&b=%%25&c=%2",
    "/search/?q=a%26b%3Dc&&x=&=y&z==&sort=-date,+name&redirect=http://evil.test/x?y=1",
    "/w/@:!$&'()*+,;=~-._/?/@:!$'()*,;=~",
    "/api/whatsapp_sessions/1/disconnect/",
    "/api/whatsapp_sessions/01/Disconnect?x=1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_arrive_byte_for_byte() {
    let (upstream, seen) = recording_upstream().await;
    let h = gateway_to(upstream.addr).await;
    let mut conn = Wire::connect(h.gw.addr).await;
    let mut sent = Vec::new();
    for (i, target) in TARGETS.iter().enumerate() {
        let method = ["GET", "POST", "DELETE", "HEAD"][i % 4];
        let body = if method == "POST" {
            "Content-Length: 0\r\n"
        } else {
            ""
        };
        conn.send(format!("{method} {target} HTTP/1.1\r\nHost: app.test\r\n{body}\r\n").as_bytes())
            .await
            .unwrap();
        let (head, _) = conn
            .response(method == "HEAD")
            .await
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        assert_eq!(head.status(), 200, "{method} {target}: {head:?}");
        sent.push(format!("{method} {target} HTTP/1.1"));
    }
    let arrived: Vec<String> = seen.all().iter().map(|(h, _)| h.start()).collect();
    let wrong: Vec<String> = sent
        .iter()
        .zip(&arrived)
        .filter(|(s, a)| s != a)
        .map(|(s, a)| format!("sent {s:?}, upstream got {a:?}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(arrived.len(), sent.len());
}

// ---------------------------------------------------------------------------------------------
// 6. HTTP/1.0 clients, and upstream connection reuse
// ---------------------------------------------------------------------------------------------

/// A raw upstream that behaves like Node's http server (which `next start` uses) where it
/// matters here: an HTTP/1.1 request without `Host` is a 400 (Node's `requireHostHeader`,
/// on by default); `/len` answers `hello\n` with Content-Length, `/chunked` the same in two
/// chunks. Keep-alive; records every request.
async fn node_like_upstream() -> (RawUpstream, Seen) {
    scripted_upstream(|head| {
        let start = head.start();
        if start.ends_with("HTTP/1.1") && head.get("host").is_none() {
            let answer = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n";
            return (answer.to_vec(), true);
        }
        let answer: &[u8] = if start.contains(" /chunked ") {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nhel\r\n3\r\nlo\n\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"
        };
        (answer.to_vec(), false)
    })
    .await
}

/// Sends an HTTP/1.0 request (no keep-alive) and reads the whole answer until the gateway
/// closes.
async fn http10(gw: SocketAddr, request: &str) -> (Head, Vec<u8>) {
    let mut conn = Wire::connect(gw).await;
    conn.send(request.as_bytes()).await.unwrap();
    let head = conn.head().await.unwrap().expect("an answer");
    // No keep-alive asked: the body ends where the connection does.
    let rest = conn
        .read_to_close()
        .await
        .unwrap_or_else(|e| panic!("{request:?}: the gateway did not close after answering: {e}"));
    (head, rest)
}

/// One HTTP/1.0 request for `path`, with or without `Connection: keep-alive`: the answer
/// must be readable by an HTTP/1.0 client (never chunked) and say whether the connection
/// stays; if it does, it must be delimited and a second request on it answered.
async fn http10_exchange(gw: SocketAddr, path: &str, keep_alive: bool) {
    let case = format!("GET {path} HTTP/1.0, keep-alive {keep_alive}");
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: app.test\r\n{}\r\n",
        if keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            ""
        }
    );
    let mut conn = Wire::connect(gw).await;
    conn.send(request.as_bytes()).await.unwrap();
    let head = conn.head().await.unwrap().expect("an answer");
    assert_eq!(head.status(), 200, "{case}: {head:?}");
    assert!(
        head.get("transfer-encoding").is_none(),
        "{case}: Transfer-Encoding sent to an HTTP/1.0 client: {head:?}"
    );
    if let Some(n) = head.content_length() {
        assert_eq!(n, 6, "{case}: {head:?}");
    }
    if keep_alive && head.has_token("connection", "keep-alive") {
        let n = head
            .content_length()
            .unwrap_or_else(|| panic!("{case}: keep-alive without a Content-Length: {head:?}"));
        assert_eq!(conn.exact(n).await.unwrap(), b"hello\n", "{case}");
        conn.send(request.as_bytes()).await.unwrap();
        let (again, body) = conn.response(false).await.unwrap();
        assert_eq!(
            (again.status(), body.as_slice()),
            (200, &b"hello\n"[..]),
            "{case}"
        );
    } else {
        assert!(
            !head.has_token("connection", "keep-alive"),
            "{case}: {head:?}"
        );
        let body = conn
            .read_to_close()
            .await
            .unwrap_or_else(|e| panic!("{case}: the gateway did not close after answering: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&body),
            "hello\n",
            "{case}: what an HTTP/1.0 client reads as the body ({head:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_clients_get_answers_they_can_read() {
    let (upstream, seen) = node_like_upstream().await;
    let h = gateway_to(upstream.addr).await;
    for keep_alive in [false, true] {
        http10_exchange(h.gw.addr, "/len", keep_alive).await;
        let (up, _) = seen.last();
        assert_eq!(up.get("host"), Some("app.test"), "{up:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_clients_get_chunked_answers_unchunked() {
    let (upstream, _seen) = node_like_upstream().await;
    let h = gateway_to(upstream.addr).await;
    for keep_alive in [false, true] {
        http10_exchange(h.gw.addr, "/chunked", keep_alive).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_without_host_reaches_a_node_upstream() {
    let (upstream, seen) = node_like_upstream().await;
    let h = gateway_to(upstream.addr).await;
    let (head, body) = http10(h.gw.addr, "GET /len HTTP/1.0\r\n\r\n").await;
    let (up, _) = seen.last();
    assert_eq!(
        (head.status(), body.as_slice()),
        (200, &b"hello\n"[..]),
        "client got {head:?}; upstream got {:?} with headers {:?}",
        up.start(),
        up.headers
    );
    // Either forwarded as HTTP/1.0 or, as HTTP/1.1, with a Host (RFC 9112 §3.2: empty when
    // the client gave none).
    assert!(
        up.start().ends_with("HTTP/1.0") || up.get("host").is_some(),
        "{up:?}"
    );
}

const REUSE_REQUESTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let (upstream, seen) = recording_upstream().await;
    let h = gateway_to(upstream.addr).await;

    // One client connection, N sequential requests.
    let mut conn = Wire::connect(h.gw.addr).await;
    for i in 0..REUSE_REQUESTS {
        conn.send(format!("GET /same/{i} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, body) = conn.response(false).await.unwrap();
        assert_eq!((head.status(), body.as_slice()), (200, &b"ok"[..]));
    }
    let over_one = upstream.accepts();

    // A new client connection for each request.
    for i in 0..REUSE_REQUESTS {
        let mut conn = Wire::connect(h.gw.addr).await;
        conn.send(
            format!("GET /new/{i} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let (head, body) = conn.response(false).await.unwrap();
        assert_eq!((head.status(), body.as_slice()), (200, &b"ok"[..]));
        assert!(conn.closes_within(IO_LIMIT).await);
    }
    let total = upstream.accepts();
    println!(
        "upstream TCP connections: {over_one} for {REUSE_REQUESTS} requests on one client \
         connection, {} for {REUSE_REQUESTS} requests on {REUSE_REQUESTS} client connections",
        total - over_one
    );
    assert_eq!(seen.all().len(), 2 * REUSE_REQUESTS);
    assert!(
        over_one <= 2,
        "{over_one} upstream connections for {REUSE_REQUESTS} requests"
    );
    assert!(
        total - over_one <= 2,
        "{} upstream connections for {REUSE_REQUESTS} requests from separate clients",
        total - over_one
    );
    // The client's `Connection: close` is hop-by-hop: it is not what the upstream sees.
    let (last, _) = seen.last();
    assert!(!last.has_token("connection", "close"), "{last:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Hop-by-hop fields
// ---------------------------------------------------------------------------------------------

/// An upstream that answers every request `ok` with hop-by-hop fields, as Node does
/// (`Keep-Alive: timeout=5`) plus one nominated by its `Connection` header.
async fn hop_by_hop_upstream() -> (RawUpstream, Seen) {
    scripted_upstream(|_| {
        let answer = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\
            Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\n\
            X-End-To-End: kept\r\nContent-Length: 2\r\n\r\nok";
        (answer.to_vec(), false)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_fields_stay_on_the_clients_hop() {
    let (upstream, seen) = hop_by_hop_upstream().await;
    let h = gateway_to(upstream.addr).await;
    let mut conn = Wire::connect(h.gw.addr).await;
    conn.send(
        b"GET /h HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, X-Client-Hop\r\n\
          X-Client-Hop: 1\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
          X-End-To-End: kept\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, body) = conn.response(false).await.unwrap();
    assert_eq!((head.status(), body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(head.get("x-end-to-end"), Some("kept"));
    let (up, _) = seen.last();
    for hop in ["x-client-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(up.get(hop).is_none(), "{hop} reached the upstream: {up:?}");
    }
    assert!(!up.has_token("connection", "x-client-hop"), "{up:?}");
    assert_eq!(up.get("x-end-to-end"), Some("kept"), "{up:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_fields_stay_on_the_upstreams_hop() {
    let (upstream, _seen) = hop_by_hop_upstream().await;
    let h = gateway_to(upstream.addr).await;
    let mut conn = Wire::connect(h.gw.addr).await;
    conn.send(b"GET /h HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = conn.response(false).await.unwrap();
    assert_eq!((head.status(), body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(head.get("x-end-to-end"), Some("kept"));
    for hop in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(
            head.get(hop).is_none(),
            "{hop} reached the client: {head:?}"
        );
    }
}
