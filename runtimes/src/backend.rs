//! The [`InferenceBackend`] trait and the types it speaks.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling; 1.0 disables it.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; `None` or 0 disables it.
    pub top_k: Option<u32>,
    /// Makes sampling reproducible: the same seed, prompt and parameters give the same tokens.
    pub seed: Option<u64>,
    /// vLLM's `min_tokens`: the request's stop tokens cannot be sampled until this many tokens
    /// were generated. 0 disables it.
    pub min_tokens: u32,
    /// OpenAI's `presence_penalty` (-2..=2): subtracted once from the logit of every token
    /// generated so far. 0 disables it.
    pub presence_penalty: f32,
    /// OpenAI's `frequency_penalty` (-2..=2): subtracted from a token's logit once per time it
    /// was generated so far. 0 disables it.
    pub frequency_penalty: f32,
    /// vLLM's `repetition_penalty` (> 0): the logit of a token seen in the prompt or the output
    /// is divided by it when positive and multiplied by it when negative. 1 disables it.
    pub repetition_penalty: f32,
    /// OpenAI's `logit_bias`: added to the logits of these token ids before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// vLLM's `min_p`: tokens less likely than `min_p` times the most likely one are dropped.
    /// 0 disables it.
    pub min_p: f32,
    /// Report log-probabilities ([`TokenEvent::Logprob`] before each token) with this many
    /// alternatives (OpenAI's `top_logprobs`, up to 20); `None`: no log-probabilities.
    pub logprobs: Option<u32>,
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
            seed: None,
            min_tokens: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            min_p: 0.0,
            logprobs: None,
        }
    }

    /// Whether anything changes the logits before the token is chosen (penalties, bias).
    pub fn adjusts_logits(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
            || !self.logit_bias.is_empty()
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == Some(1)
    }
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// For logs and tracing only.
    pub request_id: String,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Generation stops after emitting one of these (for gpt-oss: `<|return|>`,
    /// `<|call|>` and the model's eos ids).
    pub stop_token_ids: Vec<u32>,
    pub max_new_tokens: u32,
    /// Cancelled when the client goes away: the backend stops generating and frees its slot.
    pub cancel: CancellationToken,
    /// A grammar the generated tokens must follow: before each token is sampled, every token
    /// it does not allow is masked out. `None`: unconstrained.
    pub constraint: Option<crate::constraint::Constraint>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token was sampled; it is the last [`TokenEvent::Token`] of the stream.
    StopToken(u32),
    /// `max_new_tokens` was reached, or the context is full.
    Length,
    /// The request's cancellation token fired.
    Cancelled,
}

/// Token accounting for one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GenerationUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose keys and values came from the prefix cache instead of being computed
    /// (OpenAI's `usage.prompt_tokens_details.cached_tokens`); at most `prompt_tokens - 1`.
    pub cached_tokens: u32,
}

/// Counters since start (the `/metrics` figures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Prompts looked up (every admitted request while the cache is on).
    pub queries: u64,
    /// Lookups that reused at least one block.
    pub hits: u64,
    /// Prompt tokens of the looked-up prompts.
    pub query_tokens: u64,
    /// Prompt tokens whose KV came from the cache.
    pub cached_tokens: u64,
    /// Blocks evicted to stay within the budget.
    pub evictions: u64,
    /// Blocks held now.
    pub blocks: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// The budget in bytes.
    pub budget_bytes: u64,
}

/// The log-probability of a sampled token and of the most likely alternatives, under the
/// model's distribution (log-softmax of its logits, before temperature, penalties and masks,
/// as OpenAI and vLLM report them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// Natural log, at most 0.
    pub logprob: f32,
    /// The most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// One item of a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    /// The log-probabilities of the next [`TokenEvent::Token`], when the request asked for them.
    Logprob(TokenLogprob),
    /// A sampled token id.
    Token(u32),
    /// The last event of every stream.
    Finish {
        reason: StopReason,
        usage: GenerationUsage,
    },
    /// The engine failed mid-generation; the stream ends after this event.
    Error(String),
}

/// The stream a backend returns for one request.
pub type TokenStream = Pin<Box<dyn Stream<Item = TokenEvent> + Send>>;

/// What a backend serves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    pub model_name: String,
    /// Prompt plus completion tokens, at most.
    pub context_length: u32,
    /// Where it runs, e.g. `cpu`, `cuda:0`, or an upstream URL.
    pub device: String,
    /// End-of-sequence ids from the model's configuration.
    pub eos_token_ids: Vec<u32>,
    pub vocab_size: u32,
    /// How many sequences it decodes at once.
    pub max_concurrent_sequences: u32,
}

/// Whether a backend can serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Health {
    Ready,
    Loading,
    Failed { reason: String },
}

/// Errors a backend can return before any token is produced.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the prompt has {prompt_tokens} tokens, more than the context length of {context_length} allows with room for one more token")]
    PromptTooLong {
        prompt_tokens: u32,
        context_length: u32,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {0} is outside the vocabulary")]
    InvalidToken(u32),
    #[error("the backend is not ready: {0}")]
    Unavailable(String),
    #[error("backend failure: {0}")]
    Internal(String),
}

/// A runtime that turns prompt token ids into generated token ids.
///
/// Object-safe: the server holds an `Arc<dyn InferenceBackend>`. Implementations
/// run their engine on their own threads and never block the async executor.
#[async_trait]
pub trait InferenceBackend: Send + Sync + 'static {
    /// Static facts about the model and the device.
    fn capabilities(&self) -> &Capabilities;

    /// Whether the backend can take requests now.
    async fn health(&self) -> Health;

    /// Starts a generation. The stream yields the sampled tokens (a stop token is
    /// included as the last token) and ends with exactly one [`TokenEvent::Finish`]
    /// or [`TokenEvent::Error`]. Dropping the stream, or firing `request.cancel`,
    /// stops the generation and frees its slot.
    async fn generate(&self, request: GenerateRequest) -> Result<TokenStream, BackendError>;

    /// Starts OpenAI's `n` independent sequences of one prompt: every request of `requests`
    /// has the same `prompt` (each its own sampling, seed, grammar, cancellation). Returns one
    /// stream per request, in order. A backend that can share work prefills the prompt once
    /// for the whole group; this default starts each request on its own with
    /// [`InferenceBackend::generate`] (the prompt is prefilled `n` times).
    async fn generate_group(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<TokenStream>, BackendError> {
        let mut streams = Vec::with_capacity(requests.len());
        for request in requests {
            streams.push(self.generate(request).await?);
        }
        Ok(streams)
    }

    /// Prompt tokens run through the model so far (prefill work; a prompt shared by the `n`
    /// sequences of a group counts once when the backend shares it). `None` when the backend
    /// does not count them.
    fn prefill_tokens_total(&self) -> Option<u64> {
        None
    }

    /// The prefix cache's counters, when the backend has one and it is on.
    fn prefix_cache_stats(&self) -> Option<PrefixCacheStats> {
        None
    }
}
