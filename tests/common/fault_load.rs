//! Bounded load loops over loopback and their accounting: every request ends as `ok`, a
//! `clear error` (an OpenAI error JSON with a status, or an SSE error event followed by
//! `[DONE]`), or `lost` (connection dropped, hang past the deadline, a body that is neither).
//! Scenario rows are appended as JSON lines to `$SOAK_REPORT` for `tests/soak/run`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

/// Multiplier for request counts and durations: 1 in CI, larger from `tests/soak/run`.
pub fn scale() -> u64 {
    std::env::var("FAULT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// An error the client can read: status and OpenAI error `code`/`message`.
    ClearError(u16, String),
    /// Nothing usable: what happened.
    Lost(String),
}

/// Is `body` an OpenAI error JSON (`{"error":{"message":"...","type":"...", ...}}`)?
pub fn is_openai_error(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        v["error"]["message"].is_string()
            && v["error"]["type"].is_string()
            && v["error"].get("param").is_some()
            && v["error"].get("code").is_some()
    })
}

/// The HTTP client used by load loops: no pooling surprises, bounded total time.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(64)
        .no_proxy()
        .build()
        .expect("reqwest client")
}

pub fn chat_body(model: &str, stream: bool, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say something short."}],
        "max_tokens": max_tokens,
        "stream": stream,
        "temperature": 0.0,
    })
}

/// One request and its classification. `deadline` bounds the whole exchange: a request still
/// running at the deadline counts as lost (hung).
/// A request that failed because the idle connection it was written on had been closed.
fn is_stale_connection(e: &reqwest::Error) -> bool {
    let text = chain(e);
    e.is_request()
        && (text.contains("connection closed before message completed")
            || text.contains("Connection reset by peer"))
}

pub async fn send(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
    deadline: Duration,
) -> (Outcome, Duration, Option<String>) {
    let start = Instant::now();
    let stream = body["stream"].as_bool() == Some(true);
    let fut = async {
        let mut req = client.post(url).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let again = req.try_clone();
        let resp = match req.send().await {
            Ok(r) => r,
            // A pooled keep-alive connection that the server closed (after an error it had
            // to end a response with) as this request went out on it: the request was never
            // read, and HTTP clients, the OpenAI SDKs among them, send it again on a new
            // connection. So do we, once; any other send error is a loss.
            Err(e) if is_stale_connection(&e) => match again {
                Some(r) => match r.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        return (
                            Outcome::Lost(format!("send (retried): {}", chain(&e))),
                            None,
                        )
                    }
                },
                None => return (Outcome::Lost(format!("send: {}", chain(&e))), None),
            },
            Err(e) => return (Outcome::Lost(format!("send: {}", chain(&e))), None),
        };
        let status = resp.status().as_u16();
        let backend = resp
            .headers()
            .get("x-gpt-oss-lb-backend")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !stream || status != 200 {
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    return (
                        Outcome::Lost(format!("body ({status}): {}", chain(&e))),
                        backend,
                    )
                }
            };
            return (classify_json(status, &bytes), backend);
        }
        let mut buf = Vec::new();
        let mut s = resp.bytes_stream();
        while let Some(chunk) = s.next().await {
            match chunk {
                Ok(c) => buf.extend_from_slice(&c),
                Err(e) => {
                    return (
                        Outcome::Lost(format!(
                            "stream cut after {} bytes: {}",
                            buf.len(),
                            chain(&e)
                        )),
                        backend,
                    )
                }
            }
        }
        (classify_sse(&buf), backend)
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok((o, b)) => (o, start.elapsed(), b),
        Err(_) => (
            Outcome::Lost(format!("hung past {deadline:?}")),
            start.elapsed(),
            None,
        ),
    }
}

/// An error with its sources, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn classify_json(status: u16, body: &[u8]) -> Outcome {
    if status == 200 {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) if v["choices"].is_array() => Outcome::Ok,
            _ => Outcome::Lost(format!(
                "200 without a completion: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    } else if is_openai_error(body) {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        Outcome::ClearError(
            status,
            format!(
                "{}: {}",
                v["error"]["code"].as_str().unwrap_or("-"),
                v["error"]["message"].as_str().unwrap_or("")
            ),
        )
    } else {
        Outcome::Lost(format!(
            "{status} without an OpenAI error body: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    }
}

/// A 200 SSE body: ok when every frame is a chunk and it ends with `[DONE]`; a clear error when
/// an error event is followed by `[DONE]`; lost otherwise.
pub fn classify_sse(body: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(body);
    let mut error: Option<String> = None;
    let mut done = false;
    for frame in text.split("\n\n") {
        let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        if done {
            return Outcome::Lost("data after [DONE]".into());
        }
        match serde_json::from_str::<Value>(data) {
            Ok(v) if v.get("error").is_some() => {
                if !is_openai_error(data.as_bytes()) {
                    return Outcome::Lost(format!("malformed error event: {data}"));
                }
                error = Some(v["error"]["code"].as_str().unwrap_or("-").to_string());
            }
            Ok(v) if v["choices"].is_array() => {}
            _ => return Outcome::Lost(format!("bad SSE frame: {data:.200}")),
        }
    }
    match (done, error) {
        (true, None) => Outcome::Ok,
        (true, Some(code)) => Outcome::ClearError(200, format!("stream error event: {code}")),
        (false, _) => Outcome::Lost(format!(
            "stream ended without [DONE] after {} bytes",
            body.len()
        )),
    }
}

/// Counts of a scenario.
#[derive(Default)]
pub struct Tally {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub clear: AtomicU64,
    pub lost: AtomicU64,
    pub latencies_us: Mutex<Vec<u64>>,
    /// Samples of clear errors and losses, for assertion messages.
    pub samples: Mutex<Vec<String>>,
    /// Which backend served each successful request (`x-gpt-oss-lb-backend`).
    pub served_by: Mutex<Vec<(Instant, String)>>,
}

impl Tally {
    pub fn record(&self, outcome: &Outcome, latency: Duration, backend: Option<String>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Ok => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(b) = backend {
                    self.served_by
                        .lock()
                        .expect("served_by")
                        .push((Instant::now(), b));
                }
            }
            Outcome::ClearError(..) => {
                self.clear.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Lost(_) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        if *outcome != Outcome::Ok {
            let mut s = self.samples.lock().expect("samples");
            if s.len() < 20 {
                s.push(format!("{outcome:?}"));
            }
        }
        self.latencies_us
            .lock()
            .expect("latencies")
            .push(latency.as_micros() as u64);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    pub fn clear(&self) -> u64 {
        self.clear.load(Ordering::Relaxed)
    }
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    pub fn p99(&self) -> Duration {
        let mut v = self.latencies_us.lock().expect("latencies").clone();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort_unstable();
        let idx = ((v.len() as f64) * 0.99).ceil() as usize;
        Duration::from_micros(v[idx.clamp(1, v.len()) - 1])
    }

    pub fn samples(&self) -> String {
        self.samples.lock().expect("samples").join("\n  ")
    }

    pub fn summary(&self) -> String {
        format!(
            "sent {} ok {} clear-error {} lost {} p99 {:?}; samples:\n  {}",
            self.sent(),
            self.ok(),
            self.clear(),
            self.lost(),
            self.p99(),
            self.samples()
        )
    }

    /// Append this scenario's row to `$SOAK_REPORT` (JSON lines), when set.
    pub fn report(&self, scenario: &str) {
        eprintln!("[{scenario}] {}", self.summary());
        append_report(&json!({
            "scenario": scenario,
            "sent": self.sent(),
            "ok": self.ok(),
            "clear_error": self.clear(),
            "lost": self.lost(),
            "p99_ms": self.p99().as_secs_f64() * 1000.0,
        }));
    }
}

/// Append a scenario row measured outside [`Counts`] to `$SOAK_REPORT`, with its `figures`
/// (`tests/soak/run` prints the table and the figures).
pub fn soak_row(
    scenario: &str,
    sent: usize,
    ok: usize,
    clear: usize,
    p99_ms: f64,
    figures: String,
) {
    eprintln!("[{scenario}] {figures}");
    append_report(&json!({
        "scenario": scenario, "sent": sent, "ok": ok, "clear_error": clear,
        "lost": sent - ok - clear, "p99_ms": p99_ms, "figures": figures,
    }));
}

/// Append one JSON line to `$SOAK_REPORT`, when set.
fn append_report(row: &Value) {
    let Some(path) = std::env::var_os("SOAK_REPORT") else {
        return;
    };
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{row}");
    }
}

/// Run `clients` concurrent loops sending `make_body(i)` to `url` until `total` requests were
/// sent, `max_time` passed, or `stop` is set. Each request is bounded by `deadline`.
#[allow(clippy::too_many_arguments)]
pub async fn run_load(
    url: String,
    headers: Vec<(String, String)>,
    clients: usize,
    total: u64,
    max_time: Duration,
    deadline: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    make_body: Arc<dyn Fn(u64) -> Value + Send + Sync>,
) {
    let http = client(deadline + Duration::from_secs(5));
    run_load_on(
        http, url, headers, clients, total, max_time, deadline, stop, tally, make_body,
    )
    .await
}

/// [`run_load`] with a caller's client (e.g. one that opens a new connection per request).
#[allow(clippy::too_many_arguments)]
pub async fn run_load_on(
    http: reqwest::Client,
    url: String,
    headers: Vec<(String, String)>,
    clients: usize,
    total: u64,
    max_time: Duration,
    deadline: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    make_body: Arc<dyn Fn(u64) -> Value + Send + Sync>,
) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, headers, stop, tally, next, make_body, http) = (
            url.clone(),
            headers.clone(),
            stop.clone(),
            tally.clone(),
            next.clone(),
            make_body.clone(),
            http.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                if stop.load(Ordering::Relaxed) || started.elapsed() > max_time {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = make_body(i);
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let (o, lat, b) = send(&http, &url, &h, &body, deadline).await;
                tally.record(&o, lat, b);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
