//! Backend health: the state machine of active checks and outlier detection (passive
//! ejection with growing ejection times, the trial after an ejection). The active checker
//! that feeds it is `health_check`.
//!
//! Why not `pingora-load-balancing`'s health checks: its `Backends` start every new backend
//! as healthy and flip it after `consecutive_failure` failed checks, so a freshly registered
//! backend would get traffic before it was ever checked; its `HttpHealthCheck` validates only
//! the response header, and we need the `/health` body for `queue_aware` routing; and it has no
//! notion of passive ejection with a cooldown and a half-open probe. This module implements
//! exactly those rules; selection still uses pingora-load-balancing (see `policy`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use config::HealthCheckConfig;
use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never checked successfully: gets no traffic.
    Pending,
    Healthy,
    /// Failed `unhealthy_threshold` active checks.
    Unhealthy,
    /// Failed `passive_failures` requests in a row (or its trial request): waits for its
    /// ejection time, then is probed.
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
    /// Ejections in a row (Envoy's ejection multiplier): the current ejection lasts
    /// `ejection_cooldown` times this, at most `max_ejection_time`.
    ejections: u32,
    /// When the backend last came back from an ejection (for the multiplier's decay).
    returned_at: Option<Instant>,
    /// Back from an ejection, and no request has succeeded since: one failure re-ejects.
    on_trial: bool,
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
                ejections: 0,
                returned_at: None,
                on_trial: false,
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
        let was_ejected = matches!(i.status, Status::Ejected | Status::HalfOpen);
        i.status = status;
        if status == Status::Healthy && was_ejected {
            i.on_trial = true;
            i.returned_at = Some(Instant::now());
        }
        self.routable
            .store(status == Status::Healthy, Ordering::Release);
    }

    /// Eject: the multiplier first decays by one for each `ejection_cooldown` the backend
    /// stayed in (as Envoy decrements it for each interval without an ejection), then grows
    /// by one.
    fn eject(&self, i: &mut Inner, cfg: &HealthCheckConfig) {
        if let (Some(back), false) = (i.returned_at, cfg.ejection_cooldown.is_zero()) {
            let quiet = (back.elapsed().as_nanos() / cfg.ejection_cooldown.as_nanos()) as u32;
            i.ejections = i.ejections.saturating_sub(quiet);
        }
        i.ejections = i.ejections.saturating_add(1);
        i.ok_streak = 0;
        i.on_trial = false;
        i.ejected_at = Some(Instant::now());
        self.set(i, Status::Ejected);
    }

    /// How long the current ejection lasts: `ejection_cooldown` times the ejections in a
    /// row, at most `max_ejection_time` (Envoy's outlier detection).
    pub fn ejection_time(&self, cfg: &HealthCheckConfig) -> Duration {
        let i = self.inner.lock();
        Self::ejection_time_of(&i, cfg)
    }

    fn ejection_time_of(i: &Inner, cfg: &HealthCheckConfig) -> Duration {
        cfg.ejection_cooldown
            .saturating_mul(i.ejections.max(1))
            .min(cfg.max_ejection_time.max(cfg.ejection_cooldown))
    }

    /// Whether the active checker should probe now (false while an ejection lasts).
    pub fn due_for_check(&self, cfg: &HealthCheckConfig) -> bool {
        let i = self.inner.lock();
        match (i.status, i.ejected_at) {
            (Status::Ejected, Some(at)) => at.elapsed() >= Self::ejection_time_of(&i, cfg),
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
                        i.ok_streak = i.ok_streak.max(1);
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
                    Status::HalfOpen => {
                        i.ejected_at = Some(Instant::now());
                        self.set(&mut i, Status::Ejected)
                    }
                    Status::Ejected => i.ejected_at = Some(Instant::now()),
                    _ => {}
                }
            }
        }
        (i.status != before).then_some(i.status)
    }

    /// A request to this backend failed (connect error, timeout, 5xx, broken stream),
    /// whatever its `/health` says. `passive_failures` in a row eject it; on trial after an
    /// ejection, one failure does. Returns `Some(Ejected)` when this ejected it.
    pub fn on_request_failure(&self, cfg: &HealthCheckConfig, why: &str) -> Option<Status> {
        let mut i = self.inner.lock();
        i.passive_fail_streak = i.passive_fail_streak.saturating_add(1);
        i.last_error = Some(why.to_string());
        if i.status == Status::Healthy
            && (i.on_trial || i.passive_fail_streak >= cfg.passive_failures)
        {
            self.eject(&mut i, cfg);
            return Some(Status::Ejected);
        }
        None
    }

    /// A request to this backend succeeded: the failure streak and any trial end.
    pub fn on_request_success(&self) {
        let mut i = self.inner.lock();
        i.passive_fail_streak = 0;
        i.on_trial = false;
    }

    /// Whether the backend is back from an ejection and on trial.
    pub fn on_trial(&self) -> bool {
        self.inner.lock().on_trial
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
    fn a_backend_whose_health_is_fine_but_whose_requests_fail_is_re_ejected_by_one_trial() {
        let mut c = cfg();
        c.passive_failures = 3;
        c.ejection_cooldown = Duration::from_millis(0);
        let h = HealthState::new();
        h.on_check(Ok(()), &c);
        for _ in 0..2 {
            assert_eq!(h.on_request_failure(&c, "500"), None);
        }
        assert_eq!(h.on_request_failure(&c, "500"), Some(Status::Ejected));
        h.on_check(Ok(()), &c);
        assert!(
            h.routable() && h.on_trial(),
            "back on trial after a good check"
        );
        assert_eq!(
            h.on_request_failure(&c, "500"),
            Some(Status::Ejected),
            "one failed trial request re-ejects"
        );
        h.on_check(Ok(()), &c);
        h.on_request_success();
        assert!(!h.on_trial(), "a good trial request ends the trial");
        assert_eq!(
            h.on_request_failure(&c, "500"),
            None,
            "then the streak counts again"
        );
    }

    #[test]
    fn ejection_time_grows_with_repeated_ejections_up_to_the_cap() {
        let mut c = cfg();
        c.passive_failures = 1;
        c.ejection_cooldown = Duration::from_secs(10);
        c.max_ejection_time = Duration::from_secs(25);
        let h = HealthState::new();
        h.on_check(Ok(()), &c);
        h.on_request_failure(&c, "x");
        assert_eq!(h.ejection_time(&c), Duration::from_secs(10));
        // Pretend the ejection ended: a good check returns it on trial, the trial fails.
        h.inner.lock().ejected_at = Some(Instant::now() - Duration::from_secs(11));
        h.on_check(Ok(()), &c);
        h.on_request_failure(&c, "x");
        assert_eq!(h.ejection_time(&c), Duration::from_secs(20));
        h.inner.lock().ejected_at = Some(Instant::now() - Duration::from_secs(21));
        h.on_check(Ok(()), &c);
        h.on_request_failure(&c, "x");
        assert_eq!(h.ejection_time(&c), Duration::from_secs(25), "capped");
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
}
