//! Wiring only: CLI, config, store, services, run.

use anyhow::Context;
use clap::Parser;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use std::sync::Arc;
use whatsapp_gateway::config::{self, Config};
use whatsapp_gateway::disconnect::Deps;
use whatsapp_gateway::orchestrator::HttpOrchestrator;
use whatsapp_gateway::proxy::Gateway;
use whatsapp_gateway::store::{Backend, PoolSettings, PostgresStore, SessionStore, SqliteStore};

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

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run() {
        eprintln!("whatsapp-gateway: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::load(cli.pingora.conf.as_deref(), |k| std::env::var(k).ok())?;
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
    let deps = Arc::new(Deps {
        store,
        orchestrator: Arc::new(orchestrator),
        locks: Default::default(),
    });

    // The file was read by config::load; Pingora gets the parsed ServerConf.
    opt.conf = None;
    let mut server = Server::new_with_opt_and_conf(opt, config.server);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Gateway {
            upstream: config.upstream,
            deps,
        },
    );
    proxy.add_tcp(&config.listen.to_string());
    server.add_service(proxy);
    tracing::info!(
        listen = %config.listen,
        upstream = %config.upstream,
        threads = server.configuration.threads,
        "whatsapp-gateway starting"
    );
    server.run_forever();
}
