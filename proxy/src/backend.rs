//! A backend as the proxy sees it: its definition, resolved address, and live counters.
//!
//! `Backend` objects are shared (`Arc`) between snapshots: a rebuild that keeps a backend's
//! definition keeps its object, so health, in-flight counts and latency survive reloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use config::check::BackendUrl;
use config::{BackendConfig, ModelType};
use serde::Serialize;

use crate::health::HealthState;

/// Where a backend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The config file's `backends`.
    Config,
    /// `POST /backends/register` (persisted in the state file).
    Registered,
}

pub struct Backend {
    pub def: BackendConfig,
    pub source: Source,
    pub url: BackendUrl,
    pub model_type: ModelType,
    /// The address connections go to (resolved once, when the backend is defined).
    pub addr: SocketAddr,
    /// The `Host` header sent to it (`url`'s authority), made once.
    pub host_header: http::HeaderValue,
    /// The `Authorization` header sent to it (`Bearer` and its `api_key`), made once.
    pub authorization: Option<http::HeaderValue>,
    pub health: HealthState,
    inflight: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Latency EWMA in microseconds (time to the response header); 0 = no sample yet.
    ewma_us: AtomicU64,
    /// Queue depth reported by the backend's health endpoint; -1 = unknown.
    queue_depth: AtomicI64,
    /// Until when new requests avoid this backend (a 429 with `Retry-After`), in
    /// nanoseconds since `clock_base()`; 0 = not held off.
    held_off_until_ns: AtomicU64,
    /// What the `cache_aware` policy remembers of the prompts sent here (kept across
    /// snapshots, like the health state).
    pub prefix_record: parking_lot::Mutex<PrefixRecord>,
}

/// The prompt prefixes sent to one backend, as the `cache_aware` policy sees them: chained
/// hashes of a prompt's leading blocks ([`crate::routing::prompt_blocks`]), each with when it
/// was last sent, the least recently sent forgotten first beyond a bound. An approximation of
/// the backend's prefix cache, as SGLang's router keeps one radix tree per worker.
#[derive(Debug, Default)]
pub struct PrefixRecord {
    /// Chained block hash -> the clock when it was last sent.
    blocks: std::collections::HashMap<u64, u64>,
    clock: u64,
}

impl PrefixRecord {
    /// Forgets everything: the backend failed its health checks (a restarted server has an
    /// empty cache), so what was sent before says nothing about what it holds.
    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    /// Bytes of the longest leading run of `prefix` (chained hashes with the bytes up to and
    /// including each block) sent here before.
    pub fn matched(&self, prefix: &[(u64, usize)]) -> usize {
        prefix
            .iter()
            .take_while(|(h, _)| self.blocks.contains_key(h))
            .last()
            .map_or(0, |&(_, bytes)| bytes)
    }

    /// Remembers that `prefix` was sent here; beyond `max_blocks`, forgets the least recently
    /// sent fifth.
    pub fn record(&mut self, prefix: &[(u64, usize)], max_blocks: usize) {
        self.clock += 1;
        for &(h, _) in prefix {
            self.blocks.insert(h, self.clock);
        }
        if self.blocks.len() > max_blocks {
            let mut ticks: Vec<u64> = self.blocks.values().copied().collect();
            let cut = ticks.len() / 5;
            let (_, &mut threshold, _) = ticks.select_nth_unstable(cut);
            self.blocks.retain(|_, t| *t > threshold);
        }
    }

    /// Blocks remembered.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// The monotonic clock origin of `held_off_until_ns`.
fn clock_base() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
}

fn now_ns() -> u64 {
    clock_base().elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("def", &self.def)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Backend {
    pub fn new(def: BackendConfig, source: Source, url: BackendUrl, addr: SocketAddr) -> Self {
        let model_type = def.model_type;
        // Both are checked when the backend is defined (a URL's authority and a key are
        // header-safe); a value that is not is left out rather than sent broken.
        let host_header = http::HeaderValue::from_str(&url.authority())
            .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"));
        let authorization = def.api_key.as_ref().and_then(|k| {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {k}")).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Backend {
            def,
            source,
            url,
            model_type,
            addr,
            host_header,
            authorization,
            health: HealthState::new(),
            inflight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
            queue_depth: AtomicI64::new(-1),
            held_off_until_ns: AtomicU64::new(0),
            prefix_record: parking_lot::Mutex::new(PrefixRecord::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn serves(&self, model: &str) -> bool {
        self.def.models.iter().any(|m| m == model)
    }

    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Latency EWMA (alpha 0.2) of the time to the response header.
    pub fn record_latency(&self, d: Duration) {
        let sample = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            (old * 4 + sample) / 5
        };
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    pub fn latency_ewma(&self) -> Option<Duration> {
        match self.ewma_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn set_queue_depth(&self, depth: Option<u64>) {
        let v = depth.map_or(-1, |d| d.min(i64::MAX as u64) as i64);
        self.queue_depth.store(v, Ordering::Relaxed);
    }

    pub fn queue_depth(&self) -> Option<u64> {
        let v = self.queue_depth.load(Ordering::Relaxed);
        (v >= 0).then_some(v as u64)
    }

    /// Keep new requests off this backend for `d` (a 429's `Retry-After`): routing picks
    /// other backends first while it lasts.
    pub fn hold_off(&self, d: Duration) {
        let until = now_ns().saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.held_off_until_ns.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether a `Retry-After` still keeps new requests off this backend.
    pub fn held_off(&self) -> bool {
        let until = self.held_off_until_ns.load(Ordering::Relaxed);
        until != 0 && now_ns() < until
    }

    /// Count a request as in flight on this backend until the guard drops.
    pub fn start_request(self: &std::sync::Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }
}

/// Holds one in-flight slot of a backend; the slot is released when the attempt ends.
#[derive(Debug)]
pub struct InflightGuard(std::sync::Arc<Backend>);

impl InflightGuard {
    pub fn backend(&self) -> &std::sync::Arc<Backend> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
