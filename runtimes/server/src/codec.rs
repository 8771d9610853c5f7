//! The server's use of the `harmony` crate: rendering requests to token ids,
//! turning generated tokens into OpenAI deltas, and the seed's `thinking` / `parsed`.

use gpt_oss_runtimes::Capabilities;
use harmony::parser::{Event, TokenParser};
use harmony::{tokens, Role, StreamDecoder, Tokenizer};
use openai_types::{
    ChatDelta, FunctionCallDelta, HistoryEntry, MessageContent, Parsed, Thinking, ToolCallDelta,
};

use crate::error::ApiError;
use crate::generation::DeltaParser;
use crate::validate::{ToolPlan, ValidChat};

/// Stop tokens of every generation: `<|return|>`, `<|call|>` and the model's eos ids.
pub fn stop_token_ids(caps: &Capabilities) -> Vec<u32> {
    let mut ids = tokens::STOP_TOKENS_FOR_ASSISTANT_ACTIONS.to_vec();
    for id in &caps.eos_token_ids {
        if !ids.contains(id) {
            ids.push(*id);
        }
    }
    ids
}

/// A text prompt of `/v1/completions`: special tokens written as text are special tokens.
pub fn encode_prompt(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    tokenizer
        .encode_with_special_tokens(text)
        .map_err(|e| ApiError::field("prompt", format!("could not be tokenized: {e}")))
}

/// Renders a chat request into prompt token ids ending with `<|start|>assistant`.
// TEMPORARY until the harmony crate's renderer lands: a plain rendering without
// tools' TypeScript namespace. Replaced by `harmony`'s renderer.
pub fn render_chat(tokenizer: &Tokenizer, valid: &ValidChat) -> Result<Vec<u32>, ApiError> {
    let req = &valid.render;
    let effort = req.reasoning_effort.map(|e| e.as_str()).unwrap_or("medium");
    let mut text = format!(
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n\nReasoning: {effort}\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
    );
    let mut instructions = Vec::new();
    for m in &req.messages {
        if matches!(
            m.role,
            openai_types::Role::System | openai_types::Role::Developer
        ) {
            instructions.push(text_of(&m.content));
        }
    }
    if !instructions.is_empty() {
        text.push_str("<|start|>developer<|message|># Instructions\n\n");
        text.push_str(&instructions.join("\n\n"));
        text.push_str("<|end|>");
    }
    for m in &req.messages {
        match m.role {
            openai_types::Role::User => {
                text.push_str("<|start|>user<|message|>");
                text.push_str(&text_of(&m.content));
                text.push_str("<|end|>");
            }
            openai_types::Role::Assistant => {
                for c in m.tool_calls.iter().flatten() {
                    text.push_str(&format!("<|start|>assistant<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{}<|call|>", c.function.name, c.function.arguments));
                }
                if m.content.is_some() {
                    text.push_str("<|start|>assistant<|channel|>final<|message|>");
                    text.push_str(&text_of(&m.content));
                    text.push_str("<|end|>");
                }
            }
            openai_types::Role::Tool => {
                text.push_str(
                    "<|start|>functions.tool to=assistant<|channel|>commentary<|message|>",
                );
                text.push_str(&text_of(&m.content));
                text.push_str("<|end|>");
            }
            _ => {}
        }
    }
    text.push_str("<|start|>assistant");
    tokenizer
        .encode_with_special_tokens(&text)
        .map_err(|e| ApiError::field("messages", format!("could not be tokenized: {e}")))
}

/// Tokens the server writes after `<|start|>assistant` to force a tool call:
/// the header of a call to the named function, or of a call to some function.
pub fn prefill(tokenizer: &Tokenizer, plan: &ToolPlan) -> Result<Vec<u32>, ApiError> {
    let text = match plan {
        ToolPlan::NoTools | ToolPlan::Auto => return Ok(Vec::new()),
        ToolPlan::Required => "<|channel|>commentary to=functions.".to_string(),
        ToolPlan::Named(name) => {
            format!("<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>")
        }
    };
    tokenizer
        .encode_with_special_tokens(&text)
        .map_err(|e| ApiError::Internal(format!("could not encode the tool-call prefill: {e}")))
}

/// Raw text output: each token's text (special tokens literal) as `content`.
struct RawText {
    decoder: StreamDecoder,
    prefix: Option<String>,
    /// Counts analysis tokens for `usage` even though the text is not parsed for the client.
    counter: TokenParser,
}

impl DeltaParser for RawText {
    fn push(&mut self, token: u32, out: &mut Vec<ChatDelta>) {
        self.counter.push(token, &mut |_| {});
        let mut text = self.prefix.take().unwrap_or_default();
        self.decoder.push_into(token, &mut text);
        if !text.is_empty() {
            out.push(ChatDelta {
                content: Some(text),
                ..ChatDelta::default()
            });
        }
    }

    fn finish(&mut self, out: &mut Vec<ChatDelta>) {
        let mut text = self.prefix.take().unwrap_or_default();
        self.decoder.finish_into(&mut text);
        if !text.is_empty() {
            out.push(ChatDelta {
                content: Some(text),
                ..ChatDelta::default()
            });
        }
    }

    fn reasoning_tokens(&self) -> u32 {
        self.counter.counts().analysis
    }
}

/// Decoded text out, for `/v1/completions`; `prefix` is emitted first.
pub fn text_parser(tokenizer: &Tokenizer, prefix: &str) -> Box<dyn DeltaParser> {
    Box::new(RawText {
        decoder: tokenizer.stream_decoder(),
        prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
        counter: TokenParser::new(tokenizer, Some(Role::Assistant)),
    })
}

/// Where the content of the current message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Content,
    Reasoning,
    Commentary,
    ToolArguments,
}

/// Parsed output: channels mapped to OpenAI's fields.
struct HarmonyDeltas {
    parser: TokenParser,
    sink: Sink,
    tool_calls: u32,
}

impl HarmonyDeltas {
    fn on_event(sink: &mut Sink, tool_calls: &mut u32, e: Event<'_>, out: &mut Vec<ChatDelta>) {
        match e {
            Event::MessageStart(h) => {
                let function = h
                    .recipient
                    .as_deref()
                    .and_then(|r| r.strip_prefix("functions."));
                *sink = match (function, h.channel.as_deref()) {
                    (Some(name), _) => {
                        let index = *tool_calls;
                        *tool_calls += 1;
                        out.push(ChatDelta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index,
                                id: Some(format!("call_{}", uuid::Uuid::new_v4().simple())),
                                kind: Some("function".to_string()),
                                function: FunctionCallDelta {
                                    name: Some(name.to_string()),
                                    arguments: Some(String::new()),
                                },
                            }]),
                            ..ChatDelta::default()
                        });
                        Sink::ToolArguments
                    }
                    (None, Some("analysis")) => Sink::Reasoning,
                    (None, Some("commentary")) => Sink::Commentary,
                    (None, _) => Sink::Content,
                };
            }
            Event::ContentDelta(t) => {
                let t = t.to_string();
                out.push(match *sink {
                    Sink::Content => ChatDelta {
                        content: Some(t),
                        ..ChatDelta::default()
                    },
                    Sink::Reasoning => ChatDelta {
                        reasoning_content: Some(t),
                        ..ChatDelta::default()
                    },
                    Sink::Commentary => ChatDelta {
                        commentary: Some(t),
                        ..ChatDelta::default()
                    },
                    Sink::ToolArguments => ChatDelta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: tool_calls.saturating_sub(1),
                            id: None,
                            kind: None,
                            function: FunctionCallDelta {
                                name: None,
                                arguments: Some(t),
                            },
                        }]),
                        ..ChatDelta::default()
                    },
                });
            }
            Event::MessageEnd(_) => {}
        }
    }
}

impl DeltaParser for HarmonyDeltas {
    fn push(&mut self, token: u32, out: &mut Vec<ChatDelta>) {
        let (sink, calls) = (&mut self.sink, &mut self.tool_calls);
        self.parser
            .push(token, &mut |e| Self::on_event(sink, calls, e, out));
    }

    fn finish(&mut self, out: &mut Vec<ChatDelta>) {
        let (sink, calls) = (&mut self.sink, &mut self.tool_calls);
        self.parser
            .finish(&mut |e| Self::on_event(sink, calls, e, out));
    }

    fn reasoning_tokens(&self) -> u32 {
        self.parser.counts().analysis
    }
}

/// The parser for a chat response: raw harmony text when `raw`, else OpenAI fields.
/// `prefill` (the forced start of the assistant message) is fed first.
pub fn chat_parser(tokenizer: &Tokenizer, raw: bool, prefill: &[u32]) -> Box<dyn DeltaParser> {
    if raw {
        let prefix = tokenizer.decode(prefill);
        return text_parser(tokenizer, &prefix);
    }
    let mut p = HarmonyDeltas {
        parser: TokenParser::new(tokenizer, Some(Role::Assistant)),
        sink: Sink::Content,
        tool_calls: 0,
    };
    // The prefill's events are kept: a forced tool call must reach the client.
    let mut pending = Vec::new();
    for &id in prefill {
        p.push(id, &mut pending);
    }
    Box::new(Prefilled { inner: p, pending })
}

/// Emits the prefill's deltas with the first generated token.
struct Prefilled<P> {
    inner: P,
    pending: Vec<ChatDelta>,
}

impl<P: DeltaParser> DeltaParser for Prefilled<P> {
    fn push(&mut self, token: u32, out: &mut Vec<ChatDelta>) {
        out.append(&mut self.pending);
        self.inner.push(token, out);
    }

    fn finish(&mut self, out: &mut Vec<ChatDelta>) {
        out.append(&mut self.pending);
        self.inner.finish(out);
    }

    fn reasoning_tokens(&self) -> u32 {
        self.inner.reasoning_tokens()
    }
}

fn text_of(c: &Option<MessageContent>) -> String {
    c.as_ref()
        .and_then(MessageContent::as_text)
        .unwrap_or_default()
}

/// The seed's `thinking` and `parsed` objects for a finished response.
pub fn seed_fields(
    valid: &ValidChat,
    content: &Option<String>,
    reasoning: &Option<String>,
    commentary: &Option<String>,
) -> (Thinking, Parsed) {
    let mut instructions = Vec::new();
    let mut history = Vec::new();
    for m in &valid.render.messages {
        match m.role {
            openai_types::Role::System | openai_types::Role::Developer => {
                instructions.push(text_of(&m.content))
            }
            role => history.push(HistoryEntry {
                role: role.as_str().to_string(),
                content: text_of(&m.content),
            }),
        }
    }
    let thinking = Thinking {
        analysis: reasoning.clone(),
        commentary: commentary.clone(),
    };
    let parsed = Parsed {
        developer_instructions: (!instructions.is_empty()).then(|| instructions.join("\n\n")),
        history,
        analysis: reasoning.clone(),
        commentary: commentary.clone(),
        final_: content.clone(),
    };
    (thinking, parsed)
}
