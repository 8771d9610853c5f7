//! The admin API: `POST /backends/register`, `DELETE /backends/{name}`.
//!
//! Its callers check the admin credentials first (`auth::authorize_admin`).

use openai_types::ErrorKind;
use serde_json::{json, Value};

use crate::address::check_backend_addr;
use crate::backend::Source;
use crate::error::{ApiError, Reply};
use crate::registry::Registered;
use crate::state::{resolve, Shared};
use crate::store::{PutOutcome, Renewal, StoreError};

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

/// The answer to a state store failure: 503 `state_store_unavailable` when it cannot be
/// reached (nothing changed; try again), 500 `state_write_failed` otherwise.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(why) => {
            tracing::error!(error = %why, "the state store is unavailable");
            ApiError::new(
                ErrorKind::Unavailable,
                "the state store is unavailable; nothing was changed, try again later",
                None,
                Some("state_store_unavailable"),
            )
        }
        StoreError::Failed(why) => {
            tracing::error!(error = %why, "cannot write the state store");
            ApiError::new(
                ErrorKind::Server,
                "could not persist the registry",
                None,
                Some("state_write_failed"),
            )
        }
    }
}

/// `POST /backends/register`: validated, written to the state store (acknowledged once
/// durable, and announced to replicas), then routed here.
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
    if reg.get(&def.name).is_none() && snap.backends.len() >= snap.config.admin.max_backends {
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
    let entry = Registered {
        def: def.clone(),
        lease,
    };
    let replaced = match shared
        .store
        .put(&entry, replace)
        .await
        .map_err(store_error)?
    {
        PutOutcome::Inserted => false,
        PutOutcome::Replaced => true,
        PutOutcome::Exists => {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "backend '{}' is already registered; send \"replace\": true to replace it",
                    def.name
                ),
                Some("name"),
                Some("backend_exists"),
            ))
        }
    };
    reg.insert(entry);
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

/// `DELETE /backends/{name}`: removed from the state store (announced to replicas), then
/// from routing here.
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
    if !shared.store.delete(name).await.map_err(store_error)? {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no registered backend named '{name}'"),
            Some("name"),
            Some("backend_not_found"),
        ));
    }
    reg.remove(name);
    shared.update_registered(&reg, name).await;
    tracing::info!(backend = %name, "backend unregistered");
    Ok(Reply::json(
        200,
        &json!({"status": "unregistered", "name": name}),
    ))
}

/// `PUT /backends/{name}/lease`: renew a leased registration for its whole length (in the
/// state store, so through any replica). 404 `backend_not_found` when it is not registered
/// (its lease ran out: register again); 409 `no_lease` for a registration without a lease;
/// 503 `state_store_unavailable` when the store cannot be reached.
pub async fn renew_lease(shared: &Shared, name: &str) -> Result<Reply, ApiError> {
    match shared.store.renew(name).await.map_err(store_error)? {
        Renewal::Renewed(ttl) => Ok(Reply::json(
            200,
            &json!({"status": "renewed", "name": name, "lease_seconds": ttl.as_secs()}),
        )),
        Renewal::NotFound => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no registered backend named '{name}'; register it again"),
            Some("name"),
            Some("backend_not_found"),
        )),
        Renewal::NoLease => Err(ApiError::new(
            ErrorKind::Conflict,
            format!("backend '{name}' was registered without a lease: it stays until deleted"),
            Some("name"),
            Some("no_lease"),
        )),
    }
}

/// Drop the registrations whose lease ran out (the servers that held them stopped renewing:
/// killed, or cut off), in the store and here. Run by the control plane every 250 ms.
///
/// Errors: the store's; nothing changed here then.
pub async fn expire_leases(shared: &Shared) -> Result<(), StoreError> {
    let gone = shared.store.expire().await?;
    if gone.is_empty() {
        return Ok(());
    }
    let mut reg = shared.registry.lock().await;
    for name in gone {
        if reg.remove(&name).is_some() {
            shared.update_registered(&reg, &name).await;
        }
        tracing::warn!(backend = %name, "lease expired: backend unregistered");
    }
    Ok(())
}

/// Apply a change another replica made to `name` (a notification): read it from the store
/// and route it as it stands there. The read and the change happen under the registry lock,
/// so a local change cannot be overwritten by an older read.
///
/// Errors: the store's; nothing changed here then.
pub async fn apply_change(shared: &Shared, name: &str) -> Result<(), StoreError> {
    let mut reg = shared.registry.lock().await;
    let now = shared.store.get(name).await?;
    if reg.entry(name) == now.as_ref() {
        return Ok(());
    }
    match now {
        Some(r) => {
            tracing::info!(backend = %name, url = %r.def.url, "backend registered through another replica");
            reg.insert(r);
        }
        None => {
            tracing::info!(backend = %name, "backend unregistered through another replica");
            reg.remove(name);
        }
    }
    shared.update_registered(&reg, name).await;
    shared
        .metrics
        .replica_changes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Reload every registration from the store and route what changed (the replicas' safety
/// net, and the catch-up after the store was out of reach). Returns how many changed.
///
/// Errors: the store's; nothing changed here then.
pub async fn resync(shared: &Shared) -> Result<usize, StoreError> {
    let mut reg = shared.registry.lock().await;
    let stored = shared.store.load().await?;
    let mut changed: Vec<String> = Vec::new();
    let stored_names: std::collections::HashSet<&str> =
        stored.iter().map(|r| r.def.name.as_str()).collect();
    let gone: Vec<String> = reg
        .names()
        .filter(|n| !stored_names.contains(n))
        .map(str::to_string)
        .collect();
    for name in gone {
        reg.remove(&name);
        changed.push(name);
    }
    for r in stored {
        if reg.entry(&r.def.name) != Some(&r) {
            changed.push(r.def.name.clone());
            reg.insert(r);
        }
    }
    for name in &changed {
        shared.update_registered(&reg, name).await;
    }
    if !changed.is_empty() {
        tracing::info!(
            changed = changed.len(),
            "registry resynced from the state store"
        );
    }
    Ok(changed.len())
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
