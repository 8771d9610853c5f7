//! The file as written: every field optional, enums as strings, so that validation can
//! name the field path of any mistake.

use serde::{Deserialize, Deserializer};

/// A list written as `key:` with nothing after it (YAML null) is an empty list.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A scalar that may be written as a number or a string (`5s`, `65536`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(u64),
    Float(f64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub admin: Option<RawAdmin>,
    pub state_file: Option<String>,
    pub responses_store: Option<String>,
    pub state_store: Option<RawStateStore>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub backends: Vec<RawBackend>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub routes: Vec<RawRoute>,
    pub default_policy: Option<String>,
    pub cache_aware: Option<RawCacheAware>,
    pub default_model: Option<String>,
    pub health_check: Option<RawHealth>,
    pub retries: Option<RawRetries>,
    pub timeouts: Option<RawTimeouts>,
    pub body_limit: Option<Scalar>,
    pub max_event_bytes: Option<i64>,
    pub upstream_tls: Option<RawUpstreamTls>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub client_api_keys: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub plugins: Vec<RawPlugin>,
}

/// `plugins[i]`: a proxy-wasm filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: Option<String>,
    pub path: Option<String>,
    /// A string, or any YAML value (sent to the plugin as JSON).
    pub configuration: Option<serde_yaml::Value>,
    pub vm_id: Option<String>,
    pub global: Option<bool>,
    pub fail_open: Option<bool>,
    pub call_timeout: Option<Scalar>,
    pub max_memory_mib: Option<i64>,
}

/// `state_store:`: a PostgreSQL database that LB replicas share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStateStore {
    pub url: Option<String>,
    pub pool_size: Option<i64>,
    pub connect_timeout: Option<Scalar>,
    pub acquire_timeout: Option<Scalar>,
    pub resync_interval: Option<Scalar>,
    pub ssl_mode: Option<String>,
    pub ssl_root_cert: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheAware {
    pub cache_threshold: Option<f64>,
    pub balance_abs_threshold: Option<i64>,
    pub balance_rel_threshold: Option<f64>,
    pub max_blocks_per_backend: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca_file: Option<String>,
    pub verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub token: Option<String>,
    #[serde(default)]
    pub allow_link_local: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub forbidden_addresses: Vec<String>,
    pub max_backends: Option<i64>,
}

/// A backend definition as written (YAML `backends[i]`, or an admin API registration body):
/// every field optional; [`crate::validate_backend`] checks it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: Option<String>,
    pub url: Option<String>,
    pub model_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub models: Vec<String>,
    pub weight: Option<i64>,
    pub api_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub model: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub aliases: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub backends: Vec<String>,
    pub policy: Option<String>,
    pub hash_header: Option<String>,
    pub upstream_model: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub plugins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub passive_failures: Option<i64>,
    pub ejection_cooldown: Option<Scalar>,
    pub max_ejection_time: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub max_attempts: Option<i64>,
    pub backoff: Option<Scalar>,
    pub max_backoff: Option<Scalar>,
    pub replay_after_reset: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Scalar>,
    pub first_byte: Option<Scalar>,
    pub idle: Option<Scalar>,
}
