//! The pass-through fast path (src/fastpath.rs) against a scripted upstream that answers
//! byte for byte what each path asks for: keep-alive connections that move from the fast
//! path to Pingora's proxy, every body framing, pooled connections the upstream closed,
//! broken answers, and the same heads on both paths (`GATEWAY_FAST_PATH=false`).

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::db::{Backend, TestDb};
use support::{find, Gateway, GatewayOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use whatsapp_gateway::h1::ChunkedScanner;

const BIG: usize = 200_000;
const CHUNKED_BODY: &str = "5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";

/// What the scripted upstream saw.
#[derive(Default)]
struct Seen {
    connections: usize,
    /// Request heads, then `body:<bytes>` for a request with a body.
    requests: Vec<String>,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

/// The answer for a path; `true` = close the connection after it.
fn script(path: &str, body: &[u8]) -> (Vec<u8>, bool) {
    let text = |s: &str| (s.as_bytes().to_vec(), false);
    match path {
        "/len" => text(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\
             Keep-Alive: timeout=5\r\nConnection: keep-alive\r\n\r\nhello",
        ),
        "/chunked" => text(&format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKED_BODY}"
        )),
        "/early" => text(
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        "/nocontent" => text("HTTP/1.1 204 No Content\r\n\r\n"),
        "/eof" => ("HTTP/1.1 200 OK\r\n\r\nuntil close".into(), true),
        "/garbage" => ("NOT HTTP AT ALL\r\n\r\n".into(), true),
        "/cut" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".into(),
            true,
        ),
        "/close-after" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into(),
            true,
        ),
        "/big" => {
            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
            out.extend(big_body());
            (out, false)
        }
        _ => text(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}:{}",
            path.len() + 1 + body.len().to_string().len(),
            body.len()
        )),
    }
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            record.lock().unwrap().connections += 1;
            tokio::spawn(serve(conn, record.clone()));
        }
    });
    Upstream { addr, seen, task }
}

async fn serve(mut conn: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    // After /drop-next: the next request on this connection is dropped unanswered, the way
    // an upstream's keep-alive timeout races a request sent on an idle connection.
    let mut drop_next = false;
    let mut chunk = [0u8; 65536];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if drop_next {
            return;
        }
        let body = buf[end + 4..end + 4 + length].to_vec();
        buf.drain(..end + 4 + length);
        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let path = target.split('?').next().unwrap_or("/").to_owned();
        {
            let mut seen = seen.lock().unwrap();
            seen.requests.push(head);
            if !body.is_empty() {
                seen.requests
                    .push(format!("body:{}", String::from_utf8_lossy(&body)));
            }
        }
        drop_next = path == "/drop-next";
        if path == "/split" {
            // The head, then the body 50 ms later, in two writes.
            let parts = ["HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "split"];
            for (n, part) in parts.iter().enumerate() {
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if conn.write_all(part.as_bytes()).await.is_err() {
                    return;
                }
            }
            continue;
        }
        let (answer, close) = script(&path, &body);
        if conn.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

/// One answer read off a client connection: head text and body bytes as sent (framing
/// included for chunked ones).
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

struct Client {
    conn: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            conn: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.conn.write_all(bytes.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), self.conn.read(&mut chunk))
            .await
            .expect("the gateway answers within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one answer; `is_head` for an answer to HEAD.
    async fn answer(&mut self, is_head: bool) -> Answer {
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            assert!(self.fill().await, "connection closed before a whole head");
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 4);
        let mut answer = Answer {
            head,
            body: Vec::new(),
        };
        let status: u16 = answer.status().parse().unwrap();
        if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
            return answer;
        }
        if answer.header("transfer-encoding").is_some() {
            let mut scanner = ChunkedScanner::default();
            let mut taken = 0;
            loop {
                if let Some(n) = scanner.feed(&self.buf[taken..]).unwrap() {
                    taken += n;
                    break;
                }
                taken = self.buf.len();
                assert!(self.fill().await, "connection closed inside a chunked body");
            }
            answer.body = self.buf.drain(..taken).collect();
        } else if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buf.len() < length {
                assert!(self.fill().await, "connection closed inside a body");
            }
            answer.body = self.buf.drain(..length).collect();
        } else {
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }

    /// Reads until the gateway closes the connection; what came.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}

async fn gateway(upstream: SocketAddr, db: &TestDb, fast_path: bool) -> Gateway {
    let mut opts = GatewayOptions::new(upstream, "http://127.0.0.1:9".into(), &db.url);
    opts.env
        .push(("GATEWAY_FAST_PATH".into(), fast_path.to_string()));
    opts.extra_yaml = "gateway:\n  upstream_timeouts:\n    read_ms: 1000\n".into();
    Gateway::start(&opts).await
}

/// A scripted upstream, a database and a gateway with the fast path on.
async fn fast_gateway() -> (Upstream, TestDb, Gateway) {
    let up = upstream().await;
    let db = TestDb::new(Backend::Sqlite, None).await;
    let gw = gateway(up.addr, &db, true).await;
    (up, db, gw)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_moves_from_the_fast_path_to_pingora() {
    let (up, _db, gw) = fast_gateway().await;
    let mut client = Client::connect(gw.addr).await;

    client.send(&get("/len")).await;
    let first = client.answer(false).await;
    assert_eq!((first.status(), &first.body[..]), ("200", &b"hello"[..]));
    // Two pipelined in one write, then one with a body (Pingora's from here on).
    client
        .send(&format!("{}{}", get("/a?x=1"), get("/b")))
        .await;
    assert_eq!(client.answer(false).await.body, b"/a:0");
    assert_eq!(client.answer(false).await.body, b"/b:0");
    client
        .send("POST /post HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    assert_eq!(client.answer(false).await.body, b"/post:3");
    client.send(&get("/after")).await;
    let after = client.answer(false).await;
    assert_eq!(after.body, b"/after:0");
    assert!(after.header("x-request-id").is_some(), "{}", after.head);

    let seen = up.seen.lock().unwrap();
    let paths: Vec<&str> = seen
        .requests
        .iter()
        .map(|r| r.split(' ').nth(1).unwrap_or(r))
        .collect();
    assert_eq!(
        paths,
        ["/len", "/a?x=1", "/b", "/post", "body:abc", "/after"]
    );
    for head in seen.requests.iter().filter(|r| !r.starts_with("body:")) {
        let lower = head.to_ascii_lowercase();
        for field in [
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
            "x-forwarded-host: app.test",
            "x-request-id: ",
        ] {
            assert!(lower.contains(field), "{field} missing in {head}");
        }
    }
    // The fast path reused its upstream connection; Pingora's proxy has its own.
    assert!(
        seen.connections <= 2,
        "{} upstream connections",
        seen.connections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_framing_is_relayed_as_the_upstream_sent_it() {
    let (_up, _db, gw) = fast_gateway().await;
    let mut client = Client::connect(gw.addr).await;

    client.send(&get("/chunked")).await;
    let chunked = client.answer(false).await;
    assert_eq!(
        chunked.body,
        CHUNKED_BODY.as_bytes(),
        "chunk extensions and trailers kept"
    );
    assert!(
        chunked.header("date").is_some(),
        "a Date is added when missing"
    );

    client.send(&get("/len")).await;
    let len = client.answer(false).await;
    assert_eq!(
        len.header("date"),
        Some("Thu, 01 Jan 2026 00:00:00 GMT"),
        "upstream Date kept"
    );
    assert_eq!(len.header("keep-alive"), None, "hop-by-hop field removed");
    assert_eq!(len.header("connection"), Some("keep-alive"));

    client
        .send("HEAD /len HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let head = client.answer(true).await;
    assert_eq!(head.header("content-length"), Some("5"));

    client.send(&get("/early")).await;
    let early = client.answer(false).await;
    assert_eq!(early.status(), "103");
    assert_eq!(early.header("link"), Some("</s.css>; rel=preload"));
    assert_eq!(client.answer(false).await.body, b"ok");

    client.send(&get("/nocontent")).await;
    assert_eq!(client.answer(false).await.status(), "204");

    // A small answer whose body comes 50 ms after its head reaches the client in one piece:
    // the first read returns all of it.
    assert!(client.buf.is_empty());
    client.send(&get("/split")).await;
    client.fill().await;
    let whole = String::from_utf8_lossy(&client.buf).to_string();
    assert!(whole.ends_with("\r\n\r\nsplit"), "first read: {whole:?}");
    client.buf.clear();

    client.send(&get("/big")).await;
    assert_eq!(client.answer(false).await.body, big_body());

    // A body that ends when the upstream closes: the client is told and the connection ends.
    client.send(&get("/eof")).await;
    let eof = client.answer(false).await;
    assert_eq!(eof.header("connection"), Some("close"));
    assert_eq!(eof.body, b"until close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_closed_after_an_answer_are_replaced() {
    let (up, _db, gw) = fast_gateway().await;
    let mut client = Client::connect(gw.addr).await;
    for i in 0..6 {
        if i % 2 == 1 {
            // Long enough for the close to have arrived before the next request.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        client.send(&get("/close-after")).await;
        let answer = client.answer(false).await;
        assert_eq!(
            (answer.status(), &answer.body[..]),
            ("200", &b"ok"[..]),
            "request {i}"
        );
    }
    assert_eq!(up.seen.lock().unwrap().connections, 6);

    // Closed just as the next request goes out: GET is sent again on a new connection.
    client.send(&get("/drop-next")).await;
    assert_eq!(client.answer(false).await.status(), "200");
    client.send(&get("/len")).await;
    assert_eq!(client.answer(false).await.body, b"hello");
    assert_eq!(up.seen.lock().unwrap().connections, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_are_502_or_cut_off() {
    let (_up, db, gw) = fast_gateway().await;

    let mut client = Client::connect(gw.addr).await;
    client.send(&get("/garbage")).await;
    let garbage = client.answer(false).await;
    assert_eq!(garbage.status(), "502");
    assert_eq!(
        garbage.body,
        b"502 Bad Gateway: the upstream app did not answer\n"
    );
    assert!(garbage.header("x-request-id").is_some());
    assert!(client.rest().await.is_empty(), "closed after the 502");

    // The head went out, then the body stopped short: the client sees the connection end.
    let mut client = Client::connect(gw.addr).await;
    client.send(&get("/cut")).await;
    let cut = String::from_utf8_lossy(&client.rest().await).to_string();
    assert!(cut.starts_with("HTTP/1.1 200 OK\r\n"), "{cut}");
    assert!(cut.ends_with("\r\n\r\nshort"), "{cut}");

    // Nobody listening upstream.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = closed.local_addr().unwrap();
    drop(closed);
    let gw2 = gateway(nobody, &db, true).await;
    let mut client = Client::connect(gw2.addr).await;
    client.send(&get("/len")).await;
    assert_eq!(client.answer(false).await.status(), "502");
}

/// The fields of a head as sorted `name: value` lines, names lower-cased, minus `skip`.
fn fields(head: &str, skip: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            let n = n.trim().to_ascii_lowercase();
            (!skip.contains(&n.as_str())).then(|| format!("{n}: {}", v.trim()))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_send_the_same_heads() {
    let db = TestDb::new(Backend::Sqlite, None).await;
    let request = "GET /len?q=1 HTTP/1.1\r\nHost: app.test:8080\r\nUser-Agent: t/1\r\n\
                   X-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\n\
                   X-Forwarded-Host: spoofed\r\nX-Forwarded-Proto: https\r\n\
                   X-Request-Id: req-42\r\nAccept: */*\r\nCookie: a=1\r\nConnection: keep-alive\r\n\r\n";
    let mut seen = Vec::new();
    for fast_path in [true, false] {
        let up = upstream().await;
        let gw = gateway(up.addr, &db, fast_path).await;
        let mut client = Client::connect(gw.addr).await;
        client.send(request).await;
        let answer = client.answer(false).await;
        let upstream_head = up.seen.lock().unwrap().requests[0].clone();
        // Pingora writes its own Date; the fast path keeps the upstream's.
        seen.push((
            upstream_head.lines().next().unwrap_or("").to_owned(),
            fields(&upstream_head, &[]),
            answer.head.lines().next().unwrap_or("").to_owned(),
            fields(&answer.head, &["date"]),
            answer.body,
        ));
    }
    assert_eq!(
        seen[0], seen[1],
        "fast path (left) vs Pingora's path (right)"
    );
    assert!(seen[0]
        .1
        .contains(&"x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_request_heads_are_served_by_either_path() {
    let (up, _db, gw) = fast_gateway().await;
    let mut client = Client::connect(gw.addr).await;
    // 10 KB of cookies: still the fast path's; 40 KB: past its 16 KiB limit, Pingora's.
    for size in [10_000, 40_000] {
        let cookie = "c".repeat(size);
        client
            .send(&format!(
                "GET /long HTTP/1.1\r\nHost: app.test\r\nCookie: {cookie}\r\n\r\n"
            ))
            .await;
        let answer = client.answer(false).await;
        assert_eq!(
            (answer.status(), &answer.body[..]),
            ("200", &b"/long:0"[..]),
            "{size}"
        );
    }
    let seen = up.seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 2);
    assert!(seen.requests[1].contains(&"c".repeat(40_000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_the_next_answer_closes_the_connection() {
    let up = upstream().await;
    let db = TestDb::new(Backend::Sqlite, None).await;
    let mut opts = GatewayOptions::new(up.addr, "http://127.0.0.1:9".into(), &db.url);
    opts.extra_yaml = "grace_period_seconds: 3\ngraceful_shutdown_timeout_seconds: 1\n".into();
    let mut gw = Gateway::start(&opts).await;
    let mut client = Client::connect(gw.addr).await;
    client.send(&get("/len")).await;
    assert_eq!(
        client.answer(false).await.header("connection"),
        Some("keep-alive")
    );

    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.send(&get("/len")).await;
    let last = client.answer(false).await;
    assert_eq!(
        (last.status(), last.header("connection")),
        ("200", Some("close"))
    );
    assert!(client.rest().await.is_empty(), "closed after the answer");
    assert!(
        gw.wait_exit(Duration::from_secs(15)).await.is_some(),
        "the gateway exits"
    );
}
