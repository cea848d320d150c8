//! PostgreSQL as production runs it: the legacy app's own schemas, several gateways on one
//! database, and a database that comes and goes.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::db::{PgCluster, Pool, TestDb};
use support::orchestrator::{ok_body, FakeOrchestrator};
use support::upstream::EchoUpstream;
use support::{free_port, Gateway, GatewayOptions};

use support::bodies::DB_DOWN;

fn not_connected() -> String {
    support::bodies::not_connected("disconnected")
}

fn options(
    db_url: &str,
    upstream: &EchoUpstream,
    orchestrator: &FakeOrchestrator,
) -> GatewayOptions {
    GatewayOptions::new(upstream.addr, orchestrator.url(), db_url)
}

async fn post(client: &reqwest::Client, gw: &Gateway, id: i64) -> (u16, String) {
    let r = client
        .post(gw.url(&format!("/api/whatsapp_sessions/{id}/disconnect")))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("gateway answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

// ---- legacy schemas ----

/// The columns every variant shares, with `{id}`, `{text}`, `{ts}` and `{status}` to fill.
const LEGACY_TABLE: &str = "CREATE TABLE whatsapp_sessions (
    id {id} PRIMARY KEY,
    session_id {text},
    status {status} NOT NULL,
    phone_number {text},
    last_seen {ts},
    auth_folder_path {text},
    whatsapp_user_id {text},
    created_at {ts} NOT NULL DEFAULT now(),
    updated_at {ts} NOT NULL DEFAULT now(),
    notes text DEFAULT 'keep me',
    metadata jsonb DEFAULT '{\"k\":1}'
)";

async fn legacy_schema_case(id: &str, text: &str, ts: &str, status: &str) {
    let mut ddl = String::new();
    if status == "session_status" {
        ddl.push_str(
            "CREATE TYPE session_status AS ENUM ('connecting','qr_pending','connected','disconnected');\n",
        );
    }
    ddl.push_str(
        &LEGACY_TABLE
            .replace("{id}", id)
            .replace("{text}", text)
            .replace("{ts}", ts)
            .replace("{status}", status),
    );
    let (upstream, orchestrator) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let db = TestDb::postgres_on(&support::db::shared_postgres_url(), Some(&ddl)).await;
    let gw = Gateway::start(&options(&db.url, &upstream, &orchestrator)).await;
    let client = reqwest::Client::new();
    db.pool.seed(1, Some("ok-1"), "connected").await;
    db.pool.seed(2, Some("ok-2"), "disconnected").await;

    let (status, body) = post(&client, &gw, 1).await;
    assert_eq!(status, 200, "{ddl}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let row = &v["data"]["updated_session"];
    let updated_at = row["updated_at"].as_str().unwrap().to_owned();
    let expected = serde_json::json!({
        "id": 1, "session_id": "ok-1", "status": "disconnected",
        "phone_number": "+34600000000", "last_seen": "2024-01-01T12:00:00.000Z",
        "auth_folder_path": "/auth/x", "whatsapp_user_id": "user123",
        "created_at": "2024-01-01T10:00:00.000Z", "updated_at": updated_at,
    });
    assert_eq!(row, &expected, "{ddl}");
    assert_eq!(
        v["data"]["orchestrator_disconnect"],
        serde_json::from_str::<serde_json::Value>(&ok_body("ok-1")).unwrap()
    );
    // updated_at is now(), in UTC, whatever the column type.
    let t = chrono::DateTime::parse_from_rfc3339(&updated_at).unwrap();
    let skew = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .abs();
    assert!(skew < 60, "{ddl}: updated_at {updated_at}");
    assert_eq!(db.pool.status_of(1).await, "disconnected");

    assert_eq!(post(&client, &gw, 2).await, (400, not_connected()));
    let (status, _) = post(&client, &gw, 2_147_483_648).await;
    assert_eq!(
        status, 404,
        "{ddl}: a 64-bit id is looked up, even against an int4 column"
    );

    // Columns the gateway does not know are left alone.
    let Pool::Postgres(pg) = &db.pool else {
        unreachable!()
    };
    let (notes, metadata): (String, String) =
        sqlx::query_as("SELECT notes, metadata::text FROM whatsapp_sessions WHERE id = 1")
            .fetch_one(pg)
            .await
            .unwrap();
    assert_eq!(
        (notes.as_str(), metadata.as_str()),
        ("keep me", r#"{"k": 1}"#)
    );
    assert_eq!(orchestrator.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_schema_serial_varchar_timestamp() {
    legacy_schema_case("serial", "varchar(255)", "timestamp", "varchar(32)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_schema_bigserial_text_timestamptz() {
    legacy_schema_case("bigserial", "text", "timestamptz", "text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_schema_enum_status() {
    legacy_schema_case("serial", "text", "timestamp", "session_status").await;
    legacy_schema_case("bigserial", "varchar(100)", "timestamptz", "session_status").await;
}

// ---- migrations policy ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_only_migrated_when_asked() {
    let (upstream, orchestrator) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    // An empty database: the gateway starts, but creates nothing.
    let db = TestDb::postgres_on(&support::db::shared_postgres_url(), Some("SELECT 1")).await;
    let gw = Gateway::start(&options(&db.url, &upstream, &orchestrator)).await;
    let client = reqwest::Client::new();
    assert_eq!(post(&client, &gw, 1).await, (503, DB_DOWN.to_owned()));
    let Pool::Postgres(pg) = &db.pool else {
        unreachable!()
    };
    let tables = |pg: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&pg)
        .await
        .unwrap()
    };
    assert!(tables(pg.clone()).await.is_empty());
    // `migrate` creates the table and records itself the sqlx way.
    support::db::migrate(&db.url);
    assert_eq!(
        tables(pg.clone()).await,
        ["_sqlx_migrations", "whatsapp_sessions"]
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pg)
        .await
        .unwrap();
    assert_eq!(applied, 1);
    support::db::migrate(&db.url); // idempotent
    assert_eq!(post(&client, &gw, 1).await.0, 404);
}

// ---- one disconnect at a time, across gateways ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_disconnects_through_two_gateways_make_one_orchestrator_call() {
    let (upstream, orchestrator) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let db = TestDb::postgres_on(&support::db::shared_postgres_url(), None).await;
    let opts = options(&db.url, &upstream, &orchestrator);
    let gateways = [Gateway::start(&opts).await, Gateway::start(&opts).await];
    // `slow` answers after 300 ms: a wide window for a second call to slip in.
    db.pool.seed(5, Some("slow-5"), "connected").await;
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50 {
        let client = client.clone();
        let url = gateways[n % 2].url("/api/whatsapp_sessions/5/disconnect");
        tasks.spawn(async move {
            let r = client
                .post(url)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
    }
    let answers = tasks.join_all().await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let not_connected = answers
        .iter()
        .filter(|(s, b)| *s == 400 && *b == not_connected())
        .count();
    assert_eq!((ok, not_connected), (1, 49), "{answers:?}");
    assert_eq!(orchestrator.calls_for("slow-5"), 1);
    assert_eq!(db.pool.status_of(5).await, "disconnected");
}

/// Requests queued behind a disconnect of the same session hold no database connection:
/// with more of them waiting than the pool has connections (10), another session still
/// disconnects while the first one's orchestrator call is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_on_one_session_do_not_hold_database_connections() {
    let (upstream, orchestrator) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let db = TestDb::postgres_on(&support::db::shared_postgres_url(), None).await;
    let gw = Gateway::start(&options(&db.url, &upstream, &orchestrator)).await;
    // `slow2s` answers after 1.5 s; everything about session 5 waits for it.
    db.pool.seed(5, Some("slow2s-5"), "connected").await;
    db.pool.seed(6, Some("ok-6"), "connected").await;
    let client = reqwest::Client::new();
    let answered_5 = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, url, answered_5) = (
            client.clone(),
            gw.url("/api/whatsapp_sessions/5/disconnect"),
            answered_5.clone(),
        );
        tasks.spawn(async move {
            let r = client
                .post(url)
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            answered_5.fetch_add(1, Ordering::SeqCst);
            let r = r.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
    }
    // All 20 have been read once and are queued (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    while orchestrator.calls_for("slow2s-5") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = post(&client, &gw, 6).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        answered_5.load(Ordering::SeqCst),
        0,
        "session 6 had to wait for session 5's orchestrator call"
    );
    let answers = tasks.join_all().await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{answers:?}");
    assert_eq!(orchestrator.calls_for("slow2s-5"), 1);
}

/// Every way a disconnect ends without its COMMIT (orchestrator refused, unreachable, answered
/// garbage, a row refused after the lock was taken) releases the session's lock: afterwards
/// the same row disconnects at once, through
/// the same gateway and through another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_that_ends_without_commit_releases_the_lock() {
    let (upstream, orchestrator) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let db = TestDb::postgres_on(&support::db::shared_postgres_url(), None).await;
    let opts = options(&db.url, &upstream, &orchestrator);
    let (first, second) = (Gateway::start(&opts).await, Gateway::start(&opts).await);
    let client = reqwest::Client::new();
    // More failed attempts than the pool has connections (10), so a connection given back
    // still holding a lock would be reused and block the next step.
    let set_sid =
        |sid: &str| format!("UPDATE whatsapp_sessions SET session_id = '{sid}' WHERE id = 7");
    db.pool.seed(7, None, "connected").await;
    // The last one is a row that is `connected` but has a blank session_id: its first read
    // takes the lock (the row is `connected`), then the route refuses it (400).
    let failing = ["json500err-7", "reset-7", "text200-7", "  "];
    for (n, sid) in failing.iter().cycle().take(12).enumerate() {
        db.pool.exec(&set_sid(sid)).await;
        let (status, body) = post(&client, &first, 7).await;
        assert!(
            [500, 502, 400].contains(&status),
            "attempt {n}: {status} {body}"
        );
    }
    db.pool.exec(&set_sid("ok-7")).await;
    let started = Instant::now();
    let (status, body) = post(&client, &second, 7).await;
    assert_eq!(status, 200, "{body}");
    db.pool.seed(8, Some("ok-8"), "connected").await;
    assert_eq!(post(&client, &first, 8).await.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

// ---- database trouble is not a crash ----

/// Retries `post` (bounded) until it answers `want`.
async fn eventually(client: &reqwest::Client, gw: &Gateway, id: i64, want: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = post(client, gw, id).await;
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_start_and_mid_run_is_503_until_it_is_back() {
    let cluster = PgCluster::init();
    cluster.start();
    cluster.wait_ready().await;
    let db = TestDb::postgres_on(&cluster.url(), None).await;
    for id in 1..=2 {
        db.pool
            .seed(id, Some(&format!("ok-{id}")), "connected")
            .await;
    }
    db.pool.close().await;
    cluster.stop();

    let (upstream, orchestrator) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let gw = Gateway::start(&options(&db.url, &upstream, &orchestrator)).await;
    let client = reqwest::Client::new();

    // Down at start: the gateway is up, proxies, and the route says 503 without calling anyone.
    let proxied = client.get(gw.url("/dashboard")).send().await.unwrap();
    assert_eq!(proxied.status(), 200);
    assert_eq!(post(&client, &gw, 1).await, (503, DB_DOWN.to_owned()));
    assert_eq!(orchestrator.calls().len(), 0);

    // Back: works without a restart.
    cluster.start();
    let (status, body) = eventually(&client, &gw, 1, 200).await;
    assert_eq!(status, 200, "{body}");

    // Gone mid-run (pooled connections die with it), then back again.
    cluster.stop();
    assert_eq!(post(&client, &gw, 2).await, (503, DB_DOWN.to_owned()));
    assert_eq!(orchestrator.calls_for("ok-2"), 0);
    cluster.start();
    let (status, body) = eventually(&client, &gw, 2, 200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(orchestrator.calls().len(), 2);

    // Restarted while the gateway was idle: its pooled connections are dead, and the first
    // request after the restart is still answered (idle connections are checked before use).
    cluster.stop();
    cluster.start();
    cluster.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(post(&client, &gw, 1).await, (400, not_connected()));
    let mut gw = gw;
    assert!(gw.child_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_responses_or_logs() {
    let (upstream, orchestrator) = (EchoUpstream::start().await, FakeOrchestrator::start().await);
    let shared = support::db::shared_postgres_url();
    let (scheme_host, _) = shared.split_once("@").unwrap();
    let (_, host_db) = shared.split_once('@').unwrap();
    let secret = "S3cr3t-Pa55word";
    let urls = [
        // nobody listens there
        format!("postgres://gw:{secret}@127.0.0.1:{}/legacy", free_port()),
        // a real server, an unknown database
        format!("{}:{secret}@{}_missing", scheme_host, host_db),
    ];
    for url in urls {
        let gw = Gateway::start(&options(&url, &upstream, &orchestrator)).await;
        let client = reqwest::Client::new();
        let (status, body) = post(&client, &gw, 1).await;
        assert_eq!((status, body.as_str()), (503, DB_DOWN));
        // Log lines are written by a writer thread: wait for this one (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gw.logs().contains("database unavailable") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let logs = gw.logs();
        assert!(logs.contains("database unavailable"), "{logs}");
        assert!(!logs.contains(secret), "{logs}");
    }
    assert_eq!(orchestrator.calls().len(), 0);
}
