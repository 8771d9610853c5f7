//! `request_filter`'s work: answer local endpoints, or validate and route a completion request.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use openai_types::ErrorKind;
use pingora::proxy::Session;
use serde_json::Value;

use crate::error::{ApiError, Reply};
use crate::state::{Route, Shared, Snapshot};
use crate::{admin, api};

/// What the endpoint is, for metrics.
pub fn endpoint_name(method: &http::Method, path: &str) -> &'static str {
    match (method.as_str(), path) {
        (_, "/health") => "health",
        (_, "/status") => "status",
        (_, "/metrics") => "metrics",
        (_, "/v1/models") => "models",
        (_, p) if p.starts_with("/v1/models/") => "model",
        (_, "/v1/chat/completions") => "chat_completions",
        (_, "/v1/completions") => "completions",
        (_, "/backends/register") => "register",
        (_, p) if p.starts_with("/backends/") => "unregister",
        _ => "other",
    }
}

/// A completion request, validated and routed.
pub struct Routed {
    pub route: Arc<Route>,
    /// The body sent upstream (replayed on failover).
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    pub separate_thinking: bool,
    pub hash_key: Option<Vec<u8>>,
    pub chat: bool,
}

pub enum Outcome {
    /// Answer locally with this reply.
    Reply(Reply),
    /// Proxy it.
    Proxy(Box<Routed>),
}

fn method_not_allowed(allowed: &str) -> Reply {
    Reply::error(&ApiError::new(
        ErrorKind::InvalidRequest,
        format!("method not allowed; use {allowed}"),
        None,
        Some("method_not_allowed"),
    ))
    .with_header("allow", allowed)
    .into_status(405)
}

impl Reply {
    fn into_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

/// Pingora replays a request body to the backend (and on failover) from its retry buffer,
/// which holds at most this much; see `read_body`.
const RETRY_BUFFER: u64 = 64 * 1024;

/// How much of a refused (over-limit) body is read and dropped, and for how long, so that a
/// client that sends its whole body before reading the answer gets the 413, not a reset.
const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// Read the whole request body, at most `limit` bytes (413 beyond).
///
/// The body is kept here and sent upstream by `request_body_filter` on every attempt. Pingora
/// only calls that filter for a body it has already read when its retry buffer holds
/// something (and holds at most 64 KiB), so buffering is switched on before the read that can
/// bring the last 64 KiB of a `Content-Length` body: the buffer then holds that tail and is
/// never truncated. A chunked body (no length) must fit the buffer whole, else it is a 411.
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::RequestTooLarge,
            format!("request body is larger than the limit of {limit} bytes"),
            None,
            Some("request_too_large"),
        )
    };
    session.set_read_timeout(Some(Duration::from_secs(30)));
    let content_length = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(cl) = content_length {
        if cl > limit as u64 {
            drain_body(session, cl).await;
            return Err(too_large());
        }
    }
    let mut buffering = false;
    let mut buf = BytesMut::new();
    loop {
        if !buffering
            && content_length.is_none_or(|cl| cl.saturating_sub(buf.len() as u64) <= RETRY_BUFFER)
        {
            session.as_downstream_mut().enable_retry_buffering();
            buffering = true;
        }
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    drain_body(session, DRAIN_MAX_BYTES).await;
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("could not read the request body: {}", e.etype().as_str()),
                    None,
                    Some("body_read_error"),
                ))
            }
        }
    }
    if !buf.is_empty() && session.as_downstream().get_retry_buffer().is_none() {
        return Err(ApiError::new(
            ErrorKind::LengthRequired,
            format!(
                "a request body over {} KiB must be sent with Content-Length",
                RETRY_BUFFER / 1024
            ),
            None,
            Some("length_required"),
        ));
    }
    Ok(buf.freeze())
}

/// Read and drop the rest of a refused body, bounded in bytes and time. A client that is
/// still sending when the socket closes gets a reset that can overtake the 413; a body too
/// large to drain within the bounds still gets that, and the connection is closed after it.
async fn drain_body(session: &mut Session, expected: u64) {
    if expected > DRAIN_MAX_BYTES {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        let mut n = 0u64;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            n += chunk.len() as u64;
            if n > DRAIN_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Validate and route a completion body.
pub fn route_completion(
    snap: &Snapshot,
    headers: &http::HeaderMap,
    body: Bytes,
    chat: bool,
) -> Result<Routed, ApiError> {
    // Only the fields routing needs are built; `messages` and the rest are skipped by the
    // parser without allocating (a full `Value` tree costs as much as the whole proxying).
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        model: Option<Value>,
        #[serde(default)]
        stream: Option<Value>,
        #[serde(default)]
        separate_thinking: Option<Value>,
        #[serde(default)]
        user: Option<Value>,
    }
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
    // A derived struct also accepts a JSON array; the body must be an object.
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
    let head: Head = serde_json::from_slice(&body).map_err(bad_json)?;
    // The seed's clients send no `model`: such a request goes to `default_model`, or to the
    // only model served; with several models and no default it is a 400 naming them.
    let (model, model_given) = match head.model {
        Some(Value::String(s)) if !s.is_empty() => (s, true),
        None | Some(Value::Null) => match snap.default_model() {
            Some(m) => (m, false),
            None => {
                let available = snap.available_models();
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
    let stream = match head.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::invalid("`stream` must be a boolean", "stream")),
    };
    let separate_thinking = matches!(head.separate_thinking, Some(Value::Bool(true)));
    let user = match head.user {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };

    let route = snap
        .routes
        .get(&model)
        .cloned()
        .ok_or_else(|| api::unknown_model(snap, &model))?;
    if !route.has_healthy() {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            format!("no healthy backend for model `{model}`; retry later"),
            Some("model"),
            Some("no_healthy_backend"),
        ));
    }
    let hash_key = match &route.hash_key {
        config::HashKey::User => user.map(String::into_bytes),
        config::HashKey::Header(h) => headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()),
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
        chat,
    })
}

/// Decide what to do with a request.
pub async fn handle(shared: &Shared, snap: &Snapshot, session: &mut Session) -> Outcome {
    let method = session.req_header().method.clone();
    let path = session.req_header().uri.path().to_string();
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let is_get = method == http::Method::GET || method == http::Method::HEAD;

    let reply = match path.as_str() {
        "/health" if is_get => api::health(snap),
        "/status" if is_get => api::status(shared, snap),
        "/metrics" if is_get => api::metrics(shared, snap),
        "/health" | "/status" | "/metrics" => method_not_allowed("GET"),
        "/v1/models" if is_get => {
            match admin::authorize_client(snap, &session.req_header().headers) {
                Ok(()) => api::models(snap),
                Err(e) => e.into(),
            }
        }
        p if p.starts_with("/v1/models/") && is_get => {
            match admin::authorize_client(snap, &session.req_header().headers) {
                Ok(()) => api::model(snap, &p["/v1/models/".len()..]),
                Err(e) => e.into(),
            }
        }
        "/v1/models" => method_not_allowed("GET"),
        "/v1/chat/completions" | "/v1/completions" if method == http::Method::POST => {
            if let Err(e) = admin::authorize_client(snap, &session.req_header().headers) {
                return Outcome::Reply(e.into());
            }
            let body = match read_body(session, snap.config.body_limit).await {
                Ok(b) => b,
                Err(e) => {
                    session.set_keepalive(None);
                    return Outcome::Reply(e.into());
                }
            };
            let chat = path == "/v1/chat/completions";
            return match route_completion(snap, &session.req_header().headers, body, chat) {
                Ok(r) => Outcome::Proxy(Box::new(r)),
                Err(e) => Outcome::Reply(e.into()),
            };
        }
        "/v1/chat/completions" | "/v1/completions" => method_not_allowed("POST"),
        "/backends/register" if method == http::Method::POST => {
            if let Err(e) = admin::authorize(snap, &session.req_header().headers, client_ip) {
                return Outcome::Reply(e.into());
            }
            match read_body(session, 64 * 1024).await {
                Ok(body) => match admin::register(shared, &body).await {
                    Ok(r) => r,
                    Err(e) => e.into(),
                },
                Err(e) => {
                    session.set_keepalive(None);
                    e.into()
                }
            }
        }
        "/backends/register" => method_not_allowed("POST"),
        p if p.starts_with("/backends/") && method == http::Method::DELETE => {
            if let Err(e) = admin::authorize(snap, &session.req_header().headers, client_ip) {
                return Outcome::Reply(e.into());
            }
            match admin::unregister(shared, &p["/backends/".len()..]).await {
                Ok(r) => r,
                Err(e) => e.into(),
            }
        }
        p if p.starts_with("/backends/") => method_not_allowed("DELETE"),
        _ => ApiError::new(
            ErrorKind::NotFound,
            format!("Unknown endpoint {method} {path}"),
            None,
            Some("unknown_url"),
        )
        .into(),
    };
    Outcome::Reply(reply)
}
