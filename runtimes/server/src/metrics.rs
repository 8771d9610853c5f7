//! Prometheus metrics, rendered by hand in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::queue::QueueStatus;

const TTFT_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const TPS_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    ttft: Mutex<Histogram>,
    tokens_per_second: Mutex<Histogram>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    /// Microseconds spent generating, summed over requests.
    generation_micros: AtomicU64,
    cancelled: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            ttft: Mutex::new(Histogram::new(&TTFT_BUCKETS)),
            tokens_per_second: Mutex::new(Histogram::new(&TPS_BUCKETS)),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            generation_micros: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, status: u16) {
        *self.requests.lock().entry((endpoint, status)).or_default() += 1;
    }

    pub fn error(&self, kind: &'static str) {
        *self.errors.lock().entry(kind).or_default() += 1;
    }

    pub fn time_to_first_token(&self, seconds: f64) {
        self.ttft.lock().observe(seconds);
    }

    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// One finished generation: its token counts and the time from first token to last.
    pub fn generation(&self, prompt_tokens: u32, completion_tokens: u32, decode_seconds: f64) {
        self.prompt_tokens
            .fetch_add(u64::from(prompt_tokens), Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(u64::from(completion_tokens), Ordering::Relaxed);
        self.generation_micros
            .fetch_add((decode_seconds * 1e6) as u64, Ordering::Relaxed);
        if completion_tokens > 1 && decode_seconds > 0.0 {
            self.tokens_per_second
                .lock()
                .observe(f64::from(completion_tokens - 1) / decode_seconds);
        }
    }

    /// The exposition text. `prefill_tokens`: the backend's count of prompt tokens run through
    /// the model (`None` while no model is loaded, or when the backend does not count).
    pub fn render(
        &self,
        queue: QueueStatus,
        prefill_tokens: Option<u64>,
        prefix_cache: Option<gpt_oss_runtimes::PrefixCacheStats>,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP gpt_oss_requests_total HTTP requests by endpoint and status.\n# TYPE gpt_oss_requests_total counter"
        );
        for ((endpoint, status), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "gpt_oss_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP gpt_oss_errors_total Requests answered with an error, by kind.\n# TYPE gpt_oss_errors_total counter"
        );
        for (kind, n) in self.errors.lock().iter() {
            let _ = writeln!(out, "gpt_oss_errors_total{{kind=\"{kind}\"}} {n}");
        }
        let gauges = [
            (
                "gpt_oss_queue_running",
                "Requests generating now.",
                queue.running,
            ),
            (
                "gpt_oss_queue_waiting",
                "Requests waiting for a slot.",
                queue.waiting,
            ),
            (
                "gpt_oss_queue_max_concurrent",
                "Slots.",
                queue.max_concurrent,
            ),
            (
                "gpt_oss_queue_max_waiting",
                "Waiting requests allowed.",
                queue.max_queue,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "gpt_oss_prompt_tokens_total",
                "Prompt tokens of finished generations.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "gpt_oss_generated_tokens_total",
                "Tokens generated.",
                self.generated_tokens.load(Ordering::Relaxed),
            ),
            (
                "gpt_oss_cancelled_total",
                "Generations stopped because the client went away.",
                self.cancelled.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        if let Some(n) = prefill_tokens {
            let name = "gpt_oss_prefill_tokens_total";
            let _ = writeln!(
                out,
                "# HELP {name} Prompt tokens run through the model (the prompt shared by n choices counts once).\n# TYPE {name} counter\n{name} {n}"
            );
        }
        if let Some(p) = prefix_cache {
            render_prefix_cache(&p, &mut out);
        }
        let secs = self.generation_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "# HELP gpt_oss_generation_seconds_total Time spent decoding after the first token.\n# TYPE gpt_oss_generation_seconds_total counter\ngpt_oss_generation_seconds_total {secs}"
        );
        self.ttft.lock().render(
            "gpt_oss_time_to_first_token_seconds",
            "Time from request arrival (queueing included) to the first generated token.",
            &mut out,
        );
        self.tokens_per_second.lock().render(
            "gpt_oss_tokens_per_second",
            "Decode rate of each finished generation.",
            &mut out,
        );
        out
    }
}

/// The prefix cache's figures, in vLLM's terms (its `prefix_cache_queries` and
/// `prefix_cache_hits` count tokens: prompt tokens looked up, and of those, tokens found).
fn render_prefix_cache(p: &gpt_oss_runtimes::PrefixCacheStats, out: &mut String) {
    let counters = [
        (
            "gpt_oss_prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            p.query_tokens,
        ),
        (
            "gpt_oss_prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache (reported as cached_tokens).",
            p.cached_tokens,
        ),
        (
            "gpt_oss_prefix_cache_requests_total",
            "Requests looked up in the prefix cache.",
            p.queries,
        ),
        (
            "gpt_oss_prefix_cache_request_hits_total",
            "Requests that reused at least one cached block.",
            p.hits,
        ),
        (
            "gpt_oss_prefix_cache_evictions_total",
            "Blocks evicted to stay within the budget.",
            p.evictions,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let rate = if p.query_tokens == 0 {
        0.0
    } else {
        p.cached_tokens as f64 / p.query_tokens as f64
    };
    let gauges = [
        (
            "gpt_oss_prefix_cache_hit_rate",
            "Cached prompt tokens over looked-up prompt tokens, since start.",
            format!("{rate}"),
        ),
        (
            "gpt_oss_prefix_cache_blocks",
            "Blocks held.",
            p.blocks.to_string(),
        ),
        (
            "gpt_oss_prefix_cache_bytes",
            "Bytes held.",
            p.bytes.to_string(),
        ),
        (
            "gpt_oss_prefix_cache_budget_bytes",
            "The budget (--prefix-cache-mib).",
            p.budget_bytes.to_string(),
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
}
