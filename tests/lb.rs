//! `gpt-oss-lb` end to end (issue 5): the real LB binary in front of real `gpt-oss-server`
//! processes on the fixture model.
//!
//! - admin API: auth (token, loopback-only), validation, 409, persistence across a restart;
//! - config validation naming field paths, hot reload (file change, SIGHUP, invalid file);
//! - `/health` 503 without a healthy backend;
//! - routing by model, unknown model 404 listing models, each policy's distribution;
//! - failover when a backend is killed, ejection and return;
//! - streaming through the LB; edge rewriting of a raw-mode backend equals the server's own
//!   parsed output.
//!
//! Process helpers are shared with the issue-8 suites (`tests/common/fault_procs.rs`).

#[path = "common/fault_procs.rs"]
mod procs;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use procs::{binary, free_port, lb_config, Lb, Server, ServerOpts};
use serde_json::{json, Value};

const MODEL: &str = "tiny";
const TOKEN: &str = "test-admin-token-123";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("client")
}

async fn get(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.expect("GET");
    let s = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(url: &str, body: &Value, token: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = http().post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("POST");
    let s = r.status().as_u16();
    let backend = r
        .headers()
        .get("x-gpt-oss-lb-backend")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = r.text().await.expect("body");
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        backend,
    )
}

async fn delete(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http().delete(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("DELETE");
    let s = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_openai_error(v: &Value, what: &str) {
    assert!(
        v["error"]["message"].is_string()
            && v["error"]["type"].is_string()
            && v["error"].get("param").is_some()
            && v["error"].get("code").is_some(),
        "{what}: not an OpenAI error JSON: {v}"
    );
}

fn chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
        "temperature": 0.0,
        "stream": stream,
    })
}

fn backend_names(status: &Value) -> Vec<String> {
    status["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn registration(name: &str, url: &str) -> Value {
    json!({"name": name, "url": url, "model_type": "openai", "models": [MODEL]})
}

/// A config with fast health checks and no static backends.
fn empty_config() -> String {
    lb_config(MODEL, &[], "")
}

fn config_with_token(extra: &str) -> String {
    format!("{}admin:\n  token: {TOKEN}\n{extra}", empty_config())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_token_validates_and_persists_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lb = Lb::start("lb", &config_with_token(""), dir.path(), &[]);
    let reg = format!("{}/backends/register", lb.url());
    let dead = format!("http://127.0.0.1:{}", free_port());

    // No token: 401; wrong token: 403; neither changes anything.
    let (s, v, _) = post(&reg, &registration("a", &dead), None).await;
    assert_eq!(s, 401, "{v}");
    assert_openai_error(&v, "401");
    let (s, v, _) = post(&reg, &registration("a", &dead), Some("wrong-token-xyz")).await;
    assert_eq!(s, 403, "{v}");
    assert_openai_error(&v, "403");
    assert!(
        backend_names(&lb.status()).is_empty(),
        "a refused registration must change nothing"
    );

    // Validation: URL scheme, name charset, link-local/metadata address, models.
    for (body, param) in [
        (
            json!({"name": "a", "url": "ftp://127.0.0.1:1", "models": [MODEL]}),
            "url",
        ),
        (
            json!({"name": "a b", "url": dead, "models": [MODEL]}),
            "name",
        ),
        (
            json!({"name": "meta", "url": "http://169.254.169.254", "models": [MODEL]}),
            "url",
        ),
        (
            json!({"name": "v6meta", "url": "http://[fd00:ec2::254]", "models": [MODEL]}),
            "url",
        ),
        (json!({"name": "a", "url": dead, "models": []}), "models"),
    ] {
        let (s, v, _) = post(&reg, &body, Some(TOKEN)).await;
        assert_eq!(s, 400, "{body} -> {v}");
        assert_openai_error(&v, "validation");
        assert_eq!(v["error"]["param"], param, "{body} -> {v}");
    }

    // Register, duplicate 409, explicit replace.
    let (s, v, _) = post(&reg, &registration("a", &dead), Some(TOKEN)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["backend"]["health"], "pending",
        "a new backend starts pending: {v}"
    );
    let (s, v, _) = post(&reg, &registration("a", &dead), Some(TOKEN)).await;
    assert_eq!(s, 409, "{v}");
    assert_openai_error(&v, "409");
    let mut replace = registration("a", &dead);
    replace["replace"] = json!(true);
    replace["weight"] = json!(3);
    replace["api_key"] = json!("sk-backend-secret-value");
    let (s, v, _) = post(&reg, &replace, Some(TOKEN)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v, _) = post(&reg, &registration("b", &dead), Some(TOKEN)).await;
    assert_eq!(s, 201, "{v}");

    // Secrets stay out of /status and the log.
    let status = lb.status();
    let text = status.to_string();
    assert!(
        !text.contains("sk-backend-secret-value"),
        "/status leaks the api key: {text}"
    );
    assert_eq!(lb.backend_status("a")["has_api_key"], true);
    assert_eq!(lb.backend_status("a")["weight"], 3);
    assert_eq!(
        lb.backend_status("a")["healthy"],
        false,
        "a dead backend never becomes healthy"
    );

    // Unregister needs the token too.
    let (s, _) = delete(&format!("{}/backends/b", lb.url()), Some("wrong-token-xyz")).await;
    assert_eq!(s, 403);
    let (s, v) = delete(&format!("{}/backends/nope", lb.url()), Some(TOKEN)).await;
    assert_eq!(s, 404, "{v}");

    // Restart on the same state file: both registrations come back.
    let port = lb.addr.port();
    let (config, state, sock) = (
        lb.config.clone(),
        lb.state_file.clone(),
        lb.upgrade_sock.clone(),
    );
    let log = lb.proc.log_text();
    assert!(
        !log.contains("sk-backend-secret-value"),
        "the log leaks the api key"
    );
    assert!(!log.contains(TOKEN), "the log leaks the admin token");
    drop(lb);
    let lb = Lb::start_at("lb2", &config, port, &state, &sock, dir.path(), &[], false);
    let mut names = backend_names(&lb.status());
    names.sort();
    assert_eq!(
        names,
        vec!["a", "b"],
        "registrations must survive a restart"
    );
    assert_eq!(lb.backend_status("a")["weight"], 3);

    let (s, v) = delete(&format!("{}/backends/b", lb.url()), Some(TOKEN)).await;
    assert_eq!(s, 200, "{v}");
    drop(lb);
    let lb = Lb::start_at("lb3", &config, port, &state, &sock, dir.path(), &[], false);
    assert_eq!(
        backend_names(&lb.status()),
        vec!["a"],
        "an unregistration must survive a restart"
    );
    drop(lb);

    // Upgrading from a version with a JSON state file and its journal: pointed at them, the
    // LB migrates them into SQLite at that path (a torn last journal line was never
    // acknowledged) and keeps the JSON beside it.
    let json_state = dir.path().join("old-state.json");
    let def = |name: &str| json!({"name": name, "url": "http://127.0.0.1:9", "model_type": "openai", "models": [MODEL], "weight": 2});
    std::fs::write(
        &json_state,
        json!({"version": 1, "backends": [def("old-a"), def("old-b")], "leases": {}}).to_string(),
    )
    .expect("write the JSON state file");
    std::fs::write(
        dir.path().join("old-state.json.journal"),
        format!(
            "{}\n{}\n{{\"op\":\"put\",\"backend\":{{\"na",
            json!({"op": "put", "backend": def("old-c")}),
            json!({"op": "delete", "name": "old-a"})
        ),
    )
    .expect("write the journal");
    let lb = Lb::start_at(
        "lb4",
        &config,
        port,
        &json_state,
        &sock,
        dir.path(),
        &[],
        false,
    );
    let mut names = backend_names(&lb.status());
    names.sort();
    assert_eq!(
        names,
        vec!["old-b", "old-c"],
        "the JSON registry is migrated"
    );
    assert_eq!(lb.backend_status("old-b")["weight"], 2);
    assert!(dir.path().join("old-state.json.json-migrated").exists());
    assert!(std::fs::read(&json_state)
        .expect("state")
        .starts_with(b"SQLite format 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_from_the_environment_overrides_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lb = Lb::start(
        "lb",
        &config_with_token(""),
        dir.path(),
        &[("GPT_OSS_LB_ADMIN_TOKEN", "env-token-456789")],
    );
    let reg = format!("{}/backends/register", lb.url());
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (s, _, _) = post(&reg, &registration("a", &dead), Some(TOKEN)).await;
    assert_eq!(
        s, 403,
        "the config's token is overridden by the environment's"
    );
    let (s, v, _) = post(&reg, &registration("a", &dead), Some("env-token-456789")).await;
    assert_eq!(s, 201, "{v}");
}

/// A non-loopback address of this machine, if it has one (found without sending a packet).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_api_accepts_only_loopback_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("lb.yaml");
    std::fs::write(&config, empty_config()).expect("write config");
    let port = free_port();
    let mut cmd = std::process::Command::new(binary("gpt-oss-lb"));
    cmd.arg("--config")
        .arg(&config)
        .args(["--host", "0.0.0.0", "--port", &port.to_string()])
        .arg("--state-file")
        .arg(dir.path().join("state.sqlite"))
        .arg("--upgrade-sock")
        .arg(dir.path().join("up.sock"))
        .arg("--pid-file")
        .arg(dir.path().join("lb.pid"))
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env_remove("GPT_OSS_LB_ADMIN_TOKEN");
    let mut proc = procs::Proc::spawn("lb", cmd, dir.path());
    let local: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    procs::wait_http_any(&mut proc, local, Duration::from_secs(30));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (s, v, _) = post(
        &format!("http://{local}/backends/register"),
        &registration("a", &dead),
        None,
    )
    .await;
    assert_eq!(s, 201, "loopback clients may register without a token: {v}");
    let Some(ip) = non_loopback_ip() else {
        eprintln!("no non-loopback address on this machine; the remote half is not exercised");
        return;
    };
    let remote = format!("http://{ip}:{port}");
    let (s, v, _) = post(
        &format!("{remote}/backends/register"),
        &registration("b", &dead),
        None,
    )
    .await;
    assert_eq!(s, 403, "a non-loopback client must be refused: {v}");
    assert_openai_error(&v, "403");
    let (s, _) = delete(&format!("{remote}/backends/a"), None).await;
    assert_eq!(s, 403);
    let (s, v) = get(&format!("http://{local}/status")).await;
    assert_eq!(s, 200);
    assert_eq!(backend_names(&v), vec!["a"], "refused calls change nothing");
}

#[test]
fn invalid_configs_are_refused_with_the_field_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (yaml, expected) in [
        (
            "routes:\n  - model: a\n  - model: b\n    policy: fastest\n",
            "routes[1].policy: unknown value 'fastest'",
        ),
        (
            "backends:\n  - name: x\n    url: ftp://h\n    models: [m]\n",
            "backends[0].url:",
        ),
        (
            "timeouts:\n  idle: soon\n",
            "timeouts.idle: invalid duration",
        ),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).expect("write");
        let out = std::process::Command::new(binary("gpt-oss-lb"))
            .arg("--config")
            .arg(&path)
            .arg("-t")
            .output()
            .expect("run gpt-oss-lb -t");
        assert!(!out.status.success(), "{yaml:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
    }
    for example in ["minimal.yaml", "full.yaml"] {
        let path = procs::workspace_root()
            .join("config/examples")
            .join(example);
        let out = std::process::Command::new(binary("gpt-oss-lb"))
            .arg("--config")
            .arg(&path)
            .arg("-t")
            .output()
            .expect("run gpt-oss-lb -t");
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(lb: &Lb, name: &str) -> f64 {
    let text = http()
        .get(format!("{}/metrics", lb.url()))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_a_backend_is_healthy_and_hot_reload_swaps_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lb = Lb::start("lb", &empty_config(), dir.path(), &[]);
    let (s, v) = get(&format!("{}/health", lb.url())).await;
    assert_eq!(s, 503, "no backend: {v}");
    let (s, v, _) = post(
        &format!("{}/v1/chat/completions", lb.url()),
        &chat(MODEL, false),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_openai_error(&v, "unknown model");

    // Reload: a file with a real backend.
    let server = Server::start("server", &ServerOpts::default(), dir.path());
    std::fs::write(&lb.config, lb_config(MODEL, &[("s", server.url())], ""))
        .expect("rewrite config");
    lb.wait_backend_healthy("s", true, Duration::from_secs(15));
    let (s, v) = get(&format!("{}/health", lb.url())).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = get(&format!("{}/v1/models", lb.url())).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"][0]["id"], MODEL, "{v}");
    let (s, v, backend) = post(
        &format!("{}/v1/chat/completions", lb.url()),
        &chat(MODEL, false),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(backend.as_deref(), Some("s"));
    // No `model` (the seed's clients send none): the only model served takes it.
    let mut no_model = chat(MODEL, false);
    no_model.as_object_mut().map(|o| o.remove("model"));
    let (s, v, backend) = post(
        &format!("{}/v1/chat/completions", lb.url()),
        &no_model,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(backend.as_deref(), Some("s"));
    assert_eq!(v["model"], MODEL, "{v}");

    // An invalid file is rejected: the previous config stays in force.
    let failures = metric(&lb, "gpt_oss_lb_config_reload_failures_total").await;
    std::fs::write(&lb.config, "routes:\n  - model: x\n    policy: fastest\n")
        .expect("write bad config");
    wait_for("the rejected reload", Duration::from_secs(10), async || {
        metric(&lb, "gpt_oss_lb_config_reload_failures_total").await > failures
    })
    .await;
    let (s, _, _) = post(
        &format!("{}/v1/chat/completions", lb.url()),
        &chat(MODEL, false),
        None,
    )
    .await;
    assert_eq!(
        s, 200,
        "the old config keeps serving after a rejected reload"
    );
    assert!(lb
        .proc
        .log_text()
        .contains("routes[0].policy: unknown value 'fastest'"));

    // SIGHUP reloads (and does not kill the process).
    std::fs::write(
        &lb.config,
        lb_config(
            MODEL,
            &[("s", server.url())],
            "default_policy: round_robin\n",
        ),
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reloads = metric(&lb, "gpt_oss_lb_config_reloads_total").await;
    lb.proc.signal("HUP");
    wait_for("the SIGHUP reload", Duration::from_secs(10), async || {
        metric(&lb, "gpt_oss_lb_config_reloads_total").await > reloads
    })
    .await;
    assert!(lb.proc.alive(), "SIGHUP must not stop the LB");
    let status = lb.status();
    let route = status["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == MODEL).cloned());
    assert_eq!(
        route.map(|r| r["policy"].clone()),
        Some(json!("round_robin"))
    );

    // The backend dies: /health goes back to 503.
    drop(server);
    lb.wait_backend_healthy("s", false, Duration::from_secs(15));
    let (s, _) = get(&format!("{}/health", lb.url())).await;
    assert_eq!(s, 503);
}

fn two_server_config(a: &Server, b: &Server, route: &str) -> String {
    lb_config(MODEL, &[("a", a.url()), ("b", b.url())], route)
}

async fn counts(lb: &Lb, n: usize, body: impl Fn(usize) -> Value) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for i in 0..n {
        let (s, v, backend) =
            post(&format!("{}/v1/chat/completions", lb.url()), &body(i), None).await;
        assert_eq!(s, 200, "request {i}: {v}");
        *c.entry(backend.expect("x-gpt-oss-lb-backend header"))
            .or_default() += 1;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_model_policies_failover_and_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Server::start("server-a", &ServerOpts::default(), dir.path());
    let b = Server::start("server-b", &ServerOpts::default(), dir.path());
    let other = Server::start(
        "server-other",
        &ServerOpts {
            model_name: "other".into(),
            ..ServerOpts::default()
        },
        dir.path(),
    );
    let extra = format!(
        "  - name: o\n    url: {}\n    model_type: openai\n    models: [other]\nroutes:\n  - model: {MODEL}\n    aliases: [tiny-alias]\n    policy: round_robin\n",
        other.url()
    );
    let mut lb = Lb::start("lb", &two_server_config(&a, &b, &extra), dir.path(), &[]);
    for n in ["a", "b", "o"] {
        lb.wait_backend_healthy(n, true, Duration::from_secs(15));
    }

    // By model, by alias; unknown models get a 404 listing the models.
    let c = counts(&lb, 4, |_| chat("other", false)).await;
    assert_eq!(c.get("o"), Some(&4), "{c:?}");
    let (s, v, backend) = post(
        &format!("{}/v1/chat/completions", lb.url()),
        &chat("tiny-alias", false),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(matches!(backend.as_deref(), Some("a" | "b")));
    let (s, v, _) = post(
        &format!("{}/v1/chat/completions", lb.url()),
        &chat("gpt-5", false),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_openai_error(&v, "unknown model");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(MODEL) && msg.contains("other"),
        "the 404 lists the models: {msg}"
    );
    // No `model` with several models served and no `default_model`: a 400 naming them.
    let mut no_model = chat(MODEL, false);
    no_model.as_object_mut().map(|o| o.remove("model"));
    let (s, v, _) = post(
        &format!("{}/v1/chat/completions", lb.url()),
        &no_model,
        None,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "model", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(MODEL) && msg.contains("other"), "{msg}");
    let (s, v) = get(&format!("{}/v1/models/other", lb.url())).await;
    assert_eq!((s, v["id"].clone()), (200, json!("other")));
    let (s, _) = get(&format!("{}/v1/models/nope", lb.url())).await;
    assert_eq!(s, 404);

    // round_robin: an even split.
    let c = counts(&lb, 8, |_| chat(MODEL, false)).await;
    assert_eq!(
        (c.get("a"), c.get("b")),
        (Some(&4), Some(&4)),
        "round robin: {c:?}"
    );

    // consistent_hash on `user` and on a header: sticky per key, spread over keys.
    let hash = format!("routes:\n  - model: {MODEL}\n    policy: consistent_hash\n");
    std::fs::write(&lb.config, two_server_config(&a, &b, &hash)).expect("write");
    wait_for(
        "consistent_hash in force",
        Duration::from_secs(10),
        async || {
            lb.status()["routes"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["name"] == MODEL && r["policy"] == "consistent_hash")
            })
        },
    )
    .await;
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..2 {
        for u in 0..8 {
            let user = format!("user-{u}");
            let mut body = chat(MODEL, false);
            body["user"] = json!(user);
            let (s, v, backend) =
                post(&format!("{}/v1/chat/completions", lb.url()), &body, None).await;
            assert_eq!(s, 200, "{v}");
            let backend = backend.expect("backend header");
            if round == 0 {
                owner.insert(user, backend);
            } else {
                assert_eq!(
                    owner.get(&user),
                    Some(&backend),
                    "{user} must stick to one backend"
                );
            }
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert_eq!(
        used.len(),
        2,
        "8 users must spread over both backends: {owner:?}"
    );

    // least_outstanding: sequential requests alternate between idle backends.
    let least = format!("routes:\n  - model: {MODEL}\n    policy: least_outstanding\n");
    std::fs::write(&lb.config, two_server_config(&a, &b, &least)).expect("write");
    wait_for(
        "least_outstanding in force",
        Duration::from_secs(10),
        async || {
            lb.status()["routes"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["name"] == MODEL && r["policy"] == "least_outstanding")
            })
        },
    )
    .await;
    let c = counts(&lb, 6, |_| chat(MODEL, false)).await;
    assert!(
        c.get("a").is_some_and(|n| *n >= 2) && c.get("b").is_some_and(|n| *n >= 2),
        "least outstanding: {c:?}"
    );

    // cache_aware (the default): a prompt goes back where it was prefilled (its KV is cached
    // there); unrelated prompts spread over the backends that have seen the least.
    std::fs::write(&lb.config, two_server_config(&a, &b, "")).expect("write");
    wait_for(
        "cache_aware in force",
        Duration::from_secs(10),
        async || {
            lb.status()["routes"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["name"] == MODEL && r["policy"] == "cache_aware")
            })
        },
    )
    .await;
    let c = counts(&lb, 4, |_| chat(MODEL, false)).await;
    assert_eq!(c.len(), 1, "one prompt, one backend: {c:?}");
    let c = counts(&lb, 6, |i| {
        let mut body = chat(MODEL, false);
        body["messages"][0]["content"] = json!(format!("Unrelated question number {i}?"));
        body
    })
    .await;
    assert!(
        c.get("a").is_some_and(|n| *n >= 2) && c.get("b").is_some_and(|n| *n >= 2),
        "unrelated prompts spread: {c:?}"
    );

    // Failover: kill `a`; every request still succeeds (connect errors retried on `b`).
    a.proc.signal("KILL");
    let c = counts(&lb, 6, |_| chat(MODEL, false)).await;
    assert_eq!(c.get("b"), Some(&6), "all requests fail over to b: {c:?}");
    lb.wait_backend_healthy("a", false, Duration::from_secs(10));
    let st = lb.backend_status("a");
    assert!(
        matches!(st["health"].as_str(), Some("ejected" | "unhealthy")),
        "{st}"
    );

    // Return: `a` comes back on the same port and gets traffic after its probe.
    let port = a.addr.port();
    drop(a);
    let a2 = Server::start(
        "server-a2",
        &ServerOpts {
            port: Some(port),
            ..ServerOpts::default()
        },
        dir.path(),
    );
    lb.wait_backend_healthy("a", true, Duration::from_secs(20));
    // New prompts go to the backend with the least recorded (`a`'s record was forgotten when
    // it failed its checks: a restarted server's cache is empty).
    let c = counts(&lb, 6, |i| {
        let mut body = chat(MODEL, false);
        body["messages"][0]["content"] = json!(format!("A question after the return, number {i}?"));
        body
    })
    .await;
    assert!(
        c.get("a").is_some_and(|n| *n >= 2),
        "the returned backend serves again: {c:?}"
    );
    drop(a2);
}

/// The content of an SSE stream: (content, reasoning, finish reasons, ended with [DONE]).
fn read_sse(text: &str) -> (String, String, Vec<String>, bool) {
    let (mut content, mut reasoning, mut finishes) = (String::new(), String::new(), Vec::new());
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value =
            serde_json::from_str(data).unwrap_or_else(|e| panic!("bad SSE data {data}: {e}"));
        assert!(v.get("error").is_none(), "error event: {v}");
        for c in v["choices"].as_array().into_iter().flatten() {
            content.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            reasoning.push_str(c["delta"]["reasoning_content"].as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                finishes.push(f.to_string());
            }
        }
    }
    (content, reasoning, finishes, done)
}

async fn post_text(url: &str, body: &Value) -> (u16, String) {
    let r = http().post(url).json(body).send().await.expect("POST");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// `gpt-oss-server` serving its embedded gpt-oss-nano (no `--model-path`): a trained model
/// that writes real harmony (analysis, then final), unlike the random tiny fixture.
fn start_nano(name: &str, raw: bool, dir: &Path) -> (procs::Proc, String) {
    let mut cmd = std::process::Command::new(binary("gpt-oss-server"));
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--device-map", "cpu"])
        .env("RUST_LOG", "info");
    cmd.args(["--default-max-tokens", "200"]);
    if raw {
        cmd.arg("--raw-output");
    }
    if let Some(lib) = procs::ort_dylib() {
        cmd.env("ORT_DYLIB_PATH", lib);
    }
    let mut proc = procs::Proc::spawn(name, cmd, dir);
    let line = proc.wait_stdout("listening on http://", Duration::from_secs(120));
    let addr: std::net::SocketAddr = line
        .rsplit("http://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the address in '{line}'"));
    procs::wait_http_ok(&mut proc, addr, "/health", Duration::from_secs(180));
    (proc, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_edge_rewriting_match_the_servers_own_parsing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_parsed, parsed_url) = start_nano("nano-parsed", false, dir.path());
    let (_raw, raw_url) = start_nano("nano-raw", true, dir.path());
    // Both serve `gpt-oss-20b`; the raw one is reached through the route `nano-raw`.
    let cfg = format!(
        "{}default_model: gpt-oss-20b\nroutes:\n  - model: nano-raw\n    backends: [raw]\n    upstream_model: gpt-oss-20b\n",
        lb_config(
            "gpt-oss-20b",
            &[("parsed", parsed_url)],
            &format!("  - name: raw\n    url: {raw_url}\n    model_type: gpt-oss\n    models: [nano-raw]\n"),
        )
    );
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("parsed", true, Duration::from_secs(15));
    lb.wait_backend_healthy("raw", true, Duration::from_secs(15));
    let url = format!("{}/v1/chat/completions", lb.url());

    let mut body = chat("gpt-oss-20b", false);
    body["max_tokens"] = json!(200);
    body["seed"] = json!(7);
    body["separate_thinking"] = json!(true);
    body["messages"] = json!([
        {"role": "system", "content": "Always answer in just single word."},
        {"role": "user", "content": "What is the capital of the US?"}
    ]);
    let mut raw_body = body.clone();
    raw_body["model"] = json!("nano-raw");

    // The raw backend's own answer carries harmony text (checked directly, not through the LB).
    let (s, direct) = post_text(&format!("{raw_url}/v1/chat/completions"), &body).await;
    assert_eq!(s, 200, "{direct}");
    assert!(
        direct.contains("<|channel|>"),
        "the raw backend must answer raw harmony: {direct}"
    );

    // Non-streaming: the LB's rewrite of the raw backend equals the parsed server's answer.
    let (s, want, _) = post(&url, &body, None).await;
    assert_eq!(s, 200, "{want}");
    let (s, got, backend) = post(&url, &raw_body, None).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(backend.as_deref(), Some("raw"));
    let (w, g) = (
        &want["choices"][0]["message"],
        &got["choices"][0]["message"],
    );
    assert!(
        w["reasoning_content"].is_string(),
        "nano reasons before answering: {w}"
    );
    for field in ["content", "reasoning_content", "tool_calls", "thinking"] {
        assert_eq!(
            w[field], g[field],
            "field {field}: parsed {w} vs rewritten {g}; raw backend said {direct}"
        );
    }
    assert_eq!(w["parsed"]["final"], g["parsed"]["final"]);
    assert_eq!(
        w["parsed"]["developer_instructions"],
        g["parsed"]["developer_instructions"]
    );
    assert_eq!(
        want["choices"][0]["finish_reason"],
        got["choices"][0]["finish_reason"]
    );
    let g_text = got.to_string();
    assert!(
        !g_text.contains("<|channel|>") && !g_text.contains("<|message|>"),
        "special tokens leaked: {g_text}"
    );

    // The seed's curl exactly (no `model`, temperature 0.7): `default_model` takes it, and
    // the answer is "Washington" with the reasoning apart.
    let seed = json!({
        "messages": [
            {"role": "system", "content": "Always answer in just single word."},
            {"role": "user", "content": "What is the capital of the US?"}
        ],
        "max_tokens": 1000,
        "temperature": 0.7,
        "separate_thinking": true
    });
    let (s, v, backend) = post(&url, &seed, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(backend.as_deref(), Some("parsed"));
    let m = &v["choices"][0]["message"];
    assert_eq!(m["content"], "Washington", "{v}");
    assert!(
        m["reasoning_content"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
            && m["thinking"]["analysis"] == m["reasoning_content"],
        "{v}"
    );

    // Streaming through the LB, both backends: same text, one finish reason, [DONE].
    body["stream"] = json!(true);
    raw_body["stream"] = json!(true);
    let (s, want) = post_text(&url, &body).await;
    assert_eq!(s, 200, "{want}");
    let (s, got) = post_text(&url, &raw_body).await;
    assert_eq!(s, 200, "{got}");
    let w = read_sse(&want);
    let g = read_sse(&got);
    assert!(w.3 && g.3, "both streams end with [DONE]");
    assert_eq!(
        (w.0, w.1, w.2),
        (g.0, g.1, g.2),
        "rewritten stream differs from the parsed one"
    );
    assert!(
        !got.contains("<|channel|>"),
        "special tokens leaked into the stream"
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it; returns (CA PEM, leaf DER, key DER).
fn test_pki() -> (String, Vec<u8>, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    (ca.pem(), leaf.der().to_vec(), leaf_key.serialize_der())
}

/// Terminate TLS on a loopback port and relay each connection to `upstream` (a real
/// gpt-oss-server): the server itself speaks plain HTTP.
async fn tls_terminator(
    cert: Vec<u8>,
    key: Vec<u8>,
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio_rustls::rustls;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return; // a client that refused our certificate
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, task)
}

/// `https://` backends: the LB verifies the backend's certificate against
/// `upstream_tls.ca_file` (health checks and proxied requests, streaming included); without
/// that CA the backend never becomes healthy, and `verify: false` accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start("server", &ServerOpts::default(), dir.path());
    let (ca_pem, cert, key) = test_pki();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).expect("write ca");
    let (tls_addr, _task) = tls_terminator(cert, key, server.addr).await;
    let backend_url = format!("https://127.0.0.1:{}", tls_addr.port());

    let cfg = format!(
        "{}upstream_tls:\n  ca_file: {}\n",
        lb_config(MODEL, &[("tls", backend_url.clone())], ""),
        ca_path.display()
    );
    let mut lb = Lb::start("lb", &cfg, dir.path(), &[]);
    lb.wait_backend_healthy("tls", true, Duration::from_secs(15));
    let url = format!("{}/v1/chat/completions", lb.url());
    let (s, v, backend) = post(&url, &chat(MODEL, false), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(backend.as_deref(), Some("tls"));
    assert!(v["choices"][0]["message"].is_object(), "{v}");
    let (s, text) = post_text(&url, &chat(MODEL, true)).await;
    assert_eq!(s, 200, "{text}");
    assert!(read_sse(&text).3, "the stream ends with [DONE]: {text}");

    // Without the CA (system roots only) the certificate is refused: never healthy.
    let no_ca = lb_config(MODEL, &[("tls", backend_url.clone())], "");
    let lb2 = Lb::start("lb-no-ca", &no_ca, dir.path(), &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, status) = get(&format!("{}/status", lb2.url())).await;
    assert_eq!(
        status["backends"][0]["healthy"], false,
        "an unverifiable certificate must not be trusted: {status}"
    );
    let (s, v, _) = post(
        &format!("{}/v1/chat/completions", lb2.url()),
        &chat(MODEL, false),
        None,
    )
    .await;
    assert_eq!(s, 503, "{v}");
    drop(lb2);

    // `verify: false` (development only) accepts it.
    let insecure = format!("{no_ca}upstream_tls:\n  verify: false\n");
    let mut lb3 = Lb::start("lb-insecure", &insecure, dir.path(), &[]);
    lb3.wait_backend_healthy("tls", true, Duration::from_secs(15));
    let (s, v, _) = post(
        &format!("{}/v1/chat/completions", lb3.url()),
        &chat(MODEL, false),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
}
