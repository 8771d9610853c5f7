//! The state machine both parsers drive. Input is a sequence of pieces: special tokens and
//! runs of text bytes. A run of bytes may be cut anywhere; the events do not depend on where
//! (only the cut points of content deltas do).

use crate::message::Role;
use crate::parser::{EndReason, Event, Header};
use crate::tokenizer::Utf8Stream;
use crate::tokens::Special;

/// A header longer than this (in bytes, without special tokens) is not a header: the model
/// skipped it, and the text is content.
pub(crate) const MAX_HEADER: usize = 256;

const CHANNEL: &[u8] = b"<|channel|>";
const CONSTRAIN: &[u8] = b"<|constrain|>";

/// The channels `usage` counts apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    Analysis,
    Commentary,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between messages. `buf` holds whitespace seen here (dropped if a header follows).
    ExpectStart,
    /// After `<|start|>`: `buf` holds the header bytes, special tokens written literally.
    Header,
    /// Inside content.
    Content,
}

#[derive(Clone, Debug)]
pub(crate) struct Core {
    state: State,
    buf: Vec<u8>,
    /// Role of the message whose header is being read, when known before it (the prompt ended
    /// with `<|start|>assistant`, or `<|channel|>` continued the previous message's role).
    role_hint: Option<Role>,
    header: Header,
    kind: ChannelKind,
    parts: Vec<(usize, usize)>,
    last_role: Role,
    utf8: Utf8Stream,
}

impl Core {
    pub(crate) fn new(role: Option<Role>) -> Core {
        Core {
            state: if role.is_some() {
                State::Header
            } else {
                State::ExpectStart
            },
            buf: Vec::with_capacity(64),
            role_hint: role,
            header: Header::default(),
            kind: ChannelKind::Other,
            parts: Vec::new(),
            last_role: role.unwrap_or(Role::Assistant),
            utf8: Utf8Stream::default(),
        }
    }

    /// Is the parser inside a message's content?
    #[inline]
    pub(crate) fn in_content(&self) -> bool {
        self.state == State::Content
    }

    /// The channel of the current message (meaningful while [`Core::in_content`]).
    #[inline]
    pub(crate) fn channel_kind(&self) -> ChannelKind {
        self.kind
    }

    #[inline]
    pub(crate) fn on_text<F: FnMut(Event<'_>) + ?Sized>(&mut self, bytes: &[u8], sink: &mut F) {
        if bytes.is_empty() {
            return;
        }
        match self.state {
            State::Content => self.utf8.push(bytes, &mut |s| sink(Event::ContentDelta(s))),
            State::Header => self.header_text(bytes, sink),
            State::ExpectStart => self.between_text(bytes, sink),
        }
    }

    /// Text known to be valid UTF-8: inside content with no partial character pending, it is
    /// emitted as is, without validating it again.
    #[inline]
    pub(crate) fn on_str<F: FnMut(Event<'_>) + ?Sized>(&mut self, text: &str, sink: &mut F) {
        if self.state == State::Content && !self.utf8.has_carry() {
            if !text.is_empty() {
                sink(Event::ContentDelta(text));
            }
        } else {
            self.on_text(text.as_bytes(), sink);
        }
    }

    fn header_text<F: FnMut(Event<'_>) + ?Sized>(&mut self, bytes: &[u8], sink: &mut F) {
        let newline = memchr::memchr(b'\n', bytes).map(|i| i + 1);
        let room = MAX_HEADER.saturating_sub(self.buf.len());
        let cut = match newline {
            Some(n) if n <= room => Some(n),
            _ if bytes.len() > room => Some(room),
            _ => None,
        };
        match cut {
            None => self.buf.extend_from_slice(bytes),
            Some(k) => {
                // Not a header after all: the model wrote text where a header belongs.
                self.buf.extend_from_slice(&bytes[..k]);
                self.degrade(sink);
                self.on_text(&bytes[k..], sink);
            }
        }
    }

    fn between_text<F: FnMut(Event<'_>) + ?Sized>(&mut self, bytes: &[u8], sink: &mut F) {
        match bytes.iter().position(|b| !b.is_ascii_whitespace()) {
            None => self.buf.extend_from_slice(bytes),
            Some(_) => {
                // Text outside any message: it becomes content of an assistant message.
                self.start_message(
                    Header {
                        role: Role::Assistant,
                        ..Header::default()
                    },
                    sink,
                );
                let pending = std::mem::take(&mut self.buf);
                self.on_text(&pending, sink);
                self.buf = pending;
                self.buf.clear();
                self.on_text(bytes, sink);
            }
        }
    }

    pub(crate) fn on_special<F: FnMut(Event<'_>) + ?Sized>(&mut self, sp: Special, sink: &mut F) {
        match self.state {
            State::ExpectStart => match sp {
                Special::Start => self.begin_header(None, &[]),
                Special::Channel => self.begin_header(Some(self.last_role), CHANNEL),
                Special::Message => {
                    self.buf.clear();
                    self.start_message(
                        Header {
                            role: self.last_role,
                            ..Header::default()
                        },
                        sink,
                    );
                }
                _ => {}
            },
            State::Header => match sp {
                Special::Message => {
                    self.parse_header_in_place();
                    self.buf.clear();
                    self.enter_content(sink);
                }
                Special::Channel => self.buf.extend_from_slice(CHANNEL),
                Special::Constrain => self.buf.extend_from_slice(CONSTRAIN),
                Special::Start => {
                    self.close_header(EndReason::Interrupted, sink);
                    self.begin_header(None, &[]);
                }
                Special::End | Special::Call | Special::Return => {
                    self.close_header(end_reason(sp), sink);
                }
                _ => {}
            },
            State::Content => match sp {
                Special::End | Special::Call | Special::Return => {
                    self.end_message(end_reason(sp), sink);
                }
                Special::Start => {
                    self.end_message(EndReason::Interrupted, sink);
                    self.begin_header(None, &[]);
                }
                Special::Channel => {
                    let role = self.header.role;
                    self.end_message(EndReason::Interrupted, sink);
                    self.begin_header(Some(role), CHANNEL);
                }
                _ => {}
            },
        }
    }

    /// End of output.
    pub(crate) fn finish<F: FnMut(Event<'_>) + ?Sized>(&mut self, sink: &mut F) {
        match self.state {
            State::ExpectStart => self.buf.clear(),
            State::Header => self.close_header(EndReason::Eof, sink),
            State::Content => self.end_message(EndReason::Eof, sink),
        }
    }

    fn begin_header(&mut self, role_hint: Option<Role>, prefix: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(prefix);
        self.role_hint = role_hint;
        self.state = State::Header;
    }

    fn start_message<F: FnMut(Event<'_>) + ?Sized>(&mut self, header: Header, sink: &mut F) {
        self.header = header;
        self.enter_content(sink);
    }

    /// `self.header` is set: the content begins.
    fn enter_content<F: FnMut(Event<'_>) + ?Sized>(&mut self, sink: &mut F) {
        self.kind = match self.header.channel.as_deref() {
            Some("analysis") => ChannelKind::Analysis,
            Some("commentary") => ChannelKind::Commentary,
            _ => ChannelKind::Other,
        };
        self.last_role = self.header.role;
        self.state = State::Content;
        sink(Event::MessageStart(&self.header));
    }

    fn end_message<F: FnMut(Event<'_>) + ?Sized>(&mut self, reason: EndReason, sink: &mut F) {
        self.utf8.finish(&mut |s| sink(Event::ContentDelta(s)));
        self.state = State::ExpectStart;
        self.buf.clear();
        sink(Event::MessageEnd(reason));
    }

    /// Does the header buffer hold anything besides whitespace and the role word?
    fn header_has_text(&self) -> bool {
        let (_, rest) = self.split_role(&self.buf);
        !rest.iter().all(|b| b.is_ascii_whitespace())
    }

    /// Does the header buffer hold a header token (`<|channel|>`, `<|constrain|>`, `to=`)?
    /// Such a buffer is a header even when `<|message|>` never came, and none of it is text.
    fn header_has_marker(&self) -> bool {
        has_marker(&self.buf)
    }

    /// The header was closed (by an end token, a new `<|start|>` or the end of output)
    /// before `<|message|>`. A buffer with header tokens gives nothing; other text is a
    /// message without a channel (the model wrote text where a header belongs).
    fn close_header<F: FnMut(Event<'_>) + ?Sized>(&mut self, reason: EndReason, sink: &mut F) {
        if !self.header_has_marker() && self.header_has_text() {
            self.degrade(sink);
            self.end_message(reason, sink);
        }
        self.buf.clear();
        self.state = State::ExpectStart;
    }

    /// Splits a leading role word (`assistant`, or the hinted role) off `bytes`.
    fn split_role<'b>(&self, bytes: &'b [u8]) -> (Option<Role>, &'b [u8]) {
        let end = bytes
            .iter()
            .position(|&b| b.is_ascii_whitespace() || b == b'<')
            .unwrap_or(bytes.len());
        let word = std::str::from_utf8(&bytes[..end])
            .ok()
            .and_then(Role::parse);
        match word {
            Some(role) => (Some(role), &bytes[end..]),
            None => (None, bytes),
        }
    }

    /// The header buffer was cut (a newline, or too long) before `<|message|>`. With header
    /// tokens, it is a header whose content starts after its last token; without, it is text
    /// (minus a leading role word) of a message without a channel.
    fn degrade<F: FnMut(Event<'_>) + ?Sized>(&mut self, sink: &mut F) {
        let buf = std::mem::take(&mut self.buf);
        let trim = |b: &[u8]| -> usize { b.iter().take_while(|c| c.is_ascii_whitespace()).count() };
        if has_marker(&buf) {
            let end = self.parse_header_from(&buf);
            let rest = &buf[end..];
            self.enter_content(sink);
            self.on_text(&rest[trim(rest)..], sink);
        } else {
            let (role_word, rest) = self.split_role(&buf);
            let role = self.role_hint.or(role_word).unwrap_or(Role::Assistant);
            self.start_message(
                Header {
                    role,
                    ..Header::default()
                },
                sink,
            );
            let rest = if role_word.is_some() {
                &rest[trim(rest)..]
            } else {
                rest
            };
            self.on_text(rest, sink);
        }
        self.buf = buf;
        self.buf.clear();
    }

    /// Parses a complete header (`<|message|>` was seen) into `self.header`.
    fn parse_header_in_place(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.parse_header_from(&buf);
        self.buf = buf;
    }

    /// Parses header bytes into `self.header`, token by token, as `openai-harmony` does for
    /// well-formed headers but never failing and never by position: the role (or a tool's
    /// name) is the first word; `<|channel|>NAME` is the channel; the `to=` word is the
    /// recipient; `<|constrain|>TYPE` (or a plain word last, after the recipient) is the
    /// content type; they may come in any order, and other words are ignored. Returns the
    /// byte offset just after the last header token.
    fn parse_header_from(&mut self, bytes: &[u8]) -> usize {
        let lossy;
        let text: &str = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                lossy = String::from_utf8_lossy(bytes).into_owned();
                &lossy
            }
        };
        self.split_parts(text);
        let parts = std::mem::take(&mut self.parts);
        let mut role = self.role_hint;
        let mut name: Option<&str> = None;
        let mut channel: Option<&str> = None;
        let mut recipient: Option<&str> = None;
        let mut content_type: Option<&str> = None;
        let mut end = 0;
        let mut after_recipient = false;
        for (i, &(a, b)) in parts.iter().enumerate() {
            let word = &text[a..b];
            if let Some(after) = word.strip_prefix("<|channel|>") {
                let n = after.find('<').unwrap_or(after.len());
                if channel.is_none() && n > 0 {
                    channel = Some(&after[..n]);
                }
                end = b;
            } else if word.starts_with("<|constrain|>") {
                content_type.get_or_insert(word);
                end = b;
            } else if let Some(r) = word.strip_prefix("to=") {
                if recipient.is_none() {
                    recipient = Some(r);
                    after_recipient = true;
                }
                end = b;
            } else if i == 0 {
                match (self.role_hint, Role::parse(word)) {
                    (Some(hint), _) if word == hint.as_str() => end = b,
                    (Some(_), _) => {}
                    (None, Some(Role::Tool)) => {
                        role = Some(Role::Tool);
                        name = Some(word);
                        end = b;
                    }
                    (None, Some(r)) => {
                        role = Some(r);
                        end = b;
                    }
                    (None, None) => {
                        // Unknown author: a tool (`browser.search`, `functions.x`).
                        role = Some(Role::Tool);
                        name = Some(word);
                        end = b;
                    }
                }
            } else if after_recipient && i + 1 == parts.len() && content_type.is_none() {
                content_type = Some(word);
                end = b;
            }
        }
        let h = &mut self.header;
        h.role = role.unwrap_or(self.last_role);
        set(&mut h.name, name);
        set(&mut h.channel, channel);
        set(&mut h.recipient, recipient);
        set(&mut h.content_type, content_type);
        self.parts = parts;
        // `text` may be a lossy copy: map the end back to the bytes (equal when valid).
        if text.len() == bytes.len() {
            end
        } else {
            bytes.len()
        }
    }

    /// Splits at ASCII whitespace and before every `<|channel|>` and `<|constrain|>`; ranges
    /// go to `self.parts`.
    fn split_parts(&mut self, s: &str) {
        self.parts.clear();
        let base = s.as_ptr() as usize;
        for word in s.split_ascii_whitespace() {
            let mut w = word;
            let mut off = w.as_ptr() as usize - base;
            while let Some(i) = next_marker(w) {
                self.parts.push((off, off + i));
                off += i;
                w = &w[i..];
            }
            if !w.is_empty() {
                self.parts.push((off, off + w.len()));
            }
        }
    }
}

/// Does `buf` hold a header token: `<|channel|>`, `<|constrain|>` or a `to=` word?
fn has_marker(buf: &[u8]) -> bool {
    memchr::memmem::find(buf, CHANNEL).is_some()
        || memchr::memmem::find(buf, CONSTRAIN).is_some()
        || buf
            .split(|b| b.is_ascii_whitespace() || *b == b'>')
            .any(|w| w.starts_with(b"to="))
}

/// Where the next `<|channel|>` or `<|constrain|>` after the first byte of `w` begins.
fn next_marker(w: &str) -> Option<usize> {
    let tail = w.get(1..)?;
    if !tail.contains('<') {
        return None;
    }
    [tail.find("<|channel|>"), tail.find("<|constrain|>")]
        .into_iter()
        .flatten()
        .min()
        .map(|i| i + 1)
}

/// Sets an optional string, reusing its allocation.
fn set(slot: &mut Option<String>, value: Option<&str>) {
    match (slot.as_mut(), value) {
        (Some(s), Some(v)) => {
            s.clear();
            s.push_str(v);
        }
        (None, Some(v)) => *slot = Some(v.to_string()),
        (_, None) => *slot = None,
    }
}

fn end_reason(sp: Special) -> EndReason {
    match sp {
        Special::Call => EndReason::Call,
        Special::Return => EndReason::Return,
        _ => EndReason::End,
    }
}
