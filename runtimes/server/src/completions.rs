//! `POST /v1/completions`: a raw prompt in, raw text out, for clients that render
//! harmony themselves. Special tokens in a text prompt are encoded as special
//! tokens, and appear as literal text in the output.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures::stream::{self, StreamExt};
use openai_types::{Completion, CompletionChoice, FinishReason, Usage};

use crate::codec;
use crate::error::ApiError;
use crate::generation::{self, GenEvent};
use crate::sse;
use crate::state::AppState;
use crate::submit::{self, Submission};
use crate::validate::{self, ValidPrompt};

const ENDPOINT: &str = "completions";

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

fn completion(
    id: &str,
    created: u64,
    model: &str,
    text: String,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
) -> Completion {
    Completion {
        id: id.to_string(),
        object: "text_completion".to_string(),
        created,
        model: model.to_string(),
        choices: vec![CompletionChoice {
            text,
            index: 0,
            logprobs: None,
            finish_reason: finish,
        }],
        usage,
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
    let valid = validate::completion(req, &state.config.model_name)?;
    let model = state.ready_model()?;
    let vocab = model.backend.capabilities().vocab_size;
    let prompt = match &valid.prompt {
        ValidPrompt::Text(t) => codec::encode_prompt(&model.tokenizer, t)?,
        ValidPrompt::Tokens(ids) => {
            if let Some((i, bad)) = ids.iter().enumerate().find(|(_, id)| **id >= vocab) {
                return Err(ApiError::field(
                    format!("prompt[{i}]"),
                    format!("token id {bad} is outside the vocabulary of {vocab} tokens"),
                ));
            }
            ids.clone()
        }
    };
    let echo = valid.echo.then(|| model.tokenizer.decode(&prompt));
    let submission = Submission {
        prompt,
        sampling: valid.sampling.clone(),
        max_tokens: valid.max_tokens,
        stop: valid.stop.clone(),
        parser: codec::text_parser(&model.tokenizer),
        arrived,
        constraint: None,
    };
    let parts = submit::admit_and_start(state, &model, submission).await?;
    let events = generation::run(parts);
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = openai_types::unix_now();
    let model_name = state.config.model_name.clone();

    if valid.stream {
        let include_usage = valid.include_usage;
        let head = echo.map(|text| {
            Ok::<_, std::convert::Infallible>(sse::json_event(&completion(
                &id,
                created,
                &model_name,
                text,
                None,
                None,
            )))
        });
        let body = events.flat_map(move |ev| {
            let out = match ev {
                GenEvent::Delta(d) => match d.content {
                    Some(text) => vec![sse::json_event(&completion(
                        &id,
                        created,
                        &model_name,
                        text,
                        None,
                        None,
                    ))],
                    None => vec![],
                },
                GenEvent::Done {
                    finish_reason,
                    usage,
                } => {
                    let mut v = vec![sse::json_event(&completion(
                        &id,
                        created,
                        &model_name,
                        String::new(),
                        Some(finish_reason),
                        None,
                    ))];
                    if include_usage {
                        let mut c =
                            completion(&id, created, &model_name, String::new(), None, Some(usage));
                        c.choices.clear();
                        v.push(sse::json_event(&c));
                    }
                    v
                }
                GenEvent::Failed(e) => vec![sse::error_event(&e)],
            };
            stream::iter(out.into_iter().map(Ok))
        });
        let done = stream::once(async { Ok(sse::done_event()) });
        let all = stream::iter(head).chain(body).chain(done);
        return Ok(Sse::new(all)
            .keep_alive(KeepAlive::default())
            .into_response());
    }

    let mut text = echo.unwrap_or_default();
    let mut finish = None;
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            GenEvent::Delta(d) => {
                if let Some(c) = d.content {
                    text.push_str(&c);
                }
            }
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
    Ok(Json(completion(
        &id,
        created,
        &state.config.model_name,
        text,
        Some(finish_reason),
        Some(usage),
    ))
    .into_response())
}
