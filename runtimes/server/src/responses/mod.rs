//! The Responses API: `POST /v1/responses`, `GET /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items` and `DELETE /v1/responses/{id}`, after OpenAI's API
//! reference.
//!
//! A request's items (after those of its `previous_response_id`) become the chat request the
//! harmony renderer takes ([`input`]); it goes through the server's one entry point
//! ([`crate::infer::start`]), and the generation's deltas become output items and stream
//! events (`openai_types::response_output`). Responses are kept in an embedded SQLite database ([`store`]) unless
//! the request says `store: false`; reasoning handed out as `encrypted_content` is sealed with
//! the server's key ([`seal`]).

pub mod input;
pub mod seal;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures::stream::{self, Stream, StreamExt};
use openai_types::{
    FinishReason, IncompleteDetails, Item, ResponseDeleted, ResponseError, ResponseEvent,
    ResponseUsage, ResponsesRequest, StreamEvent, Usage,
};
use tokio::sync::OnceCell;

use crate::error::ApiError;
use crate::generation::GenEvent;
use crate::infer::{self, Input, Started};
use crate::state::AppState;
use crate::validate;
use input::ValidResponses;
use openai_types::response_output::{OutputBuilder, SealReasoning};
use seal::Sealer;
use store::{ResponseStore, Stored};

const ENDPOINT: &str = "responses";

/// Where responses are kept and the key that seals reasoning, opened once.
pub struct Responses {
    /// `None`: in memory, for as long as the server runs.
    path: Option<PathBuf>,
    /// `None`: a key of this process only (sealed reasoning does not survive a restart).
    key_file: Option<PathBuf>,
    opened: OnceCell<(ResponseStore, Sealer)>,
}

impl Responses {
    /// Responses kept in the SQLite file `path` (`None`: in memory) and reasoning sealed with
    /// the key in `key_file` (`None`: a key made for this process). Nothing is opened yet.
    pub fn new(path: Option<PathBuf>, key_file: Option<PathBuf>) -> Responses {
        Responses {
            path,
            key_file,
            opened: OnceCell::new(),
        }
    }

    /// Opens the store and reads (or makes) the key; the server calls it at start-up so that
    /// a path it cannot use stops it at once.
    pub async fn open(&self) -> anyhow::Result<(&ResponseStore, &Sealer)> {
        let (store, sealer) = self
            .opened
            .get_or_try_init(|| async {
                let memory = PathBuf::from(":memory:");
                let store = ResponseStore::open(self.path.as_ref().unwrap_or(&memory)).await?;
                let sealer = match &self.key_file {
                    Some(k) => Sealer::from_key_file(k)?,
                    None => Sealer::ephemeral(),
                };
                Ok::<_, anyhow::Error>((store, sealer))
            })
            .await?;
        Ok((store, sealer))
    }

    async fn get(&self) -> Result<(&ResponseStore, &Sealer), ApiError> {
        self.open()
            .await
            .map_err(|e| ApiError::Internal(format!("the response store cannot be opened: {e}")))
    }
}

/// `POST /v1/responses`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrived = Instant::now();
    let res = serve(&state, &headers, body, arrived).await;
    crate::error::counted(&state.metrics, ENDPOINT, res)
}

/// `GET /v1/responses/{id}`.
pub async fn retrieve(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let res = async {
        let (store, _) = state.responses.get().await?;
        let stored: Stored = store.get(&id).await?.ok_or_else(|| store::not_found(&id))?;
        Ok(Json(stored.response).into_response())
    }
    .await;
    crate::error::counted(&state.metrics, ENDPOINT, res)
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let res = async {
        let (store, _) = state.responses.get().await?;
        if !store.delete(&id).await? {
            return Err(store::not_found(&id));
        }
        Ok(Json(ResponseDeleted {
            id,
            object: "response".to_string(),
            deleted: true,
        })
        .into_response())
    }
    .await;
    crate::error::counted(&state.metrics, ENDPOINT, res)
}

/// `GET /v1/responses/{id}/input_items`: the items the response was given, paged as OpenAI
/// pages lists (`limit` 1 to 100, default 20; `order` `desc` by default; `after`).
pub async fn input_items(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<Query<responses_store::ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let res = async {
        let Query(q) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
        let (store, _) = state.responses.get().await?;
        let stored: Stored = store.get(&id).await?.ok_or_else(|| store::not_found(&id))?;
        let page = responses_store::page(stored.input_items, &q, Item::id)
            .map_err(|e| ApiError::field(e.param, e.message))?;
        Ok(Json(page).into_response())
    }
    .await;
    crate::error::counted(&state.metrics, ENDPOINT, res)
}

/// What one response needs while it is produced.
struct Turn {
    valid: ValidResponses,
    /// The conversation the model saw: the stored one it continues, then this input.
    conversation: Vec<Item>,
    id: String,
    created_at: u64,
    model: String,
    sealer: Option<Arc<dyn SealReasoning>>,
    store: Option<ResponseStore>,
    namespaced: Vec<String>,
}

async fn serve(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let bytes = crate::body::read_limited(headers, body, state.config.max_body_bytes).await?;
    let (store, sealer) = state.responses.get().await?;
    let served = state.config.model_name.clone();
    let valid = {
        let sealer = sealer.clone();
        state
            .cpu
            .run(move || {
                let req: ResponsesRequest = validate::parse_body(&bytes)?;
                input::validate(req, &served, &sealer)
            })
            .await?
    };
    let mut conversation = match &valid.previous_response_id {
        Some(id) => {
            let stored: Stored = store
                .get(id)
                .await?
                .ok_or_else(|| ApiError::PreviousResponseNotFound(id.clone()))?;
            stored.conversation
        }
        None => Vec::new(),
    };
    let first_input = conversation.len();
    conversation.extend(valid.input_items.iter().cloned());
    let valid = Arc::new(valid);
    // With `truncation: auto`, the oldest turns are dropped (from one user message to the
    // next) until the conversation fits.
    let mut skip = 0;
    let started = loop {
        let chat = {
            let valid = Arc::clone(&valid);
            let items = conversation[skip..].to_vec();
            let served = state.config.model_name.clone();
            let first = first_input.saturating_sub(skip);
            state
                .cpu
                .run(move || input::to_chat(&valid, &items, first, &served))
                .await?
        };
        match infer::start(state, Input::Chat(Arc::new(chat)), arrived).await {
            Err(e @ ApiError::ContextLengthExceeded { .. }) if valid.truncation_auto => {
                let next = conversation
                    .iter()
                    .enumerate()
                    .skip(skip + 1)
                    .find(|(_, it)| matches!(it, Item::Message(m) if m.role == "user"))
                    .map(|(i, _)| i);
                match next {
                    Some(n) => skip = n,
                    None => return Err(e),
                }
            }
            other => break other?,
        }
    };
    let valid = Arc::try_unwrap(valid).unwrap_or_else(|a| (*a).clone());
    let namespaced = valid
        .functions
        .iter()
        .map(|t| t.function.name.clone())
        .filter(|n| n.contains('.'))
        .collect();
    let turn = Turn {
        sealer: valid
            .include_encrypted
            .then(|| Arc::new(sealer.clone()) as Arc<dyn SealReasoning>),
        store: valid.store.then(|| store.clone()),
        valid,
        conversation,
        id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
        created_at: openai_types::unix_now(),
        model: state.config.model_name.clone(),
        namespaced,
    };
    if turn.valid.stream {
        Ok(stream_response(turn, started).into_response())
    } else {
        let response = collect(turn, started).await?;
        Ok(Json(response).into_response())
    }
}

/// The response object of `turn` with `status` and `output`.
fn response_object(
    turn: &Turn,
    status: &str,
    output: Vec<Item>,
    usage: Option<ResponseUsage>,
) -> openai_types::Response {
    let v = &turn.valid;
    openai_types::Response {
        id: turn.id.clone(),
        object: "response".to_string(),
        created_at: turn.created_at,
        status: status.to_string(),
        completed_at: (status != "in_progress").then(openai_types::unix_now),
        error: None,
        incomplete_details: None,
        instructions: v.instructions.clone(),
        max_output_tokens: v.max_output_tokens.and_then(|m| u32::try_from(m).ok()),
        model: turn.model.clone(),
        output,
        parallel_tool_calls: v.parallel_tool_calls,
        previous_response_id: v.previous_response_id.clone(),
        reasoning: openai_types::ReasoningConfig {
            effort: Some(
                v.reasoning
                    .effort
                    .unwrap_or(openai_types::ReasoningEffort::Medium),
            ),
            summary: v.reasoning.summary.clone(),
        },
        store: v.store,
        temperature: Some(v.temperature.unwrap_or(1.0)),
        top_p: Some(v.top_p.unwrap_or(1.0)),
        text: openai_types::TextConfig {
            format: Some(
                v.text
                    .format
                    .clone()
                    .unwrap_or(openai_types::TextFormat::Text),
            ),
            verbosity: v.text.verbosity.clone(),
        },
        tool_choice: v.tool_choice.clone(),
        tools: v.tools.clone(),
        truncation: if v.truncation_auto {
            "auto"
        } else {
            "disabled"
        }
        .to_string(),
        usage,
        user: v.user.clone(),
        prompt_cache_key: v.prompt_cache_key.clone(),
        metadata: v.metadata.clone(),
    }
}

/// Status and details of a finished generation.
fn finished(
    turn: &Turn,
    reason: FinishReason,
    usage: &Usage,
    output: Vec<Item>,
) -> openai_types::Response {
    let status = if reason == FinishReason::Length {
        "incomplete"
    } else {
        "completed"
    };
    let reasoning = usage
        .completion_tokens_details
        .as_ref()
        .map_or(0, |d| d.reasoning_tokens);
    let mut r = response_object(
        turn,
        status,
        output,
        Some(ResponseUsage::with_cached(
            usage.prompt_tokens,
            usage.cached_tokens(),
            usage.completion_tokens,
            reasoning,
        )),
    );
    if reason == FinishReason::Length {
        r.incomplete_details = Some(IncompleteDetails {
            reason: "max_output_tokens".to_string(),
        });
    }
    r
}

/// Keeps the finished response when the request asked for it (`store`, the default).
async fn keep(turn: &Turn, response: &openai_types::Response) -> Result<(), ApiError> {
    let Some(store) = &turn.store else {
        return Ok(());
    };
    let mut conversation = turn.conversation.clone();
    conversation.extend(response.output.iter().cloned());
    store
        .put(
            &response.id,
            response.created_at,
            &Stored {
                response: response.clone(),
                input_items: turn.valid.input_items.clone(),
                conversation,
            },
        )
        .await?;
    Ok(())
}

async fn collect(turn: Turn, started: Started) -> Result<openai_types::Response, ApiError> {
    let mut builder = OutputBuilder::new(turn.sealer.clone(), turn.namespaced.clone());
    let mut ignored = Vec::new();
    let mut done = None;
    let mut events = started.events;
    while let Some((_, ev)) = events.next().await {
        match ev {
            GenEvent::Delta(d) => builder.push(&d, &mut ignored),
            GenEvent::Logprobs(_) => {}
            GenEvent::Done {
                finish_reason,
                usage,
            } => done = Some((finish_reason, usage)),
            GenEvent::Failed(e) => return Err(e),
        }
        ignored.clear();
    }
    let (reason, usage) = done.ok_or_else(|| {
        ApiError::Internal("the generation ended without a finish event".to_string())
    })?;
    let status = if reason == FinishReason::Length {
        "incomplete"
    } else {
        "completed"
    };
    let output = builder.finish(status, &mut ignored);
    let response = finished(&turn, reason, &usage, output);
    keep(&turn, &response).await?;
    Ok(response)
}

fn sse_event(seq: &mut u64, event: ResponseEvent) -> Event {
    let name = event.name();
    let e = StreamEvent {
        event,
        sequence_number: *seq,
    };
    *seq += 1;
    match serde_json::to_string(&e) {
        Ok(s) => Event::default().event(name).data(s),
        Err(err) => crate::sse::error_event(&ApiError::Internal(format!(
            "could not serialize an event: {err}"
        ))),
    }
}

/// The stream's state between events.
struct Streaming {
    turn: Turn,
    builder: Option<OutputBuilder>,
    seq: u64,
}

fn stream_response(
    turn: Turn,
    started: Started,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static> {
    let mut s = Streaming {
        builder: Some(OutputBuilder::new(
            turn.sealer.clone(),
            turn.namespaced.clone(),
        )),
        turn,
        seq: 0,
    };
    let created = response_object(&s.turn, "in_progress", Vec::new(), None);
    let head = vec![
        sse_event(
            &mut s.seq,
            ResponseEvent::Created {
                response: Box::new(created.clone()),
            },
        ),
        sse_event(
            &mut s.seq,
            ResponseEvent::InProgress {
                response: Box::new(created),
            },
        ),
    ];
    let body = stream::unfold(
        (s, started.events, false),
        |(mut s, mut events, ended)| async move {
            if ended {
                return None;
            }
            let (_, ev) = match events.next().await {
                Some(e) => e,
                None => {
                    let failed = fail(
                        &mut s,
                        ApiError::Internal("the generation ended without finishing".into()),
                    );
                    return Some((failed, (s, events, true)));
                }
            };
            let mut out = Vec::new();
            let mut end = false;
            match ev {
                GenEvent::Delta(d) => {
                    if let Some(b) = s.builder.as_mut() {
                        b.push(&d, &mut out);
                    }
                }
                GenEvent::Logprobs(_) => {}
                GenEvent::Done {
                    finish_reason,
                    usage,
                } => {
                    let status = if finish_reason == FinishReason::Length {
                        "incomplete"
                    } else {
                        "completed"
                    };
                    let output = s
                        .builder
                        .take()
                        .map(|b| b.finish(status, &mut out))
                        .unwrap_or_default();
                    let response = finished(&s.turn, finish_reason, &usage, output);
                    if let Err(e) = keep(&s.turn, &response).await {
                        tracing::error!(error = %e, "a streamed response could not be stored");
                    }
                    out.push(if status == "incomplete" {
                        ResponseEvent::Incomplete {
                            response: Box::new(response),
                        }
                    } else {
                        ResponseEvent::Completed {
                            response: Box::new(response),
                        }
                    });
                    end = true;
                }
                GenEvent::Failed(e) => {
                    let failed = fail(&mut s, e);
                    return Some((failed, (s, events, true)));
                }
            }
            let events_out: Vec<Event> =
                out.into_iter().map(|e| sse_event(&mut s.seq, e)).collect();
            Some((events_out, (s, events, end)))
        },
    )
    .flat_map(|v| stream::iter(v.into_iter().map(Ok)));
    Sse::new(stream::iter(head.into_iter().map(Ok)).chain(body)).keep_alive(KeepAlive::default())
}

/// `response.failed`, with what was produced so far.
fn fail(s: &mut Streaming, e: ApiError) -> Vec<Event> {
    let mut out = Vec::new();
    let output = s
        .builder
        .take()
        .map(|b| b.finish("incomplete", &mut out))
        .unwrap_or_default();
    let mut response = response_object(&s.turn, "failed", output, None);
    let code = if e.status().is_server_error() {
        "server_error"
    } else {
        "invalid_prompt"
    };
    response.error = Some(ResponseError {
        code: code.to_string(),
        message: e.to_string(),
    });
    out.push(ResponseEvent::Failed {
        response: Box::new(response),
    });
    out.into_iter()
        .map(|ev| sse_event(&mut s.seq, ev))
        .collect()
}
