//! The example legacy Next.js app (examples/legacy-nextjs) as a real `next start` process on
//! loopback, built at most once per test run by scripts/nextjs-build; and the Chromium driver
//! in tests/browser (playwright-core with Debian's /usr/bin/chromium).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long `npm ci` plus `next build` may take on a fresh machine.
const BUILD_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How long `next start` may take to answer its first request.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long one browser run may take, Chromium's start included.
const BROWSER_LIMIT: Duration = Duration::from_secs(120);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn app_dir() -> PathBuf {
    repo_root().join("examples").join("legacy-nextjs")
}

pub fn browser_dir() -> PathBuf {
    repo_root().join("tests").join("browser")
}

/// The legacy table as the Node app's owners created it.
pub fn schema_sql() -> String {
    std::fs::read_to_string(app_dir().join("db").join("schema.sql")).expect("db/schema.sql")
}

/// Runs `cmd` to its end within `limit` (killed past it), stdout and stderr together.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(out.reopen().unwrap())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(out.path()).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("{cmd:?} exited with {s}:\n{text}")),
        None => Err(format!("{cmd:?} still running after {limit:?}:\n{text}")),
    }
}

/// `scripts/nextjs-build` once per test process (the script itself is a no-op when nothing
/// changed, and serializes concurrent test processes with a lock).
pub fn ensure_built() {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let started = Instant::now();
        let r = run_bounded(
            Command::new(repo_root().join("scripts").join("nextjs-build")).current_dir(repo_root()),
            BUILD_LIMIT,
        );
        eprintln!("nextjs-build: {:.1} s", started.elapsed().as_secs_f64());
        r
    });
    if let Err(e) = result {
        panic!("building examples/legacy-nextjs failed: {e}");
    }
}

/// A running `next start` of the example app; killed on drop.
pub struct NextApp {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NextApp {
    /// Starts the built app on a free loopback port with the given database and orchestrator,
    /// and waits (bounded) until it serves its static file.
    pub async fn start(
        database_url: &str,
        orchestrator_url: &str,
        env: &[(&str, &str)],
    ) -> NextApp {
        ensure_built();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("next.log");
        let port = super::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let app = app_dir();
        let mut cmd = Command::new(app.join("node_modules").join(".bin").join("next"));
        cmd.args(["start", "-p", &port.to_string(), "-H", "127.0.0.1"])
            .current_dir(&app)
            // `timestamp` columns are read in the process's zone: UTC, like the gateway.
            .env("TZ", "UTC")
            .env("NODE_ENV", "production")
            .env("NEXT_TELEMETRY_DISABLED", "1")
            .env("DATABASE_URL", database_url)
            .env("WHATSAPP_ORCHESTRATOR_URL", orchestrator_url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("next.err")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn next start");
        let mut app = NextApp {
            addr,
            child,
            log,
            _dir: dir,
        };
        app.wait_ready().await;
        app
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + START_LIMIT;
        for _ in 0..2000 {
            if let Ok(r) = client.get(self.url("/static.txt")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("next start exited with {status}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "next start did not answer on {} within {START_LIMIT:?}:\n{}",
                self.addr,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("next start never became ready:\n{}", self.logs());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// stdout and stderr of the Node process so far.
    pub fn logs(&self) -> String {
        let err = self.log.with_file_name("next.err");
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }
}

impl Drop for NextApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loads `base_url` in headless Chromium, clicks Disconnect on row `row`, waits for the row
/// to show `disconnected` and saves a screenshot. Returns what the page showed (JSON).
pub async fn click_disconnect(base_url: &str, row: i64, screenshot: &Path) -> serde_json::Value {
    ensure_built();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: scripts/deps --test installs Debian's chromium"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(browser_dir().join("disconnect.mjs"))
        .arg(base_url)
        .arg(row.to_string())
        .arg(screenshot)
        .current_dir(browser_dir())
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(BROWSER_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the browser run took more than {BROWSER_LIMIT:?}"))
        .expect("run node tests/browser/disconnect.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("browser output {line:?}: {e}"))
}
