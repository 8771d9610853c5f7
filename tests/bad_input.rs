//! Bad input to both servers (issue 8, part 2): 10,000 generated malformed or hostile requests
//! to `gpt-oss-server` and 10,000 to `gpt-oss-lb` (in front of a real server), bodies over
//! the limit, slowloris clients and many idle connections.
//!
//! Every answer is the documented status with an OpenAI error JSON: 400 (invalid JSON, a field
//! of the wrong type or range; `param` names it), 404 (unknown model), 413 (body over the
//! limit), 429 (queue full). No 5xx, no crash. Memory bound: resident memory (VmRSS) may grow
//! by at most `RSS_BOUND_MIB` between a warm-up and the end of the run, plus
//! `RSS_PER_CONNECTION_KIB` for each connection the scenario holds open at once.

#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/fault_procs.rs"]
mod fault_procs;
#[path = "common/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_load::{chat_body, is_openai_error, scale, send, Outcome, Tally};
use fault_procs::{lb_config, Lb, Proc, Server, ServerOpts};
use hostile::{case, Expect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "tiny";
const CASES: u64 = 10_000;
/// Allowed VmRSS growth from warm-up to the end of a run.
const RSS_BOUND_MIB: u64 = 96;
/// Allowed VmRSS per connection held open at once, on top of `RSS_BOUND_MIB` (measured: about
/// 100 KiB per idle connection in gpt-oss-lb, Pingora's per-connection buffers, which the
/// allocator keeps for reuse after the connections close).
const RSS_PER_CONNECTION_KIB: u64 = 128;

struct Target<'a> {
    name: &'a str,
    base: String,
    proc: &'a Proc,
}

/// Send `CASES` generated requests to `target` with `conc` clients; returns the failures.
async fn hostile_run(target: &Target<'_>, conc: usize, report_as: &str) -> Vec<String> {
    let http = fault_load::client(Duration::from_secs(30));
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let tally = Arc::new(Tally::default());
    let warm_rss = Arc::new(AtomicU64::new(0));
    let pid = target.proc.pid();
    let total = CASES * scale();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (http, next, failures, tally, base, warm_rss) = (
            http.clone(),
            next.clone(),
            failures.clone(),
            tally.clone(),
            target.base.clone(),
            warm_rss.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if i == 500 {
                    warm_rss.store(fault_procs::rss_kib(pid), Ordering::Relaxed);
                }
                let c = case(i, MODEL);
                let started = Instant::now();
                let res = http
                    .post(format!("{base}{}", c.path))
                    .header("content-type", "application/json")
                    .body(c.body.clone())
                    .send()
                    .await;
                let (status, body) = match res {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        (s, r.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
                    }
                    Err(e) => {
                        let o = Outcome::Lost(format!("{e}"));
                        tally.record(&o, started.elapsed(), None);
                        failures
                            .lock()
                            .expect("failures")
                            .push(format!("case {i} ({}): transport error {e}", c.kind));
                        continue;
                    }
                };
                let good = match (c.expect, status) {
                    (_, 400..=499) => is_openai_error(&body),
                    (Expect::MayAccept, 200) => {
                        fault_load::classify_json(200, &body) == Outcome::Ok
                            || fault_load::classify_sse(&body) == Outcome::Ok
                    }
                    _ => false,
                };
                let outcome = if good && status == 200 {
                    Outcome::Ok
                } else if good {
                    Outcome::ClearError(status, String::new())
                } else {
                    Outcome::Lost(format!("{status}"))
                };
                tally.record(&outcome, started.elapsed(), None);
                if !good {
                    let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
                    let sent =
                        String::from_utf8_lossy(&c.body[..c.body.len().min(200)]).to_string();
                    failures.lock().expect("failures").push(format!(
                        "case {i} ({}, expect {:?}): {status} {snippet}\n    sent: {sent}",
                        c.kind, c.expect
                    ));
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tally.report(report_as);
    let end_rss = target.proc.rss_kib();
    let warm = warm_rss.load(Ordering::Relaxed);
    eprintln!(
        "[{}] VmRSS after warm-up {} MiB, at the end {} MiB",
        target.name,
        warm / 1024,
        end_rss / 1024
    );
    let mut f = std::mem::take(&mut *failures.lock().expect("failures"));
    if end_rss > warm + RSS_BOUND_MIB * 1024 {
        f.push(format!(
            "{}: VmRSS grew from {} to {} MiB (bound {RSS_BOUND_MIB} MiB)",
            target.name,
            warm / 1024,
            end_rss / 1024
        ));
    }
    assert_eq!(tally.sent(), total, "every case must have been sent");
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_hostile_requests_to_each_server_get_documented_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start("server", &ServerOpts::default(), dir.path());
    let cfg = lb_config(MODEL, &[("s", server.url())], "");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("s", true, Duration::from_secs(10));

    let mut failures = hostile_run(
        &Target {
            name: "gpt-oss-server",
            base: server.url(),
            proc: &server.proc,
        },
        16,
        "10k hostile requests -> gpt-oss-server",
    )
    .await;
    failures.extend(
        hostile_run(
            &Target {
                name: "gpt-oss-lb",
                base: lb.url(),
                proc: &lb.proc,
            },
            16,
            "10k hostile requests -> gpt-oss-lb",
        )
        .await,
    );
    assert!(
        server.proc.alive(),
        "the server crashed; log:\n{}",
        server.proc.log_text()
    );
    assert!(
        lb.proc.alive(),
        "the LB crashed; log:\n{}",
        lb.proc.log_text()
    );
    // Both still serve a normal request.
    let http = fault_load::client(Duration::from_secs(30));
    for base in [server.url(), lb.url()] {
        let (o, _, _) = send(
            &http,
            &format!("{base}/v1/chat/completions"),
            &[],
            &chat_body(MODEL, false, 4),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            o,
            Outcome::Ok,
            "{base} no longer serves after the hostile run"
        );
    }
    let n = failures.len();
    failures.truncate(30);
    assert!(
        n == 0,
        "{n} hostile requests got a wrong answer:\n{}",
        failures.join("\n")
    );
}

/// Raw HTTP/1.1 exchange: write `head` and `body`, read until close or `timeout`.
async fn raw_exchange(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
    timeout: Duration,
) -> (u16, Vec<u8>) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(head.as_bytes()).await.ok()?;
        // The server may answer 413 and close before the whole body is written.
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body_start = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let mut body = buf[body_start..].to_vec();
        if text
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Some((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, Vec::new()))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..p]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < p + 2 + n {
            break;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + n]);
        b = &b[(p + 4 + n).min(b.len())..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_over_the_limit_get_413_with_an_openai_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start("server", &ServerOpts::default(), dir.path());
    let cfg = lb_config(MODEL, &[("s", server.url())], "body_limit: 65536\n");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("s", true, Duration::from_secs(10));
    // A 10 MB string in a message, with Content-Length, then chunked without one.
    let big = "x".repeat(10 * 1024 * 1024);
    let body = format!(
        "{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"{big}\"}}],\"max_tokens\":1}}"
    );
    let mut chunked = Vec::new();
    for piece in body.as_bytes().chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for (name, addr) in [("gpt-oss-server", server.addr), ("gpt-oss-lb", lb.addr)] {
        let rss_before = if name == "gpt-oss-lb" {
            lb.proc.rss_kib()
        } else {
            server.proc.rss_kib()
        };
        for round in 0..3 {
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let (status, resp) =
                raw_exchange(addr, &head, body.as_bytes(), Duration::from_secs(30)).await;
            assert_eq!(
                status,
                413,
                "{name} round {round}: 10 MB with Content-Length: {}",
                String::from_utf8_lossy(&resp)
            );
            assert!(
                is_openai_error(&resp),
                "{name}: 413 body must be an OpenAI error: {}",
                String::from_utf8_lossy(&resp)
            );
            let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            let (status, resp) = raw_exchange(addr, head, &chunked, Duration::from_secs(30)).await;
            assert_eq!(
                status,
                413,
                "{name} round {round}: 10 MB chunked: {}",
                String::from_utf8_lossy(&resp)
            );
            assert!(
                is_openai_error(&resp),
                "{name}: 413 body must be an OpenAI error: {}",
                String::from_utf8_lossy(&resp)
            );
        }
        let rss_after = if name == "gpt-oss-lb" {
            lb.proc.rss_kib()
        } else {
            server.proc.rss_kib()
        };
        eprintln!(
            "[{name}] VmRSS {} -> {} MiB over six 10 MB bodies",
            rss_before / 1024,
            rss_after / 1024
        );
        assert!(
            rss_after < rss_before + RSS_BOUND_MIB * 1024,
            "{name}: VmRSS grew from {} to {} MiB on refused bodies",
            rss_before / 1024,
            rss_after / 1024
        );
    }
    // Just over the LB's limit, exactly at it: 413, then a normal answer from the backend.
    let over = vec![b' '; 65537];
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65537\r\nConnection: close\r\n\r\n";
    let (status, resp) = raw_exchange(lb.addr, head, &over, Duration::from_secs(10)).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&resp));
    assert!(server.proc.rss_kib() > 0 && lb.proc.rss_kib() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_and_idle_connections_do_not_starve_real_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start("server", &ServerOpts::default(), dir.path());
    let cfg = lb_config(MODEL, &[("s", server.url())], "");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("s", true, Duration::from_secs(10));
    let idle_n = 300 * scale() as usize;
    let slow_n = 40;
    let hold = Duration::from_secs(6 * scale());
    for (name, addr, proc) in [
        ("gpt-oss-server", server.addr, &mut server.proc),
        ("gpt-oss-lb", lb.addr, &mut lb.proc),
    ] {
        let rss_before = proc.rss_kib();
        // Idle connections: connect and send nothing.
        let mut idle = Vec::new();
        for _ in 0..idle_n {
            if let Ok(s) = TcpStream::connect(addr).await {
                idle.push(s);
            }
        }
        // Slowloris: a header block dripped one byte every 200 ms, and a body dripped after a
        // complete header block announcing 1000 bytes.
        let mut slow = Vec::new();
        for k in 0..slow_n {
            slow.push(tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else { return };
                let text = if k % 2 == 0 {
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".to_string()
                } else {
                    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":\"{MODEL}\",\"messages\":[")
                };
                let start = Instant::now();
                for b in text.as_bytes() {
                    if start.elapsed() > hold || s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        // Meanwhile real clients are served promptly.
        let tally = Tally::default();
        let http = fault_load::client(Duration::from_secs(30));
        let start = Instant::now();
        while start.elapsed() < hold {
            let (o, lat, _) = send(
                &http,
                &format!("http://{addr}/v1/chat/completions"),
                &[],
                &chat_body(MODEL, false, 4),
                Duration::from_secs(10),
            )
            .await;
            tally.record(&o, lat, None);
        }
        tally.report(&format!("slowloris x{slow_n} + {idle_n} idle -> {name}"));
        for t in slow {
            t.abort();
        }
        drop(idle);
        let rss_after = proc.rss_kib();
        eprintln!(
            "[{name}] VmRSS {} -> {} MiB",
            rss_before / 1024,
            rss_after / 1024
        );
        assert!(proc.alive(), "{name} crashed; log:\n{}", proc.log_text());
        assert!(
            tally.sent() >= 3,
            "{name}: too few requests got through: {}",
            tally.summary()
        );
        assert_eq!(
            tally.ok(),
            tally.sent(),
            "{name}: real clients must be served: {}",
            tally.summary()
        );
        assert!(
            tally.p99() < Duration::from_secs(5),
            "{name}: real clients starved: {}",
            tally.summary()
        );
        let bound_kib = RSS_BOUND_MIB * 1024 + RSS_PER_CONNECTION_KIB * (idle_n + slow_n) as u64;
        assert!(
            rss_after < rss_before + bound_kib,
            "{name}: VmRSS grew from {} to {} MiB (bound: {} MiB for {} connections)",
            rss_before / 1024,
            rss_after / 1024,
            bound_kib / 1024,
            idle_n + slow_n
        );
    }
}

/// A body over the LB's limit sent by an ordinary HTTP client (which writes the whole body
/// before reading) gets the 413: the LB drains the refused body (bounded in bytes and time)
/// before answering, so no reset overtakes the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_client_sending_an_oversized_body_reads_the_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start("server", &ServerOpts::default(), dir.path());
    let cfg = lb_config(MODEL, &[("s", server.url())], "body_limit: 65536\n");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("s", true, Duration::from_secs(10));
    let http = fault_load::client(Duration::from_secs(30));
    let big = "x".repeat(2 * 1024 * 1024);
    let body = chat_body(MODEL, false, 1);
    let mut body = body;
    body["messages"][0]["content"] = serde_json::Value::String(big);
    for _ in 0..5 {
        let r = http
            .post(format!("{}/v1/chat/completions", lb.url()))
            .json(&body)
            .send()
            .await;
        let r =
            r.unwrap_or_else(|e| panic!("no 413, a transport error: {}", fault_load::chain(&e)));
        assert_eq!(r.status().as_u16(), 413);
    }
}
