//! CONTRACT.md, case by case, end to end: the gateway binary on SQLite, the fake
//! orchestrator and the echo upstream, all real processes/servers on 127.0.0.1.

mod support;

use std::time::Duration;
use support::bodies::*;
use support::db::{Backend, Pool, TestDb};
use support::orchestrator::{ok_body, FakeOrchestrator};
use support::upstream::EchoUpstream;
use support::{free_port, Gateway, GatewayOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT_MS: u64 = 700;

struct Harness {
    gateway: Gateway,
    orchestrator: FakeOrchestrator,
    upstream: EchoUpstream,
    db: TestDb,
    pool: Pool,
    client: reqwest::Client,
}

impl Harness {
    async fn start(backend: Backend) -> Harness {
        Self::start_with(backend, |_| {}).await
    }

    async fn start_with(backend: Backend, tweak: impl FnOnce(&mut GatewayOptions)) -> Harness {
        let orchestrator = FakeOrchestrator::start().await;
        let upstream = EchoUpstream::start().await;
        let db = TestDb::new(backend, None).await;
        let mut opts = GatewayOptions {
            orchestrator_timeout_ms: TIMEOUT_MS,
            ..GatewayOptions::new(upstream.addr, orchestrator.url(), &db.url)
        };
        tweak(&mut opts);
        let gateway = Gateway::start(&opts).await;
        let pool = db.pool.clone();
        Harness {
            gateway,
            orchestrator,
            upstream,
            db,
            pool,
            client: reqwest::Client::new(),
        }
    }

    async fn seed(&self, id: i64, session_id: Option<&str>, status: &str) {
        self.pool.seed(id, session_id, status).await;
    }

    async fn request(&self, method: &str, path: &str) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = self
            .client
            .request(method, self.gateway.url(path))
            .send()
            .await
            .expect("gateway answers");
        Answer::from(response).await
    }

    async fn post(&self, path: &str) -> Answer {
        self.request("POST", path).await
    }

    async fn disconnect(&self, id: &str) -> Answer {
        self.post(&format!("/api/whatsapp_sessions/{id}/disconnect"))
            .await
    }

    async fn status_of(&self, id: i64) -> String {
        self.pool.status_of(id).await
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    async fn from(r: reqwest::Response) -> Answer {
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Status, JSON content type, and the exact body.
    #[track_caller]
    fn assert(&self, status: u16, body: &str) {
        assert_eq!(self.status, status, "status; body was {}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.body, body);
        assert_eq!(
            self.header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }
}

/// Every case that touches the database runs on both stores.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(super::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(super::Backend::Postgres).await
            })*
        }
    };
}

on_both_stores!(
    query_string_is_ignored_and_id_is_percent_decoded,
    invalid_ids_are_400,
    unknown_id_is_404_including_64_bit_ids,
    a_session_that_is_not_connected_is_400_with_its_status,
    missing_session_id_is_400,
    orchestrator_refusing_connections_is_502,
    orchestrator_host_that_does_not_resolve_is_502,
    orchestrator_timeout_is_502_naming_the_configured_timeout,
    orchestrator_resetting_the_connection_is_502,
    orchestrator_answers_that_are_not_a_json_object_are_502,
    orchestrator_refusals_are_500_with_its_message,
    orchestrator_request_shape_and_path_prefix,
    success_answers_with_the_updated_row,
    null_columns_are_json_null,
    failed_update_after_orchestrator_success_is_200_with_warning,
    failing_database_is_503_and_the_orchestrator_is_not_called,
    concurrent_disconnects_of_one_session_call_the_orchestrator_once,
);

// ---- Which requests are native ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_method_is_405_with_allow_post() {
    let h = Harness::start(Backend::Sqlite).await;
    h.seed(1, Some("ok-1"), "connected").await;
    for method in [
        "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOOBAR",
    ] {
        let a = h
            .request(method, "/api/whatsapp_sessions/1/disconnect")
            .await;
        a.assert(405, METHOD_NOT_ALLOWED);
        assert_eq!(a.header("allow"), Some("POST"), "{method}");
    }
    let head = h
        .request("HEAD", "/api/whatsapp_sessions/1/disconnect")
        .await;
    assert_eq!(head.status, 405);
    assert_eq!(head.header("allow"), Some("POST"));
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.body, "", "HEAD gets no body");
    // 405 is answered before any check: even an invalid id.
    h.request("GET", "/api/whatsapp_sessions/abc/disconnect")
        .await
        .assert(405, METHOD_NOT_ALLOWED);
    assert_eq!(h.orchestrator.calls().len(), 0);
    assert_eq!(h.upstream.requests(), 0, "nothing native reaches Next.js");
    assert_eq!(h.status_of(1).await, "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_miss_paths_go_to_the_upstream() {
    let h = Harness::start(Backend::Sqlite).await;
    h.seed(1, Some("ok-1"), "connected").await;
    let paths = [
        "/api/whatsapp_sessions/1/disconnect/",
        "/api/whatsapp_sessions/1/2/disconnect",
        "/api/whatsapp_sessions//disconnect",
        "/API/whatsapp_sessions/1/disconnect",
        "/api/whatsapp_sessions/1/Disconnect",
        "/api/whatsapp_sessions/1",
        "/api/whatsapp_sessions/1/connect",
    ];
    for (n, path) in paths.iter().enumerate() {
        let a = h.post(path).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("x-upstream"), Some("echo"), "{path} was proxied");
        let echo: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(echo["uri"], *path);
        assert_eq!(h.upstream.requests(), n + 1);
    }
    assert_eq!(h.orchestrator.calls().len(), 0);
    assert_eq!(h.status_of(1).await, "connected");
}

async fn query_string_is_ignored_and_id_is_percent_decoded(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(1, Some("ok-1"), "connected").await;
    h.seed(2, Some("ok-2"), "connected").await;
    let a = h
        .post("/api/whatsapp_sessions/1/disconnect?id=2&force=true")
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(h.status_of(1).await, "disconnected");
    assert_eq!(h.status_of(2).await, "connected");
    let a = h.disconnect("%32").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(h.status_of(2).await, "disconnected");
    assert_eq!(h.upstream.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_is_drained_and_the_connection_kept() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut conn = TcpStream::connect(h.gateway.addr).await.unwrap();
    let body = "x".repeat(100_000);
    let request = format!(
        "POST /api/whatsapp_sessions/77/disconnect HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let first = read_response(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{first}"
    );
    assert!(first.ends_with(NOT_FOUND));
    // The same connection serves the next request.
    conn.write_all(b"POST /api/whatsapp_sessions/abc/disconnect HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut conn).await;
    assert!(second.starts_with("HTTP/1.1 400"), "{second}");
    assert!(second.ends_with(INVALID_ID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_post_body_is_drained_too() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut conn = TcpStream::connect(h.gateway.addr).await.unwrap();
    conn.write_all(b"POST /api/whatsapp_sessions/5/disconnect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    conn.write_all(b"GET /api/whatsapp_sessions/5/disconnect HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut conn).await;
    assert!(second.starts_with("HTTP/1.1 405"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_over_1_mib_is_answered_then_the_connection_closed() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut conn = TcpStream::connect(h.gateway.addr).await.unwrap();
    let len = 3 * 1024 * 1024;
    let head = format!(
        "POST /api/whatsapp_sessions/77/disconnect HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // Send the body in the background; the gateway may stop reading part way.
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'y'; 64 * 1024];
        for _ in 0..(len / chunk.len()) {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response).to_string();
    assert!(
        read.is_ok(),
        "the gateway closes the connection after answering"
    );
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(response.ends_with(NOT_FOUND), "{response}");
    writer.abort();
}

// ---- 1. id ----

async fn invalid_ids_are_400(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(12, Some("ok-12"), "connected").await;
    h.seed(1, Some("ok-1"), "connected").await;
    for id in [
        "abc",
        "0",
        "-1",
        "1.5",
        "1e3",
        "12abc",
        "%201",
        "%20",
        "99999999999999999999",
        "9223372036854775808",
        "+1",
        "0x1",
        "%31%00",
    ] {
        h.disconnect(id).await.assert(400, INVALID_ID);
    }
    assert_eq!(h.orchestrator.calls().len(), 0);
    assert_eq!(h.status_of(12).await, "connected", "12abc is not 12");
    assert_eq!(h.status_of(1).await, "connected");
}

// ---- 2. row ----

async fn unknown_id_is_404_including_64_bit_ids(backend: Backend) {
    let h = Harness::start(backend).await;
    for id in ["1", "2147483648", "9223372036854775807"] {
        h.disconnect(id).await.assert(404, NOT_FOUND);
    }
    assert_eq!(h.orchestrator.calls().len(), 0);
}

// ---- 3. status ----

async fn a_session_that_is_not_connected_is_400_with_its_status(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(1, Some("ok-1"), "disconnected").await;
    h.seed(2, Some("ok-2"), "qr_pending").await;
    h.seed(3, Some("ok-3"), "Connected").await;
    h.disconnect("1")
        .await
        .assert(400, &not_connected("disconnected"));
    h.disconnect("2")
        .await
        .assert(400, &not_connected("qr_pending"));
    h.disconnect("3")
        .await
        .assert(400, &not_connected("Connected"));
    assert_eq!(h.orchestrator.calls().len(), 0);
    assert_eq!(h.status_of(2).await, "qr_pending");
}

// ---- 4. session_id ----

async fn missing_session_id_is_400(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(1, None, "connected").await;
    h.seed(2, Some(""), "connected").await;
    h.seed(3, Some(" \t "), "connected").await;
    for id in ["1", "2", "3"] {
        h.disconnect(id).await.assert(400, NO_SESSION_ID);
    }
    assert_eq!(h.orchestrator.calls().len(), 0);
    assert_eq!(h.status_of(1).await, "connected");
}

// ---- 5. orchestrator ----

/// An orchestrator that cannot be reached at `url`: 502 "Error de conexión", row untouched.
async fn unreachable_orchestrator_is_502(backend: Backend, url: String) {
    let h = Harness::start_with(backend, |o| o.orchestrator_url = url).await;
    h.seed(1, Some("ok-1"), "connected").await;
    h.disconnect("1")
        .await
        .assert(502, &bad_gateway("Error de conexión al orquestador"));
    assert_eq!(h.status_of(1).await, "connected");
}

async fn orchestrator_refusing_connections_is_502(backend: Backend) {
    let closed = free_port();
    unreachable_orchestrator_is_502(backend, format!("http://127.0.0.1:{closed}")).await;
}

async fn orchestrator_host_that_does_not_resolve_is_502(backend: Backend) {
    // `.invalid` never resolves (RFC 6761): a DNS failure, answered as a connection error.
    unreachable_orchestrator_is_502(backend, "http://orchestrator.invalid:3000".into()).await;
}

async fn orchestrator_timeout_is_502_naming_the_configured_timeout(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(1, Some("hang-1"), "connected").await;
    h.seed(2, Some("trickle-2"), "connected").await;
    let expected = bad_gateway(&format!(
        "Tiempo de espera agotado al contactar al orquestador ({TIMEOUT_MS} ms)"
    ));
    h.disconnect("1").await.assert(502, &expected);
    h.disconnect("2").await.assert(502, &expected);
    assert_eq!(h.orchestrator.calls_for("hang-1"), 1);
    assert_eq!(h.status_of(1).await, "connected");
    assert_eq!(h.status_of(2).await, "connected");
}

async fn orchestrator_resetting_the_connection_is_502(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(1, Some("reset-1"), "connected").await;
    h.seed(2, Some("midreset-2"), "connected").await;
    for id in ["1", "2"] {
        h.disconnect(id)
            .await
            .assert(502, &bad_gateway("Error de conexión al orquestador"));
    }
    assert_eq!(h.status_of(1).await, "connected");
    assert_eq!(h.status_of(2).await, "connected");
}

async fn orchestrator_answers_that_are_not_a_json_object_are_502(backend: Backend) {
    let h = Harness::start(backend).await;
    let cases = [
        "text200-1",
        "html500-2",
        "empty503-3",
        "array200-4",
        "big200-5",
    ];
    for (n, sid) in cases.iter().enumerate() {
        h.seed(n as i64 + 1, Some(sid), "connected").await;
    }
    for (n, sid) in cases.iter().enumerate() {
        h.disconnect(&(n + 1).to_string())
            .await
            .assert(502, &bad_gateway("Respuesta inválida del orquestador"));
        assert_eq!(h.orchestrator.calls_for(sid), 1, "{sid}");
        assert_eq!(h.status_of(n as i64 + 1).await, "connected");
    }
}

async fn orchestrator_refusals_are_500_with_its_message(backend: Backend) {
    let h = Harness::start(backend).await;
    let cases = [
        ("json500err-1", "Sesión inexistente en el orquestador"),
        ("json500msg-2", "Solo mensaje"),
        ("json500none-3", "Error desconocido del orquestador"),
        ("false200-4", "No se pudo desconectar"),
        ("nosuccess200-5", "hecho"),
        ("json404-6", "Session not found"),
    ];
    for (n, (sid, _)) in cases.iter().enumerate() {
        h.seed(n as i64 + 1, Some(sid), "connected").await;
    }
    for (n, (sid, message)) in cases.iter().enumerate() {
        h.disconnect(&(n + 1).to_string())
            .await
            .assert(500, &refused(message));
        assert_eq!(h.orchestrator.calls_for(sid), 1, "{sid}");
        assert_eq!(h.status_of(n as i64 + 1).await, "connected");
    }
}

async fn orchestrator_request_shape_and_path_prefix(backend: Backend) {
    let h = Harness::start_with(backend, |o| o.orchestrator_url.push_str("/wa/")).await;
    h.seed(1, Some("ok a/b?c"), "connected").await;
    let a = h.disconnect("1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let calls = h.orchestrator.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, "/wa/sessions/ok%20a%2Fb%3Fc/disconnect");
    assert!(calls[0]
        .headers
        .iter()
        .any(|(k, v)| k == "accept" && v == "application/json"));
}

// ---- 6. update ----

async fn success_answers_with_the_updated_row(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(7, Some("ok-7"), "connected").await;
    let before = chrono::Utc::now();
    let a = h.disconnect("007").await;
    assert_eq!(a.status, 200, "{}", a.body);
    // updated_at is now(): check its form, then compare everything byte for byte.
    let (_, updated_at) = a.body.rsplit_once(r#""updated_at":""#).unwrap();
    let updated_at = &updated_at[..24];
    assert!(
        updated_at.ends_with('Z') && updated_at.as_bytes()[19] == b'.',
        "{updated_at}"
    );
    let t = chrono::DateTime::parse_from_rfc3339(updated_at).unwrap();
    assert!(t >= before - chrono::Duration::seconds(1) && t <= chrono::Utc::now());
    let expected = format!(
        r#"{{"success":true,"message":"Sesión desconectada exitosamente","data":{{"session_id":"ok-7","orchestrator_disconnect":{},"updated_session":{{"id":7,"session_id":"ok-7","status":"disconnected","phone_number":"+34600000000","last_seen":"2024-01-01T12:00:00.000Z","auth_folder_path":"/auth/x","whatsapp_user_id":"user123","created_at":"2024-01-01T10:00:00.000Z","updated_at":"{updated_at}"}}}}}}"#,
        ok_body("ok-7")
    );
    a.assert(200, &expected);
    assert_eq!(h.orchestrator.calls_for("ok-7"), 1);
    let (status, sid) = h.pool.row(7).await.unwrap();
    assert_eq!(
        (status.as_str(), sid.as_deref()),
        ("disconnected", Some("ok-7"))
    );
    // A second disconnect sees the new state and calls nobody.
    h.disconnect("7")
        .await
        .assert(400, &not_connected("disconnected"));
    assert_eq!(h.orchestrator.calls().len(), 1);
}

async fn null_columns_are_json_null(backend: Backend) {
    let h = Harness::start(backend).await;
    h.pool
        .exec("INSERT INTO whatsapp_sessions (id, session_id, status) VALUES (3, 'ok-3', 'connected')")
        .await;
    let a = h.disconnect("3").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let row = &v["data"]["updated_session"];
    for k in [
        "phone_number",
        "last_seen",
        "auth_folder_path",
        "whatsapp_user_id",
    ] {
        assert!(row[k].is_null(), "{k}");
    }
    assert_eq!(row["id"], 3);
}

// ---- 7. update failed after the orchestrator succeeded ----

async fn failed_update_after_orchestrator_success_is_200_with_warning(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(4, Some("ok-4"), "connected").await;
    h.pool.refuse_updates().await;
    let expected = format!(
        r#"{{"success":true,"message":"Sesión desconectada exitosamente","warning":"La sesión se desconectó en el orquestador, pero no se pudo actualizar su estado en la base de datos","data":{{"session_id":"ok-4","orchestrator_disconnect":{},"updated_session":null}}}}"#,
        ok_body("ok-4")
    );
    h.disconnect("4").await.assert(200, &expected);
    assert_eq!(h.orchestrator.calls_for("ok-4"), 1);
    assert_eq!(h.status_of(4).await, "connected");
}

// ---- Beyond the document ----

async fn failing_database_is_503_and_the_orchestrator_is_not_called(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(1, Some("ok-1"), "connected").await;
    h.pool.exec("DROP TABLE whatsapp_sessions").await;
    let a = h.disconnect("1").await;
    a.assert(
        503,
        r#"{"success":false,"error":"Base de datos no disponible"}"#,
    );
    assert_eq!(h.orchestrator.calls().len(), 0);
    // No SQL text or path leaks.
    assert!(!a.body.contains("whatsapp_sessions") && !a.body.contains(&h.db.url));
    // The proxy is unaffected.
    assert_eq!(h.request("GET", "/health").await.status, 200);
}

async fn concurrent_disconnects_of_one_session_call_the_orchestrator_once(backend: Backend) {
    let h = Harness::start(backend).await;
    h.seed(9, Some("slow-9"), "connected").await;
    let requests = (0..20).map(|_| h.disconnect("9"));
    let answers = futures_join_all(requests).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let rejected = answers
        .iter()
        .filter(|a| a.status == 400 && a.body == not_connected("disconnected"))
        .count();
    assert_eq!((ok, rejected), (1, 19), "{answers:?}");
    assert_eq!(h.orchestrator.calls_for("slow-9"), 1);
    assert_eq!(h.status_of(9).await, "disconnected");
}

/// Runs the futures concurrently on this task (bounded by the count given).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let set: Vec<_> = futures.collect();
    let mut pinned: Vec<_> = set.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

/// Reads one HTTP/1.1 response with a Content-Length (bounded in time).
async fn read_response(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return text;
            }
        }
    }
}
