//! The one entry point of generation, as text-generation-inference's `Infer`: every handler
//! (chat, completions, responses) validates its request into an [`Input`] and calls [`start`],
//! which renders or tokenizes the prompt, checks it against the model (context length,
//! vocabulary), picks the output parser and the grammar, waits for admission and starts the
//! generation. The handlers only shape requests and responses.

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{BoxStream, StreamExt};
use gpt_oss_runtimes::{GenerateRequest, SamplingParams};
use harmony::openai::ToolGate;
use harmony::Tokenizer;
use tokio_util::sync::CancellationToken;

use crate::codec;
use crate::error::ApiError;
use crate::generation::{self, DeltaParser, GenEvent, GenerationParts};
use crate::queue::AdmitError;
use crate::state::{AppState, LoadedModel};
use crate::stop::StopMatcher;
use crate::validate::{ValidChat, ValidCompletion, ValidPrompt};

/// A validated request, ready to generate from.
#[derive(Clone)]
pub enum Input {
    /// A conversation: rendered as harmony, its output parsed into OpenAI fields (or kept raw
    /// with `--raw-output`).
    Chat(Arc<ValidChat>),
    /// A raw prompt (text or token ids) of `/v1/completions`; its output is text.
    Completion(Arc<ValidCompletion>),
}

/// A started generation: the events of its `n` choices and what the handlers need to shape
/// them.
pub struct Started {
    /// `(choice index, event)` in the order they happen; dropping the stream cancels every
    /// choice and frees the admission slot.
    pub events: BoxStream<'static, (u32, GenEvent)>,
    pub tokenizer: Tokenizer,
    /// `system_fingerprint`: the model name and its capabilities, hashed.
    pub fingerprint: String,
    /// Tokens of the prompt (the prefill of a forced tool call included).
    pub prompt_tokens: u32,
    /// The prompt decoded back to text, when a completion asked for `echo`.
    pub echo: Option<String>,
}

/// What [`start`] prepares off the async threads.
struct Prepared {
    model: Arc<LoadedModel>,
    prompt: Vec<u32>,
    /// Tokens written after the prompt to force a tool call (part of the prompt).
    prefill: Vec<u32>,
    echo: Option<String>,
}

/// Starts generating for `input`, which arrived at `arrived` (for time to first token).
///
/// Errors: 503 `model_not_loaded` while the model loads or after it failed; 400
/// `context_length_exceeded` naming `messages` or `prompt` when the prompt leaves no room to
/// generate; 400 on a token id outside the vocabulary (`prompt[i]`) or a conversation harmony
/// cannot render; 429 `queue_full` when the waiting line is full; 503 `server_shutting_down`.
pub async fn start(
    state: &Arc<AppState>,
    input: Input,
    arrived: Instant,
) -> Result<Started, ApiError> {
    let model = state.ready_model()?;
    let prepared = {
        let input = input.clone();
        // Rendering and tokenizing take CPU time in proportion to the body: on the bounded
        // pool, off the async threads.
        state.cpu.run(move || prepare(model, &input)).await?
    };
    let Prepared {
        model,
        mut prompt,
        prefill,
        echo,
    } = prepared;
    let caps = model.backend.capabilities();
    let tokenizer = &model.tokenizer;
    let raw = state.config.raw_output;
    let (parsers, constraint, sampling, max_tokens, stop, prompt_param, n): (
        Vec<Box<dyn DeltaParser>>,
        _,
        SamplingParams,
        _,
        Vec<String>,
        _,
        _,
    ) = match &input {
        Input::Chat(valid) => {
            // Tool calls only to the functions the request offered and `tool_choice` allows
            // (the validated request keeps exactly those in `tools`).
            let parsers = (0..valid.n)
                .map(|_| {
                    codec::chat_parser(
                        tokenizer,
                        raw,
                        ToolGate::from_request(&valid.render),
                        &prefill,
                        &valid.stop,
                        valid.sampling.min_tokens,
                    )
                })
                .collect();
            let constraint = crate::grammar::for_chat(&model.grammars, tokenizer, valid).await?;
            // Raw output matches stop strings on the answer inside its parser; the
            // generation's matcher looks at all of `content`, the answer only when parsed.
            let stop = if raw { Vec::new() } else { valid.stop.clone() };
            (
                parsers,
                constraint,
                valid.sampling.clone(),
                valid.max_tokens,
                stop,
                "messages",
                valid.n,
            )
        }
        Input::Completion(valid) => {
            let constraint = crate::grammar::for_completion(
                &model.grammars,
                tokenizer,
                valid.response_format.as_ref(),
            )
            .await?;
            let parsers = (0..valid.n)
                .map(|_| codec::text_parser(tokenizer, constraint.is_some()))
                .collect();
            (
                parsers,
                constraint,
                valid.sampling.clone(),
                valid.max_tokens,
                valid.stop.clone(),
                "prompt",
                valid.n,
            )
        }
    };
    debug_assert_eq!(parsers.len(), n as usize);
    prompt.extend_from_slice(&prefill);
    // The one context-length check on the whole prompt (a chat's renderer already refused, as
    // early as it could tell, a conversation that could not fit).
    let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
    if prompt_tokens >= caps.context_length {
        return Err(ApiError::ContextLengthExceeded {
            param: prompt_param,
            tokens: prompt.len(),
            exact: true,
            context_length: caps.context_length,
        });
    }
    let room = caps.context_length - prompt_tokens;
    // Without a limit from the request, the server's default, raised to `min_tokens`.
    let min_tokens = sampling.min_tokens;
    let max_new_tokens = max_tokens
        .unwrap_or(state.config.default_max_tokens.max(min_tokens))
        .min(room);

    let permit = state.admission.acquire().await.map_err(|e| match e {
        AdmitError::QueueFull { waiting } => ApiError::QueueFull {
            waiting,
            retry_after_secs: state.config.retry_after_secs,
        },
        AdmitError::Closed => ApiError::ShuttingDown,
    })?;
    let permit = Arc::new(permit);
    let stop_token_ids = codec::stop_token_ids(caps);
    let mut requests = Vec::with_capacity(parsers.len());
    let mut cancels = Vec::with_capacity(parsers.len());
    for i in 0..parsers.len() {
        let cancel = CancellationToken::new();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(
            request_id,
            prompt_tokens,
            max_new_tokens,
            choice = i,
            "generation admitted"
        );
        let mut choice_sampling = sampling.clone();
        // With a `seed`, choice `i` samples with `seed + i`.
        choice_sampling.seed = choice_sampling.seed.map(|s| s.wrapping_add(i as u64));
        requests.push(GenerateRequest {
            request_id,
            prompt: prompt.clone(),
            sampling: choice_sampling,
            stop_token_ids: stop_token_ids.clone(),
            max_new_tokens,
            cancel: cancel.clone(),
            constraint: constraint.clone(),
        });
        cancels.push(cancel);
    }
    // One group: a backend that can share the prompt's prefill does it once for all choices.
    let streams = model.backend.generate_group(requests).await?;
    let mut parts = Vec::with_capacity(streams.len());
    for ((tokens, parser), cancel) in streams.into_iter().zip(parsers).zip(cancels) {
        parts.push(GenerationParts {
            tokens,
            parser,
            stop: StopMatcher::new(stop.clone()),
            min_tokens,
            permit: Arc::clone(&permit),
            cancel: cancel.drop_guard(),
            metrics: Arc::clone(&state.metrics),
            arrived,
            prompt_tokens,
        });
    }
    Ok(Started {
        events: generation::run_all(parts).boxed(),
        tokenizer: model.tokenizer.clone(),
        fingerprint: crate::info::system_fingerprint(&state.config.model_name, caps),
        prompt_tokens,
        echo,
    })
}

/// Renders or tokenizes the prompt and checks its tokens against the vocabulary (on the CPU
/// pool).
fn prepare(model: Arc<LoadedModel>, input: &Input) -> Result<Prepared, ApiError> {
    let caps = model.backend.capabilities();
    let (prompt, prefill, echo) = match input {
        Input::Chat(valid) => {
            let prompt = codec::render_chat(&model.tokenizer, valid, caps.context_length)?;
            let prefill = codec::prefill(&model.tokenizer, valid)?;
            (prompt, prefill, None)
        }
        Input::Completion(valid) => {
            let prompt = match &valid.prompt {
                ValidPrompt::Text(t) => {
                    codec::encode_prompt(&model.tokenizer, t, caps.context_length)?
                }
                ValidPrompt::Tokens(ids) => {
                    let vocab = caps.vocab_size;
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
            (prompt, Vec::new(), echo)
        }
    };
    Ok(Prepared {
        model,
        prompt,
        prefill,
        echo,
    })
}
