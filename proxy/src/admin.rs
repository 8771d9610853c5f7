//! The admin API: `POST /backends/register`, `DELETE /backends/{name}`.
//!
//! Its callers check the admin credentials first (`auth::authorize_admin`).

use openai_types::ErrorKind;
use serde_json::{json, Value};

use crate::address::check_backend_addr;
use crate::backend::Source;
use crate::error::{ApiError, Reply};
use crate::registry::Persist;
use crate::state::{resolve, Shared};

/// A field of the registration body that must be a string (or absent).
fn string_field(v: &Value, name: &str) -> Result<Option<String>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(
            format!("`{name}` must be a string"),
            name,
        )),
    }
}

/// Read a registration body into the one backend definition (`config::BackendConfig`,
/// validated by `config::validate_backend` exactly as the YAML's `backends[i]`) and the
/// `replace` flag.
///
/// Errors: 400 naming the field: not a JSON object, a field of the wrong JSON type, an
/// unknown field, or what `config::validate_backend` refuses.
/// A registration: the backend, whether it may replace one of the same name, and its lease.
#[derive(Debug)]
pub struct Registration {
    pub def: config::BackendConfig,
    pub replace: bool,
    /// `lease_seconds` (1 to 3,600): the registration is dropped unless renewed
    /// (`PUT /backends/{name}/lease`) within that time. None: it stays until deleted.
    pub lease: Option<std::time::Duration>,
}

pub fn parse_registration(body: &[u8]) -> Result<Registration, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("invalid JSON body: {e}"),
            None,
            Some("invalid_json"),
        )
    })?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "the body must be a JSON object",
            None,
            Some("invalid_json"),
        ));
    };
    const FIELDS: &[&str] = &[
        "name",
        "url",
        "model_type",
        "models",
        "weight",
        "api_key",
        "replace",
        "lease_seconds",
    ];
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!(
                "unknown field `{unknown}` (expected one of {})",
                FIELDS.join(", ")
            ),
            unknown,
        ));
    }
    let models = match v.get("models") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len().min(257));
            for (i, m) in a.iter().enumerate().take(257) {
                let s = m.as_str().ok_or_else(|| {
                    ApiError::invalid("must be a string", &format!("models[{i}]"))
                })?;
                out.push(s.to_string());
            }
            out
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`models` must be an array of strings",
                "models",
            ))
        }
    };
    let weight = match v.get("weight") {
        None | Some(Value::Null) => None,
        Some(w) => Some(w.as_i64().ok_or_else(|| {
            ApiError::invalid("`weight` must be an integer from 1 to 1000", "weight")
        })?),
    };
    let raw = config::RawBackend {
        name: string_field(&v, "name")?,
        url: string_field(&v, "url")?,
        model_type: string_field(&v, "model_type")?,
        models,
        weight,
        api_key: string_field(&v, "api_key")?,
    };
    let def = config::validate_backend(raw, "").map_err(|e| match e {
        config::ConfigError::Invalid { path, message } => {
            ApiError::invalid(format!("`{path}` {message}"), &path)
        }
        other => ApiError::invalid(other.to_string(), "body"),
    })?;
    let replace = match v.get("replace") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("`replace` must be a boolean", "replace")),
    };
    let lease = match v.get("lease_seconds") {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_u64() {
            Some(secs @ 1..=3600) => Some(std::time::Duration::from_secs(secs)),
            _ => {
                return Err(ApiError::invalid(
                    "`lease_seconds` must be an integer from 1 to 3600",
                    "lease_seconds",
                ))
            }
        },
    };
    Ok(Registration {
        def,
        replace,
        lease,
    })
}

fn backend_json(d: &config::BackendConfig, health: &str) -> Value {
    json!({
        "name": d.name,
        "url": d.url,
        "model_type": d.model_type.as_str(),
        "models": d.models,
        "weight": d.weight,
        "health": health,
    })
}

/// Make one registry change durable, off the async executor.
async fn persist(write: Option<Persist>) -> Result<(), ApiError> {
    let Some(write) = write else {
        return Ok(());
    };
    let res = tokio::task::spawn_blocking(move || write.run()).await;
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot write the state file");
            Err(ApiError::new(
                ErrorKind::Server,
                "could not persist the registry",
                None,
                Some("state_write_failed"),
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "state writer task failed");
            Err(ApiError::new(
                ErrorKind::Server,
                "could not persist the registry",
                None,
                Some("state_write_failed"),
            ))
        }
    }
}

/// `POST /backends/register`.
pub async fn register(shared: &Shared, body: &[u8]) -> Result<Reply, ApiError> {
    let Registration {
        def,
        replace,
        lease,
    } = parse_registration(body)?;
    let url = config::check::backend_url(&def.url).map_err(|e| ApiError::invalid(e, "url"))?;
    let snap = shared.load();
    let addrs = resolve(&url)
        .await
        .map_err(|e| ApiError::invalid(e, "url"))?;
    for a in &addrs {
        if let Err(why) = check_backend_addr(a, &snap.config.admin, &shared.identity) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("refusing backend address: {why}"),
                Some("url"),
                Some("forbidden_address"),
            ));
        }
    }

    let mut reg = shared.registry.lock().await;
    let snap = shared.load();
    if snap.config.backends.iter().any(|b| b.name == def.name) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "backend '{}' is defined in the config file; change it there",
                def.name
            ),
            Some("name"),
            Some("backend_in_config"),
        ));
    }
    let is_new = reg.get(&def.name).is_none();
    if is_new && snap.backends.len() >= snap.config.admin.max_backends {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "the load balancer has {} backends, the most admin.max_backends allows",
                snap.backends.len()
            ),
            None,
            Some("too_many_backends"),
        ));
    }
    if !is_new && !replace {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "backend '{}' is already registered; send \"replace\": true to replace it",
                def.name
            ),
            Some("name"),
            Some("backend_exists"),
        ));
    }
    let (previous, write) = reg.insert(def.clone(), lease);
    let replaced = previous.0.is_some();
    if let Err(e) = persist(write).await {
        // Roll back so memory matches the files.
        reg.undo(&def.name, previous);
        return Err(e);
    }
    shared.update_registered(&reg, &def.name).await;
    drop(reg);
    let health = shared
        .load()
        .backend(&def.name)
        .filter(|b| b.source == Source::Registered)
        .map(|b| serde_json::to_value(b.health.status()).unwrap_or_default())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "pending".into());
    tracing::info!(backend = %def.name, url = %def.url, replaced, lease_seconds = lease.map(|l| l.as_secs()), "backend registered");
    let mut backend = backend_json(&def, &health);
    backend["lease_seconds"] = json!(lease.map(|l| l.as_secs()));
    Ok(Reply::json(
        if replaced { 200 } else { 201 },
        &json!({
            "status": if replaced { "replaced" } else { "registered" },
            "backend": backend,
        }),
    ))
}

/// `DELETE /backends/{name}`.
pub async fn unregister(shared: &Shared, name: &str) -> Result<Reply, ApiError> {
    let mut reg = shared.registry.lock().await;
    let snap = shared.load();
    if snap.config.backends.iter().any(|b| b.name == name) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("backend '{name}' is defined in the config file; remove it there"),
            Some("name"),
            Some("backend_in_config"),
        ));
    }
    let (removed, write) = reg.remove(name);
    if removed.0.is_none() {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no registered backend named '{name}'"),
            Some("name"),
            Some("backend_not_found"),
        ));
    }
    if let Err(e) = persist(write).await {
        reg.undo(name, removed);
        return Err(e);
    }
    shared.update_registered(&reg, name).await;
    tracing::info!(backend = %name, "backend unregistered");
    Ok(Reply::json(
        200,
        &json!({"status": "unregistered", "name": name}),
    ))
}

/// `PUT /backends/{name}/lease`: renew a leased registration for its whole length. 404
/// `backend_not_found` when it is not registered (its lease ran out, or the LB restarted
/// without it: register again); 409 `no_lease` for a registration without a lease.
pub async fn renew_lease(shared: &Shared, name: &str) -> Result<Reply, ApiError> {
    let mut reg = shared.registry.lock().await;
    if reg.get(name).is_none() {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no registered backend named '{name}'; register it again"),
            Some("name"),
            Some("backend_not_found"),
        ));
    }
    let Some(lease) = reg.renew(name) else {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("backend '{name}' was registered without a lease: it stays until deleted"),
            Some("name"),
            Some("no_lease"),
        ));
    };
    Ok(Reply::json(
        200,
        &json!({"status": "renewed", "name": name, "lease_seconds": lease.ttl.as_secs()}),
    ))
}

/// Drop the registrations whose lease ran out (the servers that held them stopped renewing:
/// killed, or cut off). Run by the control plane every 250 ms.
pub async fn expire_leases(shared: &Shared) {
    let mut reg = shared.registry.lock().await;
    for name in reg.expired(std::time::Instant::now()) {
        let (removed, write) = reg.remove(&name);
        if let Err(e) = persist(write).await {
            tracing::error!(backend = %name, error = ?e.body.error.message, "cannot persist an expired lease; retrying");
            reg.undo(&name, removed);
            continue;
        }
        shared.update_registered(&reg, &name).await;
        tracing::warn!(backend = %name, "lease expired: backend unregistered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_fields_are_validated_with_param_names() {
        let e = |b: &str| {
            parse_registration(b.as_bytes())
                .expect_err(b)
                .body
                .error
                .param
        };
        assert_eq!(
            e(r#"{"url":"http://a","models":["m"]}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            e(r#"{"name":"a b","url":"http://a","models":["m"]}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            e(r#"{"name":"a","url":"gopher://a","models":["m"]}"#).as_deref(),
            Some("url")
        );
        assert_eq!(
            e(r#"{"name":"a","url":"http://a","models":[]}"#).as_deref(),
            Some("models")
        );
        assert_eq!(
            e(r#"{"name":"a","url":"http://a","models":[1]}"#).as_deref(),
            Some("models[0]")
        );
        assert_eq!(
            e(r#"{"name":"a","url":"http://a","models":["m"],"weight":0}"#).as_deref(),
            Some("weight")
        );
        assert_eq!(
            e(r#"{"name":"a","url":"http://a","models":["m"],"model_type":"x"}"#).as_deref(),
            Some("model_type")
        );
        assert_eq!(
            e(r#"{"name":"a","url":"http://a","models":["m"],"replace":"yes"}"#).as_deref(),
            Some("replace")
        );
        assert_eq!(
            e(r#"{"name":"a","url":"http://a","models":["m"],"lease_seconds":0}"#).as_deref(),
            Some("lease_seconds")
        );
        assert_eq!(
            e(r#"{"name":"a","url":"http://a","models":["m"],"lease_seconds":"15s"}"#).as_deref(),
            Some("lease_seconds")
        );
        let r = parse_registration(br#"{"name":"a","url":"http://a:1","models":["m"],"weight":3,"api_key":"k","replace":true,"lease_seconds":15}"#)
            .expect("valid");
        assert_eq!(
            (r.def.weight, r.replace, r.def.api_key.as_deref(), r.lease),
            (3, true, Some("k"), Some(std::time::Duration::from_secs(15)))
        );
    }

    #[test]
    fn the_admin_api_and_the_yaml_validate_a_backend_alike() {
        // The same definition, refused for the same reason by both.
        let yaml = "backends:\n  - {name: a, url: \"ftp://x\", models: [m]}\n";
        let from_yaml = config::Config::from_yaml(yaml)
            .expect_err("refused")
            .to_string();
        let from_api = parse_registration(br#"{"name":"a","url":"ftp://x","models":["m"]}"#)
            .expect_err("refused");
        assert_eq!(from_api.body.error.param.as_deref(), Some("url"));
        let reason = from_yaml
            .strip_prefix("backends[0].url: ")
            .expect("the YAML error names the field");
        assert!(
            from_api.body.error.message.contains(reason),
            "{} vs {from_yaml}",
            from_api.body.error.message
        );
        let yaml = "backends:\n  - {name: a, url: \"http://x:1\", models: [m], api_key: \"\"}\n";
        assert!(
            config::Config::from_yaml(yaml).is_err(),
            "an empty api_key is refused in YAML too"
        );
    }
}
