//! Parsed harmony output -> OpenAI Chat Completions shapes.
//!
//! The placing rule lives in [`route`] (see [`Router`]): `final` -> `content`; `analysis` ->
//! `reasoning_content` (also as `reasoning`); preambles (commentary without a recipient) ->
//! `content` and the seed's `commentary`; a message to an allowed function -> `tool_calls`;
//! unplaced text -> reasoning when the output has a `final` message, else `content`; nothing
//! after `<|return|>` / `<|call|>`.
//!
//! [`ResponseAccumulator`] builds the whole message (non-streaming); [`DeltaMapper`] turns the
//! same events into chunk deltas (streaming). Both apply the one [`Router`]'s pieces, so the
//! deltas, applied in order, give the non-streamed message.

mod route;

pub use route::{Piece, Router, ToolGate};

use openai_types::{
    AssistantMessage, ChatCompletionRequest, ChatDelta, FinishReason, FunctionCall,
    FunctionCallDelta, HistoryEntry, Parsed, Thinking, ToolCall, ToolCallDelta, Usage,
};

use crate::message::Role;
use crate::parser::{EndReason, Event, Header, TokenCounts};

/// Where a message's content goes, by its header alone (before the [`ToolGate`] and the
/// unplaced-text rule apply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `final`.
    Content,
    /// `analysis`.
    Reasoning,
    /// Commentary that is not a tool call (a preamble).
    Commentary,
    /// No channel, or one harmony does not define: reasoning when the output has a `final`
    /// message, `content` otherwise.
    Unplaced,
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
        if !matches!(r, "all" | "assistant" | "user") {
            return Target::ToolCall(r.strip_prefix("functions.").unwrap_or(r).to_string());
        }
    }
    match h.channel.as_deref() {
        Some("final") => Target::Content,
        Some("analysis") => Target::Reasoning,
        Some("commentary") => Target::Commentary,
        _ => Target::Unplaced,
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
    /// `final` text and preambles (and unplaced text when there is no `final` message).
    pub content: String,
    /// `analysis` text.
    pub reasoning: String,
    /// Commentary that is not a tool call (preambles; also in `content`).
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

/// Applies one [`Piece`] to a response.
fn apply_piece(msg: &mut ParsedResponse, p: Piece<'_>) {
    match p {
        Piece::Content(t) => msg.content.push_str(t),
        Piece::Commentary(t) => msg.commentary.push_str(t),
        Piece::Reasoning(t) => msg.reasoning.push_str(t),
        Piece::CallStart { id, name, .. } => msg.tool_calls.push(ToolCall {
            id: id.to_string(),
            kind: "function".to_string(),
            function: FunctionCall {
                name: name.to_string(),
                arguments: String::new(),
            },
        }),
        Piece::CallArgs { index, text } => {
            if let Some(c) = msg.tool_calls.get_mut(index as usize) {
                c.function.arguments.push_str(text);
            }
        }
    }
}

/// Collects events into a [`ParsedResponse`] (the non-streamed answer), by the [`Router`]'s
/// rule.
#[derive(Clone, Debug, Default)]
pub struct ResponseAccumulator {
    router: Router,
    out: ParsedResponse,
}

impl ResponseAccumulator {
    /// Random tool-call ids; calls to the functions `gate` allows.
    pub fn new(gate: ToolGate) -> ResponseAccumulator {
        ResponseAccumulator::with_call_ids(gate, CallIds::random())
    }

    /// Tool-call ids from `ids`; calls to the functions `gate` allows.
    pub fn with_call_ids(gate: ToolGate, ids: CallIds) -> ResponseAccumulator {
        ResponseAccumulator {
            router: Router::new(gate, ids),
            out: ParsedResponse::default(),
        }
    }

    pub fn on_event(&mut self, e: Event<'_>) {
        let out = &mut self.out;
        self.router.on_event(e, &mut |p| apply_piece(out, p));
    }

    /// What has been placed so far (unplaced text may still be held back).
    pub fn partial(&self) -> &ParsedResponse {
        &self.out
    }

    /// The response, with its finish reason: `length` when generation ran out inside a
    /// message, `tool_calls` when the model called an allowed tool, `stop` otherwise.
    pub fn finish(mut self, cause: StopCause) -> ParsedResponse {
        let out = &mut self.out;
        self.router.finish(&mut |p| apply_piece(out, p));
        self.out.finish_reason = Some(finish_reason(
            cause,
            self.router.last_end(),
            self.router.call_count() > 0,
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

/// Turns events into OpenAI stream deltas, by the same [`Router`] as
/// [`ResponseAccumulator`]: applying the deltas in order ([`apply_delta`]) gives the
/// non-streamed answer. The first delta carries `role: "assistant"`.
#[derive(Clone, Debug, Default)]
pub struct DeltaMapper {
    acc: ResponseAccumulator,
    sent_role: bool,
}

/// Appends a piece to `out` as a delta; text is merged into the last delta when that one
/// was made by the same call (`from` is where this call's deltas begin) and has no tool
/// call.
fn piece_delta(p: Piece<'_>, from: usize, out: &mut Vec<ChatDelta>) {
    let last = if out.len() > from {
        out.last_mut().filter(|d| d.tool_calls.is_none())
    } else {
        None
    };
    let append = |slot: &mut Option<String>, t: &str| match slot {
        Some(s) => s.push_str(t),
        None => *slot = Some(t.to_string()),
    };
    match p {
        Piece::Content(t) | Piece::Commentary(t) | Piece::Reasoning(t) => {
            let d = match last {
                Some(d) => d,
                None => {
                    out.push(ChatDelta::default());
                    let Some(d) = out.last_mut() else { return };
                    d
                }
            };
            match p {
                Piece::Content(_) => append(&mut d.content, t),
                Piece::Commentary(_) => append(&mut d.commentary, t),
                _ => {
                    append(&mut d.reasoning_content, t);
                    append(&mut d.reasoning, t);
                }
            }
        }
        Piece::CallStart { index, id, name } => out.push(ChatDelta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                id: Some(id.to_string()),
                kind: Some("function".to_string()),
                function: FunctionCallDelta {
                    name: Some(name.to_string()),
                    arguments: Some(String::new()),
                },
            }]),
            ..ChatDelta::default()
        }),
        Piece::CallArgs { index, text } => out.push(ChatDelta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionCallDelta {
                    name: None,
                    arguments: Some(text.to_string()),
                },
            }]),
            ..ChatDelta::default()
        }),
    }
}

impl DeltaMapper {
    /// Random tool-call ids; calls to the functions `gate` allows.
    pub fn new(gate: ToolGate) -> DeltaMapper {
        DeltaMapper::with_call_ids(gate, CallIds::random())
    }

    /// Tool-call ids from `ids`; calls to the functions `gate` allows.
    pub fn with_call_ids(gate: ToolGate, ids: CallIds) -> DeltaMapper {
        DeltaMapper {
            acc: ResponseAccumulator::with_call_ids(gate, ids),
            sent_role: false,
        }
    }

    fn route(&mut self, e: Option<Event<'_>>, out: &mut Vec<ChatDelta>) {
        let from = out.len();
        let ResponseAccumulator { router, out: msg } = &mut self.acc;
        let mut sink = |p: Piece<'_>| {
            apply_piece(msg, p);
            piece_delta(p, from, out);
        };
        match e {
            Some(e) => router.on_event(e, &mut sink),
            None => router.finish(&mut sink),
        }
        if !self.sent_role {
            if let Some(d) = out.get_mut(from) {
                d.role = Some("assistant".to_string());
                self.sent_role = true;
            }
        }
    }

    /// Appends the deltas `e` produces (often none) to `out`.
    pub fn on_event(&mut self, e: Event<'_>, out: &mut Vec<ChatDelta>) {
        self.route(Some(e), out);
    }

    /// Ends the stream: appends what was held back, returns the finish reason and the whole
    /// response. With `seed`, a last delta carrying the seed's `thinking` and `parsed` is
    /// appended to `out`.
    pub fn finish(
        mut self,
        cause: StopCause,
        seed: Option<&SeedContext>,
        out: &mut Vec<ChatDelta>,
    ) -> ParsedResponse {
        self.route(None, out);
        let parsed = std::mem::take(&mut self.acc).finish(cause);
        let last = match seed {
            Some(seed) => ChatDelta {
                thinking: Some(parsed.thinking()),
                parsed: Some(parsed.parsed(seed)),
                ..ChatDelta::default()
            },
            None if !self.sent_role => ChatDelta::default(),
            None => return parsed,
        };
        let mut last = last;
        if !self.sent_role {
            last.role = Some("assistant".to_string());
        }
        out.push(last);
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
