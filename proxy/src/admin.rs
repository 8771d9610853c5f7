//! The admin API: `POST /backends/register`, `DELETE /backends/{name}`.
//!
//! Auth: `Authorization: Bearer <admin token>` when a token is configured (401 without one,
//! 403 with a wrong one); with no token configured, only loopback clients (403 otherwise).

use std::net::IpAddr;

use openai_types::ErrorKind;
use serde_json::{json, Value};

use crate::backend::{Definition, Source};
use crate::error::{ApiError, Reply};
use crate::registry::write_atomic;
use crate::state::{resolve, Shared, Snapshot};

/// Constant-time comparison of two secrets.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Check the admin credentials of a request.
pub fn authorize(
    snap: &Snapshot,
    headers: &http::HeaderMap,
    client: Option<IpAddr>,
) -> Result<(), ApiError> {
    match &snap.admin_token {
        Some(token) => match bearer(headers) {
            None => Err(ApiError::new(
                ErrorKind::Authentication,
                "The admin API requires Authorization: Bearer <admin token>.",
                None,
                Some("missing_admin_token"),
            )),
            Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorKind::Permission,
                "The admin token is not valid.",
                None,
                Some("invalid_admin_token"),
            )),
        },
        None if client.is_some_and(|ip| ip.is_loopback()) => Ok(()),
        None => Err(ApiError::new(
            ErrorKind::Permission,
            "No admin token is configured: the admin API only accepts clients on loopback.",
            None,
            Some("admin_loopback_only"),
        )),
    }
}

/// Check client API keys, when configured, for `/v1/*`.
pub fn authorize_client(snap: &Snapshot, headers: &http::HeaderMap) -> Result<(), ApiError> {
    let keys = &snap.config.client_api_keys;
    if keys.is_empty() {
        return Ok(());
    }
    let ok = bearer(headers).is_some_and(|given| {
        keys.iter()
            .any(|k| same_secret(given.as_bytes(), k.as_bytes()))
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::Authentication,
            "Incorrect or missing API key. Send Authorization: Bearer <key>.",
            None,
            Some("invalid_api_key"),
        ))
    }
}

fn field_str(v: &Value, name: &str, required: bool) -> Result<Option<String>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(ApiError::invalid(format!("`{name}` is required"), name)),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(
            format!("`{name}` must be a string"),
            name,
        )),
    }
}

/// Validate a registration body into a definition and the `replace` flag.
pub fn parse_registration(body: &[u8]) -> Result<(Definition, bool), ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("invalid JSON body: {e}"),
            None,
            Some("invalid_json"),
        )
    })?;
    if !v.is_object() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "the body must be a JSON object",
            None,
            Some("invalid_json"),
        ));
    }
    let name = field_str(&v, "name", true)?.unwrap_or_default();
    config::check::backend_name(&name).map_err(|e| ApiError::invalid(e, "name"))?;
    let url = field_str(&v, "url", true)?.unwrap_or_default();
    config::check::backend_url(&url).map_err(|e| ApiError::invalid(e, "url"))?;
    let model_type = field_str(&v, "model_type", false)?.unwrap_or_else(|| "gpt-oss".into());
    if config::ModelType::parse(&model_type).is_none() {
        return Err(ApiError::invalid(
            format!(
                "unknown model_type '{model_type}' (expected one of {})",
                config::ModelType::NAMES.join(", ")
            ),
            "model_type",
        ));
    }
    let models = match v.get("models") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 256 => {
            let mut out = Vec::with_capacity(a.len());
            for (i, m) in a.iter().enumerate() {
                let p = format!("models[{i}]");
                let s = m
                    .as_str()
                    .ok_or_else(|| ApiError::invalid("must be a string", &p))?;
                config::check::model_id(s).map_err(|e| ApiError::invalid(e, &p))?;
                out.push(s.to_string());
            }
            out
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "`models` must list 1 to 256 model ids",
                "models",
            ))
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("`models` is required", "models"))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`models` must be an array of strings",
                "models",
            ))
        }
    };
    let weight = match v.get("weight") {
        None | Some(Value::Null) => 1,
        Some(w) => match w.as_u64() {
            Some(n) if (1..=1000).contains(&n) => n as u32,
            _ => {
                return Err(ApiError::invalid(
                    "`weight` must be an integer from 1 to 1000",
                    "weight",
                ))
            }
        },
    };
    let api_key = field_str(&v, "api_key", false)?;
    if let Some(k) = &api_key {
        if k.is_empty() || k.len() > 4096 || k.chars().any(|c| c.is_control()) {
            return Err(ApiError::invalid(
                "`api_key` must be 1 to 4096 printable characters",
                "api_key",
            ));
        }
    }
    let replace = match v.get("replace") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("`replace` must be a boolean", "replace")),
    };
    Ok((
        Definition {
            name,
            url,
            model_type,
            models,
            weight,
            api_key,
        },
        replace,
    ))
}

fn backend_json(d: &Definition, health: &str) -> Value {
    json!({
        "name": d.name,
        "url": d.url,
        "model_type": d.model_type,
        "models": d.models,
        "weight": d.weight,
        "health": health,
    })
}

/// Persist the registry, off the async executor.
async fn persist(bytes: Option<(std::path::PathBuf, Vec<u8>)>) -> Result<(), ApiError> {
    let Some((path, bytes)) = bytes else {
        return Ok(());
    };
    let res = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await;
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
    let (def, replace) = parse_registration(body)?;
    let url = config::check::backend_url(&def.url).map_err(|e| ApiError::invalid(e, "url"))?;
    let snap = shared.load();
    let addrs = resolve(&url)
        .await
        .map_err(|e| ApiError::invalid(e, "url"))?;
    if !snap.config.admin.allow_link_local {
        if let Some(bad) = addrs
            .iter()
            .find(|a| config::check::is_link_local_or_metadata(&a.ip()))
        {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("refusing backend address {}: link-local and metadata addresses are not allowed (admin.allow_link_local)", bad.ip()),
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
    if reg.get(&def.name).is_some() && !replace {
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
    let previous = reg.insert(def.clone());
    if let Err(e) = persist(reg.serialized()).await {
        // Roll back so memory matches the file.
        match previous {
            Some(p) => reg.insert(p),
            None => reg.remove(&def.name),
        };
        return Err(e);
    }
    shared.rebuild(snap.config.clone(), &reg).await;
    drop(reg);
    let health = shared
        .load()
        .backend(&def.name)
        .filter(|b| b.source == Source::Registered)
        .map(|b| serde_json::to_value(b.health.status()).unwrap_or_default())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "pending".into());
    tracing::info!(backend = %def.name, url = %def.url, replaced = previous.is_some(), "backend registered");
    Ok(Reply::json(
        if previous.is_some() { 200 } else { 201 },
        &json!({
            "status": if previous.is_some() { "replaced" } else { "registered" },
            "backend": backend_json(&def, &health),
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
    let Some(removed) = reg.remove(name) else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no registered backend named '{name}'"),
            Some("name"),
            Some("backend_not_found"),
        ));
    };
    if let Err(e) = persist(reg.serialized()).await {
        reg.insert(removed);
        return Err(e);
    }
    shared.rebuild(snap.config.clone(), &reg).await;
    tracing::info!(backend = %name, "backend unregistered");
    Ok(Reply::json(
        200,
        &json!({"status": "unregistered", "name": name}),
    ))
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
        let (d, replace) = parse_registration(br#"{"name":"a","url":"http://a:1","models":["m"],"weight":3,"api_key":"k","replace":true}"#)
            .expect("valid");
        assert_eq!(
            (d.weight, replace, d.api_key.as_deref()),
            (3, true, Some("k"))
        );
    }

    #[test]
    fn bearer_parsing_and_secret_comparison() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
