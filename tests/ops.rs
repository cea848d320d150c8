//! What an operator relies on: metrics, access logs and request ids, health, the per-route
//! switch, forward auth, and a zero-downtime upgrade under load.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::db::{Backend, TestDb};
use support::orchestrator::FakeOrchestrator;
use support::upstream::EchoUpstream;
use support::{free_port, Gateway, GatewayOptions};
use tokio::net::TcpListener;

struct Setup {
    upstream: EchoUpstream,
    orch: FakeOrchestrator,
    db: TestDb,
    client: reqwest::Client,
}

impl Setup {
    async fn new() -> Setup {
        Setup {
            upstream: EchoUpstream::start().await,
            orch: FakeOrchestrator::start().await,
            db: TestDb::new(Backend::Sqlite, None).await,
            client: reqwest::Client::new(),
        }
    }

    fn options(&self, extra_yaml: &str) -> GatewayOptions {
        GatewayOptions {
            extra_yaml: extra_yaml.to_owned(),
            ..GatewayOptions::new(self.upstream.addr, self.orch.url(), &self.db.url)
        }
    }

    async fn get(&self, url: String) -> (u16, reqwest::header::HeaderMap, String) {
        let r = self
            .client
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.headers().clone(),
            r.text().await.unwrap(),
        )
    }

    async fn post(
        &self,
        url: String,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self.client.post(url).timeout(Duration::from_secs(10));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        (
            r.status().as_u16(),
            r.headers().clone(),
            r.text().await.unwrap(),
        )
    }
}

/// The value of one sample line of the Prometheus text, e.g.
/// `gateway_requests_total{route="proxied",class="2xx"}`; 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Scrapes until `series` reaches `want` (requests are counted in Pingora's logging phase,
/// just after the answer leaves, so a scrape can run a moment ahead), bounded.
async fn scrape_until(s: &Setup, gw: &Gateway, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, m) = s.get(gw.admin_url("/metrics")).await;
        assert_eq!(status, 200);
        if sample(&m, series) == want || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_outcomes_latencies_and_upstream_errors() {
    let s = Setup::new().await;
    let gw = Gateway::start(&s.options("")).await;
    s.db.pool.seed(1, Some("ok-1"), "connected").await;
    assert_eq!(s.get(gw.url("/page")).await.0, 200);
    assert_eq!(
        s.post(gw.url("/api/whatsapp_sessions/1/disconnect"), &[])
            .await
            .0,
        200
    );
    assert_eq!(
        s.post(gw.url("/api/whatsapp_sessions/2/disconnect"), &[])
            .await
            .0,
        404
    );
    assert_eq!(
        s.post(gw.url("/api/whatsapp_sessions/x/disconnect"), &[])
            .await
            .0,
        400
    );
    assert_eq!(
        s.get(gw.url("/api/whatsapp_sessions/1/disconnect")).await.0,
        405
    );

    scrape_until(
        &s,
        &gw,
        r#"gateway_requests_total{class="4xx",route="native"}"#,
        3.0,
    )
    .await;
    let (status, headers, m) = s.get(gw.admin_url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    for (series, want) in [
        (
            r#"gateway_requests_total{class="2xx",route="proxied"}"#,
            1.0,
        ),
        (r#"gateway_requests_total{class="2xx",route="native"}"#, 1.0),
        (r#"gateway_requests_total{class="4xx",route="native"}"#, 3.0),
        (
            r#"gateway_native_outcomes_total{outcome="disconnected"}"#,
            1.0,
        ),
        (r#"gateway_native_outcomes_total{outcome="not_found"}"#, 1.0),
        (
            r#"gateway_native_outcomes_total{outcome="invalid_id"}"#,
            1.0,
        ),
        (
            r#"gateway_native_outcomes_total{outcome="method_not_allowed"}"#,
            1.0,
        ),
        (
            r#"gateway_orchestrator_request_duration_seconds_count{result="disconnected"}"#,
            1.0,
        ),
        (
            r#"gateway_database_duration_seconds_count{operation="read",result="ok"}"#,
            2.0,
        ),
        // The one disconnect took its locks with its first read: nobody else held them.
        (
            r#"gateway_database_duration_seconds_count{operation="lock_and_read",result="ok"}"#,
            0.0,
        ),
        (
            r#"gateway_database_duration_seconds_count{operation="update",result="ok"}"#,
            1.0,
        ),
        ("gateway_owed_writes_pending", 0.0),
    ] {
        assert_eq!(sample(&m, series), want, "{series}\n{m}");
    }
    assert!(m.contains("gateway_owed_writes_pending 0"), "{m}");

    // Upstream errors are counted too.
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut opts = s.options("");
    opts.upstream = closed;
    let gw2 = Gateway::start(&opts).await;
    assert_eq!(s.get(gw2.url("/page")).await.0, 502);
    let m = scrape_until(
        &s,
        &gw2,
        r#"gateway_requests_total{class="5xx",route="proxied"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        sample(&m, r#"gateway_upstream_errors_total{status="502"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"gateway_requests_total{class="5xx",route="proxied"}"#),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_and_request_ids() {
    let s = Setup::new().await;
    let gw = Gateway::start(&s.options("")).await;
    // An incoming id is kept, passed to the upstream and returned.
    let (status, headers, body) = s
        .post(gw.url("/api/echo?x=1"), &[("x-request-id", "req-abc-123")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "req-abc-123");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sent: Vec<&str> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-request-id")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["req-abc-123"]);
    // Without one, one is made; the native route returns it and gives it to the orchestrator.
    s.db.pool.seed(1, Some("ok-1"), "connected").await;
    let (status, headers, _) = s
        .post(gw.url("/api/whatsapp_sessions/1/disconnect"), &[])
        .await;
    assert_eq!(status, 200);
    let made = headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(made.len() > 10, "{made}");
    let call = &s.orch.calls()[0];
    assert!(
        call.headers
            .iter()
            .any(|(k, v)| k == "x-request-id" && *v == made),
        "{:?}",
        call.headers
    );
    // Two generated ids differ.
    let (_, h1, _) = s.get(gw.url("/a")).await;
    let (_, h2, _) = s.get(gw.url("/b")).await;
    assert_ne!(h1["x-request-id"], h2["x-request-id"]);

    // One access-log line per request, with what an operator greps for (written just
    // after the answer goes out, so wait for the fourth, bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.logs().lines().filter(|l| l.contains(" access:")).count() < 4 {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("access") && l.contains("req-abc-123"))
        .unwrap_or_else(|| panic!("no access line:\n{logs}"));
    for part in [
        "method=POST",
        "uri=/api/echo?x=1",
        "status=200",
        "route=\"proxied\"",
        "duration_ms=",
        "bytes=",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(logs
        .lines()
        .any(|l| l.contains("access") && l.contains(&made) && l.contains("route=\"native\"")));
    assert_eq!(
        logs.lines().filter(|l| l.contains(" access:")).count(),
        4,
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_lines_parse() {
    let s = Setup::new().await;
    let gw = Gateway::start(&s.options("gateway:\n  log_format: json\n")).await;
    assert_eq!(s.get(gw.url("/json-me")).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("/json-me") {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = gw.logs();
    let access: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "access")
        .unwrap_or_else(|| panic!("no JSON access line:\n{logs}"));
    assert_eq!(access["uri"], "/json-me");
    assert_eq!(access["status"], 200);
    assert_eq!(access["route"], "proxied");
    assert!(access["request_id"].as_str().is_some_and(|v| !v.is_empty()));
    // access_log: false turns it off
    let quiet = Gateway::start(&s.options("gateway:\n  access_log: false\n")).await;
    assert_eq!(s.get(quiet.url("/x")).await.0, 200);
    assert!(!quiet.logs().contains("access"), "{}", quiet.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let s = Setup::new().await;
    let gw = Gateway::start(&s.options("")).await;
    let (status, _, body) = s.get(gw.admin_url("/healthz")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _, body) = s.get(gw.admin_url("/readyz")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    // Upstream down: not ready, live.
    let mut opts = s.options("");
    opts.upstream = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let no_upstream = Gateway::start(&opts).await;
    let (status, _, body) = s.get(no_upstream.admin_url("/readyz")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            r#"{"status":"not ready","reason":"upstream unreachable"}"#
        )
    );
    assert_eq!(s.get(no_upstream.admin_url("/healthz")).await.0, 200);
    // Database down: not ready.
    let mut opts = s.options("");
    opts.database_url = format!("postgres://gw:pw@127.0.0.1:{}/db", free_port());
    let no_db = Gateway::start(&opts).await;
    let (status, _, body) = s.get(no_db.admin_url("/readyz")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            r#"{"status":"not ready","reason":"database unreachable"}"#
        )
    );
    // The admin listener is not the public one.
    let (_, _, public) = s.get(gw.url("/metrics")).await;
    assert!(!public.contains("gateway_requests_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_switch_sends_the_route_to_nextjs() {
    let s = Setup::new().await;
    s.db.pool.seed(1, Some("ok-1"), "connected").await;
    let gw = Gateway::start(&s.options("gateway:\n  routes:\n    disconnect: proxy\n")).await;
    let (status, headers, body) = s
        .post(gw.url("/api/whatsapp_sessions/1/disconnect"), &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "echo");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["uri"], "/api/whatsapp_sessions/1/disconnect");
    assert_eq!(s.orch.calls().len(), 0);
    assert_eq!(s.db.pool.status_of(1).await, "connected");
}

/// An auth service: 204 when the cookie says `session=good` or the bearer is `good`,
/// else 401 with a JSON body. Records what it was sent.
async fn auth_service(seen: Arc<Mutex<Vec<(String, String)>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap_or("").to_owned())
                            .unwrap_or_default()
                    };
                    let (cookie, authz) = (header("cookie"), header("authorization"));
                    seen.lock().unwrap().push((cookie.clone(), authz.clone()));
                    let ok = cookie.contains("session=good") || authz == "Bearer good";
                    let response = if ok {
                        Response::builder()
                            .status(204)
                            .body(Full::new(Bytes::new()))
                    } else {
                        Response::builder()
                            .status(401)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(
                                br#"{"error":"No autenticado"}"#,
                            )))
                    };
                    async move { Ok::<_, hyper::Error>(response.unwrap()) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_allows_denies_and_fails_closed() {
    let s = Setup::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let auth = auth_service(seen.clone()).await;
    let gw = Gateway::start(&s.options(&format!(
        "gateway:\n  auth:\n    mode: forward\n    url: http://{auth}/api/auth/session\n"
    )))
    .await;
    s.db.pool.seed(1, Some("ok-1"), "connected").await;
    s.db.pool.seed(2, Some("ok-2"), "connected").await;
    let route = |id: i64| gw.url(&format!("/api/whatsapp_sessions/{id}/disconnect"));

    // Deny: the auth answer goes back as it is, nothing else happens.
    let (status, headers, body) = s.post(route(1), &[("cookie", "session=bad")]).await;
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"No autenticado"}"#)
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(s.orch.calls().len(), 0);
    assert_eq!(s.db.pool.status_of(1).await, "connected");
    // Allow, by cookie or by bearer token.
    assert_eq!(
        s.post(route(1), &[("cookie", "a=1; session=good")]).await.0,
        200
    );
    assert_eq!(
        s.post(route(2), &[("authorization", "Bearer good")])
            .await
            .0,
        200
    );
    assert_eq!(s.orch.calls().len(), 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[1], ("a=1; session=good".to_owned(), String::new()));
    assert_eq!(seen[2], (String::new(), "Bearer good".to_owned()));
    // Other paths are not the gateway's to guard.
    assert_eq!(s.get(gw.url("/page")).await.0, 200);
    assert_eq!(seen.len(), 3);

    // Auth service down: 503, never a pass.
    let down = Gateway::start(&s.options(&format!(
        "gateway:\n  auth:\n    mode: forward\n    url: http://127.0.0.1:{}/session\n",
        free_port()
    )))
    .await;
    s.db.pool.seed(3, Some("ok-3"), "connected").await;
    let (status, _, body) = s
        .post(
            down.url("/api/whatsapp_sessions/3/disconnect"),
            &[("cookie", "session=good")],
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            r#"{"success":false,"error":"Servicio de autenticación no disponible"}"#
        )
    );
    assert_eq!(s.db.pool.status_of(3).await, "connected");
    assert_eq!(s.orch.calls().len(), 2);
}

/// Pingora's upgrade: a new process started with `-u` takes the listening sockets when the
/// old one gets SIGQUIT. Under a steady load no request fails; the new configuration (here:
/// the route switched to `proxy`, the kill switch) is in force afterwards.
///
/// Two kinds of clients: one opening a connection per request (it must see zero failures:
/// the listening socket is handed over, never closed), and keep-alive clients. When the old
/// process stops, Pingora closes its idle keep-alive connections (as nginx does); a request
/// written on such a connection at that very instant was never read, and HTTP/1.1 lets a
/// client retry it (RFC 9112 section 9.3.1; browsers do). Those clients retry such a request
/// once, and must then see zero failures as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_upgrade_under_load() {
    let s = Setup::new().await;
    // A short grace period keeps the test short; the drain works the same.
    let mut old = Gateway::start(&s.options("grace_period_seconds: 2\n")).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let retried = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (stop, ok, failed, retried) =
            (stop.clone(), ok.clone(), failed.clone(), retried.clone());
        let url = old.url(&format!("/load/{worker}"));
        let keep_alive = worker % 2 == 0;
        let client = if keep_alive {
            reqwest::Client::new()
        } else {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        };
        load.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let send = || client.get(&url).timeout(Duration::from_secs(5)).send();
                let mut answer = send().await;
                if keep_alive && answer.as_ref().is_err_and(|e| e.is_request()) {
                    retried.fetch_add(1, Ordering::SeqCst);
                    answer = send().await;
                }
                match answer {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = old.start_upgrade(&s.options("gateway:\n  routes:\n    disconnect: proxy\n"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let exited = old.wait_exit(Duration::from_secs(20)).await;
    assert!(
        exited.is_some(),
        "the old process drains and exits:\n{}",
        old.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    load.join_all().await;
    let ok = ok.load(Ordering::SeqCst);
    let failed = failed.lock().unwrap().clone();
    println!(
        "upgrade under load: {ok} ok, {} keep-alive retries",
        retried.load(Ordering::SeqCst)
    );
    assert!(ok > 100, "the load ran: {ok}");
    assert!(
        failed.is_empty(),
        "{ok} ok, failed: {failed:?}\nold:\n{}\nnew:\n{}",
        old.logs(),
        new.logs()
    );
    assert!(new.child_alive(), "{}", new.logs());
    // The new configuration is live: the native route now goes to Next.js.
    let (status, headers, _) = s
        .post(new.url("/api/whatsapp_sessions/1/disconnect"), &[])
        .await;
    assert_eq!(
        (status, headers["x-upstream"].to_str().unwrap()),
        (200, "echo")
    );
}
