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
use crate::sse;
use crate::state::AppState;
use crate::submit::{self, Submission};
use crate::validate::{self, ValidChat};
use harmony::openai::{apply_delta, ParsedResponse, SeedContext};

const ENDPOINT: &str = "chat_completions";

pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrived = Instant::now();
    match serve(&state, &headers, body, arrived).await {
        Ok(resp) => {
            state.metrics.request(ENDPOINT, resp.status().as_u16());
            resp
        }
        Err(e) => {
            state.metrics.request(ENDPOINT, e.status().as_u16());
            state.metrics.error(e.metric_label());
            e.into_response()
        }
    }
}

async fn serve(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let bytes = crate::body::read_limited(headers, body, state.config.max_body_bytes).await?;
    let req = validate::parse_body(&bytes)?;
    let valid = validate::chat(req, &state.config.model_name)?;
    let model = state.ready_model()?;
    let raw = state.config.raw_output;
    let prompt = codec::render_chat(&model.tokenizer, &valid)?;
    let prefill = codec::prefill(&model.tokenizer, &valid.tool_plan)?;
    let parser = codec::chat_parser(&model.tokenizer, raw, &prefill);
    let constraint = crate::grammar::for_chat(&model.grammars, &model.tokenizer, &valid).await?;
    let mut full_prompt = prompt;
    full_prompt.extend_from_slice(&prefill);
    let submission = Submission {
        prompt: full_prompt,
        sampling: valid.sampling.clone(),
        max_tokens: valid.max_tokens,
        stop: valid.stop.clone(),
        parser,
        arrived,
        constraint,
    };
    let parts = submit::admit_and_start(state, &model, submission).await?;
    let events = generation::run(parts);
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = openai_types::unix_now();
    let model_name = state.config.model_name.clone();
    if valid.stream {
        Ok(stream_response(id, created, model_name, valid, events).into_response())
    } else {
        let completion = collect(id, created, model_name, &valid, events).await?;
        Ok(Json(completion).into_response())
    }
}

/// The message the client ends up with, from the deltas it was sent.
fn message(valid: &ValidChat, response: &ParsedResponse) -> AssistantMessage {
    let seed = valid
        .separate_thinking
        .then(|| SeedContext::from_request(&valid.render));
    response.to_message(seed.as_ref())
}

async fn collect(
    id: String,
    created: u64,
    model: String,
    valid: &ValidChat,
    events: impl Stream<Item = GenEvent>,
) -> Result<ChatCompletion, ApiError> {
    let mut acc = ParsedResponse::default();
    let mut finish: Option<(FinishReason, Usage)> = None;
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            GenEvent::Delta(d) => apply_delta(&mut acc, &d),
            GenEvent::Done {
                finish_reason,
                usage,
            } => finish = Some((finish_reason, usage)),
            GenEvent::Failed(e) => return Err(e),
        }
    }
    let (finish_reason, usage) = finish.ok_or_else(|| {
        ApiError::Internal("the generation ended without a finish event".to_string())
    })?;
    Ok(ChatCompletion {
        id,
        object: "chat.completion".to_string(),
        created,
        model,
        choices: vec![ChatChoice {
            index: 0,
            message: message(valid, &acc),
            finish_reason: Some(finish_reason),
            logprobs: None,
        }],
        usage: Some(usage),
        system_fingerprint: None,
    })
}

fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: ChatDelta,
    finish: Option<FinishReason>,
) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: id.to_string(),
        object: "chat.completion.chunk".to_string(),
        created,
        model: model.to_string(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish,
            logprobs: None,
        }],
        usage: None,
        system_fingerprint: None,
    }
}

fn stream_response(
    id: String,
    created: u64,
    model: String,
    valid: ValidChat,
    events: impl Stream<Item = GenEvent> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static> {
    let first = chunk(
        &id,
        created,
        &model,
        ChatDelta {
            role: Some("assistant".to_string()),
            content: Some(String::new()),
            ..ChatDelta::default()
        },
        None,
    );
    let head = stream::once(async move { sse::json_event(&first) });
    // The seed's `thinking` / `parsed` need the whole output: accumulate alongside.
    let mut acc = ParsedResponse::default();
    let body = events.flat_map(move |ev| {
        let out: Vec<Event> = match ev {
            GenEvent::Delta(d) => {
                if valid.separate_thinking {
                    apply_delta(&mut acc, &d);
                }
                vec![sse::json_event(&chunk(&id, created, &model, d, None))]
            }
            GenEvent::Done {
                finish_reason,
                usage,
            } => {
                let mut last = ChatDelta::default();
                if valid.separate_thinking {
                    let (t, p) = codec::seed_fields(&valid, &acc);
                    last.thinking = Some(t);
                    last.parsed = Some(p);
                }
                let mut v = vec![sse::json_event(&chunk(
                    &id,
                    created,
                    &model,
                    last,
                    Some(finish_reason),
                ))];
                if valid.include_usage {
                    let mut u = chunk(&id, created, &model, ChatDelta::default(), None);
                    u.choices.clear();
                    u.usage = Some(usage);
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
