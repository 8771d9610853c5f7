//! Streaming parsers for model output.
//!
//! - [`TokenParser`] takes token ids;
//! - [`TextParser`] takes decoded text in which special tokens appear literally
//!   (`<|channel|>`), in chunks split at any byte.
//!
//! Both drive the same state machine ([`core`]), so for the same output they produce the same
//! events (content deltas may be cut at different places; their concatenation per message is
//! the same). Events come out through a callback, borrowing the parser's buffers: nothing is
//! allocated per token. [`OwnedEvent`] and [`collect`] help where allocation is fine.
//!
//! Both are tolerant: output without a header, text before the first header, unknown channels,
//! stray special tokens and a stream cut off anywhere all give a best-effort result (text that
//! cannot be placed becomes content of an assistant message without a channel, which the
//! OpenAI mapping places by its unplaced-text rule). Headers are read token by token (role,
//! `<|channel|>`, `to=`, `<|constrain|>`, in any order); a header closed before `<|message|>`
//! gives no message, so none of its words becomes text. They never fail.

pub(crate) mod core;
mod text;
mod token;

use serde::Serialize;

pub use text::TextParser;
pub use token::{TokenCounts, TokenParser};

use crate::message::Role;

/// The header of a message, as parsed.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
pub struct Header {
    pub role: Role,
    /// Author name; for tool messages, the tool (`functions.get_weather`).
    pub name: Option<String>,
    pub channel: Option<String>,
    /// `to=...` without the `to=` (`functions.get_weather`).
    pub recipient: Option<String>,
    /// `json`, `code`, `<|constrain|>json`.
    pub content_type: Option<String>,
}

/// Why a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `<|end|>`
    End,
    /// `<|call|>`: a tool call; the model waits for the result.
    Call,
    /// `<|return|>`: the model is done.
    Return,
    /// A new header (`<|start|>` or `<|channel|>`) began without an end token.
    Interrupted,
    /// The output stopped (end of stream, `max_tokens`) inside the message.
    Eof,
}

/// A parser event. Borrows the parser's state; see [`Event::to_owned`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    MessageStart(&'a Header),
    /// A piece of content; never empty and never ends inside a multi-byte character.
    ContentDelta(&'a str),
    MessageEnd(EndReason),
}

/// An owned [`Event`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum OwnedEvent {
    MessageStart(Header),
    ContentDelta { text: String },
    MessageEnd { reason: EndReason },
}

impl Event<'_> {
    pub fn to_owned(&self) -> OwnedEvent {
        match *self {
            Event::MessageStart(h) => OwnedEvent::MessageStart(h.clone()),
            Event::ContentDelta(t) => OwnedEvent::ContentDelta {
                text: t.to_string(),
            },
            Event::MessageEnd(reason) => OwnedEvent::MessageEnd { reason },
        }
    }
}

/// Merges adjacent content deltas, so that event lists from different chunkings compare equal.
pub fn coalesce(events: Vec<OwnedEvent>) -> Vec<OwnedEvent> {
    let mut out: Vec<OwnedEvent> = Vec::with_capacity(events.len());
    for e in events {
        if let (Some(OwnedEvent::ContentDelta { text: prev }), OwnedEvent::ContentDelta { text }) =
            (out.last_mut(), &e)
        {
            prev.push_str(text);
            continue;
        }
        out.push(e);
    }
    out
}

/// A parsed message: header and whole content.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
pub struct ParsedMessage {
    pub header: Header,
    pub content: String,
    /// `None` while the message is still open.
    pub end: Option<EndReason>,
}

/// Builds whole messages from events.
#[derive(Clone, Debug, Default)]
pub struct MessageCollector {
    pub messages: Vec<ParsedMessage>,
}

impl MessageCollector {
    pub fn on_event(&mut self, e: Event<'_>) {
        match e {
            Event::MessageStart(h) => self.messages.push(ParsedMessage {
                header: h.clone(),
                content: String::new(),
                end: None,
            }),
            Event::ContentDelta(t) => {
                if let Some(m) = self.messages.last_mut() {
                    m.content.push_str(t);
                }
            }
            Event::MessageEnd(r) => {
                if let Some(m) = self.messages.last_mut() {
                    m.end = Some(r);
                }
            }
        }
    }
}

/// Parses a whole completion (token ids after `<|start|>assistant`) into messages.
pub fn parse_completion_tokens(tokenizer: &crate::Tokenizer, ids: &[u32]) -> Vec<ParsedMessage> {
    let mut parser = TokenParser::new(tokenizer, Some(Role::Assistant));
    let mut c = MessageCollector::default();
    for &id in ids {
        parser.push(id, &mut |e| c.on_event(e));
    }
    parser.finish(&mut |e| c.on_event(e));
    c.messages
}

/// Parses whole decoded text (special tokens literal) into messages; `role` is the role of
/// a message whose `<|start|>` the text does not contain (`Some(Assistant)` for a completion).
pub fn parse_text(text: &str, role: Option<Role>) -> Vec<ParsedMessage> {
    let mut parser = TextParser::new(role);
    let mut c = MessageCollector::default();
    parser.push(text.as_bytes(), &mut |e| c.on_event(e));
    parser.finish(&mut |e| c.on_event(e));
    c.messages
}

/// Runs `f` with a sink that collects owned events.
pub fn collect(f: impl FnOnce(&mut dyn FnMut(Event<'_>))) -> Vec<OwnedEvent> {
    let mut out = Vec::new();
    f(&mut |e| out.push(e.to_owned()));
    out
}
