//! `gpt-oss-lb` binary.
//!
//! ```text
//! gpt-oss-lb --port 8080 --config lb.yaml
//! curl localhost:8080/health
//! ```
//!
//! Graceful upgrade (a new binary takes over the listening socket, no request dropped):
//! ```text
//! gpt-oss-lb --config lb.yaml --upgrade-sock /tmp/lb.sock --upgrade &   # new process waits for the socket
//! kill -QUIT <old pid>                                                   # old hands it over and drains
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::Parser;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use gpt_oss_lb::address::SelfIdentity;
use gpt_oss_lb::control::ControlPlane;
use gpt_oss_lb::metrics::Metrics;
use gpt_oss_lb::proxy::Lb;
use gpt_oss_lb::registry::Registry;
use gpt_oss_lb::state::{build_snapshot, Shared};

// mimalloc: Pingora allocates ~140 times per proxied request; glibc malloc was 16% of
// the LB's instructions (benches/proxy/instructions.py: 138k -> 116k per request).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variable that holds the admin token (overrides the config's).
const ADMIN_TOKEN_ENV: &str = "GPT_OSS_LB_ADMIN_TOKEN";

#[derive(Parser, Debug)]
#[command(
    name = "gpt-oss-lb",
    version,
    about = "Pingora load balancer for gpt-oss model servers"
)]
struct Args {
    /// Host to bind (overrides the config's `listen`).
    #[arg(long)]
    host: Option<String>,
    /// Port to bind (overrides the config's `listen`).
    #[arg(long)]
    port: Option<u16>,
    /// YAML config file; re-read when it changes or on SIGHUP.
    #[arg(long)]
    config: Option<PathBuf>,
    /// SQLite database for registered backends (overrides the config's `state_file`; a JSON
    /// state file of an earlier version there is migrated). Not with a `state_store`.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// SQLite file where the Responses API's conversations are kept (overrides the config's
    /// `responses_store`; `:memory:` keeps them for the life of the process). Default:
    /// `$XDG_DATA_HOME/gpt-oss-lb/responses.sqlite` (`~/.local/share/...`).
    #[arg(long)]
    responses_store: Option<PathBuf>,
    /// Take over the listening socket from a running instance (graceful upgrade).
    #[arg(short = 'u', long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Validate the config and exit.
    #[arg(short = 't', long)]
    test: bool,
    /// Unix socket used to hand the listener over during a graceful upgrade.
    #[arg(long, default_value = "/tmp/gpt-oss-lb-upgrade.sock")]
    upgrade_sock: String,
    /// PID file (used with --daemon).
    #[arg(long, default_value = "/tmp/gpt-oss-lb.pid")]
    pid_file: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds to keep serving in-flight requests after SIGTERM/SIGQUIT.
    #[arg(long, default_value_t = 5)]
    grace_period: u64,
}

fn main() -> anyhow::Result<()> {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora=warn"));
    // Pingora logs whole request headers (client and backend `Authorization` included) and
    // bodies at debug/trace: its crates stay at info whatever RUST_LOG says, so secrets never
    // reach the log (tests/security.rs runs the LB with RUST_LOG=debug).
    for quiet in ["pingora_proxy=info", "pingora_core=info"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let config = match &args.config {
        Some(p) => {
            config::Config::from_file(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => config::Config::default(),
    };
    // Plugins are compiled and configured before serving; one that cannot be is an error.
    let vms = args.threads.max(1);
    let plugins = gpt_oss_lb::plugins::Plugins::load(
        &config,
        &gpt_oss_lb::plugins::Plugins::default(),
        if args.test { 1 } else { vms },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.state_store.is_some() {
        for (flag, set) in [
            ("--state-file", args.state_file.is_some()),
            ("--responses-store", args.responses_store.is_some()),
        ] {
            if set {
                anyhow::bail!("{flag} cannot be used with state_store (PostgreSQL keeps the registry and the conversations)");
            }
        }
    }
    if args.test {
        println!("config OK");
        return Ok(());
    }
    let listen = match (&args.host, args.port, &config.listen) {
        (h, p, Some(l)) if h.is_none() && p.is_none() => l.clone(),
        (h, p, l) => {
            let (lh, lp) = l
                .as_deref()
                .and_then(|l| l.rsplit_once(':'))
                .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(8080)))
                .unwrap_or_else(|| ("0.0.0.0".to_string(), 8080));
            let host = h.clone().unwrap_or(lh);
            let port = p.unwrap_or(lp);
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
    };
    let state_file = args
        .state_file
        .clone()
        .or_else(|| config.state_file.as_ref().map(PathBuf::from));
    let admin_token_override = std::env::var(ADMIN_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty());
    let config = Arc::new(config);

    // The first snapshot resolves backend hosts; build it before the server starts.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the startup runtime")?;
    let listeners: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&listen)
        .map(|a| a.collect())
        .unwrap_or_default();
    let identity = SelfIdentity::new(listeners);
    // The state store, and the registrations it holds.
    let (store, registered) = rt
        .block_on(gpt_oss_lb::store::open(&config, state_file.as_deref()))
        .context("opening the state store")?;
    let registry = Registry::from_entries(registered);
    let mut snapshot = rt.block_on(build_snapshot(
        config.clone(),
        &registry,
        &[],
        admin_token_override.clone(),
        1,
        &identity,
    ));
    snapshot.plugins = Arc::new(plugins);
    let conversations = match store.responses() {
        Some(shared_store) => {
            gpt_oss_lb::responses::Conversations::in_store(shared_store, store.describe())
        }
        None => {
            let path = args
                .responses_store
                .clone()
                .or_else(|| config.responses_store.as_ref().map(PathBuf::from))
                .unwrap_or_else(gpt_oss_lb::responses::Conversations::default_path);
            // A store that cannot be opened stops the LB now, not at the first request.
            rt.block_on(responses_store::ResponseStore::open(&path))
                .with_context(|| format!("opening the responses store {}", path.display()))?;
            gpt_oss_lb::responses::Conversations::new(path)
        }
    };
    tracing::info!(
        listen = %listen,
        backends = snapshot.backends.len(),
        routes = snapshot.routes.len(),
        state_store = %store.describe(),
        registered = registry.len(),
        responses_store = %conversations.path().display(),
        admin_auth = if snapshot.admin_token.is_some() { "token" } else { "loopback-only" },
        "starting gpt-oss-lb"
    );

    let metrics = Metrics::default();
    // the store answered at start
    metrics
        .state_store_up
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        registry: tokio::sync::Mutex::new(registry),
        store,
        metrics,
        health_wake: tokio::sync::Notify::new(),
        config_path: args.config.clone(),
        admin_token_override,
        started: Instant::now(),
        identity,
        conversations: Arc::new(conversations),
        plugin_vms: vms,
    });

    // One health round before serving: backends that answer are routable from the first
    // request (a new backend otherwise waits for its first good check). This matters most
    // for a graceful upgrade, where the new process takes over a socket with traffic on it.
    rt.block_on(gpt_oss_lb::control::initial_health_round(&shared));
    drop(rt);

    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let conf = ServerConf {
        threads: args.threads.max(1),
        upgrade_sock: args.upgrade_sock.clone(),
        pid_file: args.pid_file.clone(),
        grace_period_seconds: Some(args.grace_period),
        graceful_shutdown_timeout_seconds: Some(args.grace_period + 5),
        // Attempts are bounded by `retries.max_attempts` (at most 10) in our hooks.
        max_retries: 16,
        // Keep an idle upstream connection for every concurrent request we expect: with
        // Pingora's default of 128, 256 concurrent clients make ~7% of requests open a new
        // upstream connection (measured with strace in benches/proxy).
        upstream_keepalive_pool_size: 1024,
        // CAs for `https://` backends (system roots when unset).
        ca_file: config.upstream_tls.ca_file.clone(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, Lb::new(shared.clone()));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.add_service(pingora::services::background::background_service(
        "control plane",
        ControlPlane { shared },
    ));
    server.run_forever()
}
