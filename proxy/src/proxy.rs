//! The `ProxyHttp` implementation. Each phase is thin and delegates: `dispatch` (local
//! endpoints, validation, routing), `state::Route::select` (policies), `headers` (request and
//! response rewriting), `stream`/`rewrite` (bodies), `health` (passive checks), `metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use openai_types::ErrorKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;

use crate::backend::{Backend, InflightGuard};
use crate::dispatch::{self, Outcome, Routed};
use crate::error::{write_reply, ApiError, Reply};
use crate::rewrite::{self, RewriteOptions};
use crate::state::{Shared, Snapshot};
use crate::stream::ResponseState;

pub struct Lb {
    pub shared: Arc<Shared>,
    /// Upstream connections of non-streaming requests (`buffered`); streams use Pingora's
    /// proxy path and its own connector. Both trust `upstream_tls.ca_file`.
    pub(crate) connector: Connector,
}

impl Lb {
    pub fn new(shared: Arc<Shared>, pool_size: usize) -> Lb {
        let mut options = ConnectorOptions::new(pool_size);
        options.ca_file = shared.load().config.upstream_tls.ca_file.clone();
        Lb {
            shared,
            connector: Connector::new(Some(options)),
        }
    }
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    endpoint: &'static str,
    /// The snapshot this request was admitted under; kept for its whole life.
    pub(crate) snap: Option<Arc<Snapshot>>,
    pub(crate) routed: Option<Box<Routed>>,
    /// Attempts made so far.
    pub(crate) attempt: u32,
    pub(crate) tried: Vec<String>,
    /// The backend of the current attempt, holding one in-flight slot.
    pub(crate) current: Option<InflightGuard>,
    attempt_started: Option<Instant>,
    body_sent: bool,
    response: Option<ResponseState>,
    /// The error to report if the request fails.
    pub(crate) failure: Option<ApiError>,
}

/// The peer for one attempt at `backend`: TLS trust, and the timeouts. Pingora applies one
/// read timeout to every read. A non-streaming answer arrives all at once after generation,
/// so its reads wait up to `first_byte`; a stream's header comes at once and its chunks must
/// each arrive within `idle`.
pub(crate) fn peer_for(backend: &Backend, cfg: &config::Config, stream: bool) -> HttpPeer {
    let mut peer = HttpPeer::new(backend.addr, backend.url.tls, backend.url.host.clone());
    peer.options.verify_cert = cfg.upstream_tls.verify;
    peer.options.verify_hostname = cfg.upstream_tls.verify;
    let t = &cfg.timeouts;
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(if stream { t.idle } else { t.first_byte });
    peer.options.write_timeout = Some(t.idle);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

/// Map a Pingora error to what the client sees.
pub(crate) fn classify(e: &Error, backend: Option<&str>) -> ApiError {
    let who = backend
        .map(|b| format!("backend '{b}'"))
        .unwrap_or_else(|| "the backend".into());
    match e.etype() {
        ErrorType::ConnectTimedout => ApiError::new(
            ErrorKind::Timeout,
            format!("connecting to {who} timed out"),
            None,
            Some("upstream_connect_timeout"),
        ),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => ApiError::new(
            ErrorKind::Timeout,
            format!("{who} did not answer in time"),
            None,
            Some("upstream_timeout"),
        ),
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
            ApiError::new(
                ErrorKind::BadGateway,
                format!("could not connect to {who}"),
                None,
                Some("upstream_connect_error"),
            )
        }
        ErrorType::HTTPStatus(code) if *code >= 400 => {
            let kind = match code {
                429 => ErrorKind::RateLimit,
                503 => ErrorKind::Unavailable,
                504 => ErrorKind::Timeout,
                _ => ErrorKind::BadGateway,
            };
            let mut err = ApiError::new(
                kind,
                format!("{who} answered {code}"),
                None,
                Some("upstream_error"),
            );
            err.status = *code;
            err
        }
        _ if *e.esource() == ErrorSource::Downstream => ApiError::new(
            ErrorKind::InvalidRequest,
            "the client connection failed",
            None,
            Some("client_error"),
        ),
        _ => ApiError::new(
            ErrorKind::BadGateway,
            format!("{who} failed: {}", e.etype().as_str()),
            None,
            Some("upstream_error"),
        ),
    }
}

impl Lb {
    pub(crate) fn backoff(&self, cfg: &config::RetryConfig, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        cfg.backoff.saturating_mul(factor).min(cfg.max_backoff)
    }

    /// Whether another attempt is allowed and safe: attempts remain, nothing was sent to the
    /// client yet, and the error came from the backend.
    fn may_retry(&self, session: &Session, ctx: &Ctx, e: &Error) -> bool {
        let Some(snap) = &ctx.snap else { return false };
        ctx.routed.is_some()
            && ctx.attempt < snap.config.retries.max_attempts
            && session.response_written().is_none()
            && *e.esource() != ErrorSource::Downstream
    }

    /// The error for a request with no backend left to try: the last attempt's failure, or
    /// 503 when none could be tried.
    pub(crate) fn final_failure(&self, ctx: &mut Ctx, model: &str) -> ApiError {
        match ctx.failure.take() {
            Some(mut last) if ctx.attempt > 0 => {
                last.body.error.message = format!(
                    "all {} attempt(s) failed; last error: {}",
                    ctx.attempt, last.body.error.message
                );
                last
            }
            _ => ApiError::new(
                ErrorKind::Unavailable,
                format!("no healthy backend for model `{model}`"),
                Some("model"),
                Some("no_healthy_backend"),
            ),
        }
    }

    /// Record a failed attempt against the current backend (passive health).
    pub(crate) fn attempt_failed(&self, ctx: &mut Ctx, e: &Error) {
        let Some(guard) = ctx.current.as_ref() else {
            return;
        };
        let b = guard.backend().clone();
        if *e.esource() == ErrorSource::Downstream {
            return;
        }
        b.record_error();
        self.shared.metrics.record_upstream_failure(b.name());
        if let Some(snap) = &ctx.snap {
            if let Some(status) = b
                .health
                .on_request_failure(&snap.config.health_check, e.etype().as_str())
            {
                tracing::warn!(
                    backend = b.name(),
                    ?status,
                    error = e.etype().as_str(),
                    "backend ejected after consecutive failures"
                );
            }
        }
        ctx.failure = Some(classify(e, Some(b.name())));
    }
}

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            endpoint: "other",
            snap: None,
            routed: None,
            attempt: 0,
            tried: Vec::new(),
            current: None,
            attempt_started: None,
            body_sent: false,
            response: None,
            failure: None,
        }
    }

    /// Runs first for every request. Answers local endpoints (health, status, models, metrics,
    /// admin) and invalid requests itself (returns `Ok(true)`); for a valid completion request
    /// it stores the routed request in the context and returns `Ok(false)` to proxy it.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.shared.load();
        ctx.snap = Some(snap.clone());
        let req = session.req_header();
        ctx.endpoint = dispatch::endpoint_name(&req.method, req.uri.path());
        match dispatch::handle(&self.shared, &snap, session).await {
            Outcome::Reply(reply) => {
                write_reply(session, reply).await?;
                Ok(true)
            }
            Outcome::Proxy(routed) if routed.stream => {
                ctx.routed = Some(routed);
                Ok(false)
            }
            // Non-streaming: read the whole answer, check it, then send it.
            Outcome::Proxy(routed) => {
                ctx.routed = Some(routed);
                crate::buffered::forward(self, session, ctx).await?;
                Ok(true)
            }
        }
    }

    /// Runs once per attempt. Picks a healthy backend not tried yet with the route's policy
    /// (after a backoff on retries) and returns its peer; an error here ends the request.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(snap), Some(routed)) = (ctx.snap.clone(), ctx.routed.as_ref()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no routed request",
            ));
        };
        let cfg = &snap.config;
        if ctx.attempt > 0 {
            self.shared
                .metrics
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(self.backoff(&cfg.retries, ctx.attempt)).await;
        }
        let Some(backend) = routed.route.select(&ctx.tried, routed.hash_key.as_deref()) else {
            let model = routed.model.clone();
            let err = self.final_failure(ctx, &model);
            let status = err.status;
            ctx.failure = Some(err);
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "no backend left to try",
            ));
        };
        ctx.attempt += 1;
        ctx.tried.push(backend.name().to_string());
        ctx.current = Some(backend.start_request());
        ctx.attempt_started = Some(Instant::now());
        ctx.body_sent = false;
        ctx.response = None;
        self.shared
            .metrics
            .upstream_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let peer = peer_for(&backend, cfg, routed.stream);
        Ok(Box::new(peer))
    }

    /// Runs before the request header goes to the backend: hop-by-hop headers and the client's
    /// credentials are stripped, `X-Forwarded-For` appended, the backend's key and host set.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(guard), Some(routed)) = (ctx.current.as_ref(), ctx.routed.as_ref()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no backend selected",
            ));
        };
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        crate::headers::upstream_request(req, guard.backend(), client_ip, routed.body.len())
    }

    /// Runs for each request body piece sent upstream. The body was read whole in
    /// `request_filter`; the first call of each attempt sends it (this is the replay on
    /// failover), later calls send nothing.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(routed) = ctx.routed.as_ref() {
            *body = if ctx.body_sent {
                None
            } else {
                Some(routed.body.clone())
            };
            ctx.body_sent = true;
        }
        Ok(())
    }

    /// Runs when the backend's response header arrives, before anything reaches the client.
    /// 502/503/429 become a retryable error while attempts remain (failover); otherwise the
    /// header is cleaned and the body handling for this response is set up.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let Some(backend) = ctx.current.as_ref().map(|g| g.backend().clone()) else {
            return Ok(());
        };
        if let Some(t) = ctx.attempt_started {
            backend.record_latency(t.elapsed());
        }
        let content_type = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        // Only streams come this way (`buffered` takes the rest): a 2xx answer must be SSE;
        // an HTML page or a binary body is a broken backend. Nothing reached the client yet,
        // so it is a 502 that counts against the backend and is retried elsewhere while
        // attempts remain.
        let expected = "text/event-stream";
        if (200..300).contains(&status)
            && ctx.routed.is_some()
            && !content_type
                .as_deref()
                .is_some_and(|c| c.starts_with(expected))
        {
            let got = content_type.clone().unwrap_or_else(|| "none".into());
            let mut e = Error::explain(
                ErrorType::HTTPStatus(502),
                format!(
                    "backend {} answered {status} with content-type {got}",
                    backend.name()
                ),
            );
            e.esource = ErrorSource::Upstream;
            self.attempt_failed(ctx, &e);
            ctx.failure = Some(ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "backend '{}' answered with content-type `{got}` instead of `{expected}`",
                    backend.name()
                ),
                None,
                Some("upstream_bad_response"),
            ));
            let another = ctx
                .routed
                .as_ref()
                .is_some_and(|r| r.route.has_untried(&ctx.tried));
            let retry = another && self.may_retry(session, ctx, &e);
            e.set_retry(retry);
            return Err(e);
        }
        let retry_status = matches!(status, 429 | 502 | 503);
        if retry_status {
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                format!("backend {} answered {status}", backend.name()),
            );
            e.esource = ErrorSource::Upstream;
            if status != 429 {
                self.attempt_failed(ctx, &e);
            } else {
                ctx.failure = Some(classify(&e, Some(backend.name())));
            }
            let another = ctx
                .routed
                .as_ref()
                .is_some_and(|r| r.route.has_untried(&ctx.tried));
            if another && self.may_retry(session, ctx, &e) {
                e.set_retry(true);
                return Err(e);
            }
        } else if status >= 500 {
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "backend error");
            e.esource = ErrorSource::Upstream;
            self.attempt_failed(ctx, &e);
        } else if status >= 300 {
            // A 2xx counts as a success only once its body ended well (`response_body_filter`):
            // a stream cut short must keep counting towards ejection.
            backend.health.on_request_success();
        }
        crate::headers::downstream_response(resp);
        let sse = content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let rewriter = ctx.routed.as_ref().and_then(|r| {
            if status >= 300 {
                return None;
            }
            rewrite::for_response(
                backend.model_type,
                content_type.as_deref(),
                &RewriteOptions::from_request(&r.body, r.stream, r.chat, r.separate_thinking),
            )
        });
        if rewriter.is_some() {
            resp.remove_header("content-length");
        }
        resp.insert_header("x-gpt-oss-lb-backend", backend.name())?;
        ctx.response = Some(ResponseState::new(status, sse, rewriter));
        Ok(())
    }

    /// Runs for each response body chunk before it goes to the client: rewriting, and ending
    /// a stream that closed without `[DONE]` with an error event.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(r) = ctx.response.as_mut() {
            if r.on_body(body, end) {
                self.shared
                    .metrics
                    .streams_broken
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let (Some(g), Some(snap)) = (ctx.current.as_ref(), ctx.snap.as_ref()) {
                    g.backend().record_error();
                    g.backend().health.on_request_failure(
                        &snap.config.health_check,
                        "stream ended before [DONE]",
                    );
                }
            } else if end && r.status < 300 && !r.terminated {
                if let Some(g) = ctx.current.as_ref() {
                    g.backend().health.on_request_success();
                }
            }
        }
        Ok(None)
    }

    /// Runs when connecting to the backend failed. Marks the error retryable (another backend
    /// is tried with the body replayed) while attempts remain.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.attempt_failed(ctx, &e);
        let retry = self.may_retry(session, ctx, &e);
        e.set_retry(retry);
        e
    }

    /// Runs when an established attempt failed. Retry only before any response byte reached
    /// the client; the default policy (idempotent methods only) does not apply: the body is
    /// buffered and completions are safe to resend before a response started.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        // Pingora marks errors on a reused upstream connection `ReusedOnly`; `retry()` panics
        // until that is decided (a SIGKILLed backend's pooled connections hit this).
        e.retry.decide_reuse(client_reused);
        let retry_requested = e.retry();
        if !matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            self.attempt_failed(ctx, &e);
        }
        let retry = self.may_retry(session, ctx, &e)
            && (retry_requested || !matches!(e.etype(), ErrorType::HTTPStatus(_)));
        e.set_retry(retry);
        e
    }

    /// Runs when the request failed for good. Before the response started: an OpenAI error
    /// JSON with the right status. After a stream started: an error event and `[DONE]`.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let backend = ctx.current.as_ref().map(|g| g.backend().name().to_string());
        let err = ctx
            .failure
            .take()
            .unwrap_or_else(|| classify(e, backend.as_deref()));
        if session.response_written().is_some() {
            let status = session.response_written().map_or(0, |h| h.status.as_u16());
            // A stream that ended with an error event and `[DONE]` (the request body was read
            // whole before proxying) leaves the client connection usable; closing it would
            // race the client's next request on that keep-alive connection.
            let mut ended_cleanly = false;
            if ctx
                .response
                .as_ref()
                .is_some_and(|r| r.terminated && r.done_seen())
            {
                ended_cleanly = session.finish_body().await.is_ok();
            } else if let Some(frames) = ctx.response.as_mut().and_then(|r| r.termination(&err)) {
                self.shared
                    .metrics
                    .streams_broken
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match session.write_response_body(Some(frames), true).await {
                    Ok(()) => ended_cleanly = session.finish_body().await.is_ok(),
                    Err(we) => {
                        tracing::debug!(error = %we, "client gone before the stream's error event")
                    }
                }
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: ended_cleanly,
            };
        }
        if *e.esource() == ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            )
        {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let status = err.status;
        if let Err(we) = write_reply(session, Reply::error(&err)).await {
            tracing::debug!(error = %we, "could not send the error response");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Runs last, once per request: metrics and the access log line (no secrets, no bodies).
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |h| h.status.as_u16());
        let proxied = ctx.routed.is_some();
        let secs = proxied.then(|| ctx.started.elapsed().as_secs_f64());
        self.shared
            .metrics
            .record_request(ctx.endpoint, status, secs);
        let backend = ctx.current.as_ref().map(|g| g.backend().name().to_string());
        ctx.current = None;
        if proxied {
            tracing::info!(
                endpoint = ctx.endpoint,
                status,
                model = ctx.routed.as_ref().map(|r| r.model.as_str()),
                backend = backend.as_deref(),
                attempts = ctx.attempt,
                ms = ctx.started.elapsed().as_millis() as u64,
                error = e.map(|e| e.etype().as_str().to_string()),
                "request"
            );
        }
    }
}
