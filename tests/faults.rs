//! Faults lose nothing: orchestrator, database and upstream failures, the owed write across
//! a crash, and shutdown with disconnects in flight. Real processes, bounded loops.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::db::{Backend, PgCluster, Pool, TestDb};
use support::orchestrator::FakeOrchestrator;
use support::upstream::EchoUpstream;
use support::{free_port, Gateway, GatewayOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::bodies::WARNING;

fn options(db: &TestDb, upstream: std::net::SocketAddr, orch: &FakeOrchestrator) -> GatewayOptions {
    GatewayOptions {
        orchestrator_timeout_ms: 1000,
        ..GatewayOptions::new(upstream, orch.url(), &db.url)
    }
}

async fn post(gw: &Gateway, id: i64) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(gw.url(&format!("/api/whatsapp_sessions/{id}/disconnect")))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("gateway answers");
    let status = r.status().as_u16();
    let text = r.text().await.expect("a body");
    (status, serde_json::from_str(&text).expect("JSON body"))
}

/// Polls (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn journal_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

// ---- orchestrator faults: each answered, each leaving the gateway healthy ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_orchestrator_fault_is_answered_and_the_next_request_works() {
    let (upstream, orch) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let db = TestDb::new(Backend::Sqlite, None).await;
    let gw = Gateway::start(&options(&db, upstream.addr, &orch)).await;
    let conn = "Error de conexión al orquestador";
    let invalid = "Respuesta inválida del orquestador";
    let timeout = "Tiempo de espera agotado al contactar al orquestador (1000 ms)";
    let cases: &[(&str, u16, &str)] = &[
        ("reset", 502, conn),       // reset before the response
        ("midreset", 502, conn),    // reset during the response
        ("hang", 502, timeout),     // no response until the timeout
        ("trickle", 502, timeout),  // a response slower than the timeout
        ("text200", 502, invalid),  // 2xx, not JSON
        ("big200", 502, invalid),   // 2xx, over the 1 MiB cap
        ("array200", 502, invalid), // 2xx, JSON but not an object
        ("html500", 502, invalid),  // 5xx HTML page
        ("empty503", 502, invalid), // 5xx, no body
        ("html404", 502, invalid),  // 4xx HTML page
        ("empty400", 502, invalid), // 4xx, no body
        ("json500err", 500, "Sesión inexistente en el orquestador"),
        ("json500msg", 500, "Solo mensaje"),
        ("msg400", 500, "Solicitud inválida"),
        ("json404", 500, "Session not found"),
        ("false200", 500, "No se pudo desconectar"),
    ];
    let mut id = 0;
    for (mode, status, details) in cases {
        id += 1;
        let sid = format!("{mode}-{id}");
        db.pool.seed(id, Some(&sid), "connected").await;
        let (got, body) = post(&gw, id).await;
        assert_eq!(
            (got, body["details"].as_str()),
            (*status, Some(*details)),
            "{mode}"
        );
        assert_eq!(orch.calls_for(&sid), 1, "{mode}");
        assert_eq!(db.pool.status_of(id).await, "connected", "{mode}");
        // healthy for the next request
        id += 1;
        let ok = format!("ok-{id}");
        db.pool.seed(id, Some(&ok), "connected").await;
        assert_eq!(post(&gw, id).await.0, 200, "after {mode}");
        assert_eq!(db.pool.status_of(id).await, "disconnected");
    }
}

// ---- the owed write ----

/// CONTRACT.md section 7 end to end on PostgreSQL: the database dies while the orchestrator
/// is disconnecting; the gateway answers 200 with the warning, journals the write, is killed,
/// restarts, and lands the write once the database is back; a session reconnected meanwhile
/// (new session_id) is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owed_write_survives_a_crash_and_lands_when_the_database_is_back() {
    let cluster = PgCluster::init();
    cluster.start();
    cluster.wait_ready().await;
    let db = TestDb::postgres_on(&cluster.url(), None).await;
    db.pool.seed(1, Some("slow2s-1"), "connected").await;
    db.pool.seed(2, Some("slow2s-2"), "connected").await;
    let (upstream, orch) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("owed.jsonl");
    let mut opts = options(&db, upstream.addr, &orch);
    opts.orchestrator_timeout_ms = 5000;
    opts.env = vec![("GATEWAY_JOURNAL_PATH".into(), journal.display().to_string())];
    opts.extra_yaml = "gateway:\n  journal:\n    max_retry_delay_ms: 500\n".into();
    let mut gw = Gateway::start(&opts).await;

    // Both requests pass their checks, then PostgreSQL dies while the orchestrator works.
    let (a, b) = tokio::join!(post(&gw, 1), post(&gw, 2), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.stop();
    })
    .into_tuple();
    for (id, (status, body)) in [(1, a), (2, b)] {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["warning"], WARNING);
        assert!(body["data"]["updated_session"].is_null());
        assert_eq!(body["data"]["session_id"], format!("slow2s-{id}"));
        assert_eq!(orch.calls_for(&format!("slow2s-{id}")), 1);
    }
    assert_eq!(journal_lines(&journal).len(), 2, "two owed writes on disk");

    // Crash. Meanwhile session 2 reconnects with a new session_id.
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(10)).await.expect("killed");
    cluster.start();
    cluster.wait_ready().await;
    let Pool::Postgres(pg) = &db.pool else {
        unreachable!()
    };
    let pg = {
        pg.close().await;
        sqlx::PgPool::connect(&db.url).await.unwrap()
    };
    sqlx::query("UPDATE whatsapp_sessions SET session_id = 'slow2s-2-new' WHERE id = 2")
        .execute(&pg)
        .await
        .unwrap();
    pg.close().await;
    cluster.stop();

    // Restart with the database still down; then bring it back.
    let gw = Gateway::start(&opts).await;
    tokio::time::sleep(Duration::from_millis(700)).await; // a few failed replays
    cluster.start();
    cluster.wait_ready().await;
    let pg = sqlx::PgPool::connect(&db.url).await.unwrap();
    let row = |id: i64| {
        let pg = pg.clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT status, session_id FROM whatsapp_sessions WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pg)
            .await
            .unwrap()
        }
    };
    eventually(
        "row 1 disconnected by the replay",
        Duration::from_secs(20),
        || async { row(1).await.0 == "disconnected" },
    )
    .await;
    eventually(
        "the stale owed write for row 2 dropped",
        Duration::from_secs(20),
        || async { gw.logs().contains("owed write dropped") },
    )
    .await;
    assert_eq!(
        row(2).await,
        ("connected".to_owned(), "slow2s-2-new".to_owned())
    );
    assert_eq!(
        orch.calls().len(),
        2,
        "the replay never calls the orchestrator"
    );
    // Nothing is owed any more: a reopen keeps no `owe` line.
    drop(gw);
    let lines = journal_lines(&journal);
    assert_eq!(
        lines.iter().filter(|l| l.contains("\"done\"")).count(),
        2,
        "{lines:?}"
    );
}

trait IntoTuple<A, B> {
    fn into_tuple(self) -> (A, B);
}
impl<A, B> IntoTuple<A, B> for (A, B, ()) {
    fn into_tuple(self) -> (A, B) {
        (self.0, self.1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_with_a_garbage_line_still_replays_its_good_lines() {
    let (upstream, orch) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let db = TestDb::new(Backend::Sqlite, None).await;
    for id in 3..=5 {
        db.pool
            .seed(id, Some(&format!("ok-{id}")), "connected")
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("owed.jsonl");
    std::fs::write(
        &journal,
        concat!(
            r#"{"owe":{"seq":1,"id":3,"session_id":"ok-3","at":"2026-01-01T00:00:00Z"}}"#,
            "\n{\"owe\":{\"seq\":2,\u{0}\u{7f}garbage\n",
            r#"{"owe":{"seq":3,"id":4,"session_id":"ok-4","at":"2026-01-01T00:00:00Z"}}"#,
            "\n",
            r#"{"owe":{"seq":4,"id":5,"session_id":"ok-"#, // truncated by a crash
        ),
    )
    .unwrap();
    let mut opts = options(&db, upstream.addr, &orch);
    opts.env = vec![("GATEWAY_JOURNAL_PATH".into(), journal.display().to_string())];
    let mut gw = Gateway::start(&opts).await;
    eventually(
        "rows 3 and 4 disconnected",
        Duration::from_secs(20),
        || async {
            db.pool.status_of(3).await == "disconnected"
                && db.pool.status_of(4).await == "disconnected"
        },
    )
    .await;
    assert_eq!(
        db.pool.status_of(5).await,
        "connected",
        "the truncated line is skipped"
    );
    let logs = gw.logs();
    assert_eq!(
        logs.matches("skipping a corrupt journal line").count(),
        2,
        "{logs}"
    );
    assert!(gw.child_alive());
    assert_eq!(orch.calls().len(), 0);
}

// ---- shutdown ----

/// SIGTERM while a disconnect is in flight: the request finishes and the row is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_disconnect_finish() {
    let (upstream, orch) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let db = TestDb::new(Backend::Sqlite, None).await;
    db.pool.seed(1, Some("slow2s-1"), "connected").await;
    let mut opts = options(&db, upstream.addr, &orch);
    opts.orchestrator_timeout_ms = 5000;
    opts.extra_yaml = "grace_period_seconds: 3\ngraceful_shutdown_timeout_seconds: 1\n".into();
    let mut gw = Gateway::start(&opts).await;
    let (answer, _) = tokio::join!(post(&gw, 1), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.signal("TERM");
    });
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(db.pool.status_of(1).await, "disconnected");
    assert!(
        gw.wait_exit(Duration::from_secs(15)).await.is_some(),
        "exits after the grace period"
    );
}

/// Even when Pingora's grace period is too short for the request, a disconnect whose
/// orchestrator call is under way still reaches the database before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cut_short_still_records_the_orchestrators_answer() {
    let (upstream, orch) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let db = TestDb::new(Backend::Sqlite, None).await;
    db.pool.seed(1, Some("slow2s-1"), "connected").await;
    let mut opts = options(&db, upstream.addr, &orch);
    opts.orchestrator_timeout_ms = 5000;
    opts.extra_yaml = "grace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 0\n".into();
    let mut gw = Gateway::start(&opts).await;
    let client = reqwest::Client::new();
    let url = gw.url("/api/whatsapp_sessions/1/disconnect");
    let request = tokio::spawn(async move { client.post(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some(), "the gateway exits");
    let _ = request.await; // the client may or may not have had its answer
    assert_eq!(orch.calls_for("slow2s-1"), 1);
    assert_eq!(db.pool.status_of(1).await, "disconnected", "{}", gw.logs());
}

// ---- upstream faults ----

/// Accepts connections and then does `what` with them.
async fn bad_upstream(what: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                match what {
                    "reset" => {
                        #[allow(deprecated)]
                        let _ = stream.set_linger(Some(Duration::ZERO));
                        drop(stream);
                    }
                    _ => tokio::time::sleep(Duration::from_secs(30)).await, // hang
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_are_502_or_504_and_the_native_route_keeps_working() {
    let orch = FakeOrchestrator::start().await;
    let db = TestDb::new(Backend::Sqlite, None).await;
    let client = reqwest::Client::new();
    let mut id = 0;
    for (what, want) in [("reset", 502), ("hang", 504)] {
        let addr = bad_upstream(what).await;
        let mut opts = options(&db, addr, &orch);
        opts.extra_yaml = "gateway:\n  upstream_timeouts:\n    read_ms: 500\n".into();
        let gw = Gateway::start(&opts).await;
        let started = Instant::now();
        let r = client
            .get(gw.url("/dashboard"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{what}");
        let body = r.text().await.unwrap();
        assert!(
            body.starts_with(&want.to_string()) && body.len() < 100,
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: answered promptly"
        );
        // The native route does not care.
        id += 1;
        db.pool
            .seed(id, Some(&format!("ok-{id}")), "connected")
            .await;
        assert_eq!(post(&gw, id).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxying_resumes_by_itself_when_the_upstream_is_back() {
    let orch = FakeOrchestrator::start().await;
    let db = TestDb::new(Backend::Sqlite, None).await;
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let gw = Gateway::start(&options(&db, addr, &orch)).await;
    let client = reqwest::Client::new();
    let get = || {
        client
            .get(gw.url("/page"))
            .timeout(Duration::from_secs(10))
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 502);
    // The upstream comes up on its port.
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nback")
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "back");
}
