//! Shared state: an `ArcSwap` snapshot that readers load without locking, rebuilt only when
//! the config or the registry changes. A request keeps the snapshot it started with.

use std::collections::{BTreeSet, HashMap, HashSet};
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
    /// The proxy-wasm plugins of `config` (kept across rebuilds that do not change them).
    pub plugins: Arc<crate::plugins::Plugins>,
}

impl Snapshot {
    /// The backend called `name`: the config file's by a scan (few), the registered ones by
    /// a binary search (they are ordered by name).
    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        let registered = self
            .backends
            .partition_point(|b| b.source == Source::Config);
        let (config, registered) = self.backends.split_at(registered);
        config
            .iter()
            .find(|b| b.name() == name)
            .or_else(|| registered_index(registered, name).map(|i| &registered[i]))
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
    /// Serializes registry changes and rebuilds: the registered backends as routed here.
    pub registry: tokio::sync::Mutex<Registry>,
    /// Where registrations are kept durably (`crate::store`): written first, then `registry`.
    pub store: Arc<dyn crate::store::StateStore>,
    pub metrics: Metrics,
    /// Wakes the health checker (a backend was added).
    pub health_wake: Notify,
    pub config_path: Option<PathBuf>,
    /// `GPT_OSS_LB_ADMIN_TOKEN`, read by the binary.
    pub admin_token_override: Option<String>,
    pub started: Instant,
    /// This process's `Via` id and listeners (loop detection, the address policy).
    pub identity: SelfIdentity,
    /// The Responses API's conversations (`responses_store`).
    pub conversations: Arc<crate::responses::Conversations>,
    /// Instances of each proxy-wasm plugin (the LB's worker threads).
    pub plugin_vms: usize,
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
        let plugins = self.load().plugins.clone();
        self.rebuild_with(config, registry, plugins).await
    }

    /// [`Shared::rebuild`] with the plugins `config` declares, loaded (a reload).
    pub async fn rebuild_with(
        &self,
        config: Arc<Config>,
        registry: &Registry,
        plugins: Arc<crate::plugins::Plugins>,
    ) {
        let old = self.load();
        let mut snapshot = build_snapshot(
            config,
            registry,
            &old.backends,
            self.admin_token_override.clone(),
            old.generation + 1,
            &self.identity,
        )
        .await;
        snapshot.plugins = plugins;
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
    let in_config: HashSet<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    let mut defs: Vec<(&BackendConfig, Source)> = config
        .backends
        .iter()
        .map(|b| (b, Source::Config))
        .collect();
    for d in registry.definitions() {
        if in_config.contains(d.name.as_str()) {
            tracing::warn!(backend = %d.name, "registered backend shadowed by the config file's backend of the same name");
            continue;
        }
        defs.push((d, Source::Registered));
    }

    // Backend objects whose definition did not change are kept (health, counters): found by
    // name, so a rebuild costs O(backends), not O(backends^2).
    let previous: HashMap<&str, &Arc<Backend>> = previous.iter().map(|b| (b.name(), b)).collect();
    let mut backends = Vec::with_capacity(defs.len());
    for (def, source) in defs {
        if let Some(prev) = previous
            .get(def.name.as_str())
            .filter(|b| b.def == *def && b.source == source)
        {
            backends.push(Arc::clone(prev));
            continue;
        }
        if let Some(b) = build_backend(def.clone(), source, &config, identity).await {
            backends.push(b);
        }
    }

    // Every backend under each model it lists, in `backends` order: one pass.
    let mut by_model: HashMap<&str, Vec<Arc<Backend>>> = HashMap::new();
    for b in &backends {
        for m in &b.def.models {
            by_model.entry(m.as_str()).or_default().push(Arc::clone(b));
        }
    }
    let by_name: HashMap<&str, &Arc<Backend>> = backends.iter().map(|b| (b.name(), b)).collect();
    let mut routes: HashMap<String, Arc<Route>> = HashMap::new();
    for rc in &config.routes {
        let group: Vec<Arc<Backend>> = if rc.backends.is_empty() {
            by_model.get(rc.model.as_str()).cloned().unwrap_or_default()
        } else {
            rc.backends
                .iter()
                .filter_map(|n| by_name.get(n.as_str()).map(|b| Arc::clone(b)))
                .collect()
        };
        let route = explicit_route(rc, group, &config.cache_aware);
        routes.insert(rc.model.clone(), route.clone());
        for a in &rc.aliases {
            routes.insert(a.clone(), route.clone());
        }
    }
    // Models with no explicit route: every backend that lists them, the default policy.
    let implicit: BTreeSet<&str> = by_model
        .keys()
        .copied()
        .filter(|m| !routes.contains_key(*m))
        .collect();
    for m in implicit {
        let group = by_model.remove(m).unwrap_or_default();
        routes.insert(m.to_string(), implicit_route(&config, m, group));
    }

    let admin_token = admin_token_override.or_else(|| config.admin.token.clone());
    let routes = RouteTable::new(routes, config.default_model.clone());
    Snapshot {
        config,
        admin_token,
        backends,
        routes,
        generation,
        plugins: Arc::default(),
    }
}

/// A backend object for `def`, once its URL parses and every address it resolves to passes
/// the address policy; `None` (logged) otherwise. The policy is checked on the address that
/// will be connected to, each time it is resolved: a name that resolves differently now than
/// at registration is checked again.
async fn build_backend(
    def: BackendConfig,
    source: Source,
    config: &Config,
    identity: &SelfIdentity,
) -> Option<Arc<Backend>> {
    let url = match config::check::backend_url(&def.url) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(backend = %def.name, error = %e, "skipping backend");
            return None;
        }
    };
    match resolve(&url).await {
        Ok(addrs) => match addrs
            .iter()
            .map(|a| check_backend_addr(a, &config.admin, identity).map(|()| *a))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(allowed) => Some(Arc::new(Backend::new(def, source, url, allowed[0]))),
            Err(e) => {
                tracing::error!(backend = %def.name, error = %e, "refusing backend address");
                None
            }
        },
        Err(e) => {
            tracing::error!(backend = %def.name, error = %e, "skipping backend");
            None
        }
    }
}

/// The route of a configured `routes:` entry over `group`.
fn explicit_route(
    rc: &config::RouteConfig,
    group: Vec<Arc<Backend>>,
    cache_aware: &config::CacheAwareConfig,
) -> Arc<Route> {
    Arc::new(Route {
        model: rc.model.clone(),
        upstream_model: rc.upstream_model.clone(),
        policy: policy::build(rc.policy, &group, cache_aware),
        policy_name: rc.policy,
        group,
        hash_key: rc.hash_key.clone(),
    })
}

/// The route of a model no `routes:` entry names: every backend that lists it, the default
/// policy.
fn implicit_route(config: &Config, model: &str, group: Vec<Arc<Backend>>) -> Arc<Route> {
    Arc::new(Route {
        model: model.to_string(),
        upstream_model: None,
        policy: policy::build(config.default_policy, &group, &config.cache_aware),
        policy_name: config.default_policy,
        group,
        hash_key: HashKey::User,
    })
}

/// Where the registered backend `name` is or goes in a list ordered as snapshots order
/// backends (the config file's first, then the registered ones by name): a binary search.
fn registered_position(list: &[Arc<Backend>], name: &str) -> usize {
    list.partition_point(|b| b.source == Source::Config || b.name() < name)
}

/// The index of the registered backend `name` in such a list.
fn registered_index(list: &[Arc<Backend>], name: &str) -> Option<usize> {
    let at = registered_position(list, name);
    list.get(at)
        .filter(|b| b.source == Source::Registered && b.name() == name)
        .map(|_| at)
}

/// `old` with the registered backend `name` replaced by `new` (removed when `None`, inserted
/// in order when absent): a binary search and a copy of the list's pointers.
fn with_backend(old: &[Arc<Backend>], name: &str, new: Option<&Arc<Backend>>) -> Vec<Arc<Backend>> {
    let at = registered_position(old, name);
    let skip = usize::from(registered_index(old, name).is_some());
    let mut list = Vec::with_capacity(old.len() + 1);
    list.extend_from_slice(&old[..at]);
    list.extend(new.cloned());
    list.extend_from_slice(&old[at + skip..]);
    list
}

impl Shared {
    /// Publish a snapshot in which only the registered backend `name` changed (registered,
    /// replaced or removed, as `registry` now says). The other backend objects are shared,
    /// and only the routes of the models the old or new definition lists (and `routes:`
    /// entries naming it) are rebuilt, so the cost does not depend on how many backends
    /// there are beyond copying the list of pointers. Call with the registry lock held.
    pub async fn update_registered(&self, registry: &Registry, name: &str) {
        let old = self.load();
        let config = Arc::clone(&old.config);
        if config.backends.iter().any(|b| b.name == name) {
            // Shadowed by the config file: the registry entry changes nothing served.
            return;
        }
        let before = registered_index(&old.backends, name).map(|i| Arc::clone(&old.backends[i]));
        let after = match registry.get(name) {
            Some(def) if before.as_ref().is_some_and(|b| b.def == *def) => return,
            Some(def) => {
                build_backend(def.clone(), Source::Registered, &config, &self.identity).await
            }
            None => None,
        };
        if before.is_none() && after.is_none() {
            return;
        }
        let backends = with_backend(&old.backends, name, after.as_ref());

        let mut models: BTreeSet<&str> = BTreeSet::new();
        for b in before.iter().chain(after.iter()) {
            models.extend(b.def.models.iter().map(String::as_str));
        }
        let mut routes: HashMap<String, Arc<Route>> = (*old.routes).clone();
        for rc in &config.routes {
            let group = if rc.backends.is_empty() {
                if !models.remove(rc.model.as_str()) {
                    continue;
                }
                let old_group = old.routes.get(&rc.model).map_or(&[][..], |r| &r.group[..]);
                with_backend(
                    old_group,
                    name,
                    after.as_ref().filter(|b| b.serves(&rc.model)),
                )
            } else if rc.backends.iter().any(|n| n == name) {
                rc.backends
                    .iter()
                    .filter_map(|n| backends.iter().find(|b| b.name() == n).cloned())
                    .collect()
            } else {
                continue;
            };
            let route = explicit_route(rc, group, &config.cache_aware);
            routes.insert(rc.model.clone(), route.clone());
            for a in &rc.aliases {
                routes.insert(a.clone(), route.clone());
            }
        }
        for m in models {
            let explicit = config
                .routes
                .iter()
                .any(|rc| rc.model == m || rc.aliases.iter().any(|a| a == m));
            if explicit {
                continue;
            }
            let old_group = old.routes.get(m).map_or(&[][..], |r| &r.group[..]);
            let group = with_backend(old_group, name, after.as_ref().filter(|b| b.serves(m)));
            if group.is_empty() {
                routes.remove(m);
            } else {
                routes.insert(m.to_string(), implicit_route(&config, m, group));
            }
        }

        let snapshot = Snapshot {
            admin_token: old.admin_token.clone(),
            routes: RouteTable::new(routes, config.default_model.clone()),
            config,
            backends,
            generation: old.generation + 1,
            plugins: old.plugins.clone(),
        };
        let generation = snapshot.generation;
        let n = snapshot.backends.len();
        self.snapshot.store(Arc::new(snapshot));
        self.health_wake.notify_one();
        tracing::debug!(generation, backends = n, backend = %name, "snapshot updated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{ModelType, Policy, RouteConfig};

    fn def(name: &str, models: &[&str], port: u16) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            url: format!("http://127.0.0.1:{port}"),
            model_type: ModelType::OpenAi,
            models: models.iter().map(|m| m.to_string()).collect(),
            weight: 1,
            api_key: None,
        }
    }

    fn config() -> Arc<Config> {
        let mut c = Config {
            backends: vec![def("from-yaml", &["m1"], 9)],
            ..Config::default()
        };
        c.routes.push(RouteConfig {
            model: "m2".into(),
            aliases: vec!["m2-alias".into()],
            backends: Vec::new(),
            policy: Policy::RoundRobin,
            hash_key: HashKey::User,
            upstream_model: None,
            plugins: Vec::new(),
        });
        c.routes.push(RouteConfig {
            model: "pinned".into(),
            aliases: Vec::new(),
            backends: vec!["b3".into(), "from-yaml".into()],
            policy: Policy::LeastOutstanding,
            hash_key: HashKey::User,
            upstream_model: None,
            plugins: Vec::new(),
        });
        Arc::new(c)
    }

    /// A route key, its route's model, and the names in its group.
    type RouteShape = (String, String, Vec<String>);

    /// Names of the backends and of each route's group, by route key.
    fn shape(s: &Snapshot) -> (Vec<String>, BTreeSet<RouteShape>) {
        let backends = s.backends.iter().map(|b| b.name().to_string()).collect();
        let routes = s
            .routes
            .iter()
            .map(|(k, r)| {
                let group = r.group.iter().map(|b| b.name().to_string()).collect();
                (k.clone(), r.model.clone(), group)
            })
            .collect();
        (backends, routes)
    }

    #[tokio::test]
    async fn an_incremental_update_gives_the_snapshot_a_full_rebuild_gives() {
        let identity = SelfIdentity::new(Vec::new());
        let config = config();
        let registry = Registry::default();
        let first = build_snapshot(config.clone(), &registry, &[], None, 1, &identity).await;
        let shared = Shared {
            snapshot: ArcSwap::from_pointee(first),
            registry: tokio::sync::Mutex::new(registry),
            store: Arc::new(
                crate::store::SqliteStore::open(None)
                    .await
                    .expect("an in-memory store"),
            ),
            metrics: Metrics::default(),
            health_wake: Notify::new(),
            config_path: None,
            admin_token_override: None,
            started: Instant::now(),
            identity: SelfIdentity::new(Vec::new()),
            conversations: Arc::new(crate::responses::Conversations::new(":memory:".into())),
            plugin_vms: 1,
        };
        let models: [&[&str]; 5] = [&["m1"], &["m2"], &["m3"], &["m1", "m3"], &["m2", "m4"]];
        // Registrations, replacements (other models, other port) and removals in an order
        // that inserts before, between and after existing names.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..120u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let name = format!("b{}", x % 12);
            let mut reg = shared.registry.lock().await;
            if x % 5 == 0 {
                reg.remove(&name);
            } else {
                let port = 10 + (x % 3) as u16;
                reg.insert(crate::registry::Registered {
                    def: def(&name, models[(x >> 8) as usize % 5], port),
                    lease: None,
                });
            }
            shared.update_registered(&reg, &name).await;
            let incremental = shared.load();
            let full = build_snapshot(
                config.clone(),
                &reg,
                &incremental.backends,
                None,
                0,
                &identity,
            )
            .await;
            assert_eq!(
                shape(&incremental),
                shape(&full),
                "step {step} ({name}): the incremental snapshot must equal a full rebuild"
            );
            let b = incremental.backend(&name);
            assert_eq!(
                b.map(|b| &b.def),
                reg.get(&name),
                "step {step}: backend() finds the registered {name} by binary search"
            );
            assert!(incremental.backend("from-yaml").is_some());
        }
    }
}
