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
    /// Scratch for header parsing (reused).
    scratch: String,
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
            scratch: String::new(),
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
                    if self.header_has_text() {
                        self.degrade(sink);
                        self.end_message(EndReason::Interrupted, sink);
                    }
                    self.begin_header(None, &[]);
                }
                Special::End | Special::Call | Special::Return => {
                    if self.header_has_text() {
                        self.degrade(sink);
                        self.end_message(end_reason(sp), sink);
                    }
                    self.buf.clear();
                    self.state = State::ExpectStart;
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
            State::Header => {
                if self.header_has_text() {
                    self.degrade(sink);
                    self.end_message(EndReason::Eof, sink);
                }
                self.buf.clear();
                self.state = State::ExpectStart;
            }
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

    /// The header buffer was not a header: start a message whose content is the buffer (minus a
    /// leading role word, and with a `<|channel|>NAME` taken as the channel).
    fn degrade<F: FnMut(Event<'_>) + ?Sized>(&mut self, sink: &mut F) {
        let buf = std::mem::take(&mut self.buf);
        let (role_word, mut rest) = self.split_role(&buf);
        let mut channel = None;
        let mut tail: &[u8] = &[];
        if let Some(i) = memchr::memmem::find(rest, CHANNEL) {
            let after = &rest[i + CHANNEL.len()..];
            let n = after
                .iter()
                .position(|&b| b.is_ascii_whitespace() || b == b'<')
                .unwrap_or(after.len());
            if n > 0 {
                channel = Some(String::from_utf8_lossy(&after[..n]).into_owned());
            }
            tail = &after[n..];
            rest = &rest[..i];
        }
        let role = self.role_hint.or(role_word).unwrap_or(Role::Assistant);
        let header = Header {
            role,
            channel,
            ..Header::default()
        };
        self.start_message(header, sink);
        let trim = |b: &[u8]| -> usize { b.iter().take_while(|c| c.is_ascii_whitespace()).count() };
        let rest = if role_word.is_some() {
            &rest[trim(rest)..]
        } else {
            rest
        };
        let tail = if rest.is_empty() {
            &tail[trim(tail)..]
        } else {
            tail
        };
        self.on_text(rest, sink);
        self.on_text(tail, sink);
        self.buf = buf;
        self.buf.clear();
    }

    /// Parses a complete header (`<|message|>` was seen) into `self.header`, as `openai-harmony`
    /// does, but never failing: what it cannot place it drops. Reuses the header's strings
    /// and a scratch buffer, so a steady stream of messages allocates nothing here.
    fn parse_header_in_place(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let lossy;
        let text: &str = match std::str::from_utf8(&self.buf) {
            Ok(t) => t,
            Err(_) => {
                lossy = String::from_utf8_lossy(&self.buf).into_owned();
                &lossy
            }
        };
        // `<|channel|>NAME`: NAME runs to whitespace or `<`; the rest of the header is what
        // surrounds it.
        let mut channel: Option<(usize, usize)> = None;
        let body = match memchr::memmem::find(text.as_bytes(), CHANNEL) {
            Some(idx) => {
                let after = &text[idx + CHANNEL.len()..];
                let end = after
                    .find(|c: char| c.is_whitespace() || c == '<')
                    .unwrap_or(after.len());
                scratch.push_str(&text[..idx]);
                scratch.push_str(&after[end..]);
                let body = scratch.len();
                if end > 0 {
                    scratch.push_str(&after[..end]);
                    channel = Some((body, scratch.len()));
                }
                body
            }
            None => {
                scratch.push_str(text);
                scratch.len()
            }
        };
        let trimmed = scratch[..body].trim();
        let offset = trimmed.as_ptr() as usize - scratch.as_ptr() as usize;
        self.split_parts(trimmed, offset);
        let parts = std::mem::take(&mut self.parts);
        let mut parts_slice: &[(usize, usize)] = &parts;
        let part = |r: &(usize, usize)| &scratch[r.0..r.1];

        let mut name: Option<&str> = None;
        let role = match self.role_hint {
            Some(r) => r,
            None => match parts_slice.first().map(part) {
                None => self.last_role,
                Some(first) => match Role::parse(first) {
                    Some(Role::Tool) => {
                        name = Some(first);
                        Role::Tool
                    }
                    Some(r) => r,
                    None => {
                        // Unknown author: a tool (`browser.search`, `functions.x`).
                        parts_slice = &parts_slice[1..];
                        name = Some(first);
                        Role::Tool
                    }
                },
            },
        };
        if parts_slice.first().map(part) == Some(role.as_str()) {
            parts_slice = &parts_slice[1..];
        }
        let mut recipient: Option<&str> = None;
        let mut content_type: Option<&str> = None;
        if let Some((last, rest)) = parts_slice.split_last() {
            let last = part(last);
            if let Some(r) = last.strip_prefix("to=") {
                recipient = Some(r);
            } else if rest.is_empty() {
                recipient = Some(last);
            } else {
                content_type = Some(last);
                if let Some(raw) = rest.last().map(part) {
                    recipient = Some(raw.strip_prefix("to=").unwrap_or(raw));
                }
            }
        }
        let h = &mut self.header;
        h.role = role;
        set(&mut h.name, name);
        set(&mut h.channel, channel.map(|(a, b)| &scratch[a..b]));
        set(&mut h.recipient, recipient);
        set(&mut h.content_type, content_type);
        self.parts = parts;
        self.scratch = scratch;
    }

    /// Splits at ASCII whitespace and before every `<|constrain|>` (the reference inserts a
    /// space before the marker, then splits at whitespace); ranges go to `self.parts`.
    fn split_parts(&mut self, s: &str, offset: usize) {
        self.parts.clear();
        let base = s.as_ptr() as usize - offset;
        for word in s.split_ascii_whitespace() {
            let mut w = word;
            let mut off = w.as_ptr() as usize - base;
            while let Some(i) = w
                .get(1..)
                .filter(|t| t.contains('<'))
                .and_then(|t| t.find("<|constrain|>"))
                .map(|i| i + 1)
            {
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
