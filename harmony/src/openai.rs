//! Parsed harmony output -> OpenAI Chat Completions shapes.
//!
//! - `final` (and messages without a channel, or with an unknown one) -> `content`;
//! - `analysis` -> `reasoning_content`, also as `reasoning`;
//! - a message addressed to a tool (`to=functions.NAME`, whatever its channel) -> `tool_calls`,
//!   with the content as JSON `arguments` and an id `call_...`;
//! - other `commentary` (preambles) -> kept apart: the seed's `thinking.commentary` /
//!   `parsed.commentary`, and the `commentary` field of stream deltas;
//! - messages of other authors (the model imitating a user or a tool) are dropped.
//!
//! [`ResponseAccumulator`] builds the whole message (non-streaming); [`DeltaMapper`] turns the
//! same events into chunk deltas (streaming). Both take parser events, from either parser.

use openai_types::{
    AssistantMessage, ChatCompletionRequest, ChatDelta, FinishReason, FunctionCall,
    FunctionCallDelta, HistoryEntry, Parsed, Thinking, ToolCall, ToolCallDelta, Usage,
};

use crate::message::Role;
use crate::parser::{EndReason, Event, Header, TokenCounts};

/// Where a message's content goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Content,
    Reasoning,
    /// Commentary that is not a tool call (a preamble).
    Commentary,
    /// A tool call to this function name (`functions.` stripped).
    ToolCall(String),
    /// Not the assistant's: dropped.
    Ignore,
}

/// Where the content of a message with this header goes.
pub fn classify(h: &Header) -> Target {
    if h.role != Role::Assistant {
        return Target::Ignore;
    }
    if let Some(r) = h.recipient.as_deref() {
        if !matches!(r, "all" | "assistant" | "user") && !r.is_empty() {
            return Target::ToolCall(r.strip_prefix("functions.").unwrap_or(r).to_string());
        }
    }
    match h.channel.as_deref() {
        Some("analysis") => Target::Reasoning,
        Some("commentary") => Target::Commentary,
        _ => Target::Content,
    }
}

/// Why generation stopped, as the caller knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// A stop token, a stop string, or the end of the model's output.
    Stop,
    /// `max_tokens` (or the context) ran out.
    Length,
}

/// Makes tool-call ids: `call_` + 24 random hex digits, or `{prefix}{n}` when deterministic
/// ids are wanted (tests, or ids derived from the request id).
#[derive(Clone, Debug, Default)]
pub struct CallIds {
    prefix: Option<String>,
    next: u32,
}

impl CallIds {
    /// Random ids.
    pub fn random() -> CallIds {
        CallIds::default()
    }
    /// `{prefix}0`, `{prefix}1`, ...
    pub fn sequential(prefix: impl Into<String>) -> CallIds {
        CallIds {
            prefix: Some(prefix.into()),
            next: 0,
        }
    }
    pub fn next_id(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        match &self.prefix {
            Some(p) => format!("{p}{n}"),
            None => {
                let hex = uuid::Uuid::new_v4().simple().to_string();
                format!("call_{}", &hex[..24])
            }
        }
    }
}

/// The request-side half of the seed's `parsed`: developer instructions and history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedContext {
    pub developer_instructions: Option<String>,
    pub history: Vec<HistoryEntry>,
}

impl SeedContext {
    /// Instructions from the request's system and developer messages; history from the rest.
    pub fn from_request(request: &ChatCompletionRequest) -> SeedContext {
        let history = request
            .messages
            .iter()
            .filter(|m| {
                !matches!(
                    m.role,
                    openai_types::Role::System | openai_types::Role::Developer
                )
            })
            .map(|m| HistoryEntry {
                role: m.role.as_str().to_string(),
                content: m
                    .content
                    .as_ref()
                    .and_then(|c| c.as_text())
                    .unwrap_or_default(),
            })
            .collect();
        SeedContext {
            developer_instructions: crate::render::developer_instructions(request),
            history,
        }
    }
}

/// The whole parsed response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedResponse {
    /// `final` text (messages without channel included).
    pub content: String,
    /// `analysis` text.
    pub reasoning: String,
    /// Commentary that is not a tool call.
    pub commentary: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<FinishReason>,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl ParsedResponse {
    /// The OpenAI message. `seed`: add the seed's `thinking` and `parsed` (when the request
    /// set `separate_thinking`).
    pub fn to_message(&self, seed: Option<&SeedContext>) -> AssistantMessage {
        let content = if self.content.is_empty() && !self.tool_calls.is_empty() {
            None
        } else {
            Some(self.content.clone())
        };
        AssistantMessage {
            role: "assistant".to_string(),
            content,
            reasoning_content: non_empty(&self.reasoning),
            reasoning: non_empty(&self.reasoning),
            tool_calls: (!self.tool_calls.is_empty()).then(|| self.tool_calls.clone()),
            refusal: None,
            thinking: seed.map(|_| self.thinking()),
            parsed: seed.map(|s| self.parsed(s)),
        }
    }

    /// The seed's `thinking`.
    pub fn thinking(&self) -> Thinking {
        Thinking {
            analysis: non_empty(&self.reasoning),
            commentary: non_empty(&self.commentary),
        }
    }

    /// The seed's `parsed`.
    pub fn parsed(&self, seed: &SeedContext) -> Parsed {
        Parsed {
            developer_instructions: seed.developer_instructions.clone(),
            history: seed.history.clone(),
            analysis: non_empty(&self.reasoning),
            commentary: non_empty(&self.commentary),
            final_: non_empty(&self.content),
        }
    }
}

/// `usage` from the prompt length and the parser's counts: completion tokens are all tokens
/// pushed, reasoning (`thinking_tokens`, `reasoning_tokens`) the analysis content tokens.
pub fn usage(prompt_tokens: u32, counts: TokenCounts) -> Usage {
    Usage::new(prompt_tokens, counts.total, counts.analysis)
}

/// Collects events into a [`ParsedResponse`].
#[derive(Clone, Debug, Default)]
pub struct ResponseAccumulator {
    out: ParsedResponse,
    current: Option<Target>,
    last_end: Option<EndReason>,
    ids: CallIds,
}

impl ResponseAccumulator {
    /// With random tool-call ids.
    pub fn new() -> ResponseAccumulator {
        ResponseAccumulator::default()
    }

    pub fn with_call_ids(ids: CallIds) -> ResponseAccumulator {
        ResponseAccumulator {
            ids,
            ..ResponseAccumulator::default()
        }
    }

    pub fn on_event(&mut self, e: Event<'_>) {
        match e {
            Event::MessageStart(h) => {
                let target = classify(h);
                if let Target::ToolCall(name) = &target {
                    self.out.tool_calls.push(ToolCall {
                        id: self.ids.next_id(),
                        kind: "function".to_string(),
                        function: FunctionCall {
                            name: name.clone(),
                            arguments: String::new(),
                        },
                    });
                }
                self.current = Some(target);
                self.last_end = None;
            }
            Event::ContentDelta(t) => match &self.current {
                Some(Target::Content) => self.out.content.push_str(t),
                Some(Target::Reasoning) => self.out.reasoning.push_str(t),
                Some(Target::Commentary) => self.out.commentary.push_str(t),
                Some(Target::ToolCall(_)) => {
                    if let Some(c) = self.out.tool_calls.last_mut() {
                        c.function.arguments.push_str(t);
                    }
                }
                Some(Target::Ignore) | None => {}
            },
            Event::MessageEnd(r) => {
                self.current = None;
                self.last_end = Some(r);
            }
        }
    }

    /// What has been parsed so far.
    pub fn partial(&self) -> &ParsedResponse {
        &self.out
    }

    /// The response, with its finish reason: `length` when generation ran out inside a
    /// message, `tool_calls` when the model called tools, `stop` otherwise.
    pub fn finish(mut self, cause: StopCause) -> ParsedResponse {
        self.out.finish_reason = Some(finish_reason(
            cause,
            self.last_end,
            !self.out.tool_calls.is_empty(),
        ));
        self.out
    }
}

fn finish_reason(cause: StopCause, last_end: Option<EndReason>, has_calls: bool) -> FinishReason {
    let cut_off = matches!(last_end, Some(EndReason::Eof) | None);
    if cause == StopCause::Length && cut_off {
        FinishReason::Length
    } else if has_calls {
        FinishReason::ToolCalls
    } else if cause == StopCause::Length {
        FinishReason::Length
    } else {
        FinishReason::Stop
    }
}

/// Turns events into OpenAI stream deltas. The first delta carries `role: "assistant"`.
#[derive(Clone, Debug, Default)]
pub struct DeltaMapper {
    acc: ResponseAccumulator,
    current: Option<Target>,
    tool_index: u32,
    sent_role: bool,
}

impl DeltaMapper {
    /// With random tool-call ids.
    pub fn new() -> DeltaMapper {
        DeltaMapper::default()
    }

    pub fn with_call_ids(ids: CallIds) -> DeltaMapper {
        DeltaMapper {
            acc: ResponseAccumulator::with_call_ids(ids),
            ..DeltaMapper::default()
        }
    }

    fn emit(&mut self, mut d: ChatDelta, out: &mut Vec<ChatDelta>) {
        if !self.sent_role {
            d.role = Some("assistant".to_string());
            self.sent_role = true;
        }
        out.push(d);
    }

    /// Appends the deltas `e` produces (often none) to `out`.
    pub fn on_event(&mut self, e: Event<'_>, out: &mut Vec<ChatDelta>) {
        self.acc.on_event(e);
        match e {
            Event::MessageStart(h) => {
                let target = classify(h);
                if let Target::ToolCall(name) = &target {
                    let id = self
                        .acc
                        .partial()
                        .tool_calls
                        .last()
                        .map(|c| c.id.clone())
                        .unwrap_or_default();
                    let d = ChatDelta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: self.tool_index,
                            id: Some(id),
                            kind: Some("function".to_string()),
                            function: FunctionCallDelta {
                                name: Some(name.clone()),
                                arguments: Some(String::new()),
                            },
                        }]),
                        ..ChatDelta::default()
                    };
                    self.emit(d, out);
                }
                self.current = Some(target);
            }
            Event::ContentDelta(t) => {
                let d = match &self.current {
                    Some(Target::Content) => ChatDelta {
                        content: Some(t.to_string()),
                        ..ChatDelta::default()
                    },
                    Some(Target::Reasoning) => ChatDelta {
                        reasoning_content: Some(t.to_string()),
                        reasoning: Some(t.to_string()),
                        ..ChatDelta::default()
                    },
                    Some(Target::Commentary) => ChatDelta {
                        commentary: Some(t.to_string()),
                        ..ChatDelta::default()
                    },
                    Some(Target::ToolCall(_)) => ChatDelta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: self.tool_index,
                            id: None,
                            kind: None,
                            function: FunctionCallDelta {
                                name: None,
                                arguments: Some(t.to_string()),
                            },
                        }]),
                        ..ChatDelta::default()
                    },
                    Some(Target::Ignore) | None => return,
                };
                self.emit(d, out);
            }
            Event::MessageEnd(_) => {
                if let Some(Target::ToolCall(_)) = self.current {
                    self.tool_index += 1;
                }
                self.current = None;
            }
        }
    }

    /// Ends the stream: returns the finish reason and the whole response. With `seed`, a
    /// last delta carrying the seed's `thinking` and `parsed` is appended to `out`.
    pub fn finish(
        mut self,
        cause: StopCause,
        seed: Option<&SeedContext>,
        out: &mut Vec<ChatDelta>,
    ) -> ParsedResponse {
        let acc = std::mem::take(&mut self.acc);
        let parsed = acc.finish(cause);
        if let Some(seed) = seed {
            let d = ChatDelta {
                thinking: Some(parsed.thinking()),
                parsed: Some(parsed.parsed(seed)),
                ..ChatDelta::default()
            };
            self.emit(d, out);
        } else if !self.sent_role {
            self.emit(ChatDelta::default(), out);
        }
        parsed
    }
}

/// Applies deltas to a message, as an OpenAI client does (for tests and the proxy's
/// non-streaming rewriting of streamed backends).
pub fn apply_delta(msg: &mut ParsedResponse, d: &ChatDelta) {
    if let Some(c) = &d.content {
        msg.content.push_str(c);
    }
    if let Some(r) = &d.reasoning_content {
        msg.reasoning.push_str(r);
    }
    if let Some(c) = &d.commentary {
        msg.commentary.push_str(c);
    }
    for tc in d.tool_calls.iter().flatten() {
        let i = tc.index as usize;
        while msg.tool_calls.len() <= i {
            msg.tool_calls.push(ToolCall {
                id: String::new(),
                kind: "function".to_string(),
                function: FunctionCall {
                    name: String::new(),
                    arguments: String::new(),
                },
            });
        }
        let call = &mut msg.tool_calls[i];
        if let Some(id) = &tc.id {
            call.id = id.clone();
        }
        if let Some(name) = &tc.function.name {
            call.function.name.push_str(name);
        }
        if let Some(a) = &tc.function.arguments {
            call.function.arguments.push_str(a);
        }
    }
}
