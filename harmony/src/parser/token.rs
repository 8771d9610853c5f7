//! The token-level streaming parser.

use crate::message::Role;
use crate::parser::core::{ChannelKind, Core};
use crate::parser::Event;
use crate::tokens::{self, Special};
use crate::Tokenizer;

/// Content tokens counted per channel, for `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// Every token pushed.
    pub total: u32,
    /// Content tokens of `analysis` messages (the seed's `thinking_tokens`, OpenAI's
    /// `reasoning_tokens`).
    pub analysis: u32,
    /// Content tokens of `commentary` messages (preambles and tool calls).
    pub commentary: u32,
    /// Content tokens of `final` messages and messages without a channel.
    pub final_: u32,
}

/// Parses model output token by token. A token goes in; events come out through `sink`.
///
/// ```
/// # let tokenizer = harmony::Tokenizer::o200k_harmony().unwrap();
/// use harmony::{parser::TokenParser, Role};
/// let ids = tokenizer.encode_with_special_tokens("<|channel|>final<|message|>Hi!<|return|>").unwrap();
/// let mut parser = TokenParser::new(&tokenizer, Some(Role::Assistant));
/// let mut text = String::new();
/// for id in ids {
///     parser.push(id, &mut |e| if let harmony::parser::Event::ContentDelta(d) = e { text.push_str(d) });
/// }
/// parser.finish(&mut |_| {});
/// assert_eq!(text, "Hi!");
/// ```
#[derive(Clone)]
pub struct TokenParser {
    core: Core,
    tokenizer: Tokenizer,
    counts: TokenCounts,
}

impl TokenParser {
    /// `role`: the role of the first message when the prompt already holds its `<|start|>`
    /// (`Some(Role::Assistant)` after `<|start|>assistant`); `None` to expect `<|start|>`.
    pub fn new(tokenizer: &Tokenizer, role: Option<Role>) -> TokenParser {
        TokenParser {
            core: Core::new(role),
            tokenizer: tokenizer.clone(),
            counts: TokenCounts::default(),
        }
    }

    /// Feeds one token.
    #[inline]
    pub fn push<F: FnMut(Event<'_>) + ?Sized>(&mut self, id: u32, sink: &mut F) {
        self.counts.total += 1;
        if id >= tokens::FIRST_SPECIAL {
            match Special::from_id(id) {
                Some(sp) => self.core.on_special(sp, sink),
                None => self.core.on_text("\u{FFFD}".as_bytes(), sink),
            }
            return;
        }
        if self.core.in_content() {
            match self.core.channel_kind() {
                ChannelKind::Analysis => self.counts.analysis += 1,
                ChannelKind::Commentary => self.counts.commentary += 1,
                ChannelKind::Other => self.counts.final_ += 1,
            }
        }
        // An unknown id is U+FFFD, as the reference decodes it.
        let bytes = self.tokenizer.token_bytes_or_replacement(id);
        self.core.on_text(bytes, sink);
    }

    /// Feeds several tokens.
    pub fn push_all<F: FnMut(Event<'_>) + ?Sized>(&mut self, ids: &[u32], sink: &mut F) {
        for &id in ids {
            self.push(id, sink);
        }
    }

    /// Ends the output: an open message ends with [`crate::parser::EndReason::Eof`].
    pub fn finish<F: FnMut(Event<'_>) + ?Sized>(&mut self, sink: &mut F) {
        self.core.finish(sink);
    }

    /// Tokens counted so far.
    pub fn counts(&self) -> TokenCounts {
        self.counts
    }
}
