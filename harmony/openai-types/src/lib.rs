//! OpenAI wire types, in one place, shared by `gpt-oss-server` and `gpt-oss-lb`.
//!
//! The shapes follow OpenAI's Chat Completions, Completions, Responses and Models APIs, plus
//! the fields of the gpt-oss seed prototype that are our compatibility contract:
//! `separate_thinking` on requests, `thinking` / `parsed` on messages and
//! `thinking_tokens` in `usage`. Reasoning is exposed as `reasoning_content`
//! (vLLM, DeepSeek) and `reasoning` (newer clients).
//!
//! These are plain serde types: no validation happens here. The server validates
//! a request once, into its own types, and names the offending field in the error.

mod chat;
mod completions;
mod error;
pub mod json;
mod models;
pub mod response_output;
mod responses;

pub use chat::*;
pub use completions::*;
pub use error::*;
pub use models::*;
pub use responses::*;

/// Token accounting, as OpenAI reports it, plus the seed's `thinking_tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// The seed's name for the tokens spent in the analysis channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    /// Builds a usage block where `reasoning` tokens are reported both as the
    /// seed's `thinking_tokens` and OpenAI's `completion_tokens_details.reasoning_tokens`.
    pub fn new(prompt_tokens: u32, completion_tokens: u32, reasoning_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            thinking_tokens: Some(reasoning_tokens),
            completion_tokens_details: Some(CompletionTokensDetails { reasoning_tokens }),
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 0 }),
        }
    }

    /// The same, with `cached` prompt tokens reported in `prompt_tokens_details.cached_tokens`
    /// (prompt tokens the server did not compute again: its prefix cache held them).
    pub fn with_cached_tokens(mut self, cached: u32) -> Self {
        self.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: cached,
        });
        self
    }

    /// `prompt_tokens_details.cached_tokens`, 0 when absent.
    pub fn cached_tokens(&self) -> u32 {
        self.prompt_tokens_details
            .as_ref()
            .map_or(0, |d| d.cached_tokens)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

/// `stream_options` of a streaming request.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// Why a choice stopped, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
