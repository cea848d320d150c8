//! Everything that is not the native route reaches the upstream unchanged, and its answer
//! comes back unchanged, with X-Forwarded-* added.

mod support;

use std::time::Duration;
use support::db::{Backend, TestDb};
use support::orchestrator::FakeOrchestrator;
use support::upstream::EchoUpstream;
use support::{free_port, Gateway, GatewayOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(
    upstream: std::net::SocketAddr,
    orchestrator: &FakeOrchestrator,
    db: &TestDb,
) -> Gateway {
    Gateway::start(&GatewayOptions::new(upstream, orchestrator.url(), &db.url)).await
}

/// Sends raw bytes, reads until the server closes (the request says `Connection: close`).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .expect("answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).to_string()
}

fn split(response: &str) -> (&str, serde_json::Value) {
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    (head, serde_json::from_str(body).expect("echo JSON"))
}

fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_upstream_unchanged_with_forwarding_headers() {
    let (upstream, orchestrator, db) = (
        EchoUpstream::start().await,
        FakeOrchestrator::start().await,
        TestDb::new(Backend::Sqlite, None).await,
    );
    let gw = start(upstream.addr, &orchestrator, &db).await;
    let body = "{\"texto\":\"¡hola!\"}";
    let request = format!(
        "PATCH /api/whatsapp_sessions/1/messages?q=%20a&&b=c+d;e&x=%2F HTTP/1.1\r\n\
         Host: example.test:8080\r\n\
         X-Custom: uno\r\n\
         X-Custom: dos\r\n\
         X-Odd: a  b\t\"c\"\r\n\
         Cookie: sid=abc; theme=dark\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Echo-Status: 201\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let response = exchange(gw.addr, request.as_bytes()).await;
    let (head, echo) = split(&response);

    assert_eq!(echo["method"], "PATCH");
    assert_eq!(
        echo["uri"],
        "/api/whatsapp_sessions/1/messages?q=%20a&&b=c+d;e&x=%2F"
    );
    assert_eq!(echo["body"], body);
    assert_eq!(header(&echo, "host"), ["example.test:8080"]);
    assert_eq!(header(&echo, "x-custom"), ["uno", "dos"]);
    assert_eq!(header(&echo, "x-odd"), ["a  b\t\"c\""]);
    assert_eq!(header(&echo, "cookie"), ["sid=abc; theme=dark"]);
    assert_eq!(header(&echo, "content-type"), ["application/json"]);
    assert_eq!(header(&echo, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(header(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&echo, "x-forwarded-host"), ["example.test:8080"]);

    // The response comes back as the upstream sent it.
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let head_lower = head.to_ascii_lowercase();
    assert!(
        head_lower.contains("\r\nset-cookie: a=1; path=/\r\n"),
        "{head}"
    );
    assert!(
        head_lower.contains("\r\nset-cookie: b=2; path=/; httponly\r\n"),
        "{head}"
    );
    assert!(head_lower.contains("\r\nx-upstream: echo\r\n"), "{head}");
    assert_eq!(orchestrator.calls().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_when_the_client_sent_none() {
    let (upstream, orchestrator, db) = (
        EchoUpstream::start().await,
        FakeOrchestrator::start().await,
        TestDb::new(Backend::Sqlite, None).await,
    );
    let gw = start(upstream.addr, &orchestrator, &db).await;
    let response = exchange(
        gw.addr,
        b"GET /api/whatsapp_sessions HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (_, echo) = split(&response);
    assert_eq!(echo["method"], "GET");
    assert_eq!(header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&echo, "x-forwarded-host"), ["app.local"]);
    assert_eq!(header(&echo, "x-forwarded-proto"), ["http"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_the_gateway_stays_up() {
    let (orchestrator, db) = (
        FakeOrchestrator::start().await,
        TestDb::new(Backend::Sqlite, None).await,
    );
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = start(closed, &orchestrator, &db).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client.get(gw.url("/dashboard")).send().await.unwrap();
        assert_eq!(r.status(), 502);
    }
    // The native route does not need the upstream.
    let r = client
        .post(gw.url("/api/whatsapp_sessions/1/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A tiny upstream that answers every request with its own name; dropping it closes its
/// listener and every connection it holds.
struct NamedUpstream {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl NamedUpstream {
    /// Listens on `addr`: port 0 for a new upstream, a known port to bring one back. That
    /// port may be held for a moment by something else on the machine (an outgoing
    /// connection's ephemeral port), so binding it is retried, bounded.
    async fn start(addr: std::net::SocketAddr, name: &'static str) -> NamedUpstream {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut have = Vec::new();
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        have.extend_from_slice(&buf[..n]);
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                                name.len()
                            );
                            if stream.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        NamedUpstream { addr, task }
    }
}

impl Drop for NamedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_upstreams_round_robin_fail_over_and_come_back() {
    let (orchestrator, db) = (
        FakeOrchestrator::start().await,
        TestDb::new(Backend::Sqlite, None).await,
    );
    let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let a = NamedUpstream::start(any_port, "A").await;
    let b = NamedUpstream::start(any_port, "B").await;
    let (a_addr, b_addr) = (a.addr, b.addr);
    let gw = Gateway::start(&GatewayOptions {
        extra_yaml: "gateway:\n  health_check:\n    interval_ms: 200\n".into(),
        env: vec![("GATEWAY_UPSTREAM".into(), format!("{a_addr},{b_addr}"))],
        ..GatewayOptions::new(a_addr, orchestrator.url(), &db.url)
    })
    .await;
    let client = reqwest::Client::new();
    let served_by = |n: usize| {
        let client = client.clone();
        let url = gw.url("/page");
        async move {
            let mut names = Vec::new();
            for _ in 0..n {
                let r = client
                    .get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                names.push(match r {
                    Ok(r) if r.status() == 200 => r.text().await.unwrap(),
                    Ok(r) => format!("status {}", r.status()),
                    Err(e) => format!("error {e}"),
                });
            }
            names
        }
    };
    // Both serve.
    let names = served_by(20).await;
    assert!(names.iter().all(|n| n == "A" || n == "B"), "{names:?}");
    assert!(
        names.contains(&"A".into()) && names.contains(&"B".into()),
        "{names:?}"
    );
    // B dies: no request fails, A serves them all (before and after the health check notices).
    drop(b);
    let names = served_by(40).await;
    assert!(names.iter().all(|n| n == "A"), "{names:?}");
    // ... and once the health check has marked it down.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let names = served_by(20).await;
    assert!(names.iter().all(|n| n == "A"), "{names:?}");
    // B comes back on its port: the health check lets it in again (bounded wait).
    let _b = NamedUpstream::start(b_addr, "B").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names = served_by(4).await;
        assert!(names.iter().all(|n| n == "A" || n == "B"), "{names:?}");
        if names.contains(&"B".into()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
