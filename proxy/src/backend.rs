//! A backend as the proxy sees it: its definition, resolved address, and live counters.
//!
//! `Backend` objects are shared (`Arc`) between snapshots: a rebuild that keeps a backend's
//! definition keeps its object, so health, in-flight counts and latency survive reloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use config::check::BackendUrl;
use config::ModelType;
use serde::{Deserialize, Serialize};

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

/// What defines a backend. Two equal definitions are the same backend.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub url: String,
    pub model_type: String,
    pub models: Vec<String>,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl std::fmt::Debug for Definition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Definition")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("model_type", &self.model_type)
            .field("models", &self.models)
            .field("weight", &self.weight)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl From<&config::BackendConfig> for Definition {
    fn from(b: &config::BackendConfig) -> Self {
        Definition {
            name: b.name.clone(),
            url: b.url.clone(),
            model_type: b.model_type.as_str().to_string(),
            models: b.models.clone(),
            weight: b.weight,
            api_key: b.api_key.clone(),
        }
    }
}

pub struct Backend {
    pub def: Definition,
    pub source: Source,
    pub url: BackendUrl,
    pub model_type: ModelType,
    /// The address connections go to (resolved once, when the backend is defined).
    pub addr: SocketAddr,
    pub health: HealthState,
    inflight: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Latency EWMA in microseconds (time to the response header); 0 = no sample yet.
    ewma_us: AtomicU64,
    /// Queue depth reported by the backend's health endpoint; -1 = unknown.
    queue_depth: AtomicI64,
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
    pub fn new(def: Definition, source: Source, url: BackendUrl, addr: SocketAddr) -> Self {
        let model_type = ModelType::parse(&def.model_type).unwrap_or(ModelType::OpenAi);
        Backend {
            def,
            source,
            url,
            model_type,
            addr,
            health: HealthState::new(),
            inflight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
            queue_depth: AtomicI64::new(-1),
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
