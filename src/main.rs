//! Wiring only: CLI, config, store, services, run.

use anyhow::Context;
use clap::Parser;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora_load_balancing::health_check::TcpHealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;
use std::sync::Arc;
use std::time::Duration;
use whatsapp_gateway::admin::Admin;
use whatsapp_gateway::auth::ForwardAuth;
use whatsapp_gateway::config::{self, AuthMode, Config, LogFormat, RouteMode};
use whatsapp_gateway::disconnect::Deps;
use whatsapp_gateway::durable::Durable;
use whatsapp_gateway::fastpath::{FastPath, Pool};
use whatsapp_gateway::journal::Journal;
use whatsapp_gateway::orchestrator::HttpOrchestrator;
use whatsapp_gateway::proxy::{self, Gateway};
use whatsapp_gateway::replay;
use whatsapp_gateway::store::{Backend, PoolSettings, PostgresStore, SessionStore, SqliteStore};

/// mimalloc instead of glibc's allocator: less CPU per proxied request (README, "Performance").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pingora gateway in front of a Next.js app: answers
/// POST /api/whatsapp_sessions/{id}/disconnect natively and proxies everything else.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pingora: Opt,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Apply migrations/ to the configured database (the only way PostgreSQL gets migrated).
    Migrate,
}

/// mimalloc reads its options when the process starts, before `main`. Committing arena
/// memory as it is used rather than up front halves idle RSS (~21 MiB to ~11 MiB, no CPU cost
/// measured), so unless the operator chose otherwise, the process re-executes itself once
/// with that option set (same pid, same arguments).
fn lazy_arena_commit() {
    const OPTION: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(OPTION).is_none() {
        if let Ok(exe) = std::env::current_exe() {
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(OPTION, "0")
                .exec();
            // exec only returns on failure: carry on with the defaults.
            eprintln!("whatsapp-gateway: could not re-execute with {OPTION}=0: {err}");
        }
    }
}

fn main() {
    lazy_arena_commit();
    if let Err(e) = run() {
        eprintln!("whatsapp-gateway: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::load(cli.pingora.conf.as_deref(), |k| std::env::var(k).ok())?;
    init_logs(config.gateway.log_format);
    let settings = PoolSettings {
        max_connections: config.gateway.database.max_connections,
        acquire_timeout: config.acquire_timeout(),
    };
    let url = config.gateway.database.url.clone();
    let store: Arc<dyn SessionStore> = match Backend::of_url(&url) {
        Some(Backend::Postgres) => {
            let store = PostgresStore::new(&url, settings).context("gateway.database.url")?;
            if matches!(cli.command, Some(Command::Migrate)) {
                block_on(store.migrate()).context("migrating PostgreSQL")?;
                tracing::info!("PostgreSQL migrated");
                return Ok(());
            }
            Arc::new(store)
        }
        _ => {
            let store = SqliteStore::new(&url, settings).context("gateway.database.url")?;
            // The embedded database is the gateway's own: always migrated at start.
            block_on(store.migrate()).context("migrating SQLite")?;
            if matches!(cli.command, Some(Command::Migrate)) {
                tracing::info!("SQLite migrated");
                return Ok(());
            }
            Arc::new(store)
        }
    };
    serve(cli.pingora, config, store)
}

/// Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default `info`), as plain
/// text or JSON lines; the access log is the `access` target.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Plain => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Runs a start-up step on a runtime of its own, dropped before Pingora builds its runtimes.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(f)
}

fn serve(mut opt: Opt, config: Config, store: Arc<dyn SessionStore>) -> anyhow::Result<()> {
    let orchestrator = HttpOrchestrator::new(
        &config.gateway.orchestrator.url,
        &config.gateway.orchestrator.sessions_path,
        config.orchestrator_timeout(),
    )
    .context("building the orchestrator client")?;
    let journal = Arc::new(
        Journal::open(&config.gateway.journal.path)
            .with_context(|| format!("gateway.journal.path: {}", config.gateway.journal.path))?,
    );
    let auth = match config.gateway.auth.mode {
        AuthMode::None => None,
        AuthMode::Forward => Some(
            ForwardAuth::new(
                config.gateway.auth.url.as_deref().unwrap_or_default(),
                Duration::from_millis(config.gateway.auth.timeout_ms),
            )
            .context("building the auth client")?,
        ),
    };
    // The native route runs on it start to finish, one worker per proxy thread.
    let durable = Arc::new(Durable::new(config.server.threads));
    let deps = Arc::new(Deps {
        store: store.clone(),
        orchestrator: Arc::new(orchestrator),
        locks: Default::default(),
        journal: journal.clone(),
        durable: durable.clone(),
        write_timeout: config.write_timeout(),
    });

    // How long the exit may wait for disconnects in flight.
    let drain_limit =
        config.orchestrator_timeout() + config.write_timeout() + Duration::from_secs(5);
    // The file was read by config::load; Pingora gets the parsed ServerConf.
    opt.conf = None;
    let mut server = Server::new_with_opt_and_conf(opt, config.server);
    server.bootstrap();
    let upstreams = match config.upstreams.as_slice() {
        [one] => proxy::Upstreams::One(Box::new(proxy::upstream_peer(
            *one,
            &config.gateway.upstream_timeouts,
        ))),
        many => {
            let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(many.iter().copied())
                .context("gateway.upstream")?;
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(Duration::from_millis(
                config.gateway.health_check.connect_timeout_ms,
            ));
            lb.set_health_check(check);
            lb.health_check_frequency = Some(Duration::from_millis(
                config.gateway.health_check.interval_ms,
            ));
            let checks = background_service("upstream health checks", lb);
            let lb = checks.task();
            server.add_service(checks);
            proxy::Upstreams::Balanced {
                lb,
                timeouts: config.gateway.upstream_timeouts.clone(),
            }
        }
    };
    let grace = Duration::from_secs(server.configuration.grace_period_seconds.unwrap_or(0));
    let request_ids = Arc::new(proxy::RequestIds::default());
    // The fast path relays to one address; with several, every request goes through
    // Pingora's load balancer.
    let fast_upstream = match (&upstreams, config.gateway.fast_path) {
        (proxy::Upstreams::One(_), true) => config.upstreams.first().copied(),
        _ => None,
    };
    let native_disconnect = config.gateway.routes.disconnect == RouteMode::Native;
    let app = pingora_proxy::http_proxy(
        &server.configuration,
        Gateway {
            upstreams,
            deps,
            native_disconnect,
            auth,
            access_log: config.gateway.access_log,
            request_ids: request_ids.clone(),
        },
    );
    let pingora_app = proxy::GracefulClose {
        inner: Arc::new(app),
        grace,
    };
    let listen = config.listen.to_string();
    match fast_upstream {
        Some(upstream) => {
            let fast = FastPath {
                inner: Arc::new(pingora_app),
                upstream,
                timeouts: config.gateway.upstream_timeouts.clone(),
                native_disconnect,
                access_log: config.gateway.access_log,
                request_ids,
                pool: Pool::new(server.configuration.upstream_keepalive_pool_size),
            };
            let mut proxy = pingora::services::listening::Service::new("proxy".to_owned(), fast);
            proxy.add_tcp(&listen);
            server.add_service(proxy);
        }
        None => {
            let mut proxy =
                pingora::services::listening::Service::new("proxy".to_owned(), pingora_app);
            proxy.add_tcp(&listen);
            server.add_service(proxy);
        }
    }
    let mut admin = pingora::services::listening::Service::new(
        "admin".to_owned(),
        Admin {
            store: store.clone(),
            upstreams: config.upstreams.clone(),
            probe_timeout: Duration::from_secs(2),
        },
    );
    admin.add_tcp(&config.admin_listen.to_string());
    server.add_service(admin);
    server.add_service(background_service(
        "owed-write replay",
        Replayer {
            journal,
            store,
            durable: durable.clone(),
            max_delay: Duration::from_millis(config.gateway.journal.max_retry_delay_ms),
        },
    ));
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        upstreams = ?config.upstreams,
        disconnect_route = ?config.gateway.routes.disconnect,
        auth = ?config.gateway.auth.mode,
        fast_path = fast_upstream.is_some(),
        threads = server.configuration.threads,
        "whatsapp-gateway starting"
    );
    server.run(RunArgs::default());

    // Pingora has stopped serving. Orchestrator calls still in flight finish and land in the
    // database or the journal before the process exits.
    let unfinished = durable.drain(drain_limit);
    if unfinished > 0 {
        tracing::error!(unfinished, "exiting with disconnects still in flight");
    }
    tracing::info!("whatsapp-gateway stopped");
    std::process::exit(0);
}

/// Starts the journal replay on the durable runtime once the server runs (after a daemon
/// fork, if any), and keeps the service alive until shutdown.
struct Replayer {
    journal: Arc<Journal>,
    store: Arc<dyn SessionStore>,
    durable: Arc<Durable>,
    max_delay: Duration,
}

#[async_trait::async_trait]
impl BackgroundService for Replayer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.durable.spawn_background(replay::run(
            self.journal.clone(),
            self.store.clone(),
            self.max_delay,
        ));
        let _ = shutdown.changed().await;
    }
}
