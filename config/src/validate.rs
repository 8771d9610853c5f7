//! Raw file -> validated [`Config`]. Every error names the dotted field path.

use std::collections::HashSet;
use std::time::Duration;

use crate::raw::{RawBackend, RawConfig, Scalar};
use crate::{
    check, AdminConfig, BackendConfig, Config, ConfigError, HashKey, HealthCheckConfig, ModelType,
    PluginConfig, Policy, RetryConfig, RouteConfig, TimeoutConfig, UpstreamTlsConfig,
};

/// The most `body_limit` may be: the LB holds each accepted body in memory to replay it on
/// failover.
pub const MAX_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// `body_limit` when unset: above `gpt-oss-server`'s default `--max-body-bytes` (4 MiB), so
/// a long prompt reaches the backend, which answers for its own limit.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

type Result<T> = std::result::Result<T, ConfigError>;

fn duration(path: &str, v: Option<Scalar>, default: Duration, min: Duration) -> Result<Duration> {
    let d = match v {
        None => default,
        Some(Scalar::Int(ms)) => Duration::from_millis(ms),
        Some(Scalar::Float(f)) => {
            crate::parse_duration(&f.to_string()).map_err(|e| ConfigError::invalid(path, e))?
        }
        Some(Scalar::Text(t)) => {
            crate::parse_duration(&t).map_err(|e| ConfigError::invalid(path, e))?
        }
    };
    if d < min {
        return Err(ConfigError::invalid(
            path,
            format!("must be at least {}ms", min.as_millis()),
        ));
    }
    Ok(d)
}

fn count(path: &str, v: Option<i64>, default: u32, min: u32, max: u32) -> Result<u32> {
    let n = v.unwrap_or(i64::from(default));
    if n < i64::from(min) || n > i64::from(max) {
        return Err(ConfigError::invalid(
            path,
            format!("must be between {min} and {max}, got {n}"),
        ));
    }
    Ok(n as u32)
}

/// `cache_aware:`: `cache_threshold` 0 to 1, `balance_abs_threshold` 0 to 1,000,000,
/// `balance_rel_threshold` 1 to 1,000, `max_blocks_per_backend` 16 to 16,777,216.
fn cache_aware(raw: crate::raw::RawCacheAware) -> Result<crate::CacheAwareConfig> {
    let d = crate::CacheAwareConfig::default();
    let ratio = |path: &str, v: Option<f64>, default: f64, min: f64, max: f64| -> Result<f64> {
        let x = v.unwrap_or(default);
        if !(min..=max).contains(&x) {
            return Err(ConfigError::invalid(
                path,
                format!("must be between {min} and {max}, got {x}"),
            ));
        }
        Ok(x)
    };
    Ok(crate::CacheAwareConfig {
        cache_threshold: ratio(
            "cache_aware.cache_threshold",
            raw.cache_threshold,
            d.cache_threshold,
            0.0,
            1.0,
        )?,
        balance_abs_threshold: u64::from(count(
            "cache_aware.balance_abs_threshold",
            raw.balance_abs_threshold,
            d.balance_abs_threshold as u32,
            0,
            1_000_000,
        )?),
        balance_rel_threshold: ratio(
            "cache_aware.balance_rel_threshold",
            raw.balance_rel_threshold,
            d.balance_rel_threshold,
            1.0,
            1000.0,
        )?,
        max_blocks_per_backend: count(
            "cache_aware.max_blocks_per_backend",
            raw.max_blocks_per_backend,
            d.max_blocks_per_backend as u32,
            16,
            1 << 24,
        )? as usize,
    })
}

/// `state_store:`: `url` (postgres:// or postgresql://, required), `pool_size` 1 to 256,
/// timeouts of at least 100 ms, `ssl_mode` one of libpq's.
fn state_store(raw: crate::raw::RawStateStore) -> Result<crate::StateStoreConfig> {
    let url = raw
        .url
        .ok_or_else(|| ConfigError::invalid("state_store.url", "is required"))?;
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(ConfigError::invalid(
            "state_store.url",
            "must be a postgres:// or postgresql:// URL (for SQLite, set state_file)",
        ));
    }
    let ms = Duration::from_millis;
    let ssl_mode = raw.ssl_mode.unwrap_or_else(|| "prefer".into());
    const MODES: [&str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];
    if !MODES.contains(&ssl_mode.as_str()) {
        return Err(ConfigError::invalid(
            "state_store.ssl_mode",
            format!("must be one of {}, got '{ssl_mode}'", MODES.join(", ")),
        ));
    }
    if raw.ssl_root_cert.as_deref().is_some_and(str::is_empty) {
        return Err(ConfigError::invalid(
            "state_store.ssl_root_cert",
            "must not be empty",
        ));
    }
    Ok(crate::StateStoreConfig {
        url,
        pool_size: count("state_store.pool_size", raw.pool_size, 8, 1, 256)?,
        connect_timeout: duration(
            "state_store.connect_timeout",
            raw.connect_timeout,
            ms(5000),
            ms(100),
        )?,
        acquire_timeout: duration(
            "state_store.acquire_timeout",
            raw.acquire_timeout,
            ms(3000),
            ms(100),
        )?,
        resync_interval: duration(
            "state_store.resync_interval",
            raw.resync_interval,
            ms(5000),
            ms(100),
        )?,
        ssl_mode,
        ssl_root_cert: raw.ssl_root_cert,
    })
}

fn policy(path: &str, v: Option<&str>) -> Result<Option<Policy>> {
    match v {
        None => Ok(None),
        Some(s) => Policy::parse(s).map(Some).ok_or_else(|| {
            ConfigError::invalid(
                path,
                format!(
                    "unknown value '{s}' (expected one of {})",
                    Policy::NAMES.join(", ")
                ),
            )
        }),
    }
}

pub fn validate(raw: RawConfig) -> Result<Config> {
    if let Some(listen) = &raw.listen {
        let ok = listen
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(ConfigError::invalid(
                "listen",
                format!("invalid address '{listen}', expected host:port"),
            ));
        }
    }

    let a = raw.admin.unwrap_or_default();
    if a.token.as_deref().is_some_and(|t| t.trim().len() < 8) {
        return Err(ConfigError::invalid(
            "admin.token",
            "must be at least 8 characters",
        ));
    }
    let mut forbidden_addresses = Vec::with_capacity(a.forbidden_addresses.len());
    for (i, text) in a.forbidden_addresses.iter().enumerate() {
        forbidden_addresses.push(
            check::IpBlock::parse(text)
                .map_err(|e| ConfigError::invalid(format!("admin.forbidden_addresses[{i}]"), e))?,
        );
    }
    let admin = AdminConfig {
        token: a.token,
        allow_link_local: a.allow_link_local,
        forbidden_addresses,
        max_backends: count("admin.max_backends", a.max_backends, 4096, 1, 1_000_000)? as usize,
    };

    if raw.state_file.as_deref().is_some_and(str::is_empty) {
        return Err(ConfigError::invalid("state_file", "must not be empty"));
    }
    if raw.responses_store.as_deref().is_some_and(str::is_empty) {
        return Err(ConfigError::invalid("responses_store", "must not be empty"));
    }
    let state_store = raw.state_store.map(state_store).transpose()?;
    if state_store.is_some() {
        for (key, set) in [
            ("state_file", raw.state_file.is_some()),
            ("responses_store", raw.responses_store.is_some()),
        ] {
            if set {
                return Err(ConfigError::invalid(
                    key,
                    "cannot be used with state_store (PostgreSQL keeps the registry and the conversations)",
                ));
            }
        }
    }

    let mut names = HashSet::new();
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (i, b) in raw.backends.into_iter().enumerate() {
        let prefix = format!("backends[{i}].");
        let backend = backend(b, &prefix)?;
        if !names.insert(backend.name.clone()) {
            return Err(ConfigError::invalid(
                format!("{prefix}name"),
                format!("duplicate backend name '{}'", backend.name),
            ));
        }
        backends.push(backend);
    }

    let default_policy =
        policy("default_policy", raw.default_policy.as_deref())?.unwrap_or_default();
    let cache_aware = cache_aware(raw.cache_aware.unwrap_or_default())?;

    let plugins = plugins(raw.plugins)?;

    let mut seen_models = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let p = |f: &str| format!("routes[{i}].{f}");
        let model = r
            .model
            .ok_or_else(|| ConfigError::invalid(p("model"), "is required"))?;
        check::model_id(&model).map_err(|e| ConfigError::invalid(p("model"), e))?;
        if !seen_models.insert(model.clone()) {
            return Err(ConfigError::invalid(
                p("model"),
                format!("model or alias '{model}' is routed twice"),
            ));
        }
        for (j, a) in r.aliases.iter().enumerate() {
            let ap = format!("{}[{j}]", p("aliases"));
            check::model_id(a).map_err(|e| ConfigError::invalid(&ap, e))?;
            if !seen_models.insert(a.clone()) {
                return Err(ConfigError::invalid(
                    ap,
                    format!("model or alias '{a}' is routed twice"),
                ));
            }
        }
        for (j, b) in r.backends.iter().enumerate() {
            check::backend_name(b)
                .map_err(|e| ConfigError::invalid(format!("{}[{j}]", p("backends")), e))?;
        }
        let pol = policy(&p("policy"), r.policy.as_deref())?.unwrap_or(default_policy);
        let hash_key = match r.hash_header {
            Some(h) => {
                let valid = !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !valid {
                    return Err(ConfigError::invalid(
                        p("hash_header"),
                        format!("invalid header name '{h}'"),
                    ));
                }
                if !matches!(pol, Policy::ConsistentHash | Policy::CacheAware) {
                    return Err(ConfigError::invalid(
                        p("hash_header"),
                        "only applies to policies consistent_hash and cache_aware",
                    ));
                }
                HashKey::Header(h.to_ascii_lowercase())
            }
            None => HashKey::User,
        };
        if let Some(m) = &r.upstream_model {
            check::model_id(m).map_err(|e| ConfigError::invalid(p("upstream_model"), e))?;
        }
        let mut listed = HashSet::new();
        for (j, name) in r.plugins.iter().enumerate() {
            let pp = format!("{}[{j}]", p("plugins"));
            let Some(plugin) = plugins.iter().find(|x| &x.name == name) else {
                return Err(ConfigError::invalid(
                    pp,
                    format!("no plugin named '{name}' in `plugins`"),
                ));
            };
            if plugin.global {
                return Err(ConfigError::invalid(
                    pp,
                    format!("plugin '{name}' is global (it runs on every route already); set its `global: false` to run it on some routes only"),
                ));
            }
            if !listed.insert(name) {
                return Err(ConfigError::invalid(
                    pp,
                    format!("plugin '{name}' is listed twice"),
                ));
            }
        }
        routes.push(RouteConfig {
            model,
            aliases: r.aliases,
            backends: r.backends,
            policy: pol,
            hash_key,
            upstream_model: r.upstream_model,
            plugins: r.plugins,
        });
    }

    let h = raw.health_check.unwrap_or_default();
    let ms = Duration::from_millis;
    let path = h.path.unwrap_or_else(|| "/health".to_string());
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(ConfigError::invalid(
            "health_check.path",
            format!("invalid path '{path}': must start with '/'"),
        ));
    }
    let interval = duration("health_check.interval", h.interval, ms(5000), ms(50))?;
    let timeout = duration("health_check.timeout", h.timeout, ms(2000), ms(10))?;
    if timeout > interval {
        return Err(ConfigError::invalid(
            "health_check.timeout",
            "must not exceed health_check.interval",
        ));
    }
    let health_check = HealthCheckConfig {
        path,
        interval,
        timeout,
        healthy_threshold: count(
            "health_check.healthy_threshold",
            h.healthy_threshold,
            1,
            1,
            100,
        )?,
        unhealthy_threshold: count(
            "health_check.unhealthy_threshold",
            h.unhealthy_threshold,
            2,
            1,
            100,
        )?,
        passive_failures: count(
            "health_check.passive_failures",
            h.passive_failures,
            3,
            1,
            1000,
        )?,
        ejection_cooldown: duration(
            "health_check.ejection_cooldown",
            h.ejection_cooldown,
            ms(10_000),
            ms(0),
        )?,
        max_ejection_time: duration(
            "health_check.max_ejection_time",
            h.max_ejection_time,
            ms(300_000),
            ms(0),
        )?,
    };

    let r = raw.retries.unwrap_or_default();
    let retries = RetryConfig {
        max_attempts: count("retries.max_attempts", r.max_attempts, 3, 1, 10)?,
        backoff: duration("retries.backoff", r.backoff, ms(50), ms(0))?,
        max_backoff: duration("retries.max_backoff", r.max_backoff, ms(1000), ms(0))?,
        replay_after_reset: r.replay_after_reset.unwrap_or(true),
    };

    let t = raw.timeouts.unwrap_or_default();
    let timeouts = TimeoutConfig {
        connect: duration("timeouts.connect", t.connect, ms(2000), ms(1))?,
        first_byte: duration("timeouts.first_byte", t.first_byte, ms(120_000), ms(1))?,
        idle: duration("timeouts.idle", t.idle, ms(60_000), ms(1))?,
    };
    let max_event_bytes = count(
        "max_event_bytes",
        raw.max_event_bytes,
        4 * 1024 * 1024,
        1024,
        1 << 30,
    )? as usize;

    let body_limit = match raw.body_limit {
        None => DEFAULT_BODY_LIMIT,
        Some(Scalar::Int(n)) => n as usize,
        Some(other) => {
            return Err(ConfigError::invalid(
                "body_limit",
                format!("must be an integer number of bytes, got {other:?}"),
            ))
        }
    };
    if body_limit == 0 || body_limit > MAX_BODY_LIMIT {
        return Err(ConfigError::invalid(
            "body_limit",
            format!("must be between 1 and {MAX_BODY_LIMIT} bytes"),
        ));
    }

    let upstream_tls = match raw.upstream_tls {
        None => UpstreamTlsConfig::default(),
        Some(t) => {
            if let Some(path) = &t.ca_file {
                match std::fs::read_to_string(path) {
                    Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {}
                    Ok(_) => {
                        return Err(ConfigError::invalid(
                            "upstream_tls.ca_file",
                            format!("{path} holds no PEM certificate"),
                        ))
                    }
                    Err(e) => {
                        return Err(ConfigError::invalid(
                            "upstream_tls.ca_file",
                            format!("cannot read {path}: {e}"),
                        ))
                    }
                }
            }
            UpstreamTlsConfig {
                ca_file: t.ca_file,
                verify: t.verify.unwrap_or(true),
            }
        }
    };

    for (i, k) in raw.client_api_keys.iter().enumerate() {
        if k.trim().len() < 8 {
            return Err(ConfigError::invalid(
                format!("client_api_keys[{i}]"),
                "must be at least 8 characters",
            ));
        }
    }

    let default_model = match raw.default_model {
        Some(m) if m.trim().is_empty() => {
            return Err(ConfigError::invalid(
                "default_model",
                "must be a non-empty model name",
            ))
        }
        other => other,
    };

    Ok(Config {
        listen: raw.listen,
        admin,
        state_file: raw.state_file,
        responses_store: raw.responses_store,
        state_store,
        backends,
        routes,
        default_policy,
        cache_aware,
        default_model,
        health_check,
        retries,
        max_event_bytes,
        timeouts,
        body_limit,
        client_api_keys: raw.client_api_keys,
        upstream_tls,
        plugins,
    })
}

/// `plugins:`: unique valid names, a `.wasm` or `.wat` path, limits in range.
fn plugins(raw: Vec<crate::raw::RawPlugin>) -> Result<Vec<PluginConfig>> {
    let mut out: Vec<PluginConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let p = |f: &str| format!("plugins[{i}].{f}");
        let name = r
            .name
            .ok_or_else(|| ConfigError::invalid(p("name"), "is required"))?;
        check::backend_name(&name).map_err(|e| ConfigError::invalid(p("name"), e))?;
        if out.iter().any(|x| x.name == name) {
            return Err(ConfigError::invalid(
                p("name"),
                format!("plugin name '{name}' is used twice"),
            ));
        }
        let path = r
            .path
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ConfigError::invalid(p("path"), "is required"))?;
        if !(path.ends_with(".wasm") || path.ends_with(".wat")) {
            return Err(ConfigError::invalid(
                p("path"),
                format!("'{path}' must be a WebAssembly module: a .wasm file (or .wat text)"),
            ));
        }
        let configuration = match r.configuration {
            None | Some(serde_yaml::Value::Null) => String::new(),
            Some(serde_yaml::Value::String(s)) => s,
            Some(v) => serde_json::to_string(&v).map_err(|e| {
                ConfigError::invalid(
                    p("configuration"),
                    format!("cannot be written as JSON: {e}"),
                )
            })?,
        };
        let vm_id = match r.vm_id {
            Some(v) => {
                check::backend_name(&v).map_err(|e| ConfigError::invalid(p("vm_id"), e))?;
                v
            }
            None => name.clone(),
        };
        let call_timeout = duration(
            &p("call_timeout"),
            r.call_timeout,
            Duration::from_millis(100),
            Duration::from_millis(1),
        )?;
        if call_timeout > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                p("call_timeout"),
                "must be at most 60s",
            ));
        }
        let max_memory_mib = count(&p("max_memory_mib"), r.max_memory_mib, 64, 1, 4096)?;
        out.push(PluginConfig {
            name,
            path: path.into(),
            configuration,
            vm_id,
            global: r.global.unwrap_or(true),
            fail_open: r.fail_open.unwrap_or(false),
            call_timeout,
            max_memory_mib,
        });
    }
    Ok(out)
}

/// Validate one backend definition: the YAML's `backends[i]` and the admin API's
/// registration body alike. `prefix` goes before each field name in errors
/// (`backends[2].` in the YAML, empty for the admin API).
///
/// Rules: `name` (letters, digits, `-_.`) and `url` (`http://` or `https://`) required;
/// `model_type` `gpt-oss` (default) or `openai`; 1 to 256 `models`; `weight` 1 to 1000
/// (default 1); `api_key` 1 to 4096 printable characters.
pub fn backend(b: RawBackend, prefix: &str) -> Result<BackendConfig> {
    let p = |f: &str| format!("{prefix}{f}");
    let name = b
        .name
        .ok_or_else(|| ConfigError::invalid(p("name"), "is required"))?;
    check::backend_name(&name).map_err(|e| ConfigError::invalid(p("name"), e))?;
    let url = b
        .url
        .ok_or_else(|| ConfigError::invalid(p("url"), "is required"))?;
    check::backend_url(&url).map_err(|e| ConfigError::invalid(p("url"), e))?;
    let model_type = match b.model_type.as_deref() {
        None => ModelType::GptOss,
        Some(s) => ModelType::parse(s).ok_or_else(|| {
            ConfigError::invalid(
                p("model_type"),
                format!(
                    "unknown value '{s}' (expected one of {})",
                    ModelType::NAMES.join(", ")
                ),
            )
        })?,
    };
    if b.models.is_empty() || b.models.len() > 256 {
        return Err(ConfigError::invalid(
            p("models"),
            "must list 1 to 256 model ids",
        ));
    }
    for (j, m) in b.models.iter().enumerate() {
        check::model_id(m).map_err(|e| ConfigError::invalid(format!("{}[{j}]", p("models")), e))?;
    }
    let weight = count(&p("weight"), b.weight, 1, 1, 1000)?;
    if let Some(k) = &b.api_key {
        if k.is_empty() || k.len() > 4096 || k.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                p("api_key"),
                "must be 1 to 4096 printable characters",
            ));
        }
    }
    Ok(BackendConfig {
        name,
        url,
        model_type,
        models: b.models,
        weight,
        api_key: b.api_key,
    })
}
