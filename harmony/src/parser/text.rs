//! The text-level streaming parser: decoded text in which special tokens appear literally.

use crate::message::Role;
use crate::parser::core::Core;
use crate::parser::Event;
use crate::tokens::Special;

/// Longest special-token name (`reserved_201087`).
const MAX_NAME: usize = 15;

enum Match {
    Special(Special, usize),
    NotSpecial,
    NeedMore,
}

/// Does `buf` (starting with `<`) start with a special token's text?
#[inline]
fn match_special(buf: &[u8]) -> Match {
    if buf.len() < 2 {
        return Match::NeedMore;
    }
    if buf[1] != b'|' {
        return Match::NotSpecial;
    }
    for j in 2..buf.len() {
        let c = buf[j];
        if c == b'|' {
            return match buf.get(j + 1) {
                None => Match::NeedMore,
                Some(b'>') => match Special::from_name(&buf[2..j]) {
                    Some(sp) => Match::Special(sp, j + 2),
                    None => Match::NotSpecial,
                },
                Some(_) => Match::NotSpecial,
            };
        }
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') || j - 2 >= MAX_NAME {
            return Match::NotSpecial;
        }
    }
    Match::NeedMore
}

/// Parses decoded model output fed in chunks split at any byte (SSE frames, network reads).
/// Special tokens are recognized by their text (`<|channel|>`); a special token split across
/// chunks is held back until it is complete. Produces the same events as
/// [`crate::parser::TokenParser`] on the same output.
#[derive(Clone)]
pub struct TextParser {
    core: Core,
    /// A possible special token cut by the end of the last chunk (starts with `<`).
    pending: Vec<u8>,
}

impl TextParser {
    /// `role`: as for [`crate::parser::TokenParser::new`].
    pub fn new(role: Option<Role>) -> TextParser {
        TextParser {
            core: Core::new(role),
            pending: Vec::with_capacity(32),
        }
    }

    /// Feeds a chunk of bytes (it may end inside a character or a special token).
    pub fn push<F: FnMut(Event<'_>) + ?Sized>(&mut self, chunk: &[u8], sink: &mut F) {
        let mut chunk = chunk;
        if !self.pending.is_empty() {
            chunk = self.resolve_pending(chunk, sink);
        }
        let mut text_start = 0;
        let mut pos = 0;
        while let Some(i) = memchr::memchr(b'<', &chunk[pos..]) {
            let at = pos + i;
            match match_special(&chunk[at..]) {
                Match::Special(sp, len) => {
                    self.core.on_text(&chunk[text_start..at], sink);
                    self.core.on_special(sp, sink);
                    pos = at + len;
                    text_start = pos;
                }
                Match::NotSpecial => pos = at + 1,
                Match::NeedMore => {
                    self.core.on_text(&chunk[text_start..at], sink);
                    self.pending.extend_from_slice(&chunk[at..]);
                    return;
                }
            }
        }
        self.core.on_text(&chunk[text_start..], sink);
    }

    /// Feeds a chunk of text. Same events as [`TextParser::push`] on its bytes; faster, as
    /// valid text is not validated again.
    pub fn push_str<F: FnMut(Event<'_>) + ?Sized>(&mut self, chunk: &str, sink: &mut F) {
        let mut start = 0;
        if !self.pending.is_empty() {
            let rest = self.resolve_pending(chunk.as_bytes(), sink);
            start = chunk.len() - rest.len();
            if !chunk.is_char_boundary(start) {
                // the held-back bytes took part of a character: go on byte-wise
                self.push(rest, sink);
                return;
            }
        }
        let s = &chunk[start..];
        let bytes = s.as_bytes();
        let mut text_start = 0;
        let mut pos = 0;
        while let Some(i) = memchr::memchr(b'<', &bytes[pos..]) {
            let at = pos + i;
            match match_special(&bytes[at..]) {
                Match::Special(sp, len) => {
                    self.core.on_str(&s[text_start..at], sink);
                    self.core.on_special(sp, sink);
                    pos = at + len;
                    text_start = pos;
                }
                Match::NotSpecial => pos = at + 1,
                Match::NeedMore => {
                    self.core.on_str(&s[text_start..at], sink);
                    self.pending.extend_from_slice(&bytes[at..]);
                    return;
                }
            }
        }
        self.core.on_str(&s[text_start..], sink);
    }

    /// Completes the held-back prefix with bytes of `chunk`; returns what is left of `chunk`.
    fn resolve_pending<'c, F: FnMut(Event<'_>) + ?Sized>(
        &mut self,
        mut chunk: &'c [u8],
        sink: &mut F,
    ) -> &'c [u8] {
        while !self.pending.is_empty() {
            let Some((&b, rest)) = chunk.split_first() else {
                return chunk;
            };
            self.pending.push(b);
            chunk = rest;
            loop {
                match match_special(&self.pending) {
                    Match::NeedMore => break,
                    Match::Special(sp, _) => {
                        self.core.on_special(sp, sink);
                        self.pending.clear();
                        break;
                    }
                    Match::NotSpecial => {
                        let next = memchr::memchr(b'<', &self.pending[1..])
                            .map(|j| j + 1)
                            .unwrap_or(self.pending.len());
                        self.core.on_text(&self.pending[..next], sink);
                        self.pending.drain(..next);
                        if self.pending.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        chunk
    }

    /// Ends the output: held-back text is flushed and an open message ends.
    pub fn finish<F: FnMut(Event<'_>) + ?Sized>(&mut self, sink: &mut F) {
        let pending = std::mem::take(&mut self.pending);
        self.core.on_text(&pending, sink);
        self.core.finish(sink);
    }
}
