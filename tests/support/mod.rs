//! Real processes on loopback for the end-to-end tests: the gateway binary, a fake
//! orchestrator with fault modes, an echoing upstream, and a SQLite database file.
#![allow(dead_code)]

pub mod bodies;
pub mod db;
pub mod nextjs;
pub mod orchestrator;
pub mod upstream;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_whatsapp-gateway");

/// Where `needle` first occurs in `haystack` (raw HTTP heads in the byte-level tests).
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A port nobody listens on right now, never the same one twice in this test process: the
/// kernel may hand one free port to two binds in a row, and a gateway given the same port for
/// its proxy and admin listeners (or two upstreams given one) cannot start.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
    panic!("no ephemeral port not already given out, in 100 tries")
}

/// Waits (bounded) until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "gateway exited with {status} before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not listen on {addr} within 20 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How to start a gateway.
#[derive(Clone)]
pub struct GatewayOptions {
    pub upstream: SocketAddr,
    pub orchestrator_url: String,
    pub orchestrator_timeout_ms: u64,
    pub database_url: String,
    /// Extra YAML appended to the config file (top-level Pingora keys).
    pub extra_yaml: String,
    pub env: Vec<(String, String)>,
}

impl GatewayOptions {
    /// The usual test gateway: this upstream, orchestrator and database, a 2 s orchestrator
    /// timeout, nothing extra. Tests change what they need with `..GatewayOptions::new(..)`.
    pub fn new(upstream: SocketAddr, orchestrator_url: String, database_url: &str) -> Self {
        GatewayOptions {
            upstream,
            orchestrator_url,
            orchestrator_timeout_ms: 2000,
            database_url: database_url.to_owned(),
            extra_yaml: String::new(),
            env: vec![],
        }
    }
}

/// A running gateway process; killed on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The admin listener (/metrics, /healthz, /readyz).
    pub admin: SocketAddr,
    pub child: Child,
    pub log: PathBuf,
    dir: Arc<tempfile::TempDir>,
}

impl Gateway {
    pub async fn start(opts: &GatewayOptions) -> Gateway {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut gateway = Gateway::spawn(dir, addr, admin, opts, "gateway", &[]);
        // Pingora binds each service's listener in that service's own thread: the admin one
        // may come a moment after the proxy's.
        wait_for_port(addr, &mut gateway.child, &gateway.log).await;
        wait_for_port(admin, &mut gateway.child, &gateway.log).await;
        gateway
    }

    /// Starts a new process that takes over this one's listeners (`-u`, Pingora's
    /// zero-downtime upgrade) once this one gets SIGQUIT. Same addresses and upgrade
    /// socket; `opts` may change the rest of the configuration.
    pub fn start_upgrade(&self, opts: &GatewayOptions) -> Gateway {
        Gateway::spawn(
            self.dir.clone(),
            self.addr,
            self.admin,
            opts,
            "upgraded",
            &["-u"],
        )
    }

    fn spawn(
        dir: Arc<tempfile::TempDir>,
        addr: SocketAddr,
        admin: SocketAddr,
        opts: &GatewayOptions,
        name: &str,
        args: &[&str],
    ) -> Gateway {
        let conf = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &conf,
            format!(
                "version: 1\nthreads: 2\npid_file: {}\nupgrade_sock: {}\n{}\n",
                dir.path().join("gw.pid").display(),
                dir.path().join("upgrade.sock").display(),
                opts.extra_yaml
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(GATEWAY_BIN);
        cmd.arg("-c")
            .arg(&conf)
            .args(args)
            .env("GATEWAY_LISTEN", addr.to_string())
            .env("GATEWAY_ADMIN_LISTEN", admin.to_string())
            .env("GATEWAY_UPSTREAM", opts.upstream.to_string())
            .env("DATABASE_URL", &opts.database_url)
            .env("WHATSAPP_ORCHESTRATOR_URL", &opts.orchestrator_url)
            .env(
                "ORCHESTRATOR_TIMEOUT_MS",
                opts.orchestrator_timeout_ms.to_string(),
            )
            .env("RUST_LOG", "info")
            .env("GATEWAY_JOURNAL_PATH", dir.path().join("owed-writes.jsonl"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the gateway");
        Gateway {
            addr,
            admin,
            child,
            log,
            dir,
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal (`TERM`, `KILL`, ...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name}");
    }

    /// Waits (bounded) for the process to exit; `None` if it did not.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
