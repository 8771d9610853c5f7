//! The one rule that places model output in OpenAI fields. [`Router`] turns parser events
//! into [`Piece`]s; the non-streamed [`super::ResponseAccumulator`] and the streamed
//! [`super::DeltaMapper`] only apply those pieces, so for the same raw output they give the
//! same fields, whatever the path (server, edge) and wherever the output was split.
//!
//! The rule:
//! - `final` -> `content`; `analysis` -> reasoning; `commentary` without a recipient (a
//!   preamble) -> `content` and the seed's `commentary`;
//! - a message to `functions.NAME` (or `NAME`) -> a tool call when the [`ToolGate`] allows
//!   NAME; otherwise it is dropped (neither a call nor text);
//! - unplaced text (a message without a channel or with an unknown one, text outside any
//!   message) -> reasoning when the output has a `final` message, else `content`. Streams hold
//!   unplaced text (and what follows it) back until a `final` message starts or the output
//!   ends, so that streamed and non-streamed answers agree;
//! - nothing after `<|return|>` or `<|call|>`;
//! - messages of other authors (the model imitating a user or a tool) are dropped;
//! - text of two messages that lands in one field is separated by `\n`, never glued.

use openai_types::{ChatCompletionRequest, Tool, ToolChoice, ToolChoiceMode};

use super::{classify, CallIds, Target};
use crate::parser::{EndReason, Event};

/// The functions a request lets the model call: its `tools`' names, narrowed by
/// `tool_choice` (`"none"`: none; a named choice: that one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolGate {
    allowed: Vec<String>,
}

impl ToolGate {
    /// No function may be called: every call the model writes is dropped.
    pub fn none() -> ToolGate {
        ToolGate::default()
    }

    /// These functions may be called.
    pub fn allow<I, S>(names: I) -> ToolGate
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ToolGate {
            allowed: names.into_iter().map(Into::into).collect(),
        }
    }

    /// From a request: the names of its `function` tools, none for `tool_choice: "none"`,
    /// only the named one for a named `tool_choice`.
    pub fn from_request(request: &ChatCompletionRequest) -> ToolGate {
        ToolGate::from_tools(
            request.tools.as_deref().unwrap_or_default(),
            request.tool_choice.as_ref(),
        )
    }

    /// From a request's `tools` and `tool_choice` (see [`ToolGate::from_request`]).
    pub fn from_tools(tools: &[Tool], tool_choice: Option<&ToolChoice>) -> ToolGate {
        let offered = tools
            .iter()
            .filter(|t| t.kind == "function")
            .map(|t| t.function.name.as_str());
        match tool_choice {
            Some(ToolChoice::Mode(ToolChoiceMode::None)) => ToolGate::none(),
            Some(ToolChoice::Named(n)) => {
                ToolGate::allow(offered.filter(|name| *name == n.function.name))
            }
            Some(ToolChoice::Mode(ToolChoiceMode::Auto | ToolChoiceMode::Required)) | None => {
                ToolGate::allow(offered)
            }
        }
    }

    /// May the model call `name` (without the `functions.` prefix)?
    pub fn allows(&self, name: &str) -> bool {
        !name.is_empty() && self.allowed.iter().any(|a| a == name)
    }
}

/// A piece of the OpenAI answer, in output order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Appended to `content`.
    Content(&'a str),
    /// Appended to the seed's `commentary` (preambles; they go to `content` too).
    Commentary(&'a str),
    /// Appended to `reasoning_content` / `reasoning`.
    Reasoning(&'a str),
    /// A new tool call, `index` counting from 0.
    CallStart {
        index: u32,
        id: &'a str,
        name: &'a str,
    },
    /// Appended to the `arguments` of call `index`.
    CallArgs { index: u32, text: &'a str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Content,
    Commentary,
    Reasoning,
}

/// Where the current message's text goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cur {
    Final,
    Preamble,
    Reasoning,
    Unplaced,
    Call(u32),
    Drop,
}

/// A piece held back while it is not known whether unplaced text is reasoning or content.
#[derive(Clone, Debug)]
enum Held {
    /// Text of message `msg` for a known field.
    Text(Field, u32, String),
    /// Unplaced text of message `msg`.
    Unplaced(u32, String),
    CallStart(u32, String, String),
    CallArgs(u32, String),
}

/// Parser events -> [`Piece`]s, by the rule in the module docs.
#[derive(Clone, Debug, Default)]
pub struct Router {
    gate: ToolGate,
    ids: CallIds,
    cur: Option<Cur>,
    /// Sequence number of the current message (1-based; 0 = none yet).
    msg: u32,
    /// The message each field last got text from (for separators).
    last: [u32; 3],
    seen_final: bool,
    /// `<|return|>` or `<|call|>` ended a message: the rest is ignored.
    stopped: bool,
    /// Pieces held back behind unplaced text; `None` when nothing is held.
    held: Option<Vec<Held>>,
    calls: u32,
    last_end: Option<EndReason>,
}

impl Router {
    pub fn new(gate: ToolGate, ids: CallIds) -> Router {
        Router {
            gate,
            ids,
            ..Router::default()
        }
    }

    /// Tool calls routed so far.
    pub fn call_count(&self) -> u32 {
        self.calls
    }

    /// How the last message that counted ended (`None` while one is open, or before any).
    pub fn last_end(&self) -> Option<EndReason> {
        self.last_end
    }

    fn target(&self, h: &crate::parser::Header) -> Cur {
        match classify(h) {
            Target::Content => Cur::Final,
            Target::Reasoning => Cur::Reasoning,
            Target::Commentary => Cur::Preamble,
            Target::Unplaced => Cur::Unplaced,
            Target::ToolCall(name) if self.gate.allows(&name) => Cur::Call(self.calls),
            Target::ToolCall(_) | Target::Ignore => Cur::Drop,
        }
    }

    /// Routes one parser event; pieces go to `sink`.
    pub fn on_event(&mut self, e: Event<'_>, sink: &mut dyn FnMut(Piece<'_>)) {
        if self.stopped {
            return;
        }
        match e {
            Event::MessageStart(h) => {
                self.msg += 1;
                self.last_end = None;
                let cur = self.target(h);
                match cur {
                    Cur::Final => {
                        self.seen_final = true;
                        self.release(Field::Reasoning, sink);
                    }
                    Cur::Call(index) => {
                        self.calls += 1;
                        let id = self.ids.next_id();
                        let name = match classify(h) {
                            Target::ToolCall(n) => n,
                            _ => String::new(),
                        };
                        match self.held.as_mut() {
                            Some(held) => held.push(Held::CallStart(index, id, name)),
                            None => sink(Piece::CallStart {
                                index,
                                id: &id,
                                name: &name,
                            }),
                        }
                    }
                    _ => {}
                }
                self.cur = Some(cur);
            }
            Event::ContentDelta(t) => match self.cur {
                Some(Cur::Final) => self.text(Field::Content, t, sink),
                Some(Cur::Preamble) => {
                    self.text(Field::Content, t, sink);
                    self.text(Field::Commentary, t, sink);
                }
                Some(Cur::Reasoning) => self.text(Field::Reasoning, t, sink),
                Some(Cur::Unplaced) if self.seen_final => self.text(Field::Reasoning, t, sink),
                Some(Cur::Unplaced) => self
                    .held
                    .get_or_insert_with(Vec::new)
                    .push(Held::Unplaced(self.msg, t.to_string())),
                Some(Cur::Call(index)) => match self.held.as_mut() {
                    Some(held) => held.push(Held::CallArgs(index, t.to_string())),
                    None => sink(Piece::CallArgs { index, text: t }),
                },
                Some(Cur::Drop) | None => {}
            },
            Event::MessageEnd(r) => {
                self.cur = None;
                self.last_end = Some(r);
                if matches!(r, EndReason::Call | EndReason::Return) {
                    self.stopped = true;
                }
            }
        }
    }

    /// The end of the output: held unplaced text is `content` (there was no final message).
    pub fn finish(&mut self, sink: &mut dyn FnMut(Piece<'_>)) {
        self.release(Field::Content, sink);
    }

    fn text(&mut self, field: Field, t: &str, sink: &mut dyn FnMut(Piece<'_>)) {
        match self.held.as_mut() {
            Some(held) => held.push(Held::Text(field, self.msg, t.to_string())),
            None => self.emit(field, self.msg, t, sink),
        }
    }

    /// Emits held pieces, unplaced text going to `unplaced`.
    fn release(&mut self, unplaced: Field, sink: &mut dyn FnMut(Piece<'_>)) {
        let Some(held) = self.held.take() else {
            return;
        };
        for h in held {
            match h {
                Held::Text(field, msg, t) => self.emit(field, msg, &t, sink),
                Held::Unplaced(msg, t) => self.emit(unplaced, msg, &t, sink),
                Held::CallStart(index, id, name) => sink(Piece::CallStart {
                    index,
                    id: &id,
                    name: &name,
                }),
                Held::CallArgs(index, text) => sink(Piece::CallArgs { index, text: &text }),
            }
        }
    }

    /// Text of message `msg` for `field`, after a `\n` when the field holds another
    /// message's text.
    fn emit(&mut self, field: Field, msg: u32, t: &str, sink: &mut dyn FnMut(Piece<'_>)) {
        let slot = &mut self.last[field as usize];
        let piece = |s| match field {
            Field::Content => Piece::Content(s),
            Field::Commentary => Piece::Commentary(s),
            Field::Reasoning => Piece::Reasoning(s),
        };
        if *slot != 0 && *slot != msg {
            sink(piece("\n"));
        }
        *slot = msg;
        sink(piece(t));
    }
}
