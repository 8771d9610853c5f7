use super::*;
use std::time::Duration;

fn err(yaml: &str) -> String {
    match Config::from_yaml(yaml) {
        Ok(c) => panic!("expected an error for {yaml:?}, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_file_gives_defaults() {
    let c = Config::from_yaml("").expect("empty config is valid");
    assert_eq!(c.default_policy, Policy::CacheAware);
    assert_eq!(c.cache_aware, CacheAwareConfig::default());
    assert_eq!(c.health_check.path, "/health");
    assert_eq!(c.retries.max_attempts, 3);
    assert_eq!(c.body_limit, 8 * 1024 * 1024);
    assert_eq!(c, Config::default());
}

#[test]
fn unknown_policy_names_the_route_index() {
    let e = err("routes:\n  - model: a\n  - model: b\n    policy: fastest\n");
    assert!(
        e.starts_with("routes[1].policy: unknown value 'fastest'"),
        "got {e}"
    );
}

#[test]
fn backend_fields_are_checked_with_paths() {
    let e = err("backends:\n  - name: ok\n    url: ftp://x\n    models: [m]\n");
    assert!(e.starts_with("backends[0].url: unsupported URL"), "got {e}");
    let e = err("backends:\n  - name: 'bad name'\n    url: http://x\n    models: [m]\n");
    assert!(e.starts_with("backends[0].name: invalid name"), "got {e}");
    let e = err("backends:\n  - name: a\n    url: http://x\n    models: []\n");
    assert!(e.starts_with("backends[0].models:"), "got {e}");
    let e = err("backends:\n  - {name: a, url: 'http://x', models: [m]}\n  - {name: a, url: 'http://y', models: [m]}\n");
    assert!(e.starts_with("backends[1].name: duplicate"), "got {e}");
    let e = err("backends:\n  - {name: a, url: 'http://x', models: [m], model_type: llama}\n");
    assert!(
        e.starts_with("backends[0].model_type: unknown value 'llama'"),
        "got {e}"
    );
    let e = err("backends:\n  - {name: a, url: 'http://x', models: [m], weight: 0}\n");
    assert!(e.starts_with("backends[0].weight:"), "got {e}");
}

#[test]
fn durations_and_limits_are_checked() {
    let e = err("health_check:\n  interval: soon\n");
    assert!(
        e.starts_with("health_check.interval: invalid duration"),
        "got {e}"
    );
    let e = err("timeouts:\n  idle: 0ms\n");
    assert!(e.starts_with("timeouts.idle:"), "got {e}");
    let e = err("body_limit: 1000000000\n");
    assert!(e.starts_with("body_limit:"), "got {e}");
    let e = err("retries:\n  max_attempts: 0\n");
    assert!(e.starts_with("retries.max_attempts:"), "got {e}");
    let c = Config::from_yaml("timeouts:\n  connect: 250ms\n  first_byte: 3s\n  idle: 1500\n")
        .expect("valid timeouts");
    assert_eq!(c.timeouts.connect, Duration::from_millis(250));
    assert_eq!(c.timeouts.first_byte, Duration::from_secs(3));
    assert_eq!(c.timeouts.idle, Duration::from_millis(1500));
}

#[test]
fn empty_lists_may_be_written_as_null() {
    let c =
        Config::from_yaml("backends:\nroutes:\nclient_api_keys:\n").expect("null lists are empty");
    assert!(c.backends.is_empty() && c.routes.is_empty() && c.client_api_keys.is_empty());
}

#[test]
fn unknown_fields_are_rejected() {
    let e = err("retries:\n  attempts: 3\n");
    assert!(e.contains("unknown field `attempts`"), "got {e}");
}

#[test]
fn routes_resolve_aliases_and_hash_headers() {
    let c = Config::from_yaml(
        "routes:\n  - model: gpt-oss-20b\n    aliases: [gpt-oss]\n    policy: consistent_hash\n    hash_header: X-Session-Id\n",
    )
    .expect("valid route");
    let r = c.route_for("gpt-oss").expect("alias resolves");
    assert_eq!(r.model, "gpt-oss-20b");
    assert_eq!(r.hash_key, HashKey::Header("x-session-id".into()));
    let e = err("routes:\n  - model: a\n    policy: round_robin\n    hash_header: x-k\n");
    assert!(
        e.starts_with("routes[0].hash_header: only applies"),
        "got {e}"
    );
    let e = err("routes:\n  - model: a\n  - model: b\n    aliases: [a]\n");
    assert!(e.starts_with("routes[1].aliases[0]:"), "got {e}");
}

#[test]
fn secrets_are_redacted_in_debug() {
    let c = Config::from_yaml(
        "admin:\n  token: supersecret-token\nbackends:\n  - {name: a, url: 'http://x', models: [m], api_key: backend-secret-key}\n",
    )
    .expect("valid");
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("supersecret-token"),
        "admin token leaked: {dbg}"
    );
    assert!(!dbg.contains("backend-secret-key"), "api key leaked: {dbg}");
}

#[test]
fn urls_parse_and_metadata_addresses_are_recognised() {
    let u = check::backend_url("http://LocalHost:8001/v1/").expect("valid");
    assert_eq!(
        (u.host.as_str(), u.port, u.prefix.as_str()),
        ("localhost", 8001, "/v1")
    );
    let u = check::backend_url("https://[::1]").expect("valid");
    assert_eq!((u.host.as_str(), u.port, u.tls), ("::1", 443, true));
    assert!(check::backend_url("http://user@host").is_err());
    assert!(check::backend_url("file:///etc/passwd").is_err());
    assert!(check::backend_url("http://h:0").is_err());
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    assert!(check::is_link_local_or_metadata(&ip("169.254.169.254")));
    assert!(check::is_link_local_or_metadata(&ip("fd00:ec2::254")));
    assert!(check::is_link_local_or_metadata(&ip("fe80::1")));
    assert!(!check::is_link_local_or_metadata(&ip("127.0.0.1")));
}

#[test]
fn example_files_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config/examples exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Config::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected at least two example files, found {n}");
}

#[test]
fn upstream_tls_and_default_model_are_validated() {
    let e = err("upstream_tls:\n  ca_file: /nonexistent/ca.pem\n");
    assert!(
        e.starts_with("upstream_tls.ca_file: cannot read"),
        "got {e}"
    );
    let e = err("upstream_tls:\n  verify: maybe\n");
    assert!(e.contains("verify"), "got {e}");
    let e = err("default_model: ''\n");
    assert!(e.starts_with("default_model:"), "got {e}");
    let c = Config::from_yaml("upstream_tls:\n  verify: false\ndefault_model: m\n").expect("valid");
    assert!(!c.upstream_tls.verify);
    assert_eq!(c.default_model.as_deref(), Some("m"));
    assert!(Config::default().upstream_tls.verify);
}

#[test]
fn cache_aware_settings_are_checked_with_their_path() {
    let c = Config::from_yaml(
        "cache_aware: {cache_threshold: 0.5, balance_abs_threshold: 3, balance_rel_threshold: 1.2}\nroutes:\n  - {model: m, hash_header: x-session}\n",
    )
    .expect("valid");
    assert_eq!(c.cache_aware.cache_threshold, 0.5);
    assert_eq!(c.cache_aware.balance_abs_threshold, 3);
    assert_eq!(c.cache_aware.max_blocks_per_backend, 65_536);
    assert_eq!(c.route_for("m").expect("route").policy, Policy::CacheAware);
    let e = err("cache_aware: {cache_threshold: 1.5}\n");
    assert!(
        e.starts_with("cache_aware.cache_threshold: must be between 0 and 1"),
        "got {e}"
    );
    let e = err("cache_aware: {balance_rel_threshold: 0.5}\n");
    assert!(
        e.starts_with("cache_aware.balance_rel_threshold:"),
        "got {e}"
    );
    let e = err("cache_aware: {balance_abs_threshold: -1}\n");
    assert!(
        e.starts_with("cache_aware.balance_abs_threshold:"),
        "got {e}"
    );
    let e = err("cache_aware: {threshold: 1}\n");
    assert!(e.contains("threshold"), "got {e}");
}

/// The example files the README points users to parse, with the values they show.
#[test]
fn the_example_files_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let full = Config::from_file(&dir.join("full.yaml")).expect("full.yaml is valid");
    assert_eq!(full.default_policy, Policy::CacheAware);
    assert_eq!(full.cache_aware, CacheAwareConfig::default());
    assert!(full.backends.len() >= 3 && full.routes.len() >= 3);
    assert_eq!(full.plugins.len(), 1);
    assert!(full.plugins[0]
        .path
        .ends_with("proxy/plugins/examples/trap.wat"));
    let minimal = Config::from_file(&dir.join("minimal.yaml")).expect("minimal.yaml is valid");
    assert_eq!(minimal.backends.len(), 1);
    assert_eq!(minimal.default_policy, Policy::CacheAware);
}

#[test]
fn plugins_are_validated_with_field_paths() {
    let c = Config::from_yaml(
        "plugins:\n  - {name: auth, path: a.wasm, configuration: {keys: [k1]}}\n  - {name: pii, path: p.wat, global: false, fail_open: true, call_timeout: 20ms, max_memory_mib: 8}\nroutes:\n  - {model: m, plugins: [pii]}\n",
    )
    .expect("valid plugins");
    assert_eq!(c.plugins.len(), 2);
    assert_eq!(c.plugins[0].configuration, r#"{"keys":["k1"]}"#);
    assert_eq!(c.plugins[0].vm_id, "auth");
    assert!(c.plugins[0].global && !c.plugins[0].fail_open);
    assert_eq!(c.plugins[0].call_timeout, Duration::from_millis(100));
    assert_eq!(c.plugins[0].max_memory_mib, 64);
    assert!(!c.plugins[1].global && c.plugins[1].fail_open);
    assert_eq!(c.plugins[1].call_timeout, Duration::from_millis(20));
    assert_eq!(c.routes[0].plugins, vec!["pii".to_string()]);

    let e = err("plugins:\n  - {path: a.wasm}\n");
    assert!(e.starts_with("plugins[0].name: is required"), "got {e}");
    let e = err("plugins:\n  - {name: a, path: a.so}\n");
    assert!(e.starts_with("plugins[0].path:"), "got {e}");
    let e = err("plugins:\n  - {name: a, path: a.wasm}\n  - {name: a, path: b.wasm}\n");
    assert!(e.starts_with("plugins[1].name:"), "got {e}");
    let e = err("plugins:\n  - {name: a, path: a.wasm, max_memory_mib: 0}\n");
    assert!(e.starts_with("plugins[0].max_memory_mib:"), "got {e}");
    let e = err("plugins:\n  - {name: a, path: a.wasm, call_timeout: 0ms}\n");
    assert!(e.starts_with("plugins[0].call_timeout:"), "got {e}");
    let e = err("plugins:\n  - {name: a, path: a.wasm, color: red}\n");
    assert!(e.contains("unknown field `color`"), "got {e}");
    let e = err("routes:\n  - {model: m, plugins: [nope]}\n");
    assert!(
        e.starts_with("routes[0].plugins[0]: no plugin named 'nope'"),
        "got {e}"
    );
    let e = err("plugins:\n  - {name: a, path: a.wasm}\nroutes:\n  - {model: m, plugins: [a]}\n");
    assert!(
        e.starts_with("routes[0].plugins[0]: plugin 'a' is global"),
        "got {e}"
    );
}

#[test]
fn relative_plugin_paths_are_taken_from_the_config_file_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lb.yaml");
    std::fs::write(
        &file,
        "plugins:\n  - {name: a, path: plugins/a.wasm}\n  - {name: b, path: /abs/b.wasm}\n",
    )
    .expect("write");
    let c = Config::from_file(&file).expect("valid");
    assert_eq!(c.plugins[0].path, dir.path().join("plugins/a.wasm"));
    assert_eq!(c.plugins[1].path, std::path::PathBuf::from("/abs/b.wasm"));
}

#[test]
fn the_state_store_is_checked_with_field_paths() {
    let c = Config::from_yaml(
        "state_store:\n  url: postgres://lb@127.0.0.1:5432/gpt_oss_lb\n  pool_size: 4\n  resync_interval: 2s\n  ssl_mode: require\n",
    )
    .expect("valid");
    let s = c.state_store.expect("state_store");
    assert_eq!(
        (s.pool_size, s.resync_interval, s.ssl_mode.as_str()),
        (4, Duration::from_secs(2), "require")
    );
    assert_eq!(
        (s.connect_timeout, s.acquire_timeout),
        (Duration::from_secs(5), Duration::from_secs(3))
    );
    assert!(Config::from_yaml("{}")
        .expect("empty")
        .state_store
        .is_none());
    for (yaml, path) in [
        (
            "state_store: {pool_size: 2}\n",
            "state_store.url: is required",
        ),
        (
            "state_store: {url: \"sqlite:///x\"}\n",
            "state_store.url: must be a postgres://",
        ),
        (
            "state_store: {url: \"postgres://h/d\", pool_size: 0}\n",
            "state_store.pool_size:",
        ),
        (
            "state_store: {url: \"postgres://h/d\", ssl_mode: maybe}\n",
            "state_store.ssl_mode: must be one of",
        ),
        (
            "state_store: {url: \"postgres://h/d\", acquire_timeout: 1ms}\n",
            "state_store.acquire_timeout:",
        ),
        (
            "state_store: {url: \"postgres://h/d\"}\nstate_file: /x.sqlite\n",
            "state_file: cannot be used with state_store",
        ),
        (
            "state_store: {url: \"postgres://h/d\"}\nresponses_store: /x.sqlite\n",
            "responses_store: cannot be used with state_store",
        ),
        ("state_store: {url: \"postgres://h/d\", port: 5}\n", "port"),
    ] {
        let e = err(yaml);
        assert!(e.contains(path), "{yaml}: got {e}");
    }
}
