//! HTTP/1.1 for the pass-through fast path (src/fastpath.rs), pure and table-tested: which
//! requests it takes, the head it sends upstream, how an answer's body is framed and the
//! head the client gets, and a scanner that finds the end of a chunked body without changing
//! a byte of it. Parsing is `httparse` (the parser Pingora itself uses).
//!
//! The fast path takes only requests whose handling has nothing to decide: HTTP/1.1 `GET`
//! or `HEAD` in origin form, one `Host`, no body framing (`Content-Length`,
//! `Transfer-Encoding`), no `Expect`, no `Upgrade`, no hop-by-hop fields beyond
//! `Connection: keep-alive`, not the native route. Anything else (and anything httparse
//! refuses) goes to Pingora's proxy, which answers it as before.

use crate::routes::{self, Route};

/// Header fields per request head; more goes to Pingora (which allows more).
pub const MAX_HEADERS: usize = 64;
/// Header fields per answer head: Pingora's own limit (more is a 502 on both paths).
pub const MAX_RESPONSE_HEADERS: usize = 256;
/// A request head longer than this goes to Pingora.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// What the bytes read so far from a client are.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestHead {
    /// Not a whole head yet.
    Partial,
    /// Pingora's proxy handles this request (and the rest of the connection).
    NotTaken,
    /// A request the fast path relays.
    Taken(Taken),
}

/// A request the fast path relays: its head is `buf[..head_len]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    pub head_len: usize,
    pub is_head: bool,
    /// Where the request id is in the upstream head.
    pub request_id: std::ops::Range<usize>,
}

/// Reads a request head from `buf`. When it is taken, the head to send upstream is appended
/// to `out`: the client's own fields in their order, minus `Connection` and the forwarding
/// fields this hop sets, then `X-Forwarded-For` (the client's list plus `client`, its address
/// as text), `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Request-Id` (the client's when it
/// is usable, else `new_id()`): the same head Pingora's path sends (src/proxy.rs).
pub fn request(
    buf: &[u8],
    client: Option<&str>,
    native_disconnect: bool,
    new_id: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) -> RequestHead {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => {
            return RequestHead::Partial
        }
        _ => return RequestHead::NotTaken,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return RequestHead::NotTaken;
    };
    let is_head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return RequestHead::NotTaken,
    };
    if !target.starts_with('/') {
        return RequestHead::NotTaken;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if native_disconnect && matches!(routes::classify(path), Route::Disconnect(_)) {
        return RequestHead::NotTaken;
    }

    let mut host = None;
    let mut request_id = None;
    let mut forwarded_for = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return RequestHead::NotTaken;
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                return RequestHead::NotTaken;
            }
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            request_id = request_id.or(Some(h.value));
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for += 1;
        } else if is_not_taken_field(name) {
            return RequestHead::NotTaken;
        }
    }
    let Some(host) = host else {
        return RequestHead::NotTaken;
    };

    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if !is_set_by_this_hop(name) && !name.eq_ignore_ascii_case(b"connection") {
            push_field(out, name, h.value);
        }
    }
    if forwarded_for > 0 || client.is_some() {
        out.extend_from_slice(b"X-Forwarded-For: ");
        let previous = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"));
        for (i, h) in previous.enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(h.value);
        }
        if let Some(ip) = client {
            if forwarded_for > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(ip.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    push_field(out, b"X-Forwarded-Host", host);
    out.extend_from_slice(b"X-Request-Id: ");
    let id_start = out.len();
    match request_id.filter(|v| usable_request_id(v)) {
        Some(id) => out.extend_from_slice(id),
        None => new_id(out),
    }
    let request_id = id_start..out.len();
    out.extend_from_slice(b"\r\n\r\n");
    RequestHead::Taken(Taken {
        head_len,
        is_head,
        request_id,
    })
}

/// An incoming `X-Request-Id` is kept when it is 1 to 128 visible ASCII characters.
pub fn usable_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic)
}

/// Fields whose presence means a request the fast path leaves to Pingora: body framing,
/// protocol changes, and hop-by-hop fields.
fn is_not_taken_field(name: &[u8]) -> bool {
    const FIELDS: [&[u8]; 8] = [
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
    ];
    FIELDS.iter().any(|f| name.eq_ignore_ascii_case(f))
}

fn is_set_by_this_hop(name: &[u8]) -> bool {
    const FIELDS: [&[u8]; 4] = [
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
    ];
    FIELDS.iter().any(|f| name.eq_ignore_ascii_case(f))
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes; the client connection is closed after it.
    UntilClose,
}

/// What the bytes read so far from the upstream are.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseHead {
    Partial,
    /// Not an answer the gateway can relay: 502.
    Invalid,
    Ready(Response),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream connection can carry another request after this answer.
    pub upstream_reusable: bool,
}

impl Response {
    /// 1xx other than 101: relayed, and the real answer follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Reads an answer head from `buf`; when it is ready, the head for the client is appended to
/// `out`: status line as HTTP/1.1, the upstream's fields minus the hop-by-hop ones (those
/// `Connection` names, `Connection`, `Keep-Alive`, `Proxy-Connection`) and its
/// `X-Request-Id`, minus `Content-Length` when `Transfer-Encoding` is there (RFC 9112
/// section 6.3), plus `X-Request-Id: request_id`, a `Date` from `date` when the upstream sent
/// none (RFC 9110 section 6.6.1), and `Connection: close` when `close` is set or the body ends
/// with the connection, else `Connection: keep-alive` (what Pingora's own path writes).
pub fn response(
    buf: &[u8],
    is_head: bool,
    request_id: &[u8],
    close: bool,
    date: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) -> ResponseHead {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ResponseHead::Partial,
        Err(_) => return ResponseHead::Invalid,
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return ResponseHead::Invalid;
    };
    if status == 101 || !(100..=999).contains(&status) {
        // 101 to a request that asked for no upgrade.
        return ResponseHead::Invalid;
    }

    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut upstream_close = version == 0;
    let mut has_date = false;
    // Whether `Connection` names fields (tokens other than close / keep-alive); usually not,
    // and then no field needs looking up in it.
    let mut names_fields = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_length(h.value) else {
                return ResponseHead::Invalid;
            };
            if length.is_some_and(|l| l != n) {
                return ResponseHead::Invalid;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Only the last coding counts (RFC 9112 section 6.3).
            chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    upstream_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    // HTTP/1.0 keeps the connection only when asked to.
                    if version == 0 {
                        upstream_close = false;
                    }
                } else {
                    names_fields = true;
                }
            }
        }
    }
    let interim = (100..200).contains(&status);
    let framing = if interim || is_head || status == 204 || status == 304 {
        Framing::Empty
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };

    out.extend_from_slice(b"HTTP/1.1 ");
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(0);
    // The status line after the version: code and reason phrase as the upstream wrote them.
    let rest = buf.get(9..line_end).unwrap_or_default();
    out.extend_from_slice(rest.strip_suffix(b"\r").unwrap_or(rest));
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let hop = name.eq_ignore_ascii_case(b"connection")
            || name.eq_ignore_ascii_case(b"keep-alive")
            || name.eq_ignore_ascii_case(b"proxy-connection")
            || name.eq_ignore_ascii_case(b"x-request-id")
            || (transfer_encoding && name.eq_ignore_ascii_case(b"content-length"))
            || (names_fields && named_by_connection(resp.headers, name));
        if !hop {
            push_field(out, name, h.value);
        }
    }
    if !interim {
        push_field(out, b"X-Request-Id", request_id);
        if !has_date {
            out.extend_from_slice(b"Date: ");
            date(out);
            out.extend_from_slice(b"\r\n");
        }
        if close || framing == Framing::UntilClose {
            out.extend_from_slice(b"Connection: close\r\n");
        } else {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    ResponseHead::Ready(Response {
        head_len,
        status,
        framing,
        upstream_reusable: !upstream_close && framing != Framing::UntilClose,
    })
}

/// A `Content-Length` value: digits only (a list like `5, 5` is refused, as Pingora does).
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

fn last_token(v: &[u8]) -> &[u8] {
    tokens(v).last().unwrap_or_default()
}

/// Whether a `Connection` field of the answer names `name` (other than the usual tokens).
fn named_by_connection(headers: &[httparse::Header], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name))
}

/// Follows a chunked body as it streams by, to find where it ends; the bytes are relayed
/// as they are (chunk extensions and trailers included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedScanner {
    state: Chunk,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The size line: hex digits so far and their value.
    #[default]
    SizeStart,
    Size {
        digits: u8,
        value: u64,
    },
    /// After the size: an extension, up to the CR.
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, then an empty line.
    Trailer {
        line: u32,
    },
    TrailerLf {
        line: u32,
    },
    Done,
}

/// The chunked framing is broken.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl ChunkedScanner {
    /// Feeds the next bytes of the body: `Ok(Some(n))` when the body ends after `data[..n]`,
    /// `Ok(None)` when more is to come.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                Chunk::SizeStart | Chunk::Size { .. } => {
                    let (digits, value) = match self.state {
                        Chunk::Size { digits, value } => (digits, value),
                        _ => (0, 0),
                    };
                    match (b as char).to_digit(16) {
                        Some(d) if digits < 15 => Chunk::Size {
                            digits: digits + 1,
                            value: value << 4 | u64::from(d),
                        },
                        Some(_) => return Err(BadChunk),
                        None if digits == 0 => return Err(BadChunk),
                        None if b == b'\r' => Chunk::SizeLf { value },
                        None if b == b';' || b == b' ' || b == b'\t' => Chunk::Extension { value },
                        None => return Err(BadChunk),
                    }
                }
                Chunk::Extension { value } => match b {
                    b'\r' => Chunk::SizeLf { value },
                    b'\n' => return Err(BadChunk),
                    _ => Chunk::Extension { value },
                },
                Chunk::SizeLf { value } => match (b, value) {
                    (b'\n', 0) => Chunk::Trailer { line: 0 },
                    (b'\n', left) => Chunk::Data { left },
                    _ => return Err(BadChunk),
                },
                Chunk::Data { left } => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        Chunk::DataCr
                    } else {
                        Chunk::Data { left: left - take }
                    };
                    continue;
                }
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::SizeStart,
                Chunk::DataCr | Chunk::DataLf => return Err(BadChunk),
                Chunk::Trailer { line } => match b {
                    b'\r' => Chunk::TrailerLf { line },
                    b'\n' => return Err(BadChunk),
                    _ if line >= 64 * 1024 => return Err(BadChunk),
                    _ => Chunk::Trailer { line: line + 1 },
                },
                Chunk::TrailerLf { line } => match (b, line) {
                    (b'\n', 0) => Chunk::Done,
                    (b'\n', _) => Chunk::Trailer { line: 0 },
                    _ => return Err(BadChunk),
                },
                Chunk::Done => return Ok(Some(i)),
            };
            i += 1;
        }
        Ok((self.state == Chunk::Done).then_some(data.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(req: &str) -> (RequestHead, String) {
        let mut out = Vec::new();
        let client = Some("10.1.2.3");
        let head = request(
            req.as_bytes(),
            client,
            true,
            |out| out.extend_from_slice(b"gen-1"),
            &mut out,
        );
        (head, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_plain_get_is_taken_with_the_forwarding_fields() {
        let (head, out) = take(
            "GET /a?b=1 HTTP/1.1\r\nHost: app\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\nGET",
        );
        assert_eq!(
            head,
            RequestHead::Taken(Taken {
                head_len: 71,
                is_head: false,
                request_id: 134..139,
            })
        );
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: app\r\nAccept: */*\r\nX-Forwarded-For: 10.1.2.3\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: app\r\nX-Request-Id: gen-1\r\n\r\n"
        );
    }

    #[test]
    fn forwarding_fields_of_the_client_are_replaced_or_extended() {
        let (head, out) = take(
            "HEAD / HTTP/1.1\r\nx-forwarded-for: 1.1.1.1\r\nHost: h:8\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nx-forwarded-host: evil\r\nX-Request-Id: abc-1\r\n\r\n",
        );
        assert!(matches!(
            head,
            RequestHead::Taken(Taken { is_head: true, .. })
        ));
        assert_eq!(
            out,
            "HEAD / HTTP/1.1\r\nHost: h:8\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: h:8\r\nX-Request-Id: abc-1\r\n\r\n"
        );
        // An unusable id is replaced.
        let (_, out) = take("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: a b\r\n\r\n");
        assert!(out.ends_with("X-Request-Id: gen-1\r\n\r\n"), "{out}");
    }

    #[test]
    fn anything_with_a_decision_to_make_goes_to_pingora() {
        let not_taken = [
            "POST /a HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nKeep-Alive: 5\r\n\r\n",
            "GET /api/whatsapp_sessions/1/disconnect HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /api/whatsapp_sessions/1/disconnect?x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\n a: folded\r\n\r\n",
        ];
        for req in not_taken {
            assert_eq!(take(req).0, RequestHead::NotTaken, "{req:?}");
        }
        let mut out = Vec::new();
        let native_off = request(
            b"GET /api/whatsapp_sessions/1/disconnect HTTP/1.1\r\nHost: h\r\n\r\n",
            None,
            false,
            |_| {},
            &mut out,
        );
        assert!(matches!(native_off, RequestHead::Taken(_)));
    }

    #[test]
    fn partial_heads_wait_for_more_up_to_the_limit() {
        assert_eq!(
            take("GET /a HTTP/1.1\r\nHost: h\r\n").0,
            RequestHead::Partial
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(take(&long).0, RequestHead::NotTaken);
    }

    fn answer(resp: &str, is_head: bool, close: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let date = |out: &mut Vec<u8>| out.extend_from_slice(b"D");
        let r = response(resp.as_bytes(), is_head, b"id-7", close, date, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn answer_heads_lose_hop_by_hop_fields_and_get_the_request_id() {
        let (r, out) = answer(
            "HTTP/1.1 200 Fine Thanks\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\n\
             Keep-Alive: timeout=5\r\nX-Hop: 1\r\nx-request-id: up\r\nSet-Cookie: a=1\r\nDate: d\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!(
            r,
            ResponseHead::Ready(Response {
                head_len: 155,
                status: 200,
                framing: Framing::Length(5),
                upstream_reusable: true
            })
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 Fine Thanks\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nDate: d\r\n\
             X-Request-Id: id-7\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |resp: &str, is_head| match answer(resp, is_head, false).0 {
            ResponseHead::Ready(r) => (r.framing, r.upstream_reusable),
            other => panic!("{other:?}"),
        };
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                true,
                (Framing::Empty, true),
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                (Framing::Empty, true),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
                (Framing::Empty, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                (Framing::Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
                (Framing::Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                (Framing::UntilClose, false),
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                false,
                (Framing::UntilClose, false),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                false,
                (Framing::Length(3), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                (Framing::Length(3), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
                false,
                (Framing::Length(3), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n",
                false,
                (Framing::Length(3), true),
            ),
        ];
        for (resp, is_head, want) in cases {
            assert_eq!(framing(resp, is_head), want, "{resp:?}");
        }
        // Transfer-Encoding wins and the Content-Length is not passed on.
        let (_, out) = answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Request-Id: id-7\r\nDate: D\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        // A body that ends with the connection, or a closing hop: the client is told.
        let (_, out) = answer("HTTP/1.0 200 OK\r\n\r\n", false, false);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX-Request-Id: id-7\r\nDate: D\r\nConnection: close\r\n\r\n"
        );
        let (_, out) = answer(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            false,
            true,
        );
        assert!(out.ends_with("Connection: close\r\n\r\n"), "{out}");
    }

    #[test]
    fn answers_with_many_fields_pass() {
        let cookies: String = (0..200)
            .map(|i| format!("Set-Cookie: c{i}=1\r\n"))
            .collect();
        let (r, out) = answer(
            &format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n{cookies}\r\n"),
            false,
            false,
        );
        assert!(matches!(r, ResponseHead::Ready(_)), "{r:?}");
        assert_eq!(out.matches("Set-Cookie").count(), 200);
    }

    #[test]
    fn interim_answers_are_relayed_as_they_are() {
        let (r, out) = answer(
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            false,
            false,
        );
        assert!(matches!(r, ResponseHead::Ready(ref r) if r.is_interim()));
        assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
    }

    #[test]
    fn broken_answers_are_refused() {
        let invalid = [
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ];
        for resp in invalid {
            assert_eq!(
                answer(resp, false, false).0,
                ResponseHead::Invalid,
                "{resp:?}"
            );
        }
        assert_eq!(
            answer("HTTP/1.1 200 OK\r\nA: b", false, false).0,
            ResponseHead::Partial
        );
    }

    #[test]
    fn the_chunked_scanner_finds_the_end_whatever_the_split() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n";
        for split in 0..body.len() {
            let mut s = ChunkedScanner::default();
            let first = s.feed(&body[..split]).unwrap();
            assert_eq!(first, None, "split {split}");
            assert_eq!(
                s.feed(&body[split..]).unwrap(),
                Some(body.len() - split),
                "split {split}"
            );
        }
        let mut s = ChunkedScanner::default();
        assert_eq!(s.feed(b"0\r\n\r\nextra"), Ok(Some(5)));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"\r\n",
            b"0\r\n\n",
            b"12345678123456789\r\n",
        ] {
            assert_eq!(
                ChunkedScanner::default().feed(bad),
                Err(BadChunk),
                "{bad:?}"
            );
        }
    }
}
