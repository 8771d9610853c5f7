//! Security of the front door (issue 8, part 4), against the real `gpt-oss-lb` and
//! `gpt-oss-server`:
//! - admin endpoints without a token or with a wrong one get 401/403 and change nothing;
//! - registration refuses non-http(s) URLs and link-local / metadata addresses;
//! - client API keys are enforced (LB and server);
//! - secrets never appear in logs, `/status`, `/metrics`, `/health` or `/v1/models`;
//! - hop-by-hop headers are stripped and `X-Forwarded-For` appended.
//!
//! The header checks need to see what reached the backend, which a real model server does
//! not report: there the backend is `faulty_backend` in `Mode::Good` (a real HTTP server).

#[path = "common/fault_load.rs"]
mod fault_load;
#[path = "common/fault_procs.rs"]
mod fault_procs;
#[path = "common/faulty_backend.rs"]
mod faulty_backend;

use std::net::SocketAddr;
use std::time::Duration;

use fault_load::{chat_body, is_openai_error, send, Outcome};
use fault_procs::{lb_config, Lb, Server, ServerOpts};
use faulty_backend::{FaultyBackend, Mode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODEL: &str = "tiny";
const ADMIN: &str = "ADMIN-SECRET-7f3a9c";

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status >= 400 {
        assert!(
            is_openai_error(&bytes),
            "{url}: {status} must carry an OpenAI error JSON: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    (status, v)
}

fn names(lb: &Lb) -> Vec<String> {
    let mut v: Vec<String> = lb.status()["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|b| b["name"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_refuse_missing_or_wrong_tokens_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = FaultyBackend::start(Mode::Good, Duration::from_millis(10)).await;
    let cfg = lb_config(
        MODEL,
        &[("static", echo.url())],
        &format!("admin:\n  token: \"{ADMIN}\"\n"),
    );
    let lb = Lb::start("lb", &cfg, dir.path(), &[]);
    let http = fault_load::client(Duration::from_secs(10));
    let reg = format!("{}/backends/register", lb.url());
    let body =
        json!({"name": "newcomer", "url": echo.url(), "model_type": "openai", "models": ["m2"]});
    let before = names(&lb);
    let state_before = std::fs::read(&lb.state_file).ok();

    let wrong = [
        (None, 401),
        (Some("Bearer"), 401),
        (Some("Basic YWRtaW46YWRtaW4="), 401),
        (Some("Bearer wrong-token"), 403),
        (Some(&*format!("Bearer {ADMIN}x")), 403),
        (Some(&*format!("Bearer {}", &ADMIN[..ADMIN.len() - 1])), 403),
        (Some(&*format!("Bearer {}", ADMIN.to_lowercase())), 403),
    ];
    for (auth, want) in &wrong {
        let (s, _) = call(&http, reqwest::Method::POST, &reg, *auth, Some(&body)).await;
        assert_eq!(s, *want, "register with {auth:?}");
        let (s, _) = call(
            &http,
            reqwest::Method::DELETE,
            &format!("{}/backends/static", lb.url()),
            *auth,
            None,
        )
        .await;
        assert_eq!(s, *want, "unregister with {auth:?}");
    }
    assert_eq!(
        names(&lb),
        before,
        "a refused admin call changed the backends"
    );
    assert_eq!(
        std::fs::read(&lb.state_file).ok(),
        state_before,
        "a refused admin call wrote the state file"
    );

    // The right token works, so the refusals above were about the token.
    let good = format!("Bearer {ADMIN}");
    let (s, v) = call(&http, reqwest::Method::POST, &reg, Some(&good), Some(&body)).await;
    assert_eq!(s, 201, "register with the admin token: {v}");
    assert!(names(&lb).contains(&"newcomer".to_string()));
    for (auth, want) in &wrong {
        let (s, _) = call(
            &http,
            reqwest::Method::DELETE,
            &format!("{}/backends/newcomer", lb.url()),
            *auth,
            None,
        )
        .await;
        assert_eq!(s, *want, "unregister with {auth:?}");
    }
    assert!(
        names(&lb).contains(&"newcomer".to_string()),
        "a refused DELETE removed the backend"
    );
    let (s, _) = call(
        &http,
        reqwest::Method::DELETE,
        &format!("{}/backends/newcomer", lb.url()),
        Some(&good),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(names(&lb), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_non_http_urls_and_link_local_or_metadata_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = FaultyBackend::start(Mode::Good, Duration::from_millis(10)).await;
    let cfg = lb_config(MODEL, &[("static", echo.url())], "");
    let lb = Lb::start("lb", &cfg, dir.path(), &[]);
    let http = fault_load::client(Duration::from_secs(10));
    let reg = format!("{}/backends/register", lb.url());
    let refused = [
        "ftp://127.0.0.1:21/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "javascript:alert(1)",
        "unix:///var/run/docker.sock",
        "ws://127.0.0.1:80/",
        "127.0.0.1:8000",
        "",
        "http://",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254:80",
        "https://169.254.1.1:8443",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]:8000",
        "http://[::ffff:169.254.169.254]/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
    ];
    for (i, url) in refused.iter().enumerate() {
        let body = json!({"name": format!("evil{i}"), "url": url, "model_type": "openai", "models": ["m"]});
        let (s, v) = call(&http, reqwest::Method::POST, &reg, None, Some(&body)).await;
        assert_eq!(s, 400, "registering {url:?} must be refused: {v}");
        assert_eq!(
            v["error"]["param"], "url",
            "the error must name `url` for {url:?}: {v}"
        );
    }
    assert_eq!(
        names(&lb),
        vec!["static".to_string()],
        "a refused URL was registered"
    );
    // A loopback http URL is accepted (no token configured: loopback admin clients only).
    let body = json!({"name": "fine", "url": echo.url(), "model_type": "openai", "models": ["m"]});
    let (s, v) = call(&http, reqwest::Method::POST, &reg, None, Some(&body)).await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_api_keys_are_enforced_by_the_lb_and_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        "server",
        &ServerOpts {
            api_key: Some("SERVER-KEY-1".into()),
            ..ServerOpts::default()
        },
        dir.path(),
    );
    let http = fault_load::client(Duration::from_secs(30));
    let chat = chat_body(MODEL, false, 2);
    for (auth, want) in [
        (None, 401),
        (Some("Bearer nope"), 401),
        (Some("Bearer SERVER-KEY-1"), 200),
    ] {
        let mut h = vec![];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        let (o, _, _) = send(
            &http,
            &format!("{}/v1/chat/completions", server.url()),
            &h,
            &chat,
            Duration::from_secs(30),
        )
        .await;
        match (o, want) {
            (Outcome::Ok, 200) => {}
            (Outcome::ClearError(401, _), 401) => {}
            (o, w) => panic!("server with {auth:?}: want {w}, got {o:?}"),
        }
    }

    // The LB checks client keys and sends the backend's own key upstream.
    let backend_cfg = format!(
        "backends:\n  - name: s\n    url: {}\n    model_type: openai\n    models: [{MODEL}]\n    api_key: SERVER-KEY-1\n\
         client_api_keys: [\"CLIENT-KEY-A\", \"CLIENT-KEY-B\"]\n\
         health_check:\n  interval: 200ms\n  timeout: 200ms\n",
        server.url()
    );
    let mut lb = Lb::start("lb", &backend_cfg, dir.path(), &[]);
    lb.wait_backend_healthy("s", true, Duration::from_secs(10));
    let url = format!("{}/v1/chat/completions", lb.url());
    for (auth, want) in [
        (None, 401),
        (Some("Bearer nope"), 401),
        (Some("Bearer SERVER-KEY-1"), 401),
        (Some("Bearer CLIENT-KEY-A"), 200),
        (Some("Bearer CLIENT-KEY-B"), 200),
    ] {
        let mut h = vec![];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        let (o, _, _) = send(&http, &url, &h, &chat, Duration::from_secs(30)).await;
        match (o, want) {
            (Outcome::Ok, 200) => {}
            (Outcome::ClearError(401, _), 401) => {}
            (o, w) => panic!("LB with {auth:?}: want {w}, got {o:?}"),
        }
    }
    let (s, _) = call(
        &http,
        reqwest::Method::GET,
        &format!("{}/v1/models", lb.url()),
        None,
        None,
    )
    .await;
    assert_eq!(s, 401, "/v1/models must need a client key too");
}

/// The secrets found in `hay`, each with the first line that shows it.
fn contains_any(hay: &str, needles: &[&str]) -> Vec<String> {
    needles
        .iter()
        .filter_map(|n| {
            let line = hay.lines().find(|l| l.contains(*n))?;
            Some(format!("{n} in: {:.400}", line))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_or_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        "server",
        &ServerOpts {
            api_key: Some("SRV-SECRET-4412".into()),
            ..ServerOpts::default()
        },
        dir.path(),
    );
    let cfg = format!(
        "admin:\n  token: \"{ADMIN}\"\n\
         backends:\n  - name: s\n    url: {}\n    model_type: openai\n    models: [{MODEL}]\n    api_key: SRV-SECRET-4412\n\
         client_api_keys: [\"CLI-SECRET-9931\"]\n\
         health_check:\n  interval: 200ms\n  timeout: 200ms\n",
        server.url()
    );
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[("RUST_LOG", "debug")]);
    lb.wait_backend_healthy("s", true, Duration::from_secs(10));
    let http = fault_load::client(Duration::from_secs(30));
    let url = format!("{}/v1/chat/completions", lb.url());
    let chat = chat_body(MODEL, false, 2);
    for key in ["CLI-SECRET-9931", "WRONG-SECRET-0000"] {
        let auth = format!("Bearer {key}");
        let _ = send(
            &http,
            &url,
            &[("authorization", &auth)],
            &chat,
            Duration::from_secs(30),
        )
        .await;
        let mut streamed = chat.clone();
        streamed["stream"] = json!(true);
        let _ = send(
            &http,
            &url,
            &[("authorization", &auth)],
            &streamed,
            Duration::from_secs(30),
        )
        .await;
    }
    // Register a backend with its own key, with a right and a wrong admin token.
    let reg = json!({"name": "r", "url": server.url(), "model_type": "openai", "models": ["other"], "api_key": "REG-SECRET-5521"});
    for tok in [ADMIN, "WRONG-ADMIN-1234"] {
        let _ = call(
            &http,
            reqwest::Method::POST,
            &format!("{}/backends/register", lb.url()),
            Some(&format!("Bearer {tok}")),
            Some(&reg),
        )
        .await;
    }
    let _ = send(
        &http,
        &format!("{}/v1/chat/completions", server.url()),
        &[("authorization", "Bearer WRONG-SECRET-0000")],
        &chat,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let secrets = [
        ADMIN,
        "CLI-SECRET-9931",
        "WRONG-SECRET-0000",
        "SRV-SECRET-4412",
        "REG-SECRET-5521",
        "WRONG-ADMIN-1234",
    ];
    let mut leaks = Vec::new();
    for path in ["/status", "/metrics", "/health"] {
        let (_, body) = fault_procs::blocking_get(lb.addr, path).expect("GET");
        for s in contains_any(&body, &secrets) {
            leaks.push(format!("LB {path} shows {s}"));
        }
    }
    let (_, models) = call(
        &http,
        reqwest::Method::GET,
        &format!("{}/v1/models", lb.url()),
        Some("Bearer CLI-SECRET-9931"),
        None,
    )
    .await;
    for s in contains_any(&models.to_string(), &secrets) {
        leaks.push(format!("LB /v1/models shows {s}"));
    }
    for path in ["/health", "/metrics"] {
        let (_, body) = fault_procs::blocking_get(server.addr, path).expect("GET");
        for s in contains_any(&body, &secrets) {
            leaks.push(format!("server {path} shows {s}"));
        }
    }
    for s in contains_any(&lb.proc.log_text(), &secrets) {
        leaks.push(format!("LB log shows {s}"));
    }
    for s in contains_any(&server.proc.log_text(), &secrets) {
        leaks.push(format!("server log shows {s}"));
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    assert!(
        !lb.proc.log_text().is_empty(),
        "the LB logged nothing: the check above proves nothing"
    );
}

/// Send a raw request with `headers` through the LB; the echo backend records what arrived.
async fn raw_post(addr: SocketAddr, headers: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: front.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_x_forwarded_for_is_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = FaultyBackend::start(Mode::Good, Duration::from_millis(10)).await;
    let cfg = lb_config(MODEL, &[("echo", echo.url())], "");
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("echo", true, Duration::from_secs(10));
    let body = chat_body(MODEL, false, 2).to_string();
    let resp = raw_post(
        lb.addr,
        "Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Checksum\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         Proxy-Connection: keep-alive\r\nX-Drop-Me: 1\r\nConnection: X-Drop-Me, keep-alive\r\n\
         X-Forwarded-For: 203.0.113.7\r\nAuthorization: Bearer client-secret\r\nX-Keep-Me: yes\r\n",
        &body,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "request failed: {resp}");
    let seen = echo.seen.lock().expect("seen").clone();
    let h = seen.last().expect("the backend received the request");
    let get = |n: &str| {
        h.iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    for hop in [
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "x-drop-me",
        "upgrade",
    ] {
        assert!(
            get(hop).is_empty(),
            "hop-by-hop header `{hop}` reached the backend: {h:?}"
        );
    }
    assert!(
        get("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-drop-me")),
        "the client's Connection header reached the backend: {h:?}"
    );
    assert!(
        get("authorization").is_empty(),
        "the client's credentials reached the backend: {h:?}"
    );
    assert_eq!(
        get("x-keep-me"),
        vec!["yes".to_string()],
        "end-to-end headers must pass: {h:?}"
    );
    assert_eq!(
        get("x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1".to_string()],
        "X-Forwarded-For must be appended to, not replaced: {h:?}"
    );
    // Without a prior X-Forwarded-For the client address starts the list.
    let _ = raw_post(lb.addr, "", &body).await;
    let seen = echo.seen.lock().expect("seen").clone();
    let h = seen.last().expect("second request");
    let xff: Vec<_> = h
        .iter()
        .filter(|(k, _)| k == "x-forwarded-for")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(xff, vec!["127.0.0.1"], "{h:?}");
}
