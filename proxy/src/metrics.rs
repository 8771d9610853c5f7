//! Prometheus text metrics. Counters are atomics or short-held maps; backend gauges are
//! read from the snapshot at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::backend::Backend;

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Default)]
pub struct Metrics {
    /// (endpoint, status) -> count
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// duration histogram of proxied requests: bucket counts, sum (micros), count
    hist: Mutex<(Vec<u64>, u64, u64)>,
    pub upstream_attempts: AtomicU64,
    pub retries: AtomicU64,
    /// backend name -> failed attempts
    upstream_failures: Mutex<BTreeMap<String, u64>>,
    pub streams_broken: AtomicU64,
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
    /// Control-plane operations on the state store that failed (lease expiry, resync,
    /// reading a change).
    pub state_store_failures: AtomicU64,
    /// Registry changes made through other replicas and applied here.
    pub replica_changes: AtomicU64,
    /// Full reloads of the registry from the state store.
    pub state_store_resyncs: AtomicU64,
    /// 1 while the control plane's last state store operation succeeded, else 0.
    pub state_store_up: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, endpoint: &'static str, status: u16, seconds: Option<f64>) {
        *self.requests.lock().entry((endpoint, status)).or_default() += 1;
        if let Some(s) = seconds {
            let mut h = self.hist.lock();
            if h.0.is_empty() {
                h.0 = vec![0; BUCKETS.len()];
            }
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.0[i] += 1;
                }
            }
            h.1 += (s * 1e6) as u64;
            h.2 += 1;
        }
    }

    pub fn record_upstream_failure(&self, backend: &str) {
        *self
            .upstream_failures
            .lock()
            .entry(backend.to_string())
            .or_default() += 1;
    }

    pub fn render(&self, backends: &[std::sync::Arc<Backend>], generation: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_requests_total Requests answered, by endpoint and status."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_requests_total counter");
        for ((ep, status), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "gpt_oss_lb_requests_total{{endpoint=\"{ep}\",status=\"{status}\"}} {n}"
            );
        }
        let (buckets, sum_us, count) = self.hist.lock().clone();
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_request_duration_seconds Duration of proxied completion requests."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_request_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "gpt_oss_lb_request_duration_seconds_bucket{{le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "gpt_oss_lb_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "gpt_oss_lb_request_duration_seconds_sum {}",
            sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "gpt_oss_lb_request_duration_seconds_count {count}");
        let simple = [
            (
                "gpt_oss_lb_upstream_attempts_total",
                "Attempts sent to backends.",
                &self.upstream_attempts,
            ),
            (
                "gpt_oss_lb_retries_total",
                "Attempts after the first (failover).",
                &self.retries,
            ),
            (
                "gpt_oss_lb_streams_broken_total",
                "Streams ended with an error event after a backend failure.",
                &self.streams_broken,
            ),
            (
                "gpt_oss_lb_config_reloads_total",
                "Config reloads applied.",
                &self.config_reloads,
            ),
            (
                "gpt_oss_lb_config_reload_failures_total",
                "Config reloads rejected by validation.",
                &self.config_reload_failures,
            ),
            (
                "gpt_oss_lb_state_store_failures_total",
                "Control-plane operations on the state store that failed.",
                &self.state_store_failures,
            ),
            (
                "gpt_oss_lb_replica_changes_total",
                "Registry changes made through other replicas and applied here.",
                &self.replica_changes,
            ),
            (
                "gpt_oss_lb_state_store_resyncs_total",
                "Full reloads of the registry from the state store.",
                &self.state_store_resyncs,
            ),
        ];
        for (name, help, v) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_state_store_up 1 while the state store answers the control plane, else 0 (routing goes on from the last snapshot).\n# TYPE gpt_oss_lb_state_store_up gauge\ngpt_oss_lb_state_store_up {}",
            self.state_store_up.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_upstream_failures_total Failed attempts, by backend."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_upstream_failures_total counter");
        for (b, n) in self.upstream_failures.lock().iter() {
            let _ = writeln!(
                out,
                "gpt_oss_lb_upstream_failures_total{{backend=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_backend_healthy 1 when the backend receives traffic."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_backend_healthy gauge");
        for b in backends {
            let _ = writeln!(
                out,
                "gpt_oss_lb_backend_healthy{{backend=\"{}\"}} {}",
                b.name(),
                u8::from(b.health.routable())
            );
        }
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_backend_inflight Requests in flight, by backend."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_backend_inflight gauge");
        for b in backends {
            let _ = writeln!(
                out,
                "gpt_oss_lb_backend_inflight{{backend=\"{}\"}} {}",
                b.name(),
                b.inflight()
            );
        }
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_backend_requests_total Attempts sent, by backend."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_backend_requests_total counter");
        for b in backends {
            let _ = writeln!(
                out,
                "gpt_oss_lb_backend_requests_total{{backend=\"{}\"}} {}",
                b.name(),
                b.requests()
            );
        }
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_backend_latency_ewma_seconds Time to response header (EWMA)."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_backend_latency_ewma_seconds gauge");
        for b in backends {
            if let Some(d) = b.latency_ewma() {
                let _ = writeln!(
                    out,
                    "gpt_oss_lb_backend_latency_ewma_seconds{{backend=\"{}\"}} {}",
                    b.name(),
                    d.as_secs_f64()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_backend_queue_depth Queue depth reported by the backend."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_backend_queue_depth gauge");
        for b in backends {
            if let Some(q) = b.queue_depth() {
                let _ = writeln!(
                    out,
                    "gpt_oss_lb_backend_queue_depth{{backend=\"{}\"}} {q}",
                    b.name()
                );
            }
        }
        let _ = writeln!(out, "# HELP gpt_oss_lb_config_generation Snapshot generation in force.\n# TYPE gpt_oss_lb_config_generation gauge\ngpt_oss_lb_config_generation {}", generation);
        out
    }
}
