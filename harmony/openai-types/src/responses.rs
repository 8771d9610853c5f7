//! The Responses API (`POST /v1/responses`, `GET /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items`, `DELETE /v1/responses/{id}`), after OpenAI's API
//! reference and the shapes of the official SDKs (`openai.types.responses`).
//!
//! Items are the unit of a conversation: the `input` a client sends and the `output` a response
//! returns are lists of [`Item`]s, and a stored response keeps both. `input` items may omit
//! `type` for a message (`{"role": "user", "content": "..."}`, the SDK's "easy input message");
//! the server reads items from JSON values so that it can name the offending field, and turns
//! them into this typed form.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ReasoningEffort;

/// The body of `POST /v1/responses`. Fields the server does not act on but OpenAI defines are
/// kept in `extra` and checked by the server (accepted when harmless, 400 otherwise).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A string (one user message) or a list of items, read by the server from JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// A developer message placed before the input (not carried over by
    /// `previous_response_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Tool definitions (`function`, `namespace`, hosted tools), read by the server from JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "name": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<ReasoningConfig>,
    /// Upper bound on generated tokens, reasoning included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextConfig>,
    /// Up to 16 string pairs (keys up to 64 characters, values up to 512), returned as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A hint for routing requests that share a prompt prefix to the same place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<String>,
    /// `"auto"` or `"disabled"` (the default: too long an input is a 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation: Option<String>,
    /// Keep the response for `GET` and `previous_response_id` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Extra output to include, e.g. `"reasoning.encrypted_content"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    /// Continue from this stored response: its input and output come before `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `reasoning` of a request and of a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasoningConfig {
    #[serde(default)]
    pub effort: Option<ReasoningEffort>,
    /// `"auto"`, `"concise"` or `"detailed"`; gpt-oss writes no summaries, so the reasoning
    /// comes back as `content` and `summary` stays empty.
    #[serde(default)]
    pub summary: Option<String>,
}

/// `text` of a request and of a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TextFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<String>,
}

/// `text.format`: free text, any JSON object, or JSON following a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TextFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schema: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

/// One item of a conversation, as input or output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message(MessageItem),
    FunctionCall(FunctionCallItem),
    FunctionCallOutput(FunctionCallOutputItem),
    Reasoning(ReasoningItem),
}

impl Item {
    /// The item's `id`, when it has one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Item::Message(m) => m.id.as_deref(),
            Item::FunctionCall(c) => c.id.as_deref(),
            Item::FunctionCallOutput(o) => o.id.as_deref(),
            Item::Reasoning(r) => r.id.as_deref(),
        }
    }
}

/// A message: `role` is `user`, `system`, `developer` or `assistant`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub role: String,
    pub content: Vec<ItemContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// On assistant output: `commentary` (a preamble before tool calls) or `final_answer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// A part of a message's content: `input_text`, `output_text` or `refusal` (the only kinds
/// this text-only model reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemContent {
    InputText {
        text: String,
    },
    OutputText {
        text: String,
        #[serde(default)]
        annotations: Vec<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logprobs: Option<Vec<Value>>,
    },
    Refusal {
        refusal: String,
    },
}

impl ItemContent {
    /// An `output_text` part with no annotations and no log-probabilities.
    pub fn output_text(text: impl Into<String>) -> ItemContent {
        ItemContent::OutputText {
            text: text.into(),
            annotations: Vec::new(),
            logprobs: Some(Vec::new()),
        }
    }

    /// The text the part carries.
    pub fn text(&self) -> &str {
        match self {
            ItemContent::InputText { text } | ItemContent::OutputText { text, .. } => text,
            ItemContent::Refusal { refusal } => refusal,
        }
    }
}

/// A call the model made to a function tool; `call_id` pairs it with its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub call_id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
    /// The namespace tool the function belongs to (absent for a top-level function).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// What a function call returned, sent back by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallOutputItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub call_id: String,
    /// A string, or a list of `input_text` parts.
    pub output: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The model's chain of thought. gpt-oss's analysis channel comes back as `content`
/// (`reasoning_text` parts); `encrypted_content`, when the request `include`s it, carries the
/// same text sealed by the server so that a stateless client can send it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub summary: Vec<SummaryText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<ReasoningText>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// `{"type": "summary_text", "text": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

/// `{"type": "reasoning_text", "text": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

impl ReasoningText {
    pub fn new(text: impl Into<String>) -> ReasoningText {
        ReasoningText {
            kind: "reasoning_text".to_string(),
            text: text.into(),
        }
    }
}

/// A response object: what `POST /v1/responses` returns (and the stream's `response.*`
/// events carry), and what `GET /v1/responses/{id}` reads back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: String,
    /// Always `response`.
    pub object: String,
    /// Unix seconds.
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub model: String,
    pub output: Vec<Item>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub reasoning: ReasoningConfig,
    pub store: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub text: TextConfig,
    pub tool_choice: Value,
    pub tools: Vec<Value>,
    /// `disabled` or `auto`.
    pub truncation: String,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<String>,
    pub metadata: Map<String, Value>,
}

/// Why a response failed: `code` is e.g. `server_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// Why a response is `incomplete`: `max_output_tokens` or `content_filter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompleteDetails {
    pub reason: String,
}

/// Token accounting of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseUsage {
    pub input_tokens: u32,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u32,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u32,
}

impl ResponseUsage {
    /// `input` prompt tokens, `output` generated tokens of which `reasoning` were analysis.
    pub fn new(input: u32, output: u32, reasoning: u32) -> ResponseUsage {
        ResponseUsage::with_cached(input, 0, output, reasoning)
    }

    /// As [`ResponseUsage::new`], with `cached` of the input tokens taken from the server's
    /// prefix cache (`input_tokens_details.cached_tokens`).
    pub fn with_cached(input: u32, cached: u32, output: u32, reasoning: u32) -> ResponseUsage {
        ResponseUsage {
            input_tokens: input,
            input_tokens_details: InputTokensDetails {
                cached_tokens: cached,
            },
            output_tokens: output,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: reasoning,
            },
            total_tokens: input.saturating_add(output),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u32,
}

/// `DELETE /v1/responses/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseDeleted {
    pub id: String,
    /// Always `response`.
    pub object: String,
    pub deleted: bool,
}

/// One server-sent event of a streamed response (`stream: true`): `event: <type>` and this
/// JSON as `data:`. `sequence_number` counts the events of the stream from 0.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamEvent {
    #[serde(flatten)]
    pub event: ResponseEvent,
    pub sequence_number: u64,
}

/// The kinds of stream events, in the order a response produces them: `created`,
/// `in_progress`; per output item `output_item.added`, its parts and deltas,
/// `output_item.done`; then `completed`, `incomplete` or `failed`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ResponseEvent {
    #[serde(rename = "response.created")]
    Created { response: Box<Response> },
    #[serde(rename = "response.in_progress")]
    InProgress { response: Box<Response> },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded { output_index: u32, item: Item },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone { output_index: u32, item: Item },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        item_id: String,
        output_index: u32,
        content_index: u32,
        part: Value,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        item_id: String,
        output_index: u32,
        content_index: u32,
        part: Value,
    },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        item_id: String,
        output_index: u32,
        content_index: u32,
        delta: String,
        logprobs: Vec<Value>,
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        item_id: String,
        output_index: u32,
        content_index: u32,
        text: String,
        logprobs: Vec<Value>,
    },
    #[serde(rename = "response.reasoning_text.delta")]
    ReasoningTextDelta {
        item_id: String,
        output_index: u32,
        content_index: u32,
        delta: String,
    },
    #[serde(rename = "response.reasoning_text.done")]
    ReasoningTextDone {
        item_id: String,
        output_index: u32,
        content_index: u32,
        text: String,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        item_id: String,
        output_index: u32,
        delta: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        item_id: String,
        output_index: u32,
        name: String,
        arguments: String,
    },
    #[serde(rename = "response.completed")]
    Completed { response: Box<Response> },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: Box<Response> },
    #[serde(rename = "response.failed")]
    Failed { response: Box<Response> },
    /// An error outside any response (for example the request was refused after the stream
    /// began).
    #[serde(rename = "error")]
    Error {
        code: Option<String>,
        message: String,
        param: Option<String>,
    },
}

impl ResponseEvent {
    /// The event's `type`, for the SSE `event:` line.
    pub fn name(&self) -> &'static str {
        match self {
            ResponseEvent::Created { .. } => "response.created",
            ResponseEvent::InProgress { .. } => "response.in_progress",
            ResponseEvent::OutputItemAdded { .. } => "response.output_item.added",
            ResponseEvent::OutputItemDone { .. } => "response.output_item.done",
            ResponseEvent::ContentPartAdded { .. } => "response.content_part.added",
            ResponseEvent::ContentPartDone { .. } => "response.content_part.done",
            ResponseEvent::OutputTextDelta { .. } => "response.output_text.delta",
            ResponseEvent::OutputTextDone { .. } => "response.output_text.done",
            ResponseEvent::ReasoningTextDelta { .. } => "response.reasoning_text.delta",
            ResponseEvent::ReasoningTextDone { .. } => "response.reasoning_text.done",
            ResponseEvent::FunctionCallArgumentsDelta { .. } => {
                "response.function_call_arguments.delta"
            }
            ResponseEvent::FunctionCallArgumentsDone { .. } => {
                "response.function_call_arguments.done"
            }
            ResponseEvent::Completed { .. } => "response.completed",
            ResponseEvent::Incomplete { .. } => "response.incomplete",
            ResponseEvent::Failed { .. } => "response.failed",
            ResponseEvent::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_with_their_type_tags() {
        let v = serde_json::json!([
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [],
             "content": [{"type": "reasoning_text", "text": "think"}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "42"}
        ]);
        let items: Vec<Item> = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(serde_json::to_value(&items).unwrap(), v);
    }

    #[test]
    fn stream_events_carry_type_and_sequence_number() {
        let e = StreamEvent {
            event: ResponseEvent::OutputTextDelta {
                item_id: "msg_1".into(),
                output_index: 1,
                content_index: 0,
                delta: "Hi".into(),
                logprobs: vec![],
            },
            sequence_number: 7,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "response.output_text.delta");
        assert_eq!(v["sequence_number"], 7);
        assert_eq!(v["delta"], "Hi");
        assert_eq!(e.event.name(), "response.output_text.delta");
    }
}
