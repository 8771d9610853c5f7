//! Non-streaming completions. The backend's whole answer is read, checked and (for raw
//! harmony backends) rewritten before anything reaches the client, so that a broken answer
//! (not JSON under `application/json`, an HTML page, a body cut short) is never relayed as a
//! success: it counts against the backend and is retried on another one, or becomes a clear
//! 502. Pingora's proxy path sends the response header as soon as it arrives, before the body
//! can be checked; streams keep using it (their frames must flow as they come).
//!
//! The exchange itself uses Pingora's connector and its upstream connection pool, with the
//! same peers, timeouts, headers and passive health as the streaming path.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openai_types::ErrorKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use crate::backend::Backend;
use crate::dispatch::Routed;
use crate::error::{write_reply, ApiError, Reply};
use crate::proxy::{classify, Ctx, Lb};
use crate::rewrite::{self, RewriteOptions};

/// The largest answer accepted from a backend for one non-streaming completion.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// A backend's complete answer.
struct Answer {
    header: ResponseHeader,
    body: Bytes,
    /// Time to the response header.
    latency: Duration,
}

/// What one attempt's answer means for the client.
enum Verdict {
    /// Send it (rewritten when needed).
    Deliver(Reply),
    /// The backend failed; try another one if allowed, else answer this error.
    Failed(ApiError),
    /// 429/502/503: try another one if allowed, else relay the backend's own answer.
    Busy(Reply),
}

/// Forward a routed non-streaming request and write the answer. Runs from `request_filter`.
pub(crate) async fn forward(lb: &Lb, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
    let (Some(snap), Some(routed)) = (ctx.snap.clone(), ctx.routed.take()) else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "no routed request",
        ));
    };
    let cfg = &snap.config;
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let request = session.req_header().clone();
    let reply = loop {
        if ctx.attempt > 0 {
            lb.shared
                .metrics
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(lb.backoff(&cfg.retries, ctx.attempt)).await;
        }
        let Some(backend) = routed.route.select(&ctx.tried, routed.hash_key.as_deref()) else {
            break Reply::error(&lb.final_failure(ctx, &routed.model));
        };
        ctx.attempt += 1;
        ctx.tried.push(backend.name().to_string());
        ctx.current = Some(backend.start_request());
        lb.shared
            .metrics
            .upstream_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let verdict = match exchange(lb, &backend, &request, client_ip, &routed, cfg).await {
            Err(e) => {
                lb.attempt_failed(ctx, &e);
                Verdict::Failed(
                    ctx.failure
                        .take()
                        .unwrap_or_else(|| classify(&e, Some(backend.name()))),
                )
            }
            Ok(answer) => {
                backend.record_latency(answer.latency);
                judge(lb, ctx, &backend, &routed, answer)
            }
        };
        let more = ctx.attempt < cfg.retries.max_attempts && routed.route.has_untried(&ctx.tried);
        match verdict {
            Verdict::Deliver(r) => break r,
            Verdict::Failed(e) if more => ctx.failure = Some(e),
            Verdict::Failed(e) => break Reply::error(&e),
            Verdict::Busy(_) if more => {}
            Verdict::Busy(r) => break r,
        }
    };
    ctx.routed = Some(routed);
    write_reply(session, reply).await
}

/// Decide what an answer means: its status, content type and body.
fn judge(lb: &Lb, ctx: &mut Ctx, backend: &Backend, routed: &Routed, answer: Answer) -> Verdict {
    let status = answer.header.status.as_u16();
    let content_type = answer
        .header
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let relay = |body: Bytes| relay(&answer.header, content_type.as_deref(), backend, body);
    let failed = |lb: &Lb, ctx: &mut Ctx, why: String, code: &str| {
        let mut e = Error::explain(ErrorType::HTTPStatus(502), why.clone());
        e.esource = ErrorSource::Upstream;
        lb.attempt_failed(ctx, &e);
        Verdict::Failed(ApiError::new(ErrorKind::BadGateway, why, None, Some(code)))
    };

    if matches!(status, 429 | 502 | 503) {
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            format!("backend {} answered {status}", backend.name()),
        );
        e.esource = ErrorSource::Upstream;
        if status == 429 {
            ctx.failure = Some(classify(&e, Some(backend.name())));
        } else {
            lb.attempt_failed(ctx, &e);
        }
        return Verdict::Busy(relay(answer.body));
    }
    if status >= 500 {
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "backend error");
        e.esource = ErrorSource::Upstream;
        lb.attempt_failed(ctx, &e);
        return Verdict::Deliver(relay(answer.body));
    }
    if !(200..300).contains(&status) {
        if status >= 300 {
            backend.health.on_request_success();
        }
        return Verdict::Deliver(relay(answer.body));
    }
    // A 2xx completion must be a JSON document.
    if !content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"))
    {
        let got = content_type.unwrap_or_else(|| "none".into());
        return failed(
            lb,
            ctx,
            format!(
                "backend '{}' answered with content-type `{got}` instead of `application/json`",
                backend.name()
            ),
            "upstream_bad_response",
        );
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&answer.body) {
        return failed(
            lb,
            ctx,
            format!(
                "backend '{}' answered {status} with a body that is not valid JSON ({e})",
                backend.name()
            ),
            "upstream_invalid_json",
        );
    }
    backend.health.on_request_success();
    let body = match rewrite::for_response(
        backend.model_type,
        content_type.as_deref(),
        &RewriteOptions::from_request(&routed.body, false, routed.chat, routed.separate_thinking),
    ) {
        Some(mut r) => {
            let mut out = BytesMut::from(&r.chunk(&answer.body)[..]);
            out.extend_from_slice(&r.finish());
            out.freeze()
        }
        None => answer.body,
    };
    Verdict::Deliver(relay(body))
}

/// The backend's answer as the client gets it: its status, content type and end-to-end
/// headers, and the backend's name.
fn relay(
    header: &ResponseHeader,
    content_type: Option<&str>,
    backend: &Backend,
    body: Bytes,
) -> Reply {
    let mut h = header.clone();
    crate::headers::downstream_response(&mut h);
    let mut headers: Vec<(&'static str, String)> = Vec::new();
    for (name, value) in h.headers.iter() {
        let keep = !matches!(
            name.as_str(),
            "content-type"
                | "content-length"
                | "transfer-encoding"
                | "cache-control"
                | "date"
                | "server"
        );
        if let (true, Some(n), Ok(v)) = (keep, static_name(name.as_str()), value.to_str()) {
            headers.push((n, v.to_string()));
        }
    }
    headers.push(("x-gpt-oss-lb-backend", backend.name().to_string()));
    Reply {
        status: header.status.as_u16(),
        content_type: match content_type {
            Some(c) if c.starts_with("application/json") => "application/json",
            Some(c) if c.starts_with("text/plain") => "text/plain; charset=utf-8",
            Some(c) if c.starts_with("text/html") => "text/html; charset=utf-8",
            _ => "application/octet-stream",
        },
        body,
        headers,
    }
}

/// Backend headers worth relaying (`Reply` holds static names).
fn static_name(name: &str) -> Option<&'static str> {
    const RELAYED: &[&str] = &[
        "x-request-id",
        "openai-processing-ms",
        "openai-model",
        "openai-version",
        "retry-after",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ];
    RELAYED.iter().copied().find(|n| *n == name)
}

/// One request to one backend, its answer read whole. A pooled connection that the backend
/// closed while idle is replaced by a fresh one without counting against the backend.
async fn exchange(
    lb: &Lb,
    backend: &Backend,
    request: &RequestHeader,
    client_ip: Option<std::net::IpAddr>,
    routed: &Routed,
    cfg: &config::Config,
) -> pingora::Result<Answer> {
    let peer = crate::proxy::peer_for(backend, cfg, false);
    let mut req = request.clone();
    crate::headers::upstream_request(&mut req, backend, client_ip, routed.body.len())?;
    // The answer must be complete within `first_byte` (generation) plus `idle` (the body
    // after its header): each read also waits at most the peer's read timeout, and a backend
    // that drips bytes slowly still ends here.
    let deadline = cfg.timeouts.first_byte + cfg.timeouts.idle;
    match tokio::time::timeout(deadline, exchange_once(lb, &peer, &req, &routed.body)).await {
        Ok(r) => r,
        Err(_) => {
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                format!("no complete answer within {}ms", deadline.as_millis()),
            );
            e.esource = ErrorSource::Upstream;
            Err(e)
        }
    }
}

async fn exchange_once(
    lb: &Lb,
    peer: &pingora::upstreams::peer::HttpPeer,
    req: &RequestHeader,
    body: &Bytes,
) -> pingora::Result<Answer> {
    let mut tries = 0;
    loop {
        tries += 1;
        let (mut s, reused) = lb.connector.get_http_session(peer).await?;
        s.set_read_timeout(peer.options.read_timeout);
        s.set_write_timeout(peer.options.write_timeout);
        let started = Instant::now();
        let sent = async {
            s.write_request_header(Box::new(req.clone())).await?;
            s.write_request_body(body.clone(), true).await?;
            s.finish_request_body().await?;
            s.read_response_header().await
        }
        .await;
        if let Err(e) = sent {
            // An idle pooled connection the backend had closed fails at once with a closed
            // or reset socket: try a fresh one. A timeout is the backend's, not the socket's.
            let stale = matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
            if reused && stale && tries < 3 {
                continue;
            }
            return Err(e);
        }
        let latency = started.elapsed();
        let Some(header) = s.response_header().cloned() else {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "no response header",
            ));
        };
        let mut answer = BytesMut::new();
        while let Some(chunk) = s.read_response_body().await? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(502),
                    format!("backend answer over {MAX_ANSWER_BYTES} bytes"),
                );
                e.esource = ErrorSource::Upstream;
                return Err(e);
            }
            answer.extend_from_slice(&chunk);
        }
        lb.connector
            .release_http_session(s, peer, peer.options.idle_timeout)
            .await;
        return Ok(Answer {
            header,
            body: answer.freeze(),
            latency,
        });
    }
}
