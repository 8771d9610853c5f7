//! Backend health: the state machine (active checks, passive ejection, half-open probe) and
//! the active checker.
//!
//! Why not `pingora-load-balancing`'s health checks: its `Backends` start every new backend
//! as healthy and flip it after `consecutive_failure` failed checks, so a freshly registered
//! backend would get traffic before it was ever checked; its `HttpHealthCheck` validates only
//! the response header, and we need the `/health` body for `queue_aware` routing; and it has no
//! notion of passive ejection with a cooldown and a half-open probe. This module implements
//! exactly those rules; selection still uses pingora-load-balancing (see `policy`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use config::HealthCheckConfig;
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use serde::Serialize;

use crate::backend::Backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never checked successfully: gets no traffic.
    Pending,
    Healthy,
    /// Failed `unhealthy_threshold` active checks.
    Unhealthy,
    /// Failed `passive_failures` requests in a row (or its half-open probe): waits for the
    /// cooldown, then is probed.
    Ejected,
    /// Probe passed after ejection; returns after `healthy_threshold` good checks.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    status: Status,
    ok_streak: u32,
    fail_streak: u32,
    passive_fail_streak: u32,
    ejected_at: Option<Instant>,
    last_check: Option<SystemTime>,
    last_error: Option<String>,
}

/// The health of one backend. `routable()` is a lock-free read on the request path.
#[derive(Debug)]
pub struct HealthState {
    routable: AtomicBool,
    inner: Mutex<Inner>,
}

/// A copy of the health for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    pub status: Status,
    pub last_check_unix_ms: Option<u64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthState {
    pub fn new() -> Self {
        HealthState {
            routable: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                status: Status::Pending,
                ok_streak: 0,
                fail_streak: 0,
                passive_fail_streak: 0,
                ejected_at: None,
                last_check: None,
                last_error: None,
            }),
        }
    }

    pub fn routable(&self) -> bool {
        self.routable.load(Ordering::Acquire)
    }

    pub fn status(&self) -> Status {
        self.inner.lock().status
    }

    pub fn view(&self) -> HealthView {
        let i = self.inner.lock();
        HealthView {
            status: i.status,
            last_check_unix_ms: i.last_check.and_then(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            }),
            last_error: i.last_error.clone(),
            consecutive_failures: i.fail_streak.max(i.passive_fail_streak),
        }
    }

    fn set(&self, i: &mut Inner, status: Status) {
        i.status = status;
        if status == Status::Ejected {
            i.ejected_at = Some(Instant::now());
        }
        self.routable
            .store(status == Status::Healthy, Ordering::Release);
    }

    /// Whether the active checker should probe now (false while an ejection cools down).
    pub fn due_for_check(&self, cfg: &HealthCheckConfig) -> bool {
        let i = self.inner.lock();
        match (i.status, i.ejected_at) {
            (Status::Ejected, Some(at)) => at.elapsed() >= cfg.ejection_cooldown,
            _ => true,
        }
    }

    /// Record an active check. Returns the new status when it changed.
    pub fn on_check(&self, ok: Result<(), String>, cfg: &HealthCheckConfig) -> Option<Status> {
        let mut i = self.inner.lock();
        let before = i.status;
        i.last_check = Some(SystemTime::now());
        match ok {
            Ok(()) => {
                i.ok_streak = i.ok_streak.saturating_add(1);
                i.fail_streak = 0;
                i.last_error = None;
                match i.status {
                    // A new backend gets traffic after its first good check.
                    Status::Pending => self.set(&mut i, Status::Healthy),
                    Status::Unhealthy | Status::HalfOpen
                        if i.ok_streak >= cfg.healthy_threshold =>
                    {
                        i.passive_fail_streak = 0;
                        self.set(&mut i, Status::Healthy)
                    }
                    // This good check is the half-open probe after the cooldown.
                    Status::Ejected => {
                        i.passive_fail_streak = 0;
                        if i.ok_streak >= cfg.healthy_threshold {
                            self.set(&mut i, Status::Healthy)
                        } else {
                            self.set(&mut i, Status::HalfOpen)
                        }
                    }
                    _ => {}
                }
            }
            Err(e) => {
                i.ok_streak = 0;
                i.fail_streak = i.fail_streak.saturating_add(1);
                i.last_error = Some(e);
                match i.status {
                    Status::Healthy if i.fail_streak >= cfg.unhealthy_threshold => {
                        self.set(&mut i, Status::Unhealthy)
                    }
                    Status::HalfOpen | Status::Ejected => self.set(&mut i, Status::Ejected),
                    _ => {}
                }
            }
        }
        (i.status != before).then_some(i.status)
    }

    /// A request to this backend failed (connect error, timeout, 5xx, broken stream).
    pub fn on_request_failure(&self, cfg: &HealthCheckConfig, why: &str) -> Option<Status> {
        let mut i = self.inner.lock();
        i.passive_fail_streak = i.passive_fail_streak.saturating_add(1);
        i.last_error = Some(why.to_string());
        if i.status == Status::Healthy && i.passive_fail_streak >= cfg.passive_failures {
            i.ok_streak = 0;
            self.set(&mut i, Status::Ejected);
            return Some(Status::Ejected);
        }
        None
    }

    pub fn on_request_success(&self) {
        let mut i = self.inner.lock();
        i.passive_fail_streak = 0;
    }
}

/// The queue depth a backend reports in its health JSON, under any of the names servers use.
pub fn parse_queue_depth(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let num = |v: &serde_json::Value| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64));
    const KEYS: &[&str] = &[
        "queue_depth",
        "queue_size",
        "queued",
        "waiting",
        "pending",
        "queue_length",
    ];
    for k in KEYS {
        if let Some(n) = v.get(*k).and_then(num) {
            return Some(n);
        }
    }
    let q = v.get("queue")?;
    if let Some(n) = num(q) {
        return Some(n);
    }
    // gpt-oss-server: {"queue": {"running", "waiting", ...}}: requests ahead of a new one.
    if let Some(w) = q.get("waiting").and_then(num) {
        return Some(w.saturating_add(q.get("running").and_then(num).unwrap_or(0)));
    }
    for k in KEYS.iter().chain(&["depth", "size", "length"]) {
        if let Some(n) = q.get(*k).and_then(num) {
            return Some(n);
        }
    }
    None
}

/// One GET of the health path. Ok(body) on a 2xx.
pub async fn probe(
    connector: &Connector,
    backend: &Backend,
    cfg: &HealthCheckConfig,
    tls: &config::UpstreamTlsConfig,
) -> Result<Bytes, String> {
    let fut = async {
        let mut peer = HttpPeer::new(backend.addr, backend.url.tls, backend.url.host.clone());
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
        peer.options.connection_timeout = Some(cfg.timeout);
        peer.options.read_timeout = Some(cfg.timeout);
        peer.options.write_timeout = Some(cfg.timeout);
        let (mut s, _reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
        let path = format!("{}{}", backend.url.prefix, cfg.path);
        let mut req = RequestHeader::build("GET", path.as_bytes(), None)
            .map_err(|e| format!("request: {e}"))?;
        req.insert_header("host", backend.url.authority())
            .map_err(|e| format!("request: {e}"))?;
        req.insert_header("user-agent", "gpt-oss-lb-health")
            .map_err(|e| format!("request: {e}"))?;
        if let Some(key) = &backend.def.api_key {
            req.insert_header("authorization", format!("Bearer {key}"))
                .map_err(|_| "request: invalid api key header".to_string())?;
        }
        s.write_request_header(Box::new(req))
            .await
            .map_err(|e| format!("write: {}", e.etype().as_str()))?;
        s.finish_request_body()
            .await
            .map_err(|e| format!("write: {}", e.etype().as_str()))?;
        s.read_response_header()
            .await
            .map_err(|e| format!("read: {}", e.etype().as_str()))?;
        let status = s.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
        let mut body = Vec::new();
        while let Some(chunk) = s
            .read_response_body()
            .await
            .map_err(|e| format!("read body: {}", e.etype().as_str()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > 64 * 1024 {
                break;
            }
        }
        if (200..300).contains(&status) {
            Ok(Bytes::from(body))
        } else {
            Err(format!("health endpoint answered {status}"))
        }
    };
    match tokio::time::timeout(cfg.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}ms", cfg.timeout.as_millis())),
    }
}

/// Check one backend and record the result.
pub async fn check_one(
    connector: &Connector,
    backend: Arc<Backend>,
    cfg: &HealthCheckConfig,
    tls: &config::UpstreamTlsConfig,
) {
    if !backend.health.due_for_check(cfg) {
        return;
    }
    let result = probe(connector, &backend, cfg, tls).await;
    let outcome = match result {
        Ok(body) => {
            backend.set_queue_depth(parse_queue_depth(&body));
            Ok(())
        }
        Err(e) => Err(e),
    };
    let err_text = outcome.as_ref().err().cloned();
    if let Some(status) = backend.health.on_check(outcome, cfg) {
        tracing::info!(
            backend = backend.name(),
            ?status,
            error = err_text.as_deref(),
            "health changed"
        );
    }
}

/// The interval to the next round: short while some backend is pending or half-open.
pub fn next_delay(backends: &[Arc<Backend>], cfg: &HealthCheckConfig) -> Duration {
    let fast = backends
        .iter()
        .any(|b| matches!(b.health.status(), Status::Pending | Status::HalfOpen));
    if fast {
        cfg.interval.min(Duration::from_millis(500))
    } else {
        cfg.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthCheckConfig {
        config::Config::default().health_check
    }

    #[test]
    fn new_backend_is_not_routable_until_first_good_check() {
        let h = HealthState::new();
        assert!(
            !h.routable(),
            "a new backend must not get traffic before a check"
        );
        h.on_check(Err("refused".into()), &cfg());
        assert!(!h.routable());
        h.on_check(Ok(()), &cfg());
        assert!(h.routable());
    }

    #[test]
    fn passive_failures_eject_and_the_probe_returns_the_backend() {
        let mut c = cfg();
        c.passive_failures = 2;
        c.ejection_cooldown = Duration::from_millis(0);
        let h = HealthState::new();
        h.on_check(Ok(()), &c);
        assert_eq!(h.on_request_failure(&c, "x"), None);
        assert_eq!(h.on_request_failure(&c, "x"), Some(Status::Ejected));
        assert!(!h.routable());
        assert!(h.due_for_check(&c));
        h.on_check(Err("still down".into()), &c);
        assert_eq!(h.status(), Status::Ejected);
        h.on_check(Ok(()), &c);
        assert!(
            h.routable(),
            "a passing half-open probe (threshold 1) returns it"
        );
    }

    #[test]
    fn cooldown_defers_the_probe() {
        let mut c = cfg();
        c.passive_failures = 1;
        c.ejection_cooldown = Duration::from_secs(60);
        let h = HealthState::new();
        h.on_check(Ok(()), &c);
        h.on_request_failure(&c, "x");
        assert!(!h.due_for_check(&c), "no probe during the cooldown");
    }

    #[test]
    fn queue_depth_is_read_from_common_shapes() {
        assert_eq!(parse_queue_depth(br#"{"queue_depth": 3}"#), Some(3));
        assert_eq!(
            parse_queue_depth(br#"{"queue": {"waiting": 2, "active": 1}}"#),
            Some(2)
        );
        assert_eq!(parse_queue_depth(br#"{"status":"ok"}"#), None);
        assert_eq!(parse_queue_depth(b"not json"), None);
    }
}
