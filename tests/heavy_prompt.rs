//! Heavy prompts at `gpt-oss-server`, with the real binary: parsing, rendering and tokenizing
//! megabyte prompts runs off the async threads, so `/health` and small chats stay fast while
//! they are processed; a prompt that cannot fit the context is refused with OpenAI's 400
//! `context_length_exceeded` (param `messages` / `prompt`) without being tokenized to the
//! end; resident memory returns after the refusals.

#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/fault_procs.rs"]
mod fault_procs;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use fault_load::{chat_body, soak_row};
use fault_procs::{Server, ServerOpts};

const MODEL: &str = "tiny";
/// `/health` must answer within this while heavy prompts are processed.
const HEALTH_BOUND: Duration = Duration::from_millis(50);
/// Resident memory may grow by at most this over the heavy rounds (a refused 3 MB prompt
/// must not leave its tokens or copies behind).
const RSS_BOUND_MIB: u64 = 64;

/// `bytes` of varied words (pseudo-random letters, so the tokenizer cannot take shortcuts).
fn words(bytes: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 2 + (x % 9) as usize;
        for k in 0..len {
            s.push((b'a' + ((x >> (5 * k)) % 26) as u8) as char);
        }
        s.push(if x % 11 == 0 { '\n' } else { ' ' });
    }
    s
}

/// A heavy request: a chat or completion whose prompt is `bytes` of text.
struct Heavy {
    path: &'static str,
    param: &'static str,
    body: Vec<u8>,
}

fn heavy(i: u64, bytes: usize) -> Heavy {
    let text = words(bytes, 0x9e37_79b9_7f4a_7c15 ^ i);
    if i % 3 == 2 {
        let body = json!({"model": MODEL, "prompt": text, "max_tokens": 5});
        Heavy {
            path: "/v1/completions",
            param: "prompt",
            body: serde_json::to_vec(&body).expect("json"),
        }
    } else {
        let body = json!({"model": MODEL, "max_tokens": 5,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]});
        Heavy {
            path: "/v1/chat/completions",
            param: "messages",
            body: serde_json::to_vec(&body).expect("json"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_prompts_keep_health_fast_and_are_refused_as_context_length_exceeded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start("server", &ServerOpts::default(), dir.path());
    let url = server.url();
    let scale = fault_load::scale() as usize;
    // Three clients at once, each sending `rounds` prompts of about 3 MB (under the default
    // 4 MiB body limit); every fourth one is 256 KiB, small enough to be tokenized before it
    // is found too long for the fixture's context.
    let clients = 3u64;
    let rounds = 2 * scale;
    let client = fault_load::client(Duration::from_secs(120));

    // Warm up (model, tokenizer, allocator), then the memory baseline.
    for _ in 0..2 {
        let r = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat_body(MODEL, false, 5))
            .send()
            .await
            .expect("warm-up chat");
        assert_eq!(r.status().as_u16(), 200, "warm-up chat");
        let _ = r.bytes().await;
    }
    let rss_before = server.proc.rss_kib();

    // The bodies are made before the clock starts.
    let bodies: Vec<Vec<(usize, Heavy)>> = (0..clients)
        .map(|c| {
            (0..rounds as u64)
                .map(|r| {
                    let i = c + clients * r;
                    let bytes = if i % 4 == 3 { 256 << 10 } else { 3 << 20 };
                    (bytes, heavy(i, bytes))
                })
                .collect()
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    // `/health` latency, sampled every 20 ms on a thread of its own (a fresh blocking
    // connection each time), so the test's own runtime cannot delay the measurement.
    let health = {
        let addr = server.addr;
        let done = done.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !done.load(Ordering::Acquire) {
                let t = Instant::now();
                let ok = matches!(fault_procs::blocking_get(addr, "/health"), Some((200, _)));
                samples.push((ok, t.elapsed()));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    let started = Instant::now();
    let mut heavies = Vec::new();
    for list in bodies {
        let client = client.clone();
        let url = url.clone();
        heavies.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for (bytes, h) in list {
                let t = Instant::now();
                let resp = client
                    .post(format!("{url}{}", h.path))
                    .header("content-type", "application/json")
                    .body(h.body)
                    .send()
                    .await;
                let answer = match resp {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body: Value = resp.json().await.unwrap_or(Value::Null);
                        (status, body)
                    }
                    Err(e) => (0, Value::String(format!("{e}"))),
                };
                answers.push((h.path, h.param, bytes, answer, t.elapsed()));
            }
            answers
        }));
    }
    // While they run: one small chat.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let small_started = Instant::now();
    let small = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat_body(MODEL, false, 5))
        .send()
        .await
        .expect("small chat during the load");
    let small_status = small.status().as_u16();
    let _ = small.bytes().await;
    let small_took = small_started.elapsed();
    let small_during_load = heavies.iter().any(|h| !h.is_finished());

    let mut answers = Vec::new();
    for h in heavies {
        answers.extend(h.await.expect("heavy client"));
    }
    let load_took = started.elapsed();
    done.store(true, Ordering::Release);
    let samples = health.join().expect("health sampler");
    // Memory after the load: give the allocator a moment to return freed pages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server.proc.rss_kib();

    let mut latencies: Vec<Duration> = samples.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    let (p50, max) = (percentile(&latencies, 0.5), percentile(&latencies, 1.0));
    let slowest = answers.iter().map(|a| a.4).max().unwrap_or_default();
    let refused = answers
        .iter()
        .filter(|(_, param, _, (status, body), _)| {
            *status == 400
                && body["error"]["code"] == "context_length_exceeded"
                && body["error"]["type"] == "invalid_request_error"
                && body["error"]["param"] == *param
        })
        .count();
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    soak_row(
        "heavy prompts (3 clients, ~3 MB each)",
        answers.len() + 1,
        usize::from(small_status == 200),
        refused,
        slowest.as_secs_f64() * 1000.0,
        format!(
            "{} heavy prompts from {clients} clients in {:.1} s; /health p50 {:.1} ms, max {:.1} ms \
             over {} samples; a 5-token chat during the load took {} ms; RSS {} MiB before, {} MiB after",
            answers.len(),
            load_took.as_secs_f64(),
            p50.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
            latencies.len(),
            small_took.as_millis(),
            rss_before / 1024,
            rss_after / 1024,
        ),
    );

    for (path, param, bytes, (status, body), _) in &answers {
        assert!(
            *status == 400
                && body["error"]["code"] == "context_length_exceeded"
                && body["error"]["param"] == *param,
            "a {bytes}-byte prompt to {path} must be refused with 400 context_length_exceeded \
             (param `{param}`), got {status} {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("maximum context length"),
            "the message says why: {message}"
        );
    }
    assert!(
        samples.len() >= 5,
        "only {} /health samples during the load",
        samples.len()
    );
    assert!(
        samples.iter().all(|(ok, _)| *ok),
        "/health failed during the load"
    );
    assert!(
        max <= HEALTH_BOUND,
        "/health took up to {max:?} (p50 {p50:?}) while heavy prompts were processed; bound {HEALTH_BOUND:?}"
    );
    assert_eq!(small_status, 200, "a small chat during the load");
    assert!(
        small_took < Duration::from_secs(3),
        "a 5-token chat took {small_took:?} during the load (still loading: {small_during_load})"
    );
    assert!(
        grown_mib <= RSS_BOUND_MIB,
        "RSS grew by {grown_mib} MiB over the heavy prompts ({} -> {} KiB)",
        rss_before,
        rss_after
    );
}
