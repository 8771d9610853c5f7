//! Hostile conditions at gpt-oss-lb, with the real binary: loops, endless and CR-terminated
//! SSE events, forbidden addresses in other spellings, pipelining, non-JSON backend errors,
//! registry limits, duplicate JSON keys. Every address used is on loopback; forbidden
//! addresses are tested by forbidding a loopback address in the YAML.

#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/fault_procs.rs"]
mod fault_procs;
#[path = "common/faulty_backend.rs"]
mod faulty_backend;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use fault_load::{chat_body, soak_row};
use fault_procs::{lb_config, Lb, Server, ServerOpts};
use faulty_backend::{FaultyBackend, Mode};

const MODEL: &str = "tiny";

async fn register(lb: &Lb, name: &str, url: &str, models: &[&str]) -> (u16, Value) {
    let r = fault_load::client(Duration::from_secs(10))
        .post(format!("{}/backends/register", lb.url()))
        .json(&json!({"name": name, "url": url, "models": models, "model_type": "gpt-oss"}))
        .send()
        .await
        .expect("register");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn port_of(lb: &Lb) -> u16 {
    lb.url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_the_lbs_own_address_is_refused_in_every_spelling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lb = Lb::start("lb", "{}\n", dir.path(), &[]);
    let p = port_of(&lb);
    for host in [
        "127.0.0.1",
        "localhost",
        "0.0.0.0",
        "[::]",
        "127.1",
        "0x7f000001",
        "2130706433",
        "[::ffff:127.0.0.1]",
    ] {
        let url = format!("http://{host}:{p}");
        let (status, body) = register(&lb, "self", &url, &["m"]).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "forbidden_address", "{url}: {body}");
        assert_eq!(body["error"]["param"], "url", "{url}: {body}");
    }
    assert!(lb.status()["backends"]
        .as_array()
        .is_some_and(Vec::is_empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_comes_back_to_the_same_lb_is_answered_508_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Each LB also serves a good backend, so that its /health is 200 for the other.
    let good = FaultyBackend::start(Mode::Good, Duration::from_millis(10)).await;
    let cfg = format!(
        "health_check: {{interval: 200ms, timeout: 200ms}}\nbackends:\n  - {{name: good, url: \"{}\", model_type: openai, models: [other]}}\n",
        good.url()
    );
    let mut a = Lb::start("lb-a", &cfg, dir.path(), &[]);
    let mut b = Lb::start("lb-b", &cfg, dir.path(), &[]);
    a.wait_backend_healthy("good", true, Duration::from_secs(10));
    b.wait_backend_healthy("good", true, Duration::from_secs(10));
    assert_eq!(register(&a, "b", &b.url(), &["m"]).await.0, 201);
    assert_eq!(register(&b, "a", &a.url(), &["m"]).await.0, 201);
    a.wait_backend_healthy("b", true, Duration::from_secs(10));
    b.wait_backend_healthy("a", true, Duration::from_secs(10));
    let rss_before = a.proc.rss_kib();
    let http = fault_load::client(Duration::from_secs(30));
    let n = 5 * fault_load::scale() as usize;
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        let r = http
            .post(format!("{}/v1/chat/completions", a.url()))
            .json(&chat_body("m", false, 8))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        // The looping backend's 508s count against it (outlier detection): once it is
        // ejected the model has no healthy backend (503).
        if i == 0 {
            assert_eq!(status, 508, "{body}");
        } else {
            assert!(status == 508 || status == 503, "{body}");
        }
        assert!(
            fault_load::is_openai_error(body.to_string().as_bytes()),
            "{body}"
        );
        worst = worst.max(started.elapsed());
    }
    assert!(
        worst < Duration::from_secs(3),
        "the loop is cut at once: {worst:?}"
    );
    assert!(a.proc.alive() && b.proc.alive());
    let grown = a.proc.rss_kib().saturating_sub(rss_before);
    soak_row(
        "loop through two LBs (508, then ejected: 503)",
        n,
        0,
        n,
        worst.as_secs_f64() * 1e3,
        format!("{n} looping requests: a clear 508 (503 once the looping backend is ejected) within {} ms each; LB RSS +{grown} KiB", worst.as_millis()),
    );
    assert!(
        grown < 64 * 1024,
        "the LB grew {grown} KiB on looping requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_sse_event_ends_the_stream_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endless = FaultyBackend::start(Mode::EndlessEvent, Duration::from_millis(10)).await;
    let cfg = lb_config(
        MODEL,
        &[("endless", endless.url())],
        "max_event_bytes: 1048576\n",
    )
    .replace("model_type: openai", "model_type: gpt-oss");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("endless", true, Duration::from_secs(10));
    let rss_before = lb.proc.rss_kib();
    let started = Instant::now();
    let r = fault_load::client(Duration::from_secs(30))
        .post(format!("{}/v1/chat/completions", lb.url()))
        .json(&chat_body(MODEL, true, 8))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap_or_default();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stream ends soon: {:?}",
        started.elapsed()
    );
    assert!(
        text.contains("upstream_event_too_large"),
        "{}",
        &text[..text.len().min(500)]
    );
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "{}",
        &text[..text.len().min(500)]
    );
    assert!(!text.contains("<|"), "raw harmony never reaches the client");
    let grown = lb.proc.rss_kib().saturating_sub(rss_before);
    soak_row(
        "endless SSE event (max_event_bytes 1 MiB)",
        1,
        0,
        1,
        started.elapsed().as_secs_f64() * 1e3,
        format!(
            "stream ended with an error event and [DONE] after {} ms; LB RSS +{grown} KiB",
            started.elapsed().as_millis()
        ),
    );
    assert!(
        grown < 32 * 1024,
        "the LB grew {grown} KiB on one endless event"
    );
    assert!(lb.proc.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_ending_in_a_bare_cr_are_rewritten_as_they_come() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cr = FaultyBackend::start(Mode::CrEvents, Duration::from_millis(10)).await;
    let cfg = lb_config(MODEL, &[("cr", cr.url())], "")
        .replace("model_type: openai", "model_type: gpt-oss");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("cr", true, Duration::from_secs(10));
    let started = Instant::now();
    let mut r = fault_load::client(Duration::from_secs(30))
        .post(format!("{}/v1/chat/completions", lb.url()))
        .json(&chat_body(MODEL, true, 8))
        .send()
        .await
        .expect("send");
    let mut seen = String::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("Paris") {
            break;
        }
    }
    assert!(seen.contains("Paris"), "{seen}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the answer arrives before the backend's 4 s pause: {:?}",
        started.elapsed()
    );
    assert!(!seen.contains("<|"), "raw harmony leaked: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_addresses_from_the_yaml_hold_in_every_spelling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = FaultyBackend::start(Mode::Good, Duration::from_millis(10)).await;
    let p = good.addr.port();
    // A good backend on 127.0.0.1; 127.0.0.2 is forbidden (loopback: nothing leaves the host).
    let cfg = format!(
        "admin: {{forbidden_addresses: [\"127.0.0.2/32\"]}}\nbackends:\n  - {{name: yaml-forbidden, url: \"http://127.0.0.2:{p}\", model_type: openai, models: [m]}}\n"
    );
    let lb = Lb::start("lb", &cfg, dir.path(), &[]);
    for host in [
        "127.0.0.2",
        "[::ffff:127.0.0.2]",
        "2130706434",
        "0x7f000002",
        "127.0.2",
    ] {
        let url = format!("http://{host}:{p}");
        let (status, body) = register(&lb, "x", &url, &["m"]).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "forbidden_address", "{url}: {body}");
    }
    assert!(
        lb.backend_status("yaml-forbidden").is_null(),
        "a YAML backend on a forbidden address is not used: {}",
        lb.status()
    );
    let (status, body) = register(&lb, "ok", &good.url(), &["m"]).await;
    assert_eq!(status, 201, "an allowed address registers: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = FaultyBackend::start(Mode::Good, Duration::from_millis(10)).await;
    let cfg = lb_config(MODEL, &[("good", good.url())], "");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("good", true, Duration::from_secs(10));
    let body = serde_json::to_string(&chat_body(MODEL, false, 8)).expect("json");
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: lb\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut sock = tokio::net::TcpStream::connect(lb.url().trim_start_matches("http://"))
        .await
        .expect("connect");
    sock.write_all(format!("{one}{one}").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut b = [0u8; 8192];
        loop {
            match sock.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
            if String::from_utf8_lossy(&got).matches("chatcmpl").count() >= 2 {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    let answers = text.matches("HTTP/1.1 200").count();
    let closes = text.to_ascii_lowercase().contains("connection: close");
    assert!(
        answers == 2 || (answers == 1 && closes),
        "both pipelined requests answered in order, or the first with Connection: close: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_empty_error_reaches_the_client_as_openai_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = FaultyBackend::start(Mode::Empty431, Duration::from_millis(10)).await;
    let cfg = lb_config(MODEL, &[("b", b.url())], "");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("b", true, Duration::from_secs(10));
    let r = fault_load::client(Duration::from_secs(10))
        .post(format!("{}/v1/chat/completions", lb.url()))
        .json(&chat_body(MODEL, false, 8))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 431);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body = r.bytes().await.expect("body");
    assert!(
        fault_load::is_openai_error(&body),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_beyond_max_backends_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = FaultyBackend::start(Mode::Good, Duration::from_millis(10)).await;
    let lb = Lb::start("lb", "admin: {max_backends: 2}\n", dir.path(), &[]);
    assert_eq!(register(&lb, "a", &good.url(), &["m"]).await.0, 201);
    assert_eq!(register(&lb, "b", &good.url(), &["m"]).await.0, 201);
    let (status, body) = register(&lb, "c", &good.url(), &["m"]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "too_many_backends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys_are_refused_by_both_binaries_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start("server", &ServerOpts::default(), dir.path());
    let cfg = lb_config(MODEL, &[("a", server.url())], "");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("a", true, Duration::from_secs(10));
    let http = fault_load::client(Duration::from_secs(30));
    for body in [
        r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"max_tokens":8}"#,
        r#"{"model":"tiny","messages":[{"role":"user","content":"hi","content":"ho"}],"max_tokens":4}"#,
    ] {
        for base in [server.url(), lb.url()] {
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 400, "{base}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("duplicate key")),
                "{base}: {v}"
            );
        }
    }
}

/// /proc/PID/stat user + system time, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Registry scale: `400 × FAULT_SCALE` registrations, at least 2,000 (10,000 with
/// `tests/soak/run 25`), one after the other, each acknowledged only once durable (committed to
/// the SQLite state store). Reports the time per registration of the first 100 and of the last 100, the
/// `/status` time and the idle CPU with every backend health-checked (over 5 s × FAULT_SCALE,
/// at most 30 s); checks that the cost of a registration does not grow with the registry: the
/// median of the last 100 is at most 3 times the median of the first 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_scale_registration_cost_does_not_grow_with_the_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = FaultyBackend::start(Mode::Good, Duration::from_millis(10)).await;
    let n = (400 * fault_load::scale() as usize).max(2000);
    let cfg = format!(
        "admin: {{max_backends: {}}}\nstate_file: {}\nhealth_check: {{interval: 5s, timeout: 2s}}\n",
        n + 10,
        dir.path().join("state.sqlite").display()
    );
    let lb = Lb::start("lb", &cfg, dir.path(), &[]);
    let http = fault_load::client(Duration::from_secs(30));
    let url = format!("{}/backends/register", lb.url());
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = http
            .post(&url)
            .json(&json!({"name": format!("b{i}"), "url": good.url(), "models": [format!("m{}", i % 50)], "model_type": "openai"}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status().as_u16(), 201, "registration {i}");
        times.push(t.elapsed());
    }
    let window = 100;
    let mean = |s: &[Duration]| s.iter().sum::<Duration>() / s.len() as u32;
    let median = |s: &[Duration]| {
        let mut v = s.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let (first, last) = (mean(&times[..window]), mean(&times[n - window..]));
    let (first_median, last_median) = (median(&times[..window]), median(&times[n - window..]));
    let t = Instant::now();
    let status = lb.status();
    let status_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status["backends"].as_array().map(Vec::len), Some(n));
    // Idle: no client traffic, every backend checked every 5 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = lb.proc.pid();
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    let idle_window = Duration::from_secs((5 * fault_load::scale()).min(30));
    tokio::time::sleep(idle_window).await;
    let idle_cpu = (cpu_ticks(pid) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    soak_row(
        &format!("registry scale ({n} registrations)"),
        n,
        n,
        0,
        times.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        format!(
            "per registration: first 100 {:.2} ms (median {:.2}), last 100 {:.2} ms (median {:.2}); GET /status {status_ms:.0} ms at {n} backends; idle CPU {idle_cpu:.1}% of a core over {} s (health checks every 5 s, spread)",
            first.as_secs_f64() * 1e3,
            first_median.as_secs_f64() * 1e3,
            last.as_secs_f64() * 1e3,
            last_median.as_secs_f64() * 1e3,
            idle_window.as_secs()
        ),
    );
    // Medians: the other tests of this binary run alongside on the same 2 cores, and a few
    // registrations that waited for a core must not read as growth.
    assert!(
        last_median <= first_median * 3,
        "a registration must not cost more as the registry grows: median {first_median:?} for the first 100, {last_median:?} for the last 100 of {n}"
    );
}

/// A request whose HTTP framing cannot be parsed is answered by Pingora before any phase
/// runs; the patched proxy (proxy/vendor/pingora-proxy) answers it with OpenAI's error JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_http_request_gets_an_openai_error_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lb = Lb::start("lb", "{}\n", dir.path(), &[]);
    for garbage in [
        "GET / HTTP/1.1\r\nbad header line without colon\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
    ] {
        let mut sock = tokio::net::TcpStream::connect(lb.url().trim_start_matches("http://"))
            .await
            .expect("connect");
        sock.write_all(garbage.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400"), "{garbage:?}: {text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(
            fault_load::is_openai_error(body.as_bytes()),
            "{garbage:?}: the 400 carries OpenAI's error JSON: {text}"
        );
    }
}
