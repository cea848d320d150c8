//! Test databases: a SQLite file, or a fresh database on the PostgreSQL server that
//! `scripts/test` started (GATEWAY_TEST_DATABASE_URL), or a private PostgreSQL cluster the
//! test can stop and start.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server `scripts/test` started.
pub fn shared_postgres_url() -> String {
    std::env::var("GATEWAY_TEST_DATABASE_URL").expect(
        "GATEWAY_TEST_DATABASE_URL is not set: run the suite with scripts/test, which starts PostgreSQL",
    )
}

/// A connection pool to the test database, whichever it is.
#[derive(Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    pub async fn exec(&self, sql: &str) {
        let result = match self {
            Pool::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Pool::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Inserts a row with the fields the tests vary and fixed values for the rest.
    pub async fn seed(&self, id: i64, session_id: Option<&str>, status: &str) {
        let sql =
            "INSERT INTO whatsapp_sessions (id, session_id, status, phone_number, last_seen, \
             auth_folder_path, whatsapp_user_id, created_at, updated_at) \
             VALUES ($1, $2, $3, '+34600000000', '2024-01-01T12:00:00.000Z', '/auth/x', 'user123', \
             '2024-01-01T10:00:00.000Z', '2024-01-01T10:00:00.000Z')";
        let result = match self {
            Pool::Sqlite(p) => sqlx::query(sql)
                .bind(id)
                .bind(session_id)
                .bind(status)
                .execute(p)
                .await
                .map(|_| ()),
            Pool::Postgres(p) => {
                // Through text casts, so the same statement fits every legacy column type.
                let sql = "INSERT INTO whatsapp_sessions (id, session_id, status, phone_number, last_seen, \
                     auth_folder_path, whatsapp_user_id, created_at, updated_at) \
                     VALUES ($1, $2, $3::text::\"__status_type__\", '+34600000000', '2024-01-01T12:00:00.000Z', \
                     '/auth/x', 'user123', '2024-01-01T10:00:00.000Z', '2024-01-01T10:00:00.000Z')";
                let status_type: String = sqlx::query_scalar(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = 'whatsapp_sessions'::regclass AND attname = 'status'",
                )
                .fetch_one(p)
                .await
                .expect("status column type");
                let sql = sql.replace("\"__status_type__\"", &status_type);
                sqlx::query(&sql)
                    .bind(id)
                    .bind(session_id)
                    .bind(status)
                    .execute(p)
                    .await
                    .map(|_| ())
            }
        };
        result.unwrap_or_else(|e| panic!("seed row {id}: {e}"));
    }

    pub async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    /// `(status, session_id)` of row `id`.
    pub async fn row(&self, id: i64) -> Option<(String, Option<String>)> {
        let sql = "SELECT status::text, session_id::text FROM whatsapp_sessions WHERE id = $1";
        match self {
            Pool::Sqlite(p) => sqlx::query_as(&sql.replace("::text", ""))
                .bind(id)
                .fetch_optional(p)
                .await
                .unwrap(),
            Pool::Postgres(p) => sqlx::query_as(sql)
                .bind(id)
                .fetch_optional(p)
                .await
                .unwrap(),
        }
    }

    pub async fn status_of(&self, id: i64) -> String {
        self.row(id).await.expect("row exists").0
    }

    /// Makes every UPDATE of the table fail (reads still work).
    pub async fn refuse_updates(&self) {
        match self {
            Pool::Sqlite(_) => {
                self.exec(
                    "CREATE TRIGGER refuse_update BEFORE UPDATE ON whatsapp_sessions \
                     BEGIN SELECT RAISE(ABORT, 'disk full'); END",
                )
                .await
            }
            Pool::Postgres(_) => {
                self.exec(
                    "CREATE FUNCTION refuse_update() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN RAISE EXCEPTION 'disk full'; END $$; \
                     CREATE TRIGGER refuse_update BEFORE UPDATE ON whatsapp_sessions \
                     FOR EACH ROW EXECUTE FUNCTION refuse_update()",
                )
                .await
            }
        }
    }
}

/// A database for one test; dropped (PostgreSQL) or deleted (SQLite) afterwards.
pub struct TestDb {
    pub backend: Backend,
    /// What the gateway gets as DATABASE_URL.
    pub url: String,
    pub pool: Pool,
    /// Server URL and database name, to drop it afterwards.
    admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// An empty SQLite file path (the gateway creates and migrates it), or an empty
    /// PostgreSQL database with `schema` applied (None: the gateway's `migrate` subcommand).
    pub async fn new(backend: Backend, schema: Option<&str>) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path: PathBuf = dir.path().join("sub").join("gateway.db");
                let url = format!("sqlite://{}", path.display());
                migrate(&url);
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(
                        SqliteConnectOptions::from_str(&url)
                            .unwrap()
                            .busy_timeout(Duration::from_secs(5)),
                    )
                    .await
                    .expect("open the test database");
                TestDb {
                    backend,
                    url,
                    pool: Pool::Sqlite(pool),
                    admin: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => Self::postgres_on(&shared_postgres_url(), schema).await,
        }
    }

    /// A fresh database on the server at `server_url`.
    pub async fn postgres_on(server_url: &str, schema: Option<&str>) -> TestDb {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(server_url)
            .await
            .expect("connect to the test PostgreSQL");
        let name = format!(
            "gwt_{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let (base, _) = server_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        match schema {
            Some(sql) => sqlx::raw_sql(sql).execute(&pool).await.map(|_| ()).unwrap(),
            None => migrate(&url),
        }
        TestDb {
            backend: Backend::Postgres,
            url,
            pool: Pool::Postgres(pool),
            admin: Some((server_url.to_owned(), name)),
            _dir: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((url, name)) = self.admin.take() {
            // Best effort, off the test's runtime (which may be shutting down).
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(p) = PgPoolOptions::new().max_connections(1).connect(&url).await {
                        let _ =
                            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&p)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

/// `whatsapp-gateway migrate` against `url`.
pub fn migrate(url: &str) {
    let out = Command::new(super::GATEWAY_BIN)
        .arg("migrate")
        .env("DATABASE_URL", url)
        .output()
        .expect("run the migrate subcommand");
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL cluster of the test's own, to stop and start at will.
pub struct PgCluster {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn pg_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("GATEWAY_TEST_PGBIN") {
        return bin.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed under /usr/lib/postgresql (scripts/deps --test)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    found.sort();
    found.pop().expect("a PostgreSQL version")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    pub fn init() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("gw-pgcluster")
            .tempdir_in("/tmp")
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the cluster directory");
        }
        let cluster = PgCluster {
            port: super::free_port(),
            dir,
            bin: pg_bin(),
        };
        let out = cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.dir.path().join("data"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start(&self) {
        let d = self.dir.path();
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(d.join("data"))
            .arg("-l")
            .arg(d.join("log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                d.display()
            ))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Waits (bounded) until the server accepts connections.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "cluster not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
