//! From a rendered prompt to a running generation: admission, then the backend.

use std::sync::Arc;
use std::time::Instant;

use gpt_oss_runtimes::{GenerateRequest, SamplingParams};
use tokio_util::sync::CancellationToken;

use crate::codec;
use crate::error::ApiError;
use crate::generation::{DeltaParser, GenerationParts};
use crate::queue::AdmitError;
use crate::state::{AppState, LoadedModel};
use crate::stop::StopMatcher;

/// A validated, rendered request ready to be queued.
pub struct Submission {
    pub prompt: Vec<u32>,
    /// The request field the prompt came from (`messages` or `prompt`), named when it is
    /// too long.
    pub prompt_param: &'static str,
    pub sampling: SamplingParams,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// One parser per choice: `n` of them for `n` independent sequences.
    pub parsers: Vec<Box<dyn DeltaParser>>,
    pub arrived: Instant,
    /// The grammar the output must follow, if any.
    pub constraint: Option<gpt_oss_runtimes::constraint::Constraint>,
}

/// Waits for a slot (FIFO; 429 when the waiting line is full), then starts one generation
/// per parser (the `n` choices, each with its own sampler and grammar state; with a `seed`,
/// choice `i` samples with `seed + i`), as one group so the backend can prefill the prompt
/// once for all of them. The returned parts share the slot.
pub async fn admit_and_start(
    state: &Arc<AppState>,
    model: &LoadedModel,
    sub: Submission,
) -> Result<Vec<GenerationParts>, ApiError> {
    let caps = model.backend.capabilities();
    let prompt_tokens = u32::try_from(sub.prompt.len()).unwrap_or(u32::MAX);
    if prompt_tokens >= caps.context_length {
        return Err(ApiError::ContextLengthExceeded {
            param: sub.prompt_param,
            tokens: sub.prompt.len(),
            exact: true,
            context_length: caps.context_length,
        });
    }
    let room = caps.context_length - prompt_tokens;
    // Without a limit from the request, the server's default, raised to `min_tokens`.
    let min_tokens = sub.sampling.min_tokens;
    let max_new_tokens = sub
        .max_tokens
        .unwrap_or(state.config.default_max_tokens.max(min_tokens))
        .min(room);

    let permit = state.admission.acquire().await.map_err(|e| match e {
        AdmitError::QueueFull { waiting } => ApiError::QueueFull {
            waiting,
            retry_after_secs: state.config.retry_after_secs,
        },
        AdmitError::Closed => ApiError::Unavailable("the server is shutting down".to_string()),
    })?;

    let permit = Arc::new(permit);
    let stop_token_ids = codec::stop_token_ids(caps);
    let mut requests = Vec::with_capacity(sub.parsers.len());
    let mut cancels = Vec::with_capacity(sub.parsers.len());
    for i in 0..sub.parsers.len() {
        let cancel = CancellationToken::new();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(
            request_id,
            prompt_tokens,
            max_new_tokens,
            choice = i,
            "generation admitted"
        );
        let mut sampling = sub.sampling.clone();
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
        let request = GenerateRequest {
            request_id,
            prompt: sub.prompt.clone(),
            sampling,
            stop_token_ids: stop_token_ids.clone(),
            max_new_tokens,
            cancel: cancel.clone(),
            constraint: sub.constraint.clone(),
        };
        requests.push(request);
        cancels.push(cancel);
    }
    // One group: a backend that can share the prompt's prefill does it once for all choices.
    let streams = model.backend.generate_group(requests).await?;
    let mut all = Vec::with_capacity(streams.len());
    for ((tokens, parser), cancel) in streams.into_iter().zip(sub.parsers).zip(cancels) {
        all.push(GenerationParts {
            tokens,
            parser,
            stop: StopMatcher::new(sub.stop.clone()),
            min_tokens,
            permit: Arc::clone(&permit),
            cancel: cancel.drop_guard(),
            metrics: Arc::clone(&state.metrics),
            arrived: sub.arrived,
            prompt_tokens,
        });
    }
    Ok(all)
}
