//! `request_filter`'s work: answer local endpoints, or validate and route a completion request.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use openai_types::ErrorKind;
use pingora::proxy::Session;

use crate::auth;
use crate::error::{ApiError, Reply};
use crate::routing::{route_request, Routed};
use crate::state::{Shared, Snapshot};
use crate::{admin, api, responses};

/// What a request is for: the path table, matched once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Status,
    Metrics,
    Models,
    Model,
    ChatCompletions,
    Completions,
    /// `POST /v1/responses`.
    Responses,
    /// `/v1/responses/{id}` and `/v1/responses/{id}/input_items`: answered from the LB's
    /// conversation store.
    Response,
    /// Another `/v1/*` path (`/v1/embeddings`, `/v1/responses`, ...): a POST naming a
    /// `model` is routed by it and passed through untouched.
    OtherV1,
    Register,
    /// `PUT /backends/{name}/lease`: a leased registration's renewal.
    Lease,
    Unregister,
    Unknown,
}

impl Endpoint {
    /// The endpoint of a request, from its path.
    pub fn of(req: &pingora::http::RequestHeader) -> Endpoint {
        match req.uri.path() {
            "/health" => Endpoint::Health,
            "/status" => Endpoint::Status,
            "/metrics" => Endpoint::Metrics,
            "/v1/models" => Endpoint::Models,
            p if p.starts_with("/v1/models/") => Endpoint::Model,
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/completions" => Endpoint::Completions,
            "/v1/responses" => Endpoint::Responses,
            p if p.starts_with("/v1/responses/") => Endpoint::Response,
            p if p.starts_with("/v1/") => Endpoint::OtherV1,
            "/backends/register" => Endpoint::Register,
            p if p.starts_with("/backends/") && p.ends_with("/lease") => Endpoint::Lease,
            p if p.starts_with("/backends/") => Endpoint::Unregister,
            _ => Endpoint::Unknown,
        }
    }

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Health => "health",
            Endpoint::Status => "status",
            Endpoint::Metrics => "metrics",
            Endpoint::Models => "models",
            Endpoint::Model => "model",
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Responses | Endpoint::Response => "responses",
            Endpoint::OtherV1 => "other_v1",
            Endpoint::Register => "register",
            Endpoint::Lease => "lease",
            Endpoint::Unregister => "unregister",
            Endpoint::Unknown => "other",
        }
    }
}

pub enum Outcome {
    /// Answer locally with this reply.
    Reply(Reply),
    /// Proxy it, with its run through the plugin chain when its route has plugins.
    Proxy(Box<Routed>, Option<Box<crate::plugins::Stream>>),
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

/// `Expect: 100-continue` (RFC 9110 section 10.1.1): the client waits for this before it
/// sends its body; answering at once saves it the wait (curl waits 1 s).
async fn continue_if_expected(session: &mut Session) {
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if !expects {
        return;
    }
    match pingora::http::ResponseHeader::build(100, Some(0)) {
        Ok(h) => {
            if let Err(e) = session.write_response_header(Box::new(h), false).await {
                tracing::debug!(error = %e, "could not send 100 Continue");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not build 100 Continue"),
    }
}

/// Read a body to proxy (at most `body_limit`) and route it; `Reply` for what cannot be.
async fn read_and_route(
    shared: &Shared,
    snap: &Snapshot,
    session: &mut Session,
    endpoint: Endpoint,
) -> Result<(Box<Routed>, Option<Box<crate::plugins::Stream>>), Reply> {
    auth::authorize_client(snap, &session.req_header().headers).map_err(Reply::from)?;
    continue_if_expected(session).await;
    let body = match read_body(session, snap.config.body_limit).await {
        Ok(b) => b,
        Err(e) => {
            session.set_keepalive(None);
            return Err(e.into());
        }
    };
    let chat = endpoint == Endpoint::ChatCompletions;
    let completion = chat || endpoint == Endpoint::Completions;
    let original = body.clone();
    let mut routed = route_request(
        &snap.routes,
        &session.req_header().headers,
        body,
        chat,
        completion,
    )
    .map_err(Reply::from)?;
    // The plugin chain sees the request as the client sent it, once it is valid and its
    // route known; a body a filter changed is validated and routed again.
    let mut filters = None;
    if let Some(chain) = snap.plugins.chain(&routed.route.model) {
        let downstream = session.server_addr().and_then(|a| a.as_inet()).copied();
        let source = session.client_addr().and_then(|a| a.as_inet()).copied();
        let mut info = crate::plugins::stream_info(
            session.req_header(),
            source,
            downstream,
            endpoint.name(),
            original.len(),
        );
        info.route = routed.route.model.clone();
        info.model = routed.model.clone();
        info.stream = routed.stream;
        let mut stream = Box::new(crate::plugins::Stream::new(chain, info));
        let mut body = original.clone();
        stream
            .on_request(session.req_header_mut(), &mut body)
            .map_err(crate::plugins::Stop::reply)?;
        if body != original {
            routed = route_request(
                &snap.routes,
                &session.req_header().headers,
                body,
                chat,
                completion,
            )
            .map_err(Reply::from)?;
        }
        filters = Some(stream);
    }
    if endpoint == Endpoint::Responses {
        let (body, call) = responses::prepare(&shared.conversations, &routed.body)
            .await
            .map_err(Reply::from)?;
        routed.body = body;
        if routed.route.policy_name == config::Policy::CacheAware && routed.hash_key.is_none() {
            // a conversation (`previous_response_id`) sticks to one backend, like a
            // `prompt_cache_key`
            routed.hash_key = call
                .turn
                .as_ref()
                .and_then(|t| t.conversation_key())
                .map(|k| k.as_bytes().to_vec());
        }
        routed.responses = Some(call);
    }
    if routed.route.policy_name == config::Policy::CacheAware {
        // the body as sent (a Responses conversation whole), which is what the backend caches
        (routed.prefix, routed.prompt_bytes) = crate::routing::prompt_blocks(&routed.body);
    }
    Ok((Box::new(routed), filters))
}

/// `GET`/`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`.
async fn stored_response(
    shared: &Shared,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Reply {
    let rest = &path["/v1/responses/".len()..];
    let res = match rest.split_once('/') {
        None if method == http::Method::GET || method == http::Method::HEAD => {
            responses::retrieve(&shared.conversations, rest).await
        }
        None if method == http::Method::DELETE => {
            responses::delete(&shared.conversations, rest).await
        }
        None => return method_not_allowed("GET, DELETE"),
        Some((id, "input_items")) if method == http::Method::GET => {
            responses::input_items_page(&shared.conversations, id, query).await
        }
        Some((_, "input_items")) => return method_not_allowed("GET"),
        Some(_) => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("Unknown endpoint {method} {path}"),
            None,
            Some("unknown_url"),
        )),
    };
    res.unwrap_or_else(Reply::from)
}

/// Decide what to do with a request.
pub async fn handle(
    shared: &Shared,
    snap: &Snapshot,
    session: &mut Session,
    endpoint: Endpoint,
) -> Outcome {
    let method = session.req_header().method.clone();
    let path = session.req_header().uri.path().to_string();
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let is_get = method == http::Method::GET || method == http::Method::HEAD;
    let is_post = method == http::Method::POST;

    let reply = match endpoint {
        Endpoint::Health if is_get => api::health(snap),
        Endpoint::Status if is_get => api::status(shared, snap),
        Endpoint::Metrics if is_get => api::metrics(shared, snap),
        Endpoint::Health | Endpoint::Status | Endpoint::Metrics => method_not_allowed("GET"),
        Endpoint::Models if is_get => {
            match auth::authorize_client(snap, &session.req_header().headers) {
                Ok(()) => api::models(snap),
                Err(e) => e.into(),
            }
        }
        Endpoint::Model if is_get => {
            match auth::authorize_client(snap, &session.req_header().headers) {
                Ok(()) => api::model(snap, &path["/v1/models/".len()..]),
                Err(e) => e.into(),
            }
        }
        Endpoint::Models | Endpoint::Model => method_not_allowed("GET"),
        Endpoint::ChatCompletions
        | Endpoint::Completions
        | Endpoint::Responses
        | Endpoint::OtherV1
            if is_post =>
        {
            return match read_and_route(shared, snap, session, endpoint).await {
                Ok((r, filters)) => Outcome::Proxy(r, filters),
                Err(reply) => Outcome::Reply(reply),
            };
        }
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Responses => {
            method_not_allowed("POST")
        }
        Endpoint::Response => match auth::authorize_client(snap, &session.req_header().headers) {
            Ok(()) => {
                let query = session.req_header().uri.query().map(str::to_string);
                stored_response(shared, &method, &path, query.as_deref()).await
            }
            Err(e) => e.into(),
        },
        Endpoint::Register if is_post => {
            if let Err(e) = auth::authorize_admin(snap, &session.req_header().headers, client_ip) {
                return Outcome::Reply(e.into());
            }
            continue_if_expected(session).await;
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
        Endpoint::Register => method_not_allowed("POST"),
        Endpoint::Unregister if method == http::Method::DELETE => {
            if let Err(e) = auth::authorize_admin(snap, &session.req_header().headers, client_ip) {
                return Outcome::Reply(e.into());
            }
            match admin::unregister(shared, &path["/backends/".len()..]).await {
                Ok(r) => r,
                Err(e) => e.into(),
            }
        }
        Endpoint::Unregister => method_not_allowed("DELETE"),
        Endpoint::Lease if method == http::Method::PUT => {
            if let Err(e) = auth::authorize_admin(snap, &session.req_header().headers, client_ip) {
                return Outcome::Reply(e.into());
            }
            let name = &path["/backends/".len()..path.len() - "/lease".len()];
            match admin::renew_lease(shared, name).await {
                Ok(r) => r,
                Err(e) => e.into(),
            }
        }
        Endpoint::Lease => method_not_allowed("PUT"),
        Endpoint::OtherV1 | Endpoint::Unknown => ApiError::new(
            ErrorKind::NotFound,
            format!("Unknown endpoint {method} {path}"),
            None,
            Some("unknown_url"),
        )
        .into(),
    };
    Outcome::Reply(reply)
}
