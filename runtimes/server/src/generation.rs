//! One admitted generation as a stream of [`GenEvent`]s.
//!
//! The stream owns the concurrency [`Permit`], the backend's token stream and a
//! guard that fires the request's cancellation token: dropping the stream (the
//! client went away, or the response finished) frees the slot and stops the engine.
//! Streaming and non-streaming responses consume the same events, so they carry
//! the same text.

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, Stream, StreamExt};
use gpt_oss_runtimes::{StopReason, TokenEvent, TokenStream};
use harmony::openai::StopCause;
use openai_types::{ChatDelta, FinishReason, Usage};
use tokio_util::sync::DropGuard;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::queue::Permit;
use crate::stop::StopMatcher;

/// Turns generated token ids into message deltas.
pub trait DeltaParser: Send {
    /// Feeds one generated token.
    fn push(&mut self, token: u32, out: &mut Vec<ChatDelta>);
    /// The generation ended (`stop_token`: the stop token that ended it, if one did);
    /// emits whatever is still buffered and says why it finished, in OpenAI's words.
    fn finish(
        &mut self,
        cause: StopCause,
        stop_token: Option<u32>,
        out: &mut Vec<ChatDelta>,
    ) -> FinishReason;
    /// Generated tokens that belonged to the analysis channel so far.
    fn reasoning_tokens(&self) -> u32;
    /// True once the parser found a stop string itself (raw chat output matches them on the
    /// answer inside the raw text); the generation then ends with finish `stop`.
    fn stop_matched(&self) -> bool {
        false
    }
}

/// One item of a generation.
#[derive(Debug)]
pub enum GenEvent {
    Delta(ChatDelta),
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
    /// The engine failed; nothing follows.
    Failed(ApiError),
}

/// What a generation needs besides the backend's stream.
pub struct GenerationParts {
    pub tokens: TokenStream,
    pub parser: Box<dyn DeltaParser>,
    /// Applied to `content` deltas.
    pub stop: StopMatcher,
    /// Stop strings are not looked for in the text of the first `min_tokens` tokens (vLLM).
    pub min_tokens: u32,
    pub permit: Permit,
    pub cancel: DropGuard,
    pub metrics: Arc<Metrics>,
    /// When the request arrived, for time to first token.
    pub arrived: Instant,
    pub prompt_tokens: u32,
}

struct Run {
    parts: GenerationParts,
    first_token: Option<Instant>,
    completion_tokens: u32,
    finished: bool,
    scratch: Vec<ChatDelta>,
}

impl Run {
    /// Runs `content` through the stop matcher and drops deltas that became empty.
    fn filter(&mut self, deltas: &mut Vec<GenEvent>) {
        let stops_apply = self.completion_tokens >= self.parts.min_tokens;
        for mut d in self.scratch.drain(..) {
            if stops_apply && self.parts.stop.is_active() {
                if let Some(c) = d.content.take() {
                    if !self.parts.stop.matched() {
                        let kept = self.parts.stop.push(&c);
                        if !kept.is_empty() {
                            d.content = Some(kept);
                        }
                    }
                }
            }
            if !d.is_empty() {
                deltas.push(GenEvent::Delta(d));
            }
        }
    }

    fn done(&mut self, cause: StopCause, stop_token: Option<u32>, out: &mut Vec<GenEvent>) {
        let reason = self
            .parts
            .parser
            .finish(cause, stop_token, &mut self.scratch);
        self.filter(out);
        let rest = self.parts.stop.finish();
        if !rest.is_empty() {
            out.push(GenEvent::Delta(ChatDelta {
                content: Some(rest),
                ..ChatDelta::default()
            }));
        }
        let decode = self
            .first_token
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        self.parts
            .metrics
            .generation(self.parts.prompt_tokens, self.completion_tokens, decode);
        out.push(GenEvent::Done {
            finish_reason: reason,
            usage: Usage::new(
                self.parts.prompt_tokens,
                self.completion_tokens,
                self.parts.parser.reasoning_tokens(),
            ),
        });
        self.finished = true;
    }

    async fn next_events(&mut self) -> Option<Vec<GenEvent>> {
        if self.finished {
            return None;
        }
        let mut out = Vec::new();
        while out.is_empty() {
            match self.parts.tokens.next().await {
                Some(TokenEvent::Token(id)) => {
                    if self.first_token.is_none() {
                        let now = Instant::now();
                        self.parts.metrics.time_to_first_token(
                            now.duration_since(self.parts.arrived).as_secs_f64(),
                        );
                        self.first_token = Some(now);
                    }
                    self.completion_tokens += 1;
                    self.parts.parser.push(id, &mut self.scratch);
                    self.filter(&mut out);
                    if self.parts.stop.matched() || self.parts.parser.stop_matched() {
                        tracing::debug!("stop string matched; ending generation");
                        self.done(StopCause::Stop, None, &mut out);
                    }
                }
                Some(TokenEvent::Finish { reason, usage }) => {
                    if usage.prompt_tokens > 0 {
                        self.parts.prompt_tokens = usage.prompt_tokens;
                    }
                    let (cause, stop_token) = match reason {
                        StopReason::StopToken(id) => (StopCause::Stop, Some(id)),
                        StopReason::Length => (StopCause::Length, None),
                        StopReason::Cancelled => {
                            self.parts.metrics.cancelled();
                            self.finished = true;
                            return Some(vec![GenEvent::Failed(ApiError::Unavailable(
                                "the generation was cancelled".to_string(),
                            ))]);
                        }
                    };
                    self.done(cause, stop_token, &mut out);
                }
                Some(TokenEvent::Error(e)) => {
                    self.finished = true;
                    tracing::error!(error = %e, "backend failed mid-generation");
                    return Some(vec![GenEvent::Failed(ApiError::Internal(format!(
                        "the inference engine failed: {e}"
                    )))]);
                }
                None => {
                    self.finished = true;
                    return Some(vec![GenEvent::Failed(ApiError::Internal(
                        "the inference engine ended the generation without finishing it"
                            .to_string(),
                    ))]);
                }
            }
        }
        Some(out)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!("client went away; cancelling its generation");
            self.parts.metrics.cancelled();
        }
    }
}

/// The events of one generation. Dropping the stream cancels it and frees its slot.
pub fn run(parts: GenerationParts) -> impl Stream<Item = GenEvent> + Send {
    let run = Run {
        parts,
        first_token: None,
        completion_tokens: 0,
        finished: false,
        scratch: Vec::new(),
    };
    stream::unfold(run, |mut run| async move {
        let events = run.next_events().await?;
        Some((stream::iter(events), run))
    })
    .flatten()
}
