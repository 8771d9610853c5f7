//! The control plane, run as a Pingora background service: active health checks, config
//! hot reload (file mtime poll and SIGHUP), the expiry of registration leases, and, for
//! replicas sharing a PostgreSQL state store, the changes other replicas make.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::health::Status;
use crate::state::Shared;

pub struct ControlPlane {
    pub shared: Arc<Shared>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-read the config file; on success publish a new snapshot, on failure keep the old one.
pub async fn reload(shared: &Shared) -> bool {
    let Some(path) = shared.config_path.clone() else {
        return false;
    };
    let previous = shared.load().plugins.clone();
    let vms = shared.plugin_vms;
    // compiling plugins is CPU work: off the async threads
    let parsed = tokio::task::spawn_blocking(move || {
        let cfg = config::Config::from_file(&path).map_err(|e| e.to_string())?;
        let plugins = crate::plugins::Plugins::load(&cfg, &previous, vms)?;
        Ok::<_, String>((cfg, plugins))
    })
    .await;
    match parsed {
        Ok(Ok((cfg, plugins))) => {
            if cfg.state_store != shared.load().config.state_store {
                tracing::warn!(
                    "state_store changed in the config file: it takes effect at the next start"
                );
            }
            let reg = shared.registry.lock().await;
            shared
                .rebuild_with(Arc::new(cfg), &reg, Arc::new(plugins))
                .await;
            shared
                .metrics
                .config_reloads
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!("config reloaded");
            true
        }
        Ok(Err(e)) => {
            shared
                .metrics
                .config_reload_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "config reload rejected; keeping the previous config");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload task failed");
            false
        }
    }
}

/// The connector of health checks: `https://` backends are reached with the same CAs as
/// proxied requests.
fn health_connector(shared: &Shared) -> Connector {
    let mut options = pingora::connectors::ConnectorOptions::new(64);
    options.ca_file = shared.load().config.upstream_tls.ca_file.clone();
    Connector::new(Some(options))
}

/// Check every backend once, concurrently (bounded by the health check timeout).
pub async fn initial_health_round(shared: &Shared) {
    let connector = Arc::new(health_connector(shared));
    health_round(&connector, &shared.load(), None, false).await;
}

/// One check of each backend of `snap` that is due, concurrently. With `spread`, the checks'
/// starts are spread evenly over that time (so thousands of backends are not all probed in
/// the same millisecond), else they all start at once. With `unsettled_only`, only backends
/// waiting for a verdict (pending, half-open, or ejected and due) are probed.
async fn health_round(
    connector: &Arc<Connector>,
    snap: &crate::state::Snapshot,
    spread: Option<std::time::Duration>,
    unsettled_only: bool,
) {
    let cfg = &snap.config.health_check;
    let tls = &snap.config.upstream_tls;
    let n = snap.backends.len().max(1) as u32;
    let mut set = tokio::task::JoinSet::new();
    for (i, b) in snap.backends.iter().cloned().enumerate() {
        // A task only for a backend that is due: a round over thousands of backends of
        // which a few are new costs a few tasks, not thousands.
        if !b.health.due_for_check(cfg) {
            continue;
        }
        if unsettled_only && matches!(b.health.status(), Status::Healthy | Status::Unhealthy) {
            continue;
        }
        let (cfg, tls, conn) = (cfg.clone(), tls.clone(), connector.clone());
        let offset = spread.map_or(std::time::Duration::ZERO, |s| s / n * i as u32);
        set.spawn(async move {
            tokio::time::sleep(offset).await;
            crate::health_check::check_one(&conn, b, &cfg, &tls).await
        });
    }
    while set.join_next().await.is_some() {}
}

async fn health_loop(shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let connector = Arc::new(health_connector(&shared));
    // The full round in flight (or last finished), and when it started.
    let mut full: Option<(tokio::time::Instant, tokio::task::JoinHandle<()>)> = None;
    loop {
        let snap = shared.load();
        let started = tokio::time::Instant::now();
        let interval = snap.config.health_check.interval;
        let delay = crate::health_check::next_delay(&snap.backends, &snap.config.health_check);
        // Every backend is checked once per interval, the checks spread over most of it, on a
        // task of their own: a full round never probes the whole registry at once, even while
        // registrations stream in. While some backends wait for a verdict (pending, half-open:
        // short delay), the rounds in between probe only those, at once.
        let full_due = full
            .as_ref()
            .is_none_or(|(at, round)| round.is_finished() && at.elapsed() >= interval);
        if full_due {
            let spread = (snap.backends.len() > 1).then(|| interval.mul_f32(0.8));
            let (connector, snap) = (connector.clone(), snap.clone());
            let round =
                tokio::spawn(async move { health_round(&connector, &snap, spread, false).await });
            full = Some((started, round));
        }
        if delay < interval {
            health_round(&connector, &snap, None, true).await;
        }
        let delay = delay.saturating_sub(started.elapsed());
        drop(snap);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.health_wake.notified() => {
                // A backend was added: a short pause lets a stream of registrations share one
                // round (each round looks at every backend) instead of one round each.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = shutdown.changed() => {
                if let Some((_, round)) = full {
                    round.abort();
                }
                return;
            }
        }
    }
}

/// Drops registrations whose lease ran out (`admin::expire_leases`), every 250 ms. After the
/// state store was out of reach, every lease is first renewed whole (`StateStore::renew_all`):
/// the servers could not renew meanwhile, and are not dropped for it.
async fn lease_loop(shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let mut store_down = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let m = &shared.metrics;
                if store_down {
                    match shared.store.renew_all().await {
                        Ok(()) => {
                            store_down = false;
                            tracing::info!("state store reachable again: every lease renewed");
                        }
                        Err(_) => {
                            m.state_store_failures.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                match crate::admin::expire_leases(&shared).await {
                    Ok(()) => m.state_store_up.store(1, Ordering::Relaxed),
                    Err(e) => {
                        m.state_store_failures.fetch_add(1, Ordering::Relaxed);
                        m.state_store_up.store(0, Ordering::Relaxed);
                        // once per outage, not every 250 ms
                        if !store_down {
                            tracing::error!(error = %e, "cannot expire leases until the state store is back");
                        }
                        store_down = true;
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// What the change feed's task reports.
enum Change {
    /// A backend changed (the name from a notification).
    Backend(String),
    /// Notifications may have been missed (the feed was down, or just (re)started): resync.
    Gap,
}

/// Follows the state store's change feed on a task of its own (so that the resync timer
/// never cancels a read of it), reconnecting with backoff (250 ms doubling to 5 s).
async fn feed_task(shared: Arc<Shared>, tx: tokio::sync::mpsc::Sender<Change>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut feed = match shared.store.subscribe().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for state store changes; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // changes made before LISTEN took effect are not in the feed
        if tx.send(Change::Gap).await.is_err() {
            return;
        }
        backoff = Duration::from_millis(250);
        loop {
            let change = match feed.next().await {
                Ok(Some(name)) => Change::Backend(name),
                Ok(None) => Change::Gap,
                Err(e) => {
                    tracing::error!(error = %e, "lost the state store's change feed; reconnecting");
                    break;
                }
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Applies other replicas' changes as they are announced, and reloads the whole registry
/// after a gap in the announcements and every `state_store.resync_interval` (a safety net).
/// Only for a store that others share (PostgreSQL).
async fn replica_loop(shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let Some(interval) = shared
        .load()
        .config
        .state_store
        .as_ref()
        .map(|s| s.resync_interval)
    else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let feed = tokio::spawn(feed_task(shared.clone(), tx));
    let mut resync_due = tokio::time::Instant::now() + interval;
    let mut behind = false;
    let mut failing = false;
    loop {
        tokio::select! {
            change = rx.recv() => match change {
                Some(Change::Backend(name)) => {
                    if let Err(e) = crate::admin::apply_change(&shared, &name).await {
                        shared.metrics.state_store_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(backend = %name, error = %e, "cannot read a changed backend; will resync");
                        behind = true;
                    }
                }
                Some(Change::Gap) => behind = true,
                None => break,
            },
            _ = tokio::time::sleep_until(resync_due) => behind = true,
            _ = shutdown.changed() => break,
        }
        if behind {
            match crate::admin::resync(&shared).await {
                Ok(_) => {
                    shared
                        .metrics
                        .state_store_resyncs
                        .fetch_add(1, Ordering::Relaxed);
                    if failing {
                        tracing::info!("resynced from the state store");
                    }
                    behind = false;
                    failing = false;
                    resync_due = tokio::time::Instant::now() + interval;
                }
                Err(e) => {
                    shared
                        .metrics
                        .state_store_failures
                        .fetch_add(1, Ordering::Relaxed);
                    // once per outage, then retried every 500 ms quietly
                    if !failing {
                        tracing::error!(error = %e, "cannot resync from the state store; routing from the last snapshot");
                    }
                    failing = true;
                    resync_due = tokio::time::Instant::now() + Duration::from_millis(500);
                }
            }
        }
    }
    feed.abort();
}

async fn reload_loop(shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let Some(path) = shared.config_path.clone() else {
        return;
    };
    let mut last = mtime(&path);
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload by file change only");
            None
        }
    };
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let now = mtime(&path);
                if now != last {
                    last = now;
                    tracing::info!(path = %path.display(), "config file changed");
                    reload(&shared).await;
                }
            }
            _ = hup_recv => {
                tracing::info!("SIGHUP: reloading config");
                last = mtime(&path);
                reload(&shared).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[async_trait]
impl BackgroundService for ControlPlane {
    async fn start(&self, shutdown: ShutdownWatch) {
        let h = tokio::spawn(health_loop(self.shared.clone(), shutdown.clone()));
        let r = tokio::spawn(reload_loop(self.shared.clone(), shutdown.clone()));
        let l = tokio::spawn(lease_loop(self.shared.clone(), shutdown.clone()));
        let s = tokio::spawn(replica_loop(self.shared.clone(), shutdown.clone()));
        for (name, j) in [("health", h), ("reload", r), ("leases", l), ("replicas", s)] {
            if let Err(e) = j.await {
                tracing::error!(task = name, error = %e, "control task ended abnormally");
            }
        }
    }
}
