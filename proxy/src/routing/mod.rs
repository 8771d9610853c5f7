//! Routing: the routed request, the route of a model, and the policies that choose a
//! backend among the route's group.

pub mod policy;

use std::sync::Arc;

use bytes::Bytes;
use config::HashKey;
use openai_types::ErrorKind;
use serde_json::Value;

use crate::backend::Backend;
use crate::error::ApiError;
use policy::Policy;
use std::collections::{BTreeSet, HashMap};

/// A route: the backends that may serve a model, and how to choose among them.
pub struct Route {
    /// The canonical model name.
    pub model: String,
    /// The model name sent upstream, when it differs.
    pub upstream_model: Option<String>,
    pub group: Vec<Arc<Backend>>,
    pub policy: Box<dyn Policy>,
    pub policy_name: config::Policy,
    pub hash_key: HashKey,
}

impl Route {
    pub fn has_healthy(&self) -> bool {
        self.group.iter().any(|b| b.health.routable())
    }

    /// Whether a healthy backend not in `tried` remains (does not move any policy's state).
    pub fn has_untried(&self, tried: &[String]) -> bool {
        self.group
            .iter()
            .any(|b| b.health.routable() && !tried.iter().any(|t| t == b.name()))
    }

    /// Choose a healthy backend not in `tried` with the route's policy: first among those
    /// no `Retry-After` holds off, then among all (a held-off backend still serves when no
    /// other one can).
    pub fn select(&self, tried: &[String], hints: &policy::Hints<'_>) -> Option<Arc<Backend>> {
        let eligible = |i: usize| {
            let b = &self.group[i];
            b.health.routable() && !tried.iter().any(|t| t == b.name())
        };
        let free = |i: usize| eligible(i) && !self.group[i].held_off();
        self.policy
            .pick(&self.group, &free, hints)
            .or_else(|| self.policy.pick(&self.group, &eligible, hints))
            .map(|i| self.group[i].clone())
    }
}

/// Model names and aliases to their routes, and the model for requests that name none.
pub struct RouteTable {
    routes: HashMap<String, Arc<Route>>,
    /// The configured `default_model`.
    configured_default: Option<String>,
}

impl RouteTable {
    pub fn new(routes: HashMap<String, Arc<Route>>, configured_default: Option<String>) -> Self {
        RouteTable {
            routes,
            configured_default,
        }
    }

    /// The model for requests that name none: the configured `default_model`, else the only
    /// model served (aliases of it included), else none.
    pub fn default_model(&self) -> Option<String> {
        if let Some(m) = &self.configured_default {
            return Some(m.clone());
        }
        let mut models = self.routes.values().map(|r| r.model.as_str());
        let first = models.next()?;
        models.all(|m| m == first).then(|| first.to_string())
    }

    /// Models (and aliases) that have at least one healthy backend, sorted.
    pub fn available_models(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .routes
            .iter()
            .filter(|(_, r)| r.has_healthy())
            .map(|(name, _)| name.clone())
            .collect();
        set.into_iter().collect()
    }
}

impl std::ops::Deref for RouteTable {
    type Target = HashMap<String, Arc<Route>>;
    fn deref(&self) -> &Self::Target {
        &self.routes
    }
}

/// The 404 for a model no route serves, listing those that have a healthy backend.
pub fn unknown_model(table: &RouteTable, id: &str) -> ApiError {
    let avail = table.available_models();
    let list = if avail.is_empty() {
        "none (no healthy backend)".to_string()
    } else {
        avail.join(", ")
    };
    ApiError::new(
        ErrorKind::NotFound,
        format!(
            "The model `{id}` does not exist or has no healthy backend. Available models: {list}"
        ),
        Some("model"),
        Some("model_not_found"),
    )
}

/// A request to proxy, validated and routed: the route of its model and what the phases
/// need of its body.
pub struct Routed {
    pub route: Arc<Route>,
    /// The body sent upstream (replayed on failover).
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    pub separate_thinking: bool,
    pub hash_key: Option<Vec<u8>>,
    /// The prompt's leading blocks for the `cache_aware` policy ([`prompt_blocks`]), set once
    /// the body is final (a Responses call's conversation included); empty for other policies.
    pub prefix: Vec<(u64, usize)>,
    /// The prompt's size in bytes, as [`prompt_blocks`] counts it.
    pub prompt_bytes: usize,
    /// `/v1/chat/completions`: the answer may carry raw harmony to rewrite.
    pub chat: bool,
    /// Chat or text completions: a 2xx answer must be JSON (SSE for a stream). Other `/v1/*`
    /// endpoints pass through whatever their backend sends.
    pub completion: bool,
    /// `POST /v1/responses`: its conversation handling (`responses::prepare`); a 2xx answer
    /// must be JSON (SSE for a stream).
    pub responses: Option<std::sync::Arc<crate::responses::Call>>,
}

/// Validate and route a request body (`/v1/chat/completions`, `/v1/completions`, or another
/// `/v1/*` POST that names a `model`).
///
/// Errors: 400 for a body that is not a JSON object or has fields of the wrong type, naming
/// the field; 404 `model_not_found` for an unknown model; 503 `no_healthy_backend`.
pub fn route_request(
    table: &RouteTable,
    headers: &http::HeaderMap,
    body: Bytes,
    chat: bool,
    completion: bool,
) -> Result<Routed, ApiError> {
    // Only the fields routing needs are read, in the same pass that checks for duplicate
    // keys; `messages` and the rest are skipped by the parser without allocating (a full
    // `Value` tree costs as much as the whole proxying).
    const FIELDS: [&str; 5] = [
        "model",
        "stream",
        "separate_thinking",
        "user",
        "prompt_cache_key",
    ];
    let not_object = || {
        ApiError::new(
            ErrorKind::InvalidRequest,
            "the request body must be a JSON object",
            None,
            Some("invalid_json"),
        )
    };
    let bad_json = |e: serde_json::Error| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("We could not parse the JSON body of your request: {e}"),
            None,
            Some("invalid_json"),
        )
    };
    // The body must be an object (`scan` reads no fields from an array or a scalar).
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        _ => {
            // Report a syntax error (an empty body included) as such, anything else as
            // "not an object".
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                    Err(e) => bad_json(e),
                    Ok(_) => not_object(),
                },
            );
        }
    }
    let scan = openai_types::json::scan(&body, &FIELDS).map_err(bad_json)?;
    // Duplicate keys anywhere: refused here as gpt-oss-server refuses them, so that a body
    // cannot mean one thing to the LB and another to the backend.
    if let Some(path) = scan.duplicate {
        return Err(ApiError::invalid(
            format!("duplicate key `{path}` in the JSON body"),
            &path,
        ));
    }
    let field = |i: usize| -> Result<Option<Value>, ApiError> {
        scan.members[i]
            .map(|raw| serde_json::from_str::<Value>(raw.get()))
            .transpose()
            .map_err(bad_json)
    };
    let (head_model, head_stream, head_separate_thinking, head_user, head_cache_key) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    // The seed's clients send no `model`: such a request goes to `default_model`, or to the
    // only model served; with several models and no default it is a 400 naming them.
    let (model, model_given) = match head_model {
        Some(Value::String(s)) if !s.is_empty() => (s, true),
        None | Some(Value::Null) => match table.default_model() {
            Some(m) => (m, false),
            None => {
                let available = table.available_models();
                return Err(ApiError::invalid(
                    if available.is_empty() {
                        "you must provide a `model` parameter".to_string()
                    } else {
                        format!(
                            "you must provide a `model` parameter; available models: {}",
                            available.join(", ")
                        )
                    },
                    "model",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "`model` must be a non-empty string",
                "model",
            ))
        }
    };
    let stream = match head_stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::invalid("`stream` must be a boolean", "stream")),
    };
    let separate_thinking = matches!(head_separate_thinking, Some(Value::Bool(true)));
    let user = match head_user {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };

    let route = table
        .get(&model)
        .cloned()
        .ok_or_else(|| unknown_model(table, &model))?;
    if !route.has_healthy() {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            format!("no healthy backend for model `{model}`; retry later"),
            Some("model"),
            Some("no_healthy_backend"),
        ));
    }
    let configured_key = || match &route.hash_key {
        config::HashKey::User => user.map(String::into_bytes),
        config::HashKey::Header(h) => headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()),
    };
    // `cache_aware` sticks by OpenAI's routing hint first (`prompt_cache_key`: "used to cache
    // responses for similar requests", which OpenAI routes by), then by the route's key.
    let hash_key = match (route.policy_name, head_cache_key) {
        (config::Policy::CacheAware, Some(Value::String(k))) if !k.is_empty() => {
            Some(k.into_bytes())
        }
        _ => configured_key(),
    };
    // Send the route's upstream name when it differs from what the client asked for
    // (aliases resolve to the canonical model).
    let upstream_name = route
        .upstream_model
        .clone()
        .unwrap_or_else(|| route.model.clone());
    let body = if upstream_name != model || !model_given {
        // Rare (aliases, or no `model` sent): rebuild the body with the upstream's model name.
        let mut v: Value = serde_json::from_slice(&body).map_err(bad_json)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("model".into(), Value::String(upstream_name));
        }
        Bytes::from(serde_json::to_vec(&v).map_err(|_| {
            ApiError::new(
                ErrorKind::Server,
                "could not re-encode the request",
                None,
                None,
            )
        })?)
    } else {
        body
    };
    Ok(Routed {
        route,
        body,
        model,
        stream,
        separate_thinking,
        hash_key,
        prefix: Vec::new(),
        prompt_bytes: 0,
        chat,
        completion,
        responses: None,
    })
}

/// Most bytes of one `prompt` string counted as one block (longer ones are cut into blocks of
/// this size, so that two long completions prompts share their common start).
const PROMPT_PIECE: usize = 4096;

/// The prompt of a request body as the `cache_aware` policy compares prompts: a sequence of
/// blocks in the order gpt-oss-server renders them (`tools`, then `instructions`, then each
/// element of `messages` or `input`, or `prompt` in pieces of 4 KiB), each hashed from its
/// JSON value with object keys in sorted order (so that two clients serializing the same
/// messages differently still match), chained to the blocks before it. Returns the chained
/// hashes with the bytes up to and including each block, and the total bytes (the blocks'
/// JSON text). A body that is not a JSON object gives nothing.
pub fn prompt_blocks(body: &[u8]) -> (Vec<(u64, usize)>, usize) {
    use std::hash::{Hash, Hasher};
    let Ok(req) = serde_json::from_slice::<serde_json::Map<String, Value>>(body) else {
        return (Vec::new(), 0);
    };
    let mut units: Vec<&Value> = Vec::new();
    for name in ["tools", "instructions"] {
        if let Some(v) = req.get(name).filter(|v| !v.is_null()) {
            units.push(v);
        }
    }
    let mut pieces: Vec<Value> = Vec::new();
    for name in ["messages", "input", "prompt"] {
        match req.get(name) {
            Some(Value::Array(items)) => units.extend(items.iter()),
            Some(Value::String(s)) if name == "prompt" => {
                let mut rest = s.as_str();
                while !rest.is_empty() {
                    let mut cut = rest.len().min(PROMPT_PIECE);
                    while !rest.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    pieces.push(Value::String(rest[..cut].to_string()));
                    rest = &rest[cut..];
                }
            }
            Some(v) if !v.is_null() => units.push(v),
            _ => {}
        }
    }
    units.extend(pieces.iter());
    let mut chain = 0u64;
    let mut bytes = 0usize;
    let mut out = Vec::with_capacity(units.len());
    for u in units {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        chain.hash(&mut h);
        hash_value(u, &mut h);
        chain = h.finish();
        bytes += json_len(u);
        out.push((chain, bytes));
    }
    (out, bytes)
}

/// Hashes a JSON value with object keys in sorted order.
fn hash_value(v: &Value, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.to_string()).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            for x in a {
                hash_value(x, h);
            }
        }
        Value::Object(o) => {
            (5u8, o.len()).hash(h);
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            for k in keys {
                k.hash(h);
                hash_value(&o[k], h);
            }
        }
    }
}

/// The size of a value's compact JSON text (without writing it).
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Source;
    use std::time::Duration;

    fn backend(name: &str, healthy: bool) -> Arc<Backend> {
        let def = config::BackendConfig {
            name: name.into(),
            url: "http://127.0.0.1:1".into(),
            model_type: config::ModelType::GptOss,
            models: vec!["m".into()],
            weight: 1,
            api_key: None,
        };
        let url = config::check::backend_url(&def.url).expect("url");
        let b = Arc::new(Backend::new(
            def,
            Source::Config,
            url,
            "127.0.0.1:1".parse().expect("addr"),
        ));
        if healthy {
            b.health
                .on_check(Ok(()), &config::Config::default().health_check);
        }
        b
    }

    fn route(group: Vec<Arc<Backend>>) -> Route {
        Route {
            model: "m".into(),
            upstream_model: None,
            policy: policy::build(config::Policy::RoundRobin, &group, &Default::default()),
            policy_name: config::Policy::RoundRobin,
            group,
            hash_key: HashKey::User,
        }
    }

    #[test]
    fn selection_skips_unhealthy_and_tried_backends() {
        let none = policy::Hints::default();
        let r = route(vec![
            backend("a", true),
            backend("b", false),
            backend("c", true),
        ]);
        for _ in 0..10 {
            let b = r.select(&["a".into()], &none).expect("c is left");
            assert_eq!(b.name(), "c");
        }
        assert!(r.select(&["a".into(), "c".into()], &none).is_none());
        assert!(!r.has_untried(&["a".into(), "c".into()]));
        assert!(r.has_untried(&["a".into()]));
    }

    #[test]
    fn a_backend_held_off_by_retry_after_is_chosen_last() {
        let none = policy::Hints::default();
        let (a, b) = (backend("a", true), backend("b", true));
        a.hold_off(Duration::from_secs(30));
        let r = route(vec![a.clone(), b]);
        for _ in 0..10 {
            assert_eq!(r.select(&[], &none).expect("one").name(), "b");
        }
        assert_eq!(
            r.select(&["b".into()], &none)
                .expect("a still serves")
                .name(),
            "a",
            "when nobody else can take it, the held-off backend does"
        );
    }

    fn table() -> RouteTable {
        let mut routes = HashMap::new();
        routes.insert("m".to_string(), Arc::new(route(vec![backend("a", true)])));
        RouteTable::new(routes, None)
    }

    #[test]
    fn requests_are_routed_by_model_or_to_the_only_model() {
        let t = table();
        let h = http::HeaderMap::new();
        let r = route_request(
            &t,
            &h,
            Bytes::from_static(br#"{"model":"m","stream":true}"#),
            true,
            true,
        )
        .expect("routed");
        assert!(r.stream && r.chat && r.completion);
        let r = route_request(
            &t,
            &h,
            Bytes::from_static(br#"{"messages":[]}"#),
            true,
            true,
        )
        .expect("no model: the only one served");
        assert_eq!(r.model, "m");
        assert!(
            std::str::from_utf8(&r.body).is_ok_and(|b| b.contains(r#""model":"m""#)),
            "the upstream body names the model"
        );
        let e = route_request(&t, &h, Bytes::from_static(br#"{"model":"x"}"#), true, true)
            .err()
            .expect("unknown");
        assert_eq!(
            (e.status, e.body.error.code.as_deref()),
            (404, Some("model_not_found"))
        );
        let e = route_request(
            &t,
            &h,
            Bytes::from_static(br#"{"model":"m","stream":"yes"}"#),
            true,
            true,
        )
        .err()
        .expect("bad stream");
        assert_eq!(
            (e.status, e.body.error.param.as_deref()),
            (400, Some("stream"))
        );
        let e = route_request(&t, &h, Bytes::from_static(b"[1]"), true, true)
            .err()
            .expect("not an object");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn prompt_blocks_follow_the_rendering_order_and_ignore_key_order_and_spacing() {
        let (a, ta) = prompt_blocks(
            br#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"Q"}]}"#,
        );
        let (b, tb) = prompt_blocks(
            br#"{"messages": [{"content": "S", "role": "system"}, {"content":"Q","role":"user"}, {"role":"assistant","content":"A"}], "model": "m", "max_tokens": 5}"#,
        );
        assert_eq!((a.len(), b.len()), (2, 3));
        assert_eq!(
            &b[..2],
            &a[..],
            "the same messages, spelled differently, hash the same"
        );
        assert!(tb > ta);
        // a different system message changes every later block
        let (c, _) = prompt_blocks(
            br#"{"messages":[{"role":"system","content":"T"},{"role":"user","content":"Q"}]}"#,
        );
        assert!(c.iter().zip(&a).all(|(x, y)| x.0 != y.0));
        // tools and instructions come first; a long prompt is cut into pieces
        let (d, _) = prompt_blocks(
            br#"{"tools":[{"type":"function","name":"f"}],"instructions":"I","input":"hi"}"#,
        );
        assert_eq!(d.len(), 3);
        let long = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(10_000));
        assert_eq!(prompt_blocks(long.as_bytes()).0.len(), 3);
        assert!(prompt_blocks(b"[1,2]").0.is_empty());
    }
}
