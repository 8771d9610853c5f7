//! The YAML configuration of `gpt-oss-lb`.
//!
//! [`Config::from_yaml`] parses the file into raw serde structs ([`raw`]) and then validates
//! them once into the typed [`Config`]. Every validation error names the dotted field path,
//! for example `routes[1].policy: unknown value 'fastest'`.
//!
//! Reading environment variables is left to the binary: the config only names them.

mod duration;
mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::parse_duration;
pub use raw::RawBackend;
pub use validate::backend as validate_backend;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on, `host:port`. The CLI's `--host`/`--port` override it.
    pub listen: Option<String>,
    pub admin: AdminConfig,
    /// The SQLite database where runtime-registered backends are persisted (`state_file`; a
    /// JSON state file of an earlier version found there is migrated into it at start).
    /// `None`: they are kept in memory only. Not with `state_store`.
    pub state_file: Option<String>,
    /// The SQLite file where the Responses API's conversations are kept (`responses_store`;
    /// `:memory:` keeps them for the life of the process). `None`: the default,
    /// `$XDG_DATA_HOME/gpt-oss-lb/responses.sqlite`.
    pub responses_store: Option<String>,
    /// A PostgreSQL database shared by LB replicas (`state_store:`): registered backends, their
    /// leases and the Responses API's conversations are kept there instead of in
    /// `state_file`/`responses_store`. Read at start; a reload does not change it.
    pub state_store: Option<StateStoreConfig>,
    /// Backends declared in the file (not persisted in the state file).
    pub backends: Vec<BackendConfig>,
    pub routes: Vec<RouteConfig>,
    /// Policy for models that have no route.
    pub default_policy: Policy,
    /// Settings of the `cache_aware` policy, for every route that uses it.
    pub cache_aware: CacheAwareConfig,
    /// The model a request without `model` goes to. Unset: the only model served, when
    /// exactly one is (the seed's clients send no `model`); otherwise such a request is a 400.
    pub default_model: Option<String>,
    pub health_check: HealthCheckConfig,
    pub retries: RetryConfig,
    pub timeouts: TimeoutConfig,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// The largest SSE event the edge rewriting holds (bytes, default 4 MiB); a larger one
    /// ends the stream with an error event and `[DONE]`.
    pub max_event_bytes: usize,
    /// When non-empty, clients must send `Authorization: Bearer <one of these>`.
    pub client_api_keys: Vec<String>,
    /// How `https://` backends are verified.
    pub upstream_tls: UpstreamTlsConfig,
    /// proxy-wasm filters, in the order the file declares them (`plugins:`).
    pub plugins: Vec<PluginConfig>,
}

/// One proxy-wasm (ABI 0.2.1) filter of `plugins:`.
///
/// A request's chain is the built-in harmony rewriting, then every `global` plugin in file
/// order, then the plugins its route lists (`routes[i].plugins`) in that route's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Unique among plugins: `[A-Za-z0-9._-]`, 1 to 64 characters (the well-known property
    /// `plugin_name`, and the `plugin` label of its metrics and errors).
    pub name: String,
    /// The module: a binary `.wasm` file, or WebAssembly text (`.wat`). A relative path in a
    /// file read by [`Config::from_file`] is taken from that file's folder.
    pub path: PathBuf,
    /// What `proxy_on_configure` reads as `PLUGIN_CONFIGURATION`: the YAML string as written,
    /// or any other YAML value serialized as JSON. Empty when unset.
    pub configuration: String,
    /// The proxy-wasm VM id (`plugin_vm_id`): plugins with the same id share their
    /// `proxy_set_shared_data` keys. Default: the plugin's name.
    pub vm_id: String,
    /// Runs on every proxied request (default `true`); `false`: only on the routes that list it.
    pub global: bool,
    /// When the plugin fails (traps, runs past `call_timeout`, exceeds `max_memory_mib`), let
    /// the request through without it instead of failing it with a 500 (default `false`).
    pub fail_open: bool,
    /// Longest one callback into the plugin may run (default 100 ms, at least 1 ms).
    pub call_timeout: Duration,
    /// Most linear memory one instance of the plugin may grow to, MiB (default 64, 1 to 4096).
    pub max_memory_mib: u32,
}

/// `state_store:`: the PostgreSQL database that LB replicas share.
#[derive(Debug, Clone, PartialEq)]
pub struct StateStoreConfig {
    /// `postgres://` or `postgresql://` URL in libpq's form
    /// (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`). A password may also come from
    /// `PGPASSWORD`. Never logged whole.
    pub url: String,
    /// Connections each replica keeps open at most (1 to 256, default 8).
    pub pool_size: u32,
    /// How long opening a connection may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long an admin write waits for a connection before it is answered 503 (default 3 s).
    pub acquire_timeout: Duration,
    /// Every replica reloads the whole registry this often (default 5 s), a safety net for a
    /// change notification lost while its listening connection was down.
    pub resync_interval: Duration,
    /// libpq's `sslmode`: `disable`, `prefer` (default), `require`, `verify-ca` or
    /// `verify-full`.
    pub ssl_mode: String,
    /// PEM file of the CA that signs the server's certificate (libpq's `sslrootcert`).
    pub ssl_root_cert: Option<String>,
}

/// TLS to `https://` backends (health checks included).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CAs that sign backend certificates. Unset: the system's roots (and
    /// `SSL_CERT_FILE`). Read at start; a reload does not change it.
    pub ca_file: Option<String>,
    /// Verify the backend's certificate and host name (default true). `false` is for
    /// development with self-signed certificates only.
    pub verify: bool,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        UpstreamTlsConfig {
            ca_file: None,
            verify: true,
        }
    }
}

/// The admin API's protection.
#[derive(Clone, PartialEq, Default)]
pub struct AdminConfig {
    /// Bearer token for register/unregister. `None`: only loopback clients are accepted.
    pub token: Option<String>,
    /// Allow registering backends on link-local or cloud-metadata addresses
    /// (169.254.0.0/16, fe80::/10, fd00:ec2::254). Off by default.
    pub allow_link_local: bool,
    /// Backend addresses refused besides link-local and metadata ones (checked on every
    /// resolved address that is connected to, in any spelling).
    pub forbidden_addresses: Vec<check::IpBlock>,
    /// The most backends (config and registered together); a registration beyond it gets a
    /// 409 `too_many_backends`.
    pub max_backends: usize,
}

impl fmt::Debug for AdminConfig {
    // The token is a secret: it never reaches logs through Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow_link_local", &self.allow_link_local)
            .field("forbidden_addresses", &self.forbidden_addresses)
            .field("max_backends", &self.max_backends)
            .finish()
    }
}

/// What kind of responses a backend produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelType {
    /// Responses may carry raw harmony text; the LB rewrites them into the OpenAI shape.
    GptOss,
    /// Plain OpenAI-compatible responses, passed through untouched.
    OpenAi,
}

impl ModelType {
    pub const NAMES: &'static [&'static str] = &["gpt-oss", "openai"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gpt-oss" => Some(ModelType::GptOss),
            "openai" => Some(ModelType::OpenAi),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::GptOss => "gpt-oss",
            ModelType::OpenAi => "openai",
        }
    }
}

impl serde::Serialize for ModelType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ModelType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModelType::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown model_type '{s}' (expected one of {})",
                ModelType::NAMES.join(", ")
            ))
        })
    }
}

/// A backend: one definition for the config file's `backends`, the admin API's registrations
/// and the state file, validated by [`validate_backend`]. Two equal definitions are the same
/// backend.
#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackendConfig {
    pub name: String,
    pub url: String,
    pub model_type: ModelType,
    pub models: Vec<String>,
    pub weight: u32,
    /// Sent to the backend as `Authorization: Bearer ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("model_type", &self.model_type)
            .field("models", &self.models)
            .field("weight", &self.weight)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A routing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    RoundRobin,
    LeastOutstanding,
    QueueAware,
    ConsistentHash,
    /// SGLang's cache-aware policy (the default of the SGLang and vLLM routers), with an
    /// affinity key: see [`CacheAwareConfig`].
    #[default]
    CacheAware,
}

impl Policy {
    pub const NAMES: &'static [&'static str] = &[
        "round_robin",
        "least_outstanding",
        "queue_aware",
        "consistent_hash",
        "cache_aware",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "round_robin" => Some(Policy::RoundRobin),
            "least_outstanding" => Some(Policy::LeastOutstanding),
            "queue_aware" => Some(Policy::QueueAware),
            "consistent_hash" => Some(Policy::ConsistentHash),
            "cache_aware" => Some(Policy::CacheAware),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastOutstanding => "least_outstanding",
            Policy::QueueAware => "queue_aware",
            Policy::ConsistentHash => "consistent_hash",
            Policy::CacheAware => "cache_aware",
        }
    }
}

/// The `cache_aware` policy's settings (YAML `cache_aware:`), SGLang's cache-aware router's
/// three: for each request, when the busiest eligible backend has more than
/// `balance_abs_threshold` requests over the idlest and more than `balance_rel_threshold` times
/// as many, the idlest takes it; otherwise a request with an affinity key (`prompt_cache_key`,
/// else the route's hash key: the body's `user` or `hash_header`) goes to the key's backend on a
/// consistent-hash ring, and one without goes to the backend whose earlier requests share the
/// longest prefix with it when that share is at least `cache_threshold`, else to the backend with
/// the smallest record. Load is requests in flight through this LB plus the queue the backend
/// reports on its health endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheAwareConfig {
    /// Share of the request's prompt (0 to 1) that must match a backend's record (SGLang: 0.3).
    pub cache_threshold: f64,
    /// Requests (SGLang: 64, for GPU servers that batch hundreds; here 2, for servers that run
    /// a few sequences at once, gpt-oss-server's `--max-concurrent` being 2 by default: two
    /// more waiting requests are a whole generation's wait. Busy backends are compared by the
    /// ratio, since both conditions must hold).
    pub balance_abs_threshold: u64,
    /// Ratio, at least 1 (SGLang: 1.5).
    pub balance_rel_threshold: f64,
    /// Prompt prefixes remembered per backend (message-level blocks), least recently used
    /// forgotten first (default 65,536).
    pub max_blocks_per_backend: usize,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        CacheAwareConfig {
            cache_threshold: 0.3,
            balance_abs_threshold: 2,
            balance_rel_threshold: 1.5,
            max_blocks_per_backend: 65_536,
        }
    }
}

/// What `consistent_hash` hashes (and `cache_aware` sticks by, after `prompt_cache_key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum HashKey {
    /// The request body's `user` field.
    #[default]
    User,
    /// A request header (lower-cased name).
    Header(String),
}

/// A route: a model name (and its aliases) to a group of backends with a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub model: String,
    pub aliases: Vec<String>,
    /// Backend names. Empty: every backend that lists `model`.
    pub backends: Vec<String>,
    pub policy: Policy,
    pub hash_key: HashKey,
    /// Model name sent to the backend; defaults to `model`.
    pub upstream_model: Option<String>,
    /// Names of non-global `plugins` run for this route, after the global ones, in order.
    pub plugins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive good checks for an ejected backend to return (after its half-open probe).
    pub healthy_threshold: u32,
    /// Consecutive failed checks that mark a backend unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive failed requests (5xx, connection failures, timeouts, broken answers) that
    /// eject a backend: Envoy's outlier detection `consecutive_5xx`.
    pub passive_failures: u32,
    /// Envoy's `base_ejection_time`: the first ejection lasts this long; the n-th ejection in
    /// a row lasts n times as long, up to `max_ejection_time`. After it, a passing health
    /// check returns the backend on trial: its next request decides (one failure re-ejects).
    pub ejection_cooldown: Duration,
    /// Envoy's `max_ejection_time`: the cap of an ejection's length.
    pub max_ejection_time: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total attempts per request, the first one included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Resend a request to another backend when its connection failed after the request was
    /// written and before any response byte (a reset after delivery). The backend may have
    /// started generating, so a replay can cost one wasted generation; the client never gets
    /// two answers, since nothing reached it. `false`: such a request fails with a 502.
    pub replay_after_reset: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimeoutConfig {
    pub connect: Duration,
    /// Until the response header arrives.
    pub first_byte: Duration,
    /// Between two chunks of a response body (streams included).
    pub idle: Duration,
}

/// A configuration error; `path` is the dotted field path (`routes[1].policy`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Yaml(String),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        // An empty document is a valid config: every field has a default.
        match Config::from_yaml("{}") {
            Ok(c) => c,
            Err(e) => unreachable!("the empty config must validate: {e}"),
        }
    }
}

impl Config {
    /// Parse and validate YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = if text.trim().is_empty() {
            raw::RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        validate::validate(raw)
    }

    /// Read, parse and validate a file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut cfg = Config::from_yaml(&text)?;
        if let Some(dir) = path.parent() {
            for p in &mut cfg.plugins {
                if p.path.is_relative() {
                    p.path = dir.join(&p.path);
                }
            }
        }
        Ok(cfg)
    }

    /// The route whose model or alias is `name`.
    pub fn route_for(&self, name: &str) -> Option<&RouteConfig> {
        self.routes
            .iter()
            .find(|r| r.model == name || r.aliases.iter().any(|a| a == name))
    }
}

/// Checks shared by the config and the admin API's registration.
pub mod check {
    /// Backend names: 1 to 64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
    pub fn backend_name(name: &str) -> Result<(), String> {
        if name.is_empty() || name.len() > 64 {
            return Err("must be 1 to 64 characters".into());
        }
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "invalid name '{name}': use letters, digits, '.', '_' and '-', starting with a letter or digit"
            ));
        }
        Ok(())
    }

    /// Model ids: 1 to 256 printable characters without whitespace.
    pub fn model_id(id: &str) -> Result<(), String> {
        if id.is_empty() || id.len() > 256 {
            return Err("must be 1 to 256 characters".into());
        }
        if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "invalid model id '{id}': no whitespace or control characters"
            ));
        }
        Ok(())
    }

    /// A parsed backend URL: `http` or `https`, a host, an optional port, an optional path prefix.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BackendUrl {
        pub tls: bool,
        pub host: String,
        pub port: u16,
        /// Path prefix without a trailing slash ("" for none).
        pub prefix: String,
    }

    impl BackendUrl {
        /// `host:port`, with IPv6 hosts in brackets.
        pub fn authority(&self) -> String {
            if self.host.contains(':') {
                format!("[{}]:{}", self.host, self.port)
            } else {
                format!("{}:{}", self.host, self.port)
            }
        }
    }

    /// Parse a backend URL. Only `http://` and `https://`; no user info, query or fragment.
    pub fn backend_url(url: &str) -> Result<BackendUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "unsupported URL '{url}': only http:// and https:// are allowed"
            ));
        };
        if rest.contains(['?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "invalid URL '{url}': no user info, query, fragment or whitespace"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("invalid URL '{url}': unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p, url)?,
                None if after.is_empty() => default_port,
                None => return Err(format!("invalid URL '{url}'")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, url)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("invalid URL '{url}': missing host"));
        }
        Ok(BackendUrl {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    fn parse_port(p: &str, url: &str) -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("invalid port in URL '{url}'")),
            Ok(n) => Ok(n),
        }
    }

    /// The IPv4 address an IPv6 address carries, in any of the forms that reach it:
    /// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still
    /// routed by some stacks), NAT64's well-known prefix (`64:ff9b::/96`, RFC 6052) and 6to4
    /// (`2002:AABB:CCDD::/48`, RFC 3056).
    pub fn embedded_ipv4(v6: &std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
        let s = v6.segments();
        let tail = || {
            std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8)
        };
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Some(v4);
        }
        if s[..6] == [0, 0, 0, 0, 0, 0] && (s[6] != 0 || s[7] > 1) {
            return Some(tail()); // ::a.b.c.d, not :: or ::1
        }
        if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
            return Some(tail());
        }
        if s[0] == 0x2002 {
            return Some(std::net::Ipv4Addr::new(
                (s[1] >> 8) as u8,
                s[1] as u8,
                (s[2] >> 8) as u8,
                s[2] as u8,
            ));
        }
        None
    }

    /// `ip` as the address it reaches: an IPv6 address that embeds an IPv4 one is that IPv4
    /// address.
    pub fn canonical_ip(ip: &std::net::IpAddr) -> std::net::IpAddr {
        match ip {
            std::net::IpAddr::V6(v6) => embedded_ipv4(v6).map_or(*ip, std::net::IpAddr::V4),
            v4 => *v4,
        }
    }

    /// Link-local and cloud metadata addresses, refused for backends by default, in every
    /// IPv4 and IPv6 spelling: 169.254.0.0/16 and fe80::/10 (the metadata services of AWS,
    /// GCP, Azure, Oracle, DigitalOcean, OpenStack at 169.254.169.254, Tencent at
    /// 169.254.0.23), AWS's IPv6 `fd00:ec2::254`, and Alibaba Cloud's `100.100.100.200`.
    pub fn is_link_local_or_metadata(ip: &std::net::IpAddr) -> bool {
        match canonical_ip(ip) {
            std::net::IpAddr::V4(v4) => {
                v4.is_link_local() || v4 == std::net::Ipv4Addr::new(100, 100, 100, 200)
            }
            std::net::IpAddr::V6(v6) => {
                let seg = v6.segments();
                (seg[0] & 0xffc0) == 0xfe80
                    || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            }
        }
    }

    /// An address block of `forbidden_addresses`: `a.b.c.d`, `a.b.c.d/len`, `v6`, `v6/len`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IpBlock {
        pub addr: std::net::IpAddr,
        pub prefix: u8,
    }

    impl IpBlock {
        /// Parse `addr` or `addr/len`. Errors: the text, and why.
        pub fn parse(text: &str) -> Result<IpBlock, String> {
            let (a, len) = match text.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (text, None),
            };
            let addr: std::net::IpAddr = a
                .trim()
                .parse()
                .map_err(|_| format!("'{text}' is not an IP address or block"))?;
            let addr = canonical_ip(&addr);
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match len {
                None => max,
                Some(l) => match l.trim().parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(format!("'{text}': prefix length must be 0 to {max}")),
                },
            };
            Ok(IpBlock { addr, prefix })
        }

        /// Whether `ip` (in any spelling) falls in this block.
        pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
            let ip = canonical_ip(ip);
            match (self.addr, ip) {
                (std::net::IpAddr::V4(b), std::net::IpAddr::V4(a)) => {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(self.prefix))
                        .unwrap_or(0);
                    u32::from(a) & mask == u32::from(b) & mask
                }
                (std::net::IpAddr::V6(b), std::net::IpAddr::V6(a)) => {
                    let mask = u128::MAX
                        .checked_shl(128 - u32::from(self.prefix))
                        .unwrap_or(0);
                    u128::from(a) & mask == u128::from(b) & mask
                }
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests;
