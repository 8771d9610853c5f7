//! The `ProxyHttp` implementation. Each phase is thin and delegates: `dispatch` (local
//! endpoints, validation, routing), `state::Route::select` (policies), `headers` (request and
//! response rewriting), `stream`/`rewrite` (bodies), `health` (passive checks), `metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use openai_types::ErrorKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::backend::{Backend, InflightGuard};
use crate::dispatch::{self, Outcome as Dispatch};
use crate::error::{write_reply, ApiError, Reply};
use crate::failover::{self, Facts, Outcome, Verdict};
use crate::rewrite::{self, RewriteOptions};
use crate::routing::Routed;
use crate::state::{Shared, Snapshot};
use crate::stream::ResponseState;

pub struct Lb {
    pub shared: Arc<Shared>,
}

impl Lb {
    pub fn new(shared: Arc<Shared>) -> Lb {
        Lb { shared }
    }
}

/// Per-request state: what the request is, and its current attempt.
pub struct Ctx {
    request: RequestCtx,
    /// The current attempt; replaced whole by each `upstream_peer`.
    attempt: Option<Attempt>,
}

/// The request's part of the context, kept across attempts.
struct RequestCtx {
    started: Instant,
    endpoint: &'static str,
    /// The snapshot this request was admitted under; kept for its whole life.
    snap: Option<Arc<Snapshot>>,
    routed: Option<Box<Routed>>,
    /// Attempts made so far.
    attempts: u32,
    tried: Vec<String>,
    /// The error to report if the request fails for good.
    failure: Option<ApiError>,
    /// The backend's `Retry-After`, relayed with that error.
    retry_after: Option<String>,
    /// The request's run through its route's plugins (none: the route has none).
    filters: Option<Box<crate::plugins::Stream>>,
    /// A plugin's local response given while proxying (on the response header, or on the body
    /// while the header was held): written instead of the backend's answer.
    local_reply: Option<Reply>,
}

/// One attempt at one backend.
struct Attempt {
    /// The backend, holding one in-flight slot until the attempt is replaced or the request
    /// ends.
    guard: InflightGuard,
    started: Instant,
    body_sent: bool,
    response: Option<ResponseState>,
}

impl Attempt {
    fn backend(&self) -> &Arc<Backend> {
        self.guard.backend()
    }
}

/// Whether a response byte reached the client: a header other than an informational one
/// (`100 Continue` is written before the body is read).
fn response_started(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|h| !h.status.is_informational())
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

/// The client's error for an attempt that ended this way at backend `who`.
fn attempt_error(outcome: &Outcome, e: &Error, who: &str) -> ApiError {
    match outcome {
        Outcome::ConnectFailed if e.etype() == &ErrorType::ConnectTimedout => ApiError::new(
            ErrorKind::Timeout,
            format!("connecting to backend '{who}' timed out"),
            None,
            Some("upstream_connect_timeout"),
        ),
        Outcome::ConnectFailed => ApiError::new(
            ErrorKind::BadGateway,
            format!("could not connect to backend '{who}'"),
            None,
            Some("upstream_connect_error"),
        ),
        Outcome::TimedOut => ApiError::new(
            ErrorKind::Timeout,
            format!("backend '{who}' did not answer in time"),
            None,
            Some("upstream_timeout"),
        ),
        Outcome::ResetAfterDelivery => ApiError::new(
            ErrorKind::BadGateway,
            format!(
                "backend '{who}' closed the connection before answering ({})",
                e.etype().as_str()
            ),
            None,
            Some("upstream_error"),
        ),
        Outcome::BadContentType => ApiError::new(
            ErrorKind::BadGateway,
            format!("backend '{who}' answered with an unexpected content type"),
            None,
            Some("upstream_bad_response"),
        ),
        Outcome::Status { status, .. } => {
            let kind = match status {
                429 => ErrorKind::RateLimit,
                503 => ErrorKind::Unavailable,
                504 => ErrorKind::Timeout,
                _ => ErrorKind::BadGateway,
            };
            let mut err = ApiError::new(
                kind,
                format!("backend '{who}' answered {status}"),
                None,
                Some("upstream_error"),
            );
            err.status = *status;
            err
        }
    }
}

/// What a Pingora error during an attempt means for failover; `None` for the client's side.
fn outcome_of(e: &Error) -> Option<Outcome> {
    if *e.esource() == ErrorSource::Downstream {
        return None;
    }
    Some(match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::ConnectProxyFailure
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert => Outcome::ConnectFailed,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Outcome::TimedOut,
        _ => Outcome::ResetAfterDelivery,
    })
}

impl Lb {
    /// The built-in harmony filter on one response body chunk: checking and rewriting, and
    /// ending a stream that closed without `[DONE]` with an error event. An answer that cannot
    /// be delivered (not JSON, an SSE event over the limit) counts against the backend and
    /// ends the response with the error.
    fn harmony_body_filter(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(attempt) = ctx.attempt.as_mut() else {
            return Ok(());
        };
        let backend = attempt.backend().clone();
        let Some(r) = attempt.response.as_mut() else {
            return Ok(());
        };
        match r.on_body(body, end) {
            Err(err) => {
                let why = err.body.error.message.clone();
                ctx.request.failure = Some(err);
                self.count_failure(ctx, &backend, &why);
                let mut e = Error::explain(ErrorType::HTTPStatus(502), why);
                e.esource = ErrorSource::Upstream;
                e.set_retry(false);
                return Err(e);
            }
            Ok(true) => {
                self.shared
                    .metrics
                    .streams_broken
                    .fetch_add(1, Ordering::Relaxed);
                self.count_failure(ctx, &backend, "stream ended before [DONE]");
            }
            Ok(false) if end && r.status < 300 && !r.terminated => {
                backend.health.on_request_success();
            }
            Ok(false) => {}
        }
        Ok(())
    }

    /// The error that ends a request a plugin stopped: its local response is written instead
    /// of the backend's answer while no response byte went out (`header_sent` false); after
    /// that, the stream ends with the plugin's error.
    fn stop(&self, ctx: &mut Ctx, stop: crate::plugins::Stop, header_sent: bool) -> Box<Error> {
        let status = match (&stop, header_sent) {
            (crate::plugins::Stop::Local(reply), false) => reply.status,
            (crate::plugins::Stop::Failed(err), _) => err.status,
            (crate::plugins::Stop::Local(_), true) => 500,
        };
        match stop {
            crate::plugins::Stop::Local(reply) if !header_sent => {
                ctx.request.local_reply = Some(reply)
            }
            crate::plugins::Stop::Local(_) => {
                ctx.request.failure = Some(ApiError::new(
                    ErrorKind::Server,
                    "a plugin answered locally after the response had started",
                    None,
                    Some("plugin_failed"),
                ))
            }
            crate::plugins::Stop::Failed(err) => ctx.request.failure = Some(err),
        }
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "stopped by a plugin");
        e.set_retry(false);
        e
    }

    /// The facts of a verdict for the current attempt.
    fn facts(&self, session: &Session, ctx: &Ctx) -> Facts {
        let r = &ctx.request;
        let cfg = r.snap.as_ref().map(|s| &s.config.retries);
        Facts {
            attempts: r.attempts,
            max_attempts: cfg.map_or(1, |c| c.max_attempts),
            another_backend: r
                .routed
                .as_ref()
                .is_some_and(|routed| routed.route.has_untried(&r.tried)),
            response_started: response_started(session),
            replay_after_reset: cfg.is_none_or(|c| c.replay_after_reset),
        }
    }

    /// Record how the current attempt went: outlier detection, metrics, `Retry-After`, and
    /// the error the client gets if no later attempt succeeds.
    fn record(&self, ctx: &mut Ctx, outcome: &Outcome, e: &Error) {
        let Some(attempt) = ctx.attempt.as_ref() else {
            return;
        };
        let b = attempt.backend().clone();
        if let Outcome::Status {
            status: 429,
            retry_after: Some(d),
        } = outcome
        {
            b.hold_off(*d);
        }
        if failover::counts_against_backend(outcome) {
            self.count_failure(ctx, &b, e.etype().as_str());
        }
        ctx.request.failure = Some(attempt_error(outcome, e, b.name()));
    }

    fn count_failure(&self, ctx: &Ctx, b: &Backend, why: &str) {
        b.record_error();
        self.shared.metrics.record_upstream_failure(b.name());
        if let Some(snap) = &ctx.request.snap {
            if let Some(status) = b.health.on_request_failure(&snap.config.health_check, why) {
                tracing::warn!(
                    backend = b.name(),
                    ?status,
                    error = why,
                    ejection_ms = b
                        .health
                        .ejection_time(&snap.config.health_check)
                        .as_millis() as u64,
                    "backend ejected (outlier detection)"
                );
            }
        }
    }

    /// Decide an attempt's outcome: record it, and mark `e` retryable or not.
    fn judge(&self, session: &Session, ctx: &mut Ctx, outcome: &Outcome, e: &mut Error) -> Verdict {
        self.record(ctx, outcome, e);
        let v = failover::verdict(outcome, &self.facts(session, ctx));
        e.set_retry(v == Verdict::Retry);
        v
    }
}

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request: RequestCtx {
                started: Instant::now(),
                endpoint: "other",
                snap: None,
                routed: None,
                attempts: 0,
                tried: Vec::new(),
                failure: None,
                retry_after: None,
                filters: None,
                local_reply: None,
            },
            attempt: None,
        }
    }

    /// Runs first for every request. Answers local endpoints (health, status, models, metrics,
    /// admin) and invalid requests itself (returns `Ok(true)`); for a valid request to proxy
    /// (streamed or not) it stores the routed request in the context and returns `Ok(false)`:
    /// every proxied request then takes the same phases and the same attempt loop.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Pipelined requests (several on one keep-alive connection before the first answer)
        // are answered in order, one after the other (RFC 9112 section 9.3.2).
        session.as_downstream_mut().set_pipelining_enabled(true);
        let snap = self.shared.load();
        ctx.request.snap = Some(snap.clone());
        if self.shared.identity.is_loop(&session.req_header().headers) {
            let mut err = ApiError::new(
                ErrorKind::BadGateway,
                "loop detected: this request already passed through this load balancer (a backend points back at it)",
                None,
                Some("loop_detected"),
            );
            err.status = 508;
            write_reply(session, Reply::error(&err)).await?;
            return Ok(true);
        }
        let endpoint = dispatch::Endpoint::of(session.req_header());
        ctx.request.endpoint = endpoint.name();
        match dispatch::handle(&self.shared, &snap, session, endpoint).await {
            Dispatch::Reply(reply) => {
                write_reply(session, reply).await?;
                Ok(true)
            }
            Dispatch::Proxy(routed, filters) => {
                ctx.request.routed = Some(routed);
                ctx.request.filters = filters;
                Ok(false)
            }
        }
    }

    /// Runs once per attempt. Picks a healthy backend not tried yet with the route's policy
    /// (after a backoff on retries) and returns its peer; an error here ends the request.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let r = &mut ctx.request;
        let (Some(snap), Some(routed)) = (r.snap.clone(), r.routed.as_ref()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no routed request",
            ));
        };
        let cfg = &snap.config;
        if r.attempts > 0 {
            self.shared.metrics.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(failover::backoff(&cfg.retries, r.attempts)).await;
        }
        let hints = crate::routing::policy::Hints {
            key: routed.hash_key.as_deref(),
            prefix: &routed.prefix,
            prompt_bytes: routed.prompt_bytes,
        };
        let Some(backend) = routed.route.select(&r.tried, &hints) else {
            let err = failover::final_failure(r.failure.take(), r.attempts, &routed.model);
            let status = err.status;
            r.failure = Some(err);
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "no backend left to try",
            ));
        };
        r.attempts += 1;
        r.tried.push(backend.name().to_string());
        if let Some(f) = r.filters.as_mut() {
            let info = f.info_mut();
            info.backend = Some(backend.name().to_string());
            info.upstream = Some(backend.addr);
        }
        let peer = peer_for(&backend, cfg, routed.stream);
        ctx.attempt = Some(Attempt {
            guard: backend.start_request(),
            started: Instant::now(),
            body_sent: false,
            response: None,
        });
        self.shared
            .metrics
            .upstream_attempts
            .fetch_add(1, Ordering::Relaxed);
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
        let (Some(attempt), Some(routed)) = (ctx.attempt.as_ref(), ctx.request.routed.as_ref())
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no backend selected",
            ));
        };
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        crate::headers::upstream_request(req, attempt.backend(), client_ip, routed.body.len())?;
        crate::headers::append_to_list(
            req,
            http::header::VIA,
            self.shared.identity.via_entry.clone(),
        )?;
        Ok(())
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
        if let (Some(routed), Some(attempt)) = (ctx.request.routed.as_ref(), ctx.attempt.as_mut()) {
            *body = if attempt.body_sent {
                None
            } else {
                Some(routed.body.clone())
            };
            attempt.body_sent = true;
        }
        Ok(())
    }

    /// Runs when the backend's response header arrives, before anything reaches the client.
    /// The status and content type are judged (`failover::verdict`): a retryable answer
    /// (429, 5xx, a 2xx of the wrong content type) becomes a retryable error while another
    /// backend and attempts remain; otherwise the header is cleaned and the body handling
    /// (checking, rewriting) is set up.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let Some(backend) = ctx.attempt.as_ref().map(|a| a.backend().clone()) else {
            return Ok(());
        };
        if resp.status.is_informational() {
            return Ok(());
        }
        if let Some(a) = ctx.attempt.as_ref() {
            backend.record_latency(a.started.elapsed());
        }
        let content_type = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let stream = ctx.request.routed.as_ref().is_some_and(|r| r.stream);
        let checked = ctx
            .request
            .routed
            .as_ref()
            .is_some_and(|r| r.completion || r.responses.is_some());
        let expected = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let outcome = if (200..300).contains(&status)
            && checked
            && !content_type
                .as_deref()
                .is_some_and(|c| c.starts_with(expected))
        {
            Outcome::BadContentType
        } else {
            Outcome::Status {
                status,
                retry_after: failover::parse_retry_after(
                    resp.headers
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()),
                ),
            }
        };
        let mut e = Error::explain(
            ErrorType::HTTPStatus(if outcome == Outcome::BadContentType {
                502
            } else {
                status
            }),
            format!("backend {} answered {status}", backend.name()),
        );
        e.esource = ErrorSource::Upstream;
        let verdict = self.judge(session, ctx, &outcome, &mut e);
        if outcome == Outcome::BadContentType {
            let got = content_type.clone().unwrap_or_else(|| "none".into());
            ctx.request.failure = Some(ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "backend '{}' answered with content-type `{got}` instead of `{expected}`",
                    backend.name()
                ),
                None,
                Some("upstream_bad_response"),
            ));
        }
        match verdict {
            Verdict::Retry | Verdict::Fail => return Err(e),
            Verdict::Deliver => ctx.request.failure = None,
        }
        if (300..500).contains(&status) && status != 429 {
            // The backend answered this request: it works.
            backend.health.on_request_success();
        }
        crate::headers::downstream_response(resp);
        let sse = content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let max_event_bytes = ctx
            .request
            .snap
            .as_ref()
            .map_or(rewrite::DEFAULT_MAX_EVENT_BYTES, |s| {
                s.config.max_event_bytes
            });
        if status >= 400
            && !content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json"))
        {
            // Every error the client gets is OpenAI JSON, the backend's included: an error
            // answer that is not JSON (an empty 431, an HTML 502 page) is answered by the LB
            // with the backend's status (and its `Retry-After`).
            ctx.request.failure = Some(attempt_error(
                &Outcome::Status {
                    status,
                    retry_after: None,
                },
                &e,
                backend.name(),
            ));
            ctx.request.retry_after = resp
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            e.set_retry(false);
            return Err(e);
        }
        let rewriter = ctx.request.routed.as_ref().and_then(|r| {
            if status >= 300 {
                return None;
            }
            if let Some(call) = &r.responses {
                return Some(Box::new(crate::responses::ResponsesRewriter::new(
                    call.clone(),
                    self.shared.conversations.clone(),
                    backend.model_type == config::ModelType::GptOss,
                    sse,
                    max_event_bytes,
                )) as Box<dyn rewrite::BodyRewriter>);
            }
            if !r.completion {
                return None;
            }
            let mut opts =
                RewriteOptions::from_request(r.body.clone(), r.stream, r.chat, r.separate_thinking);
            opts.max_event_bytes = max_event_bytes;
            rewrite::for_response(backend.model_type, content_type.as_deref(), &opts)
        });
        if rewriter.as_ref().is_some_and(|r| r.may_change_body()) {
            resp.remove_header(&http::header::CONTENT_LENGTH);
        }
        resp.insert_header("x-gpt-oss-lb-backend", backend.name())?;
        if let Some(a) = ctx.attempt.as_mut() {
            a.response = Some(ResponseState::new(status, sse, rewriter));
        }
        // The plugins, after the built-in harmony filter set up the body's rewriting.
        if let Some(f) = ctx.request.filters.as_mut() {
            if let Err(stop) = f.on_response_headers(resp, false) {
                return Err(self.stop(ctx, stop, false));
            }
        }
        Ok(())
    }

    /// Pingora patch (`proxy/vendor/pingora-proxy/PATCHED.md`): a plugin that paused the
    /// response header gets it held back until a body callback continues.
    fn hold_response_header(
        &self,
        header: Box<ResponseHeader>,
        ctx: &mut Ctx,
    ) -> Option<Box<ResponseHeader>> {
        match ctx.request.filters.as_mut() {
            Some(f) if f.holding() => {
                f.hold(header);
                None
            }
            _ => Some(header),
        }
    }

    fn release_response_header(&self, ctx: &mut Ctx) -> Option<Option<Box<ResponseHeader>>> {
        ctx.request.filters.as_mut()?.release()
    }

    /// Runs for each response body chunk before it goes to the client: the built-in harmony
    /// filter (`harmony_body_filter`), then the plugins.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        // the built-in harmony filter first, then the plugins
        self.harmony_body_filter(body, end, ctx)?;
        if let Some(f) = ctx.request.filters.as_mut() {
            let header_sent = !f.holding();
            if let Err(stop) = f.on_response_body(body, end) {
                return Err(self.stop(ctx, stop, header_sent));
            }
        }
        Ok(None)
    }

    /// Runs when connecting to the backend failed: counts against it, and another backend
    /// is tried with the body replayed while the verdict allows.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.judge(session, ctx, &Outcome::ConnectFailed, &mut e);
        e
    }

    /// Runs when an established attempt failed. Errors the phases raised themselves (an
    /// `HTTPStatus` from `upstream_response_filter` or `response_body_filter`) were judged
    /// there; others are timeouts or resets, judged here. The client's side failing is
    /// never retried.
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
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            return e;
        }
        match outcome_of(&e) {
            Some(outcome) => {
                self.judge(session, ctx, &outcome, &mut e);
            }
            None => e.set_retry(false),
        }
        e
    }

    /// Runs when the request failed for good. Before the response started: an OpenAI error
    /// JSON with the right status. After a stream started: an error event and `[DONE]`.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(reply) = ctx.request.local_reply.take() {
            if !response_started(session) {
                let status = reply.status;
                if let Err(we) = write_reply(session, reply).await {
                    tracing::debug!(error = %we, "could not send a plugin's local response");
                }
                return FailToProxy {
                    error_code: status,
                    can_reuse_downstream: false,
                };
            }
        }
        let backend = ctx.attempt.as_ref().map(|a| a.backend().name().to_string());
        let err = ctx.request.failure.take().unwrap_or_else(|| {
            let who = backend.as_deref().unwrap_or("?");
            match outcome_of(e) {
                Some(o) => attempt_error(&o, e, who),
                None => ApiError::new(
                    ErrorKind::BadGateway,
                    format!("the request failed: {}", e.etype().as_str()),
                    None,
                    Some("upstream_error"),
                ),
            }
        });
        if response_started(session) {
            let status = session.response_written().map_or(0, |h| h.status.as_u16());
            // A stream that ended with an error event and `[DONE]` (the request body was read
            // whole before proxying) leaves the client connection usable; closing it would
            // race the client's next request on that keep-alive connection.
            let mut ended_cleanly = false;
            let response = ctx.attempt.as_mut().and_then(|a| a.response.as_mut());
            if let Some(r) = response {
                if r.terminated && r.done_seen() {
                    ended_cleanly = session.finish_body().await.is_ok();
                } else if let Some(frames) = r.termination(&err) {
                    self.shared
                        .metrics
                        .streams_broken
                        .fetch_add(1, Ordering::Relaxed);
                    match session.write_response_body(Some(frames), true).await {
                        Ok(()) => ended_cleanly = session.finish_body().await.is_ok(),
                        Err(we) => {
                            tracing::debug!(error = %we, "client gone before the stream's error event")
                        }
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
        let mut reply = Reply::error(&err);
        if let Some(ra) = ctx.request.retry_after.take() {
            reply = reply.with_header("retry-after", ra);
        }
        if let Err(we) = write_reply(session, reply).await {
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
        if let Some(f) = ctx.request.filters.as_mut() {
            f.on_log(status);
        }
        let r = &ctx.request;
        let proxied = r.routed.is_some();
        let secs = proxied.then(|| r.started.elapsed().as_secs_f64());
        self.shared.metrics.record_request(r.endpoint, status, secs);
        let backend = ctx.attempt.take().map(|a| a.backend().name().to_string());
        if proxied {
            tracing::info!(
                endpoint = r.endpoint,
                status,
                model = r.routed.as_ref().map(|r| r.model.as_str()),
                backend = backend.as_deref(),
                attempts = r.attempts,
                ms = r.started.elapsed().as_millis() as u64,
                error = e.map(|e| e.etype().as_str().to_string()),
                "request"
            );
        }
    }
}
