//! `POST /v1/completions`: a raw prompt in, raw text out, for clients that render
//! harmony themselves. Special tokens in a text prompt are encoded as special
//! tokens, and appear as literal text in the output.
//!
//! `response_format` (`json_object`, `json_schema`) constrains the whole text to that JSON:
//! a raw prompt has no harmony channels to keep free, and the `<|return|>` that ends a
//! constrained text is left out of it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures::stream::{self, StreamExt};
use openai_types::{Completion, CompletionChoice, FinishReason, Usage};
use serde_json::Value;

use crate::error::ApiError;
use crate::generation::{self, GenEvent};
use crate::infer::{self, Input};
use crate::logprobs::CompletionLogprobs;
use crate::sse;
use crate::state::AppState;
use crate::validate;

const ENDPOINT: &str = "completions";

pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrived = Instant::now();
    let result = serve(&state, &headers, body, arrived).await;
    crate::error::counted(&state.metrics, ENDPOINT, result)
}

/// What every chunk or response of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

fn completion(
    meta: &Meta,
    index: u32,
    text: String,
    finish: Option<FinishReason>,
    logprobs: Option<Value>,
) -> Completion {
    Completion {
        id: meta.id.clone(),
        object: "text_completion".to_string(),
        created: meta.created,
        model: meta.model.clone(),
        choices: vec![CompletionChoice {
            text,
            index,
            logprobs,
            finish_reason: finish,
        }],
        usage: None,
        system_fingerprint: Some(meta.fingerprint.clone()),
    }
}

/// One choice while its events arrive.
#[derive(Default)]
struct ChoiceState {
    text: String,
    logprobs: CompletionLogprobs,
    finish: Option<(FinishReason, Usage)>,
}

async fn serve(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let bytes = crate::body::read_limited(headers, body, state.config.max_body_bytes).await?;
    let served = state.config.model_name.clone();
    // Parsing and validating a body of megabytes takes CPU time: off the async threads.
    let valid = state
        .cpu
        .run(move || validate::completion(validate::parse_body(&bytes)?, &served))
        .await?;
    let valid = Arc::new(valid);
    let started = infer::start(state, Input::Completion(Arc::clone(&valid)), arrived).await?;
    let events = started.events;
    let echo = started.echo;
    let meta = Meta {
        id: format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        created: openai_types::unix_now(),
        model: state.config.model_name.clone(),
        fingerprint: started.fingerprint,
    };
    let tokenizer = started.tokenizer;
    let want_logprobs = valid.sampling.logprobs.is_some();
    let n = valid.n as usize;

    if valid.stream {
        let include_usage = valid.include_usage;
        let heads: Vec<_> = match &echo {
            Some(text) => (0..valid.n)
                .map(|i| {
                    Ok::<_, std::convert::Infallible>(sse::chunk_event(
                        &completion(&meta, i, text.clone(), None, None),
                        include_usage,
                    ))
                })
                .collect(),
            None => Vec::new(),
        };
        // Where the next text starts, per choice, for `text_offset`.
        let mut offsets = vec![echo.as_ref().map_or(0, String::len); n];
        let mut usages = Vec::new();
        let body = events.flat_map(move |(i, ev)| {
            let out = match ev {
                GenEvent::Delta(d) => match d.content {
                    Some(text) => {
                        if let Some(o) = offsets.get_mut(i as usize) {
                            *o += text.len();
                        }
                        vec![sse::chunk_event(
                            &completion(&meta, i, text, None, None),
                            include_usage,
                        )]
                    }
                    None => vec![],
                },
                GenEvent::Logprobs(lps) => {
                    let mut l = CompletionLogprobs::default();
                    let offset = offsets.get(i as usize).copied().unwrap_or(0);
                    // The text of these tokens was sent just before; their offsets are its start.
                    let len: usize = lps
                        .iter()
                        .map(|lp| tokenizer.token_bytes_or_replacement(lp.token).len())
                        .sum();
                    l.push(&tokenizer, &lps, offset.saturating_sub(len));
                    vec![sse::chunk_event(
                        &completion(&meta, i, String::new(), None, Some(l.take())),
                        include_usage,
                    )]
                }
                GenEvent::Done {
                    finish_reason,
                    usage,
                } => {
                    let mut v = vec![sse::chunk_event(
                        &completion(&meta, i, String::new(), Some(finish_reason), None),
                        include_usage,
                    )];
                    usages.push(usage);
                    if include_usage && usages.len() == n {
                        let mut c = completion(&meta, 0, String::new(), None, None);
                        c.choices.clear();
                        c.usage = Some(generation::total_usage(&usages));
                        v.push(sse::json_event(&c));
                    }
                    v
                }
                GenEvent::Failed(e) => vec![sse::error_event(&e)],
            };
            stream::iter(out.into_iter().map(Ok))
        });
        let done = stream::once(async { Ok(sse::done_event()) });
        let all = stream::iter(heads).chain(body).chain(done);
        return Ok(Sse::new(all)
            .keep_alive(KeepAlive::default())
            .into_response());
    }

    let mut choices: Vec<ChoiceState> = (0..n)
        .map(|_| ChoiceState {
            text: echo.clone().unwrap_or_default(),
            ..ChoiceState::default()
        })
        .collect();
    let mut events = std::pin::pin!(events);
    while let Some((i, ev)) = events.next().await {
        let Some(c) = choices.get_mut(i as usize) else {
            continue;
        };
        match ev {
            GenEvent::Delta(d) => {
                if let Some(t) = d.content {
                    c.text.push_str(&t);
                }
            }
            GenEvent::Logprobs(lps) => {
                let len: usize = lps
                    .iter()
                    .map(|lp| tokenizer.token_bytes_or_replacement(lp.token).len())
                    .sum();
                c.logprobs
                    .push(&tokenizer, &lps, c.text.len().saturating_sub(len));
            }
            GenEvent::Done {
                finish_reason,
                usage,
            } => c.finish = Some((finish_reason, usage)),
            GenEvent::Failed(e) => return Err(e),
        }
    }
    let mut usages = Vec::with_capacity(n);
    let mut out = completion(&meta, 0, String::new(), None, None);
    out.choices.clear();
    for (i, mut c) in choices.into_iter().enumerate() {
        let (finish_reason, usage) = c.finish.ok_or_else(|| {
            ApiError::Internal("the generation ended without a finish event".to_string())
        })?;
        usages.push(usage);
        out.choices.push(CompletionChoice {
            text: c.text,
            index: i as u32,
            logprobs: want_logprobs.then(|| c.logprobs.take()),
            finish_reason: Some(finish_reason),
        });
    }
    out.usage = Some(generation::total_usage(&usages));
    Ok(Json(out).into_response())
}
