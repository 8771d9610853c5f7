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
use gpt_oss_runtimes::{StopReason, TokenEvent, TokenLogprob, TokenStream};
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
/// Deltas dominate the stream, so they stay unboxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum GenEvent {
    Delta(ChatDelta),
    /// The log-probabilities of the tokens whose text the last `content` delta carried (only
    /// when the request asked for them; tokens of the analysis channel and of message headers
    /// are not reported, as OpenAI reports only the message's content).
    Logprobs(Vec<TokenLogprob>),
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
    /// Shared by the `n` sequences of one request: the slot is freed when all are done.
    pub permit: Arc<Permit>,
    pub cancel: DropGuard,
    pub metrics: Arc<Metrics>,
    /// When the request arrived, for time to first token.
    pub arrived: Instant,
    pub prompt_tokens: u32,
}

struct Run {
    parts: GenerationParts,
    first_token: Option<Instant>,
    /// Prompt tokens the backend reused from its prefix cache, as its `Finish` reports them (a
    /// generation ended early by a stop string does not wait for that event and reports 0).
    cached_tokens: u32,
    completion_tokens: u32,
    finished: bool,
    scratch: Vec<ChatDelta>,
    /// The log-probability sent just before the token it belongs to.
    pending_logprob: Option<TokenLogprob>,
    /// Log-probabilities of tokens that produced no text yet (a character split over tokens).
    unclaimed: Vec<TokenLogprob>,
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

    /// Gives `token`'s log-probability to the content it produced, if any; drops it with those
    /// before it when the token was a header's special token or produced other fields.
    fn claim(&mut self, token: u32, out: &mut Vec<GenEvent>) {
        let Some(lp) = self.pending_logprob.take() else {
            return;
        };
        let has_content = |e: &GenEvent| matches!(e, GenEvent::Delta(d) if d.content.as_deref().is_some_and(|c| !c.is_empty()));
        if out.iter().any(has_content) {
            self.unclaimed.push(lp);
            out.push(GenEvent::Logprobs(std::mem::take(&mut self.unclaimed)));
        } else if !out.is_empty() || harmony::tokens::is_special(token) {
            self.unclaimed.clear();
        } else {
            self.unclaimed.push(lp);
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
            )
            .with_cached_tokens(self.cached_tokens),
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
                    let before = out.len();
                    self.filter(&mut out);
                    let mut produced = out.split_off(before);
                    self.claim(id, &mut produced);
                    out.append(&mut produced);
                    if self.parts.stop.matched() || self.parts.parser.stop_matched() {
                        tracing::debug!("stop string matched; ending generation");
                        self.done(StopCause::Stop, None, &mut out);
                    }
                }
                Some(TokenEvent::Logprob(lp)) => self.pending_logprob = Some(lp),
                Some(TokenEvent::Finish { reason, usage }) => {
                    if usage.prompt_tokens > 0 {
                        self.parts.prompt_tokens = usage.prompt_tokens;
                    }
                    self.cached_tokens = usage.cached_tokens;
                    let (cause, stop_token) = match reason {
                        StopReason::StopToken(id) => (StopCause::Stop, Some(id)),
                        StopReason::Length => (StopCause::Length, None),
                        StopReason::Cancelled => {
                            self.parts.metrics.cancelled();
                            self.finished = true;
                            return Some(vec![GenEvent::Failed(ApiError::Cancelled)]);
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

/// The events of the `n` generations of one request, tagged with their choice index, in the
/// order they happen. Dropping the stream cancels them all.
pub fn run_all(parts: Vec<GenerationParts>) -> impl Stream<Item = (u32, GenEvent)> + Send {
    stream::select_all(
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| run(p).map(move |e| (i as u32, e)).boxed()),
    )
}

/// Sums the usage of the `n` sequences of one request (the prompt is counted once).
pub fn total_usage(usages: &[Usage]) -> Usage {
    let prompt = usages.first().map_or(0, |u| u.prompt_tokens);
    let completion = usages.iter().map(|u| u.completion_tokens).sum();
    let reasoning = usages.iter().map(|u| u.thinking_tokens.unwrap_or(0)).sum();
    let cached = usages.first().map_or(0, Usage::cached_tokens);
    Usage::new(prompt, completion, reasoning).with_cached_tokens(cached)
}

/// The events of one generation. Dropping the stream cancels it and frees its slot.
pub fn run(parts: GenerationParts) -> impl Stream<Item = GenEvent> + Send {
    let run = Run {
        parts,
        first_token: None,
        cached_tokens: 0,
        completion_tokens: 0,
        finished: false,
        scratch: Vec::new(),
        pending_logprob: None,
        unclaimed: Vec::new(),
    };
    stream::unfold(run, |mut run| async move {
        let events = run.next_events().await?;
        Some((stream::iter(events), run))
    })
    .flatten()
}
