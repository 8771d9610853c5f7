//! Shared state: an `ArcSwap` snapshot that readers load without locking, rebuilt only when
//! the config or the registry changes. A request keeps the snapshot it started with.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use config::{Config, HashKey};
use tokio::sync::Notify;

use crate::address::{check_backend_addr, SelfIdentity};
use crate::backend::{Backend, Source};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::routing::policy;
use crate::routing::{Route, RouteTable};
use config::BackendConfig;

/// One immutable view of the world.
pub struct Snapshot {
    pub config: Arc<Config>,
    /// The admin token in force (environment over config).
    pub admin_token: Option<String>,
    pub backends: Vec<Arc<Backend>>,
    /// Model names and aliases to routes.
    pub routes: RouteTable,
    pub generation: u64,
}

impl Snapshot {
    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.name() == name)
    }

    /// The model for requests that name none (see `RouteTable::default_model`).
    pub fn default_model(&self) -> Option<String> {
        self.routes.default_model()
    }

    /// Models (and aliases) that have at least one healthy backend, sorted.
    pub fn available_models(&self) -> Vec<String> {
        self.routes.available_models()
    }
}

/// Everything the proxy phases and the control plane share.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Serializes registry changes and rebuilds.
    pub registry: tokio::sync::Mutex<Registry>,
    pub metrics: Metrics,
    /// Wakes the health checker (a backend was added).
    pub health_wake: Notify,
    pub config_path: Option<PathBuf>,
    /// `GPT_OSS_LB_ADMIN_TOKEN`, read by the binary.
    pub admin_token_override: Option<String>,
    pub started: Instant,
    /// This process's `Via` id and listeners (loop detection, the address policy).
    pub identity: SelfIdentity,
}

/// Resolve `host:port` to the first address.
pub async fn resolve(url: &config::check::BackendUrl) -> Result<Vec<SocketAddr>, String> {
    let target = url.authority();
    let fut = tokio::net::lookup_host(target.clone());
    match tokio::time::timeout(std::time::Duration::from_secs(5), fut).await {
        Ok(Ok(addrs)) => {
            let v: Vec<SocketAddr> = addrs.collect();
            if v.is_empty() {
                Err(format!("host '{}' has no address", url.host))
            } else {
                Ok(v)
            }
        }
        Ok(Err(e)) => Err(format!("cannot resolve host '{}': {e}", url.host)),
        Err(_) => Err(format!("resolving host '{}' timed out", url.host)),
    }
}

impl Shared {
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Build a new snapshot from `config` and `registry`, reusing backend objects whose
    /// definition did not change, and publish it. Call with the registry lock held.
    pub async fn rebuild(&self, config: Arc<Config>, registry: &Registry) {
        let old = self.load();
        let snapshot = build_snapshot(
            config,
            registry,
            &old.backends,
            self.admin_token_override.clone(),
            old.generation + 1,
            &self.identity,
        )
        .await;
        let n = snapshot.backends.len();
        let generation = snapshot.generation;
        self.snapshot.store(Arc::new(snapshot));
        self.health_wake.notify_one();
        tracing::info!(generation, backends = n, "snapshot published");
    }
}

pub async fn build_snapshot(
    config: Arc<Config>,
    registry: &Registry,
    previous: &[Arc<Backend>],
    admin_token_override: Option<String>,
    generation: u64,
    identity: &SelfIdentity,
) -> Snapshot {
    let mut defs: Vec<(BackendConfig, Source)> = config
        .backends
        .iter()
        .map(|b| (b.clone(), Source::Config))
        .collect();
    for d in registry.definitions() {
        if defs.iter().any(|(c, _)| c.name == d.name) {
            tracing::warn!(backend = %d.name, "registered backend shadowed by the config file's backend of the same name");
            continue;
        }
        defs.push((d.clone(), Source::Registered));
    }

    // Backend objects whose definition did not change are kept (health, counters): found by
    // name, so a rebuild costs O(backends), not O(backends^2).
    let previous: HashMap<&str, &Arc<Backend>> = previous.iter().map(|b| (b.name(), b)).collect();
    let mut backends = Vec::with_capacity(defs.len());
    for (def, source) in defs {
        if let Some(prev) = previous
            .get(def.name.as_str())
            .filter(|b| b.def == def && b.source == source)
        {
            backends.push(Arc::clone(prev));
            continue;
        }
        let url = match config::check::backend_url(&def.url) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(backend = %def.name, error = %e, "skipping backend");
                continue;
            }
        };
        // The address policy is checked on the address that will be connected to, each time
        // it is resolved: a name that resolves differently now than at registration is
        // checked again.
        match resolve(&url).await {
            Ok(addrs) => match addrs
                .iter()
                .map(|a| check_backend_addr(a, &config.admin, identity).map(|()| *a))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(allowed) => backends.push(Arc::new(Backend::new(def, source, url, allowed[0]))),
                Err(e) => {
                    tracing::error!(backend = %def.name, error = %e, "refusing backend address")
                }
            },
            Err(e) => tracing::error!(backend = %def.name, error = %e, "skipping backend"),
        }
    }

    let mut routes: HashMap<String, Arc<Route>> = HashMap::new();
    for rc in &config.routes {
        let group: Vec<Arc<Backend>> = if rc.backends.is_empty() {
            backends
                .iter()
                .filter(|b| b.serves(&rc.model))
                .cloned()
                .collect()
        } else {
            rc.backends
                .iter()
                .filter_map(|n| backends.iter().find(|b| b.name() == n).cloned())
                .collect()
        };
        let route = Arc::new(Route {
            model: rc.model.clone(),
            upstream_model: rc.upstream_model.clone(),
            policy: policy::build(rc.policy, &group),
            policy_name: rc.policy,
            group,
            hash_key: rc.hash_key.clone(),
        });
        routes.insert(rc.model.clone(), route.clone());
        for a in &rc.aliases {
            routes.insert(a.clone(), route.clone());
        }
    }
    // Models with no explicit route: every backend that lists them, the default policy.
    let mut implicit: BTreeSet<&str> = BTreeSet::new();
    for b in &backends {
        for m in &b.def.models {
            if !routes.contains_key(m) {
                implicit.insert(m);
            }
        }
    }
    for m in implicit {
        let group: Vec<Arc<Backend>> = backends.iter().filter(|b| b.serves(m)).cloned().collect();
        routes.insert(
            m.to_string(),
            Arc::new(Route {
                model: m.to_string(),
                upstream_model: None,
                policy: policy::build(config.default_policy, &group),
                policy_name: config.default_policy,
                group,
                hash_key: HashKey::User,
            }),
        );
    }

    let admin_token = admin_token_override.or_else(|| config.admin.token.clone());
    let routes = RouteTable::new(routes, config.default_model.clone());
    Snapshot {
        config,
        admin_token,
        backends,
        routes,
        generation,
    }
}
