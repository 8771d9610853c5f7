//! `POST /v1/chat/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures::stream::{self, Stream, StreamExt};
use openai_types::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatDelta, ChunkChoice,
    FinishReason, Usage,
};

use crate::codec;
use crate::error::ApiError;
use crate::generation::{self, GenEvent};
use crate::infer::{self, Input};
use crate::logprobs;
use crate::sse;
use crate::state::AppState;
use crate::validate::{self, ValidChat};
use harmony::openai::{apply_delta, ParsedResponse, SeedContext};
use harmony::Tokenizer;
use serde_json::Value;

const ENDPOINT: &str = "chat_completions";

pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrived = Instant::now();
    let result = serve(&state, &headers, body, arrived).await;
    crate::error::counted(&state.metrics, ENDPOINT, result)
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
        .run(move || validate::chat(validate::parse_body(&bytes)?, &served))
        .await?;
    let valid = Arc::new(valid);
    let started = infer::start(state, Input::Chat(Arc::clone(&valid)), arrived).await?;
    let meta = Meta {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: openai_types::unix_now(),
        model: state.config.model_name.clone(),
        fingerprint: started.fingerprint,
        tokenizer: started.tokenizer,
    };
    if valid.stream {
        Ok(stream_response(meta, valid, started.events).into_response())
    } else {
        let completion = collect(meta, &valid, started.events).await?;
        Ok(Json(completion).into_response())
    }
}

/// What every chunk or response of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    tokenizer: Tokenizer,
}

/// The message the client ends up with, from the deltas it was sent.
fn message(valid: &ValidChat, response: &ParsedResponse) -> AssistantMessage {
    let seed = valid
        .separate_thinking
        .then(|| SeedContext::from_request(&valid.render));
    response.to_message(seed.as_ref())
}

/// One choice while its events arrive.
#[derive(Default)]
struct ChoiceState {
    acc: ParsedResponse,
    logprobs: Vec<Value>,
    finish: Option<(FinishReason, Usage)>,
}

async fn collect(
    meta: Meta,
    valid: &ValidChat,
    events: impl Stream<Item = (u32, GenEvent)>,
) -> Result<ChatCompletion, ApiError> {
    let mut choices: Vec<ChoiceState> = (0..valid.n).map(|_| ChoiceState::default()).collect();
    let mut events = std::pin::pin!(events);
    while let Some((i, ev)) = events.next().await {
        let Some(c) = choices.get_mut(i as usize) else {
            continue;
        };
        match ev {
            GenEvent::Delta(d) => apply_delta(&mut c.acc, &d),
            GenEvent::Logprobs(lps) => c.logprobs.extend(
                lps.iter()
                    .map(|lp| logprobs::chat_entry(&meta.tokenizer, lp)),
            ),
            GenEvent::Done {
                finish_reason,
                usage,
            } => c.finish = Some((finish_reason, usage)),
            GenEvent::Failed(e) => return Err(e),
        }
    }
    let mut usages = Vec::with_capacity(choices.len());
    let mut out = Vec::with_capacity(choices.len());
    for (i, c) in choices.into_iter().enumerate() {
        let (finish_reason, usage) = c.finish.ok_or_else(|| {
            ApiError::Internal("the generation ended without a finish event".to_string())
        })?;
        usages.push(usage);
        out.push(ChatChoice {
            index: i as u32,
            message: message(valid, &c.acc),
            finish_reason: Some(finish_reason),
            logprobs: valid
                .sampling
                .logprobs
                .map(|_| logprobs::chat_logprobs(c.logprobs)),
        });
    }
    Ok(ChatCompletion {
        id: meta.id,
        object: "chat.completion".to_string(),
        created: meta.created,
        model: meta.model,
        choices: out,
        usage: Some(generation::total_usage(&usages)),
        system_fingerprint: Some(meta.fingerprint),
    })
}

fn chunk(
    meta: &Meta,
    index: u32,
    delta: ChatDelta,
    finish: Option<FinishReason>,
    logprobs: Option<Value>,
) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: meta.id.clone(),
        object: "chat.completion.chunk".to_string(),
        created: meta.created,
        model: meta.model.clone(),
        choices: vec![ChunkChoice {
            index,
            delta,
            finish_reason: finish,
            logprobs,
        }],
        usage: None,
        system_fingerprint: Some(meta.fingerprint.clone()),
    }
}

fn stream_response(
    meta: Meta,
    valid: Arc<ValidChat>,
    events: impl Stream<Item = (u32, GenEvent)> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static> {
    let include_usage = valid.include_usage;
    let firsts: Vec<Event> = (0..valid.n)
        .map(|i| {
            let first = chunk(
                &meta,
                i,
                ChatDelta {
                    role: Some("assistant".to_string()),
                    content: Some(String::new()),
                    ..ChatDelta::default()
                },
                None,
                None,
            );
            sse::chunk_event(&first, include_usage)
        })
        .collect();
    let head = stream::iter(firsts);
    // The seed's `thinking` / `parsed` need the whole output: accumulate alongside.
    let mut acc: Vec<ParsedResponse> = (0..valid.n).map(|_| ParsedResponse::default()).collect();
    let mut usages = Vec::new();
    let n = valid.n as usize;
    let body = events.flat_map(move |(i, ev)| {
        let out: Vec<Event> = match ev {
            GenEvent::Delta(d) => {
                if valid.separate_thinking {
                    if let Some(a) = acc.get_mut(i as usize) {
                        apply_delta(a, &d);
                    }
                }
                vec![sse::chunk_event(
                    &chunk(&meta, i, d, None, None),
                    include_usage,
                )]
            }
            GenEvent::Logprobs(lps) => {
                let content = lps
                    .iter()
                    .map(|lp| logprobs::chat_entry(&meta.tokenizer, lp))
                    .collect();
                let c = chunk(
                    &meta,
                    i,
                    ChatDelta::default(),
                    None,
                    Some(logprobs::chat_logprobs(content)),
                );
                vec![sse::chunk_event(&c, include_usage)]
            }
            GenEvent::Done {
                finish_reason,
                usage,
            } => {
                let mut last = ChatDelta::default();
                if valid.separate_thinking {
                    if let Some(a) = acc.get(i as usize) {
                        let (t, p) = codec::seed_fields(&valid, a);
                        last.thinking = Some(t);
                        last.parsed = Some(p);
                    }
                }
                let mut v = vec![sse::chunk_event(
                    &chunk(&meta, i, last, Some(finish_reason), None),
                    include_usage,
                )];
                usages.push(usage);
                if include_usage && usages.len() == n {
                    let mut u = chunk(&meta, 0, ChatDelta::default(), None, None);
                    u.choices.clear();
                    u.usage = Some(generation::total_usage(&usages));
                    v.push(sse::json_event(&u));
                }
                v
            }
            GenEvent::Failed(e) => vec![sse::error_event(&e)],
        };
        stream::iter(out.into_iter().map(Ok))
    });
    let done = stream::once(async { Ok(sse::done_event()) });
    Sse::new(head.map(Ok).chain(body).chain(done)).keep_alive(KeepAlive::default())
}
