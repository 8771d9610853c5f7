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
    pub sampling: SamplingParams,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub parser: Box<dyn DeltaParser>,
    pub arrived: Instant,
    /// The grammar the output must follow, if any.
    pub constraint: Option<gpt_oss_runtimes::constraint::Constraint>,
}

/// Waits for a slot (FIFO; 429 when the waiting line is full), then starts the
/// generation. The returned parts own the slot.
pub async fn admit_and_start(
    state: &Arc<AppState>,
    model: &LoadedModel,
    sub: Submission,
) -> Result<GenerationParts, ApiError> {
    let caps = model.backend.capabilities();
    let prompt_tokens = u32::try_from(sub.prompt.len()).unwrap_or(u32::MAX);
    if prompt_tokens >= caps.context_length {
        return Err(ApiError::field(
            "messages",
            format!(
                "the prompt has {prompt_tokens} tokens; this model's context length is {}",
                caps.context_length
            ),
        ));
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

    let cancel = CancellationToken::new();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    tracing::info!(
        request_id,
        prompt_tokens,
        max_new_tokens,
        "generation admitted"
    );
    let request = GenerateRequest {
        request_id,
        prompt: sub.prompt,
        sampling: sub.sampling,
        stop_token_ids: codec::stop_token_ids(caps),
        max_new_tokens,
        cancel: cancel.clone(),
        constraint: sub.constraint,
    };
    let tokens = model.backend.generate(request).await?;
    Ok(GenerationParts {
        tokens,
        parser: sub.parser,
        stop: StopMatcher::new(sub.stop),
        min_tokens,
        permit,
        cancel: cancel.drop_guard(),
        metrics: Arc::clone(&state.metrics),
        arrived: sub.arrived,
        prompt_tokens,
    })
}
