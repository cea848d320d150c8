//! Configuration: one YAML file holding Pingora's own server settings at the top level (the
//! Pingora way: `threads`, `pid_file`, `grace_period_seconds`, ...) and the gateway's under
//! `gateway:`. Both are typed; unknown keys are refused; environment variables override the
//! file; everything is validated before the server starts, and errors name the key.

use pingora::server::configuration::ServerConf;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Syntax(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The gateway's own settings (`gateway:` in the file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address the proxy listens on. Env: `GATEWAY_LISTEN`.
    pub listen: String,
    /// The Next.js upstream, `host:port`, or a list of them (round robin, health-checked,
    /// failover). Env: `GATEWAY_UPSTREAM`, comma-separated.
    pub upstream: OneOrMany,
    pub upstream_timeouts: UpstreamTimeouts,
    pub health_check: HealthCheckConfig,
    pub database: DatabaseConfig,
    pub orchestrator: OrchestratorConfig,
    pub journal: JournalConfig,
    /// Admin listener: /metrics, /healthz, /readyz. Env: `GATEWAY_ADMIN_LISTEN`.
    pub admin_listen: String,
    /// One access-log line per request (target `access`), as nginx does by default.
    pub access_log: bool,
    /// Plain GET/HEAD pass-through requests are relayed by the gateway's own HTTP/1.1 loop
    /// (src/fastpath.rs) instead of Pingora's general proxy; `false` sends every request
    /// through Pingora. Used with one upstream only. Env: `GATEWAY_FAST_PATH`.
    pub fast_path: bool,
    pub log_format: LogFormat,
    pub routes: RoutesConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// How each migrated route is served: `native` (by the gateway) or `proxy` (by Next.js,
/// like any other path). The migration's kill switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    Native,
    Proxy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// `POST /api/whatsapp_sessions/{id}/disconnect`.
    pub disconnect: RouteMode,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            disconnect: RouteMode::Native,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No check: the native route is open, as it was if no Next.js middleware guarded it.
    None,
    /// Ask `auth.url` first (see `auth.rs`).
    Forward,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub url: Option<String>,
    pub timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            url: None,
            timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect(),
            OneOrMany::Many(v) => v.iter().map(|s| s.trim()).collect(),
        }
    }
}

/// Active health checks of the upstreams (only with more than one): a TCP connect every
/// `interval_ms`; a backend that fails is skipped until it passes again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub interval_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval_ms: 1_000,
            connect_timeout_ms: 1_000,
        }
    }
}

/// Timeouts towards the Next.js upstream: a connect that takes longer, or a read or write
/// that waits longer for the next byte, fails the request with 504.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    pub connect_ms: u64,
    pub read_ms: u64,
    pub write_ms: u64,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect_ms: 5_000,
            read_ms: 60_000,
            write_ms: 60_000,
        }
    }
}

/// The owed-write journal (CONTRACT.md section 7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Local file; env: `GATEWAY_JOURNAL_PATH`.
    pub path: String,
    /// Cap of the exponential backoff between retries while the database is unavailable.
    pub max_retry_delay_ms: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: "data/owed-writes.jsonl".into(),
            max_retry_delay_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (embedded default, created and migrated at start) or
    /// `postgres://...`. Env: `DATABASE_URL`.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// How long the row update after a successful orchestrator call may take before the
    /// write is journaled instead.
    pub write_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// Base URL, may carry a path prefix. Env: `WHATSAPP_ORCHESTRATOR_URL`.
    pub url: String,
    /// The legacy `DISCONNECT_SESSION_ENDPOINT`.
    pub sessions_path: String,
    /// Whole-request timeout. Env: `ORCHESTRATOR_TIMEOUT_MS`.
    pub timeout_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "0.0.0.0:8080".into(),
            upstream: OneOrMany::One("127.0.0.1:3001".into()),
            upstream_timeouts: UpstreamTimeouts::default(),
            health_check: HealthCheckConfig::default(),
            database: DatabaseConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            journal: JournalConfig::default(),
            admin_listen: "127.0.0.1:9090".into(),
            access_log: true,
            fast_path: true,
            log_format: LogFormat::Plain,
            routes: RoutesConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/gateway.db".into(),
            max_connections: 10,
            acquire_timeout_ms: 3000,
            write_timeout_ms: 5000,
        }
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            url: "http://localhost:3000".into(),
            sessions_path: "/sessions".into(),
            timeout_ms: 30_000,
        }
    }
}

/// Everything validated, ready to wire.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConf,
    pub gateway: GatewayConfig,
    pub listen: SocketAddr,
    /// The Next.js upstreams, resolved at start (at least one).
    pub upstreams: Vec<SocketAddr>,
    pub admin_listen: SocketAddr,
}

impl Config {
    pub fn orchestrator_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway.orchestrator.timeout_ms)
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway.database.acquire_timeout_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway.database.write_timeout_ms)
    }
}

/// Loads `path` (or the built-in defaults when `None`), applies the environment, validates.
pub fn load(
    path: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?,
        None => String::new(),
    };
    parse(&text, env)
}

/// The file as written: the gateway's section, typed, and Pingora's keys, checked below.
#[derive(Deserialize)]
struct File {
    #[serde(default)]
    gateway: GatewayConfig,
    #[serde(flatten)]
    server: Mapping,
}

/// Parses a config file's text, applies the environment, validates.
pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let file: File = if text.trim().is_empty() {
        File {
            gateway: GatewayConfig::default(),
            server: Mapping::new(),
        }
    } else {
        // serde_yaml's messages carry the path of the bad key (`gateway.orchestrator.timeout_ms: ...`).
        serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?
    };
    let mut gateway = file.gateway;
    let server = server_conf(file.server)?;
    apply_env(&mut gateway, server, &env)
}

/// Pingora's keys: refuse the ones `ServerConf` does not have (it would silently ignore
/// them), and set the defaults a container wants where the file is silent.
fn server_conf(mut top: Mapping) -> Result<ServerConf, ConfigError> {
    let known = match serde_yaml::to_value(ServerConf::default()) {
        Ok(Value::Mapping(m)) => m,
        _ => Mapping::new(),
    };
    for key in top.keys() {
        let name = key.as_str().unwrap_or("?");
        if !known.contains_key(key) {
            return Err(invalid(
                name,
                "unknown key (neither a Pingora server setting nor `gateway`)",
            ));
        }
    }
    let defaults: [(&str, Value); 5] = [
        ("threads", Value::from(cores())),
        ("pid_file", Value::from("/tmp/whatsapp-gateway.pid")),
        (
            "upgrade_sock",
            Value::from("/tmp/whatsapp-gateway-upgrade.sock"),
        ),
        // Kubernetes gives 30 s between SIGTERM and SIGKILL: drain for 10, then 10 more.
        ("grace_period_seconds", Value::from(10)),
        ("graceful_shutdown_timeout_seconds", Value::from(10)),
    ];
    for (key, value) in defaults {
        if !top.contains_key(key) {
            top.insert(Value::from(key), value);
        }
    }
    // Through text again so serde_yaml's error names the key.
    let text = serde_yaml::to_string(&top).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let conf: ServerConf =
        serde_yaml::from_str(&text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    if conf.threads == 0 {
        return Err(invalid("threads", "must be at least 1"));
    }
    conf.validate()
        .map_err(|e| ConfigError::Syntax(format!("Pingora server settings: {e}")))
}

fn cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

fn apply_env(
    gateway: &mut GatewayConfig,
    mut server: ServerConf,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    if let Some(v) = env("GATEWAY_LISTEN") {
        gateway.listen = v;
    }
    if let Some(v) = env("GATEWAY_UPSTREAM") {
        gateway.upstream = OneOrMany::One(v);
    }
    if let Some(v) = env("GATEWAY_THREADS") {
        server.threads = match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(invalid(
                    "GATEWAY_THREADS",
                    format!("expected a positive integer, got {v:?}"),
                ))
            }
        };
    }
    if let Some(v) = env("DATABASE_URL") {
        gateway.database.url = v;
    }
    if let Some(v) = env("WHATSAPP_ORCHESTRATOR_URL") {
        gateway.orchestrator.url = v;
    }
    if let Some(v) = env("ORCHESTRATOR_TIMEOUT_MS") {
        gateway.orchestrator.timeout_ms = v.trim().parse().map_err(|_| {
            invalid(
                "ORCHESTRATOR_TIMEOUT_MS",
                format!("expected milliseconds, got {v:?}"),
            )
        })?;
    }
    if let Some(v) = env("GATEWAY_JOURNAL_PATH") {
        gateway.journal.path = v;
    }
    if let Some(v) = env("GATEWAY_ADMIN_LISTEN") {
        gateway.admin_listen = v;
    }
    if let Some(v) = env("GATEWAY_FAST_PATH") {
        gateway.fast_path = match v.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(invalid(
                    "GATEWAY_FAST_PATH",
                    format!("expected true or false, got {v:?}"),
                ))
            }
        };
    }
    validate(gateway.clone(), server)
}

fn validate(gateway: GatewayConfig, server: ServerConf) -> Result<Config, ConfigError> {
    let listen: SocketAddr = gateway.listen.parse().map_err(|_| {
        invalid(
            "gateway.listen",
            format!("expected ip:port, got {:?}", gateway.listen),
        )
    })?;
    let admin_listen: SocketAddr = gateway.admin_listen.parse().map_err(|_| {
        invalid(
            "gateway.admin_listen",
            format!("expected ip:port, got {:?}", gateway.admin_listen),
        )
    })?;
    if gateway.auth.timeout_ms == 0 {
        return Err(invalid("gateway.auth.timeout_ms", "must be at least 1"));
    }
    match (&gateway.auth.mode, &gateway.auth.url) {
        (AuthMode::Forward, Some(u))
            if url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) => {}
        (AuthMode::Forward, _) => {
            return Err(invalid(
                "gateway.auth.url",
                "mode `forward` needs an http:// or https:// URL",
            ))
        }
        (AuthMode::None, _) => {}
    }
    let mut upstreams = Vec::new();
    for item in gateway.upstream.items() {
        let addr = resolve(item).ok_or_else(|| {
            invalid(
                "gateway.upstream",
                format!("expected host:port that resolves, got {item:?}"),
            )
        })?;
        upstreams.push(addr);
    }
    if upstreams.is_empty() {
        return Err(invalid("gateway.upstream", "needs at least one host:port"));
    }

    for (key, value) in [
        (
            "gateway.upstream_timeouts.connect_ms",
            gateway.upstream_timeouts.connect_ms,
        ),
        (
            "gateway.upstream_timeouts.read_ms",
            gateway.upstream_timeouts.read_ms,
        ),
        (
            "gateway.upstream_timeouts.write_ms",
            gateway.upstream_timeouts.write_ms,
        ),
        (
            "gateway.database.write_timeout_ms",
            gateway.database.write_timeout_ms,
        ),
        (
            "gateway.journal.max_retry_delay_ms",
            gateway.journal.max_retry_delay_ms,
        ),
        (
            "gateway.health_check.interval_ms",
            gateway.health_check.interval_ms,
        ),
        (
            "gateway.health_check.connect_timeout_ms",
            gateway.health_check.connect_timeout_ms,
        ),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    if gateway.journal.path.trim().is_empty() {
        return Err(invalid("gateway.journal.path", "must not be empty"));
    }
    let db = &gateway.database;
    if crate::store::Backend::of_url(&db.url).is_none() {
        // Never echo the URL: it may carry a password.
        return Err(invalid(
            "gateway.database.url",
            "must start with sqlite:, postgres:// or postgresql://",
        ));
    }
    if db.max_connections == 0 {
        return Err(invalid(
            "gateway.database.max_connections",
            "must be at least 1",
        ));
    }
    if db.acquire_timeout_ms == 0 {
        return Err(invalid(
            "gateway.database.acquire_timeout_ms",
            "must be at least 1",
        ));
    }

    let orch = &gateway.orchestrator;
    match url::Url::parse(&orch.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => {
            return Err(invalid(
                "gateway.orchestrator.url",
                format!("expected an http:// or https:// URL, got {:?}", orch.url),
            ))
        }
    }
    if !orch.sessions_path.starts_with('/') {
        return Err(invalid(
            "gateway.orchestrator.sessions_path",
            format!("must start with '/', got {:?}", orch.sessions_path),
        ));
    }
    if orch.timeout_ms == 0 {
        return Err(invalid(
            "gateway.orchestrator.timeout_ms",
            "must be at least 1",
        ));
    }
    Ok(Config {
        server,
        gateway,
        listen,
        upstreams,
        admin_listen,
    })
}

fn resolve(hostport: &str) -> Option<SocketAddr> {
    hostport.to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults() {
        let c = parse("", no_env).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.upstreams, ["127.0.0.1:3001".parse().unwrap()]);
        assert_eq!(c.gateway.orchestrator.url, "http://localhost:3000");
        assert_eq!(c.gateway.orchestrator.timeout_ms, 30_000);
        assert_eq!(c.server.threads as u64, cores());
        assert_eq!(c.server.grace_period_seconds, Some(10));
    }

    #[test]
    fn env_overrides_file() {
        let env = |k: &str| match k {
            "GATEWAY_LISTEN" => Some("127.0.0.1:9999".to_owned()),
            "GATEWAY_THREADS" => Some("3".to_owned()),
            "ORCHESTRATOR_TIMEOUT_MS" => Some("250".to_owned()),
            "WHATSAPP_ORCHESTRATOR_URL" => Some("http://orch:1/wa".to_owned()),
            _ => None,
        };
        let c = parse("threads: 1\ngateway:\n  listen: 127.0.0.1:1\n", env).unwrap();
        assert_eq!(c.upstreams.len(), 1);
        let many = parse(
            "gateway:\n  upstream: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
            no_env,
        )
        .unwrap();
        assert_eq!(many.upstreams.len(), 2);
        let from_env = parse("", |k| {
            (k == "GATEWAY_UPSTREAM").then(|| "127.0.0.1:1, 127.0.0.1:2".into())
        })
        .unwrap();
        assert_eq!(from_env.upstreams, many.upstreams);
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.server.threads, 3);
        assert_eq!(c.gateway.orchestrator.timeout_ms, 250);
        assert_eq!(c.gateway.orchestrator.url, "http://orch:1/wa");
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("gateway:\n  orchestrator:\n    timout_ms: 5\n", "timout_ms"),
            (
                "gateway:\n  orchestrator:\n    timeout_ms: soon\n",
                "timeout_ms",
            ),
            (
                "gateway:\n  orchestrator:\n    timeout_ms: 0\n",
                "gateway.orchestrator.timeout_ms",
            ),
            ("gateway:\n  listen: nowhere\n", "gateway.listen"),
            (
                "gateway:\n  database:\n    url: mysql://x\n",
                "gateway.database.url",
            ),
            (
                "gateway:\n  orchestrator:\n    url: ftp://x\n",
                "gateway.orchestrator.url",
            ),
            ("treads: 2\n", "treads"),
            ("threads: many\n", "threads"),
            ("threads: 0\n", "threads"),
            ("gateway:\n  auth:\n    mode: forward\n", "gateway.auth.url"),
            ("gateway:\n  auth:\n    mode: maybe\n", "mode"),
            ("gateway:\n  routes:\n    disconnect: off\n", "disconnect"),
            ("gateway:\n  admin_listen: x\n", "gateway.admin_listen"),
        ] {
            let err = parse(text, no_env).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} -> {err}");
        }
        let err = parse("", |k| (k == "GATEWAY_THREADS").then(|| "x".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEWAY_THREADS"), "{err}");
        let err = parse("", |k| (k == "GATEWAY_FAST_PATH").then(|| "yes".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEWAY_FAST_PATH"), "{err}");
        let off = parse("", |k| (k == "GATEWAY_FAST_PATH").then(|| "false".into())).unwrap();
        assert!(!off.gateway.fast_path);
        assert!(parse("", no_env).unwrap().gateway.fast_path);
        let err = parse("gateway:\n  fast_path: sometimes\n", no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fast_path"), "{err}");
    }

    #[test]
    fn database_url_is_never_echoed() {
        let err = parse("", |k| {
            (k == "DATABASE_URL").then(|| "mysql://u:hunter2@h/db".into())
        })
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
