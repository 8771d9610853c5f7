//! The special tokens of the o200k_harmony vocabulary.
//!
//! Ids below [`FIRST_SPECIAL`] are ordinary byte-level BPE tokens of o200k_base; every id from
//! [`FIRST_SPECIAL`] to [`LAST_SPECIAL`] inclusive is a special token. Most of them are reserved
//! (`<|reserved_200013|>` ...) and never produced by a well-behaved model.

/// `<|startoftext|>`
pub const STARTOFTEXT: u32 = 199_998;
/// `<|endoftext|>`
pub const ENDOFTEXT: u32 = 199_999;
/// `<|return|>`: the assistant is done with its turn (final answer complete).
pub const RETURN: u32 = 200_002;
/// `<|constrain|>`: starts a constrained content type in a header (`<|constrain|>json`).
pub const CONSTRAIN: u32 = 200_003;
/// `<|channel|>`: starts the channel name in a header.
pub const CHANNEL: u32 = 200_005;
/// `<|start|>`: starts a message header.
pub const START: u32 = 200_006;
/// `<|end|>`: ends a message.
pub const END: u32 = 200_007;
/// `<|message|>`: ends a header, starts the content.
pub const MESSAGE: u32 = 200_008;
/// `<|call|>`: ends an assistant message addressed to a tool.
pub const CALL: u32 = 200_012;

/// First special id (`<|startoftext|>`).
pub const FIRST_SPECIAL: u32 = STARTOFTEXT;
/// Last special id (`<|reserved_201087|>`).
pub const LAST_SPECIAL: u32 = 201_087;
/// Vocabulary size of o200k_harmony (ids `0..VOCAB_SIZE`).
pub const VOCAB_SIZE: u32 = LAST_SPECIAL + 1;

/// Tokens that end the model's turn when sampled: `<|return|>` and `<|call|>`.
/// (`<|end|>` ends a message but the model may go on with another one.)
pub const STOP_TOKENS_FOR_ASSISTANT_ACTIONS: [u32; 2] = [RETURN, CALL];
/// Tokens that end a message: `<|return|>`, `<|call|>`, `<|end|>`.
pub const MESSAGE_END_TOKENS: [u32; 3] = [RETURN, CALL, END];

/// The named special tokens with their ids.
pub const NAMED_SPECIALS: [(&str, u32); 9] = [
    ("<|startoftext|>", STARTOFTEXT),
    ("<|endoftext|>", ENDOFTEXT),
    ("<|return|>", RETURN),
    ("<|constrain|>", CONSTRAIN),
    ("<|channel|>", CHANNEL),
    ("<|start|>", START),
    ("<|end|>", END),
    ("<|message|>", MESSAGE),
    ("<|call|>", CALL),
];

/// A special token, as the parsers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    StartOfText,
    EndOfText,
    Return,
    Constrain,
    Channel,
    Start,
    End,
    Message,
    Call,
    /// `<|reserved_N|>`, carrying its id.
    Reserved(u32),
}

impl Special {
    /// The special token with this id, or `None` for an ordinary (or out-of-range) id.
    pub fn from_id(id: u32) -> Option<Special> {
        Some(match id {
            STARTOFTEXT => Special::StartOfText,
            ENDOFTEXT => Special::EndOfText,
            RETURN => Special::Return,
            CONSTRAIN => Special::Constrain,
            CHANNEL => Special::Channel,
            START => Special::Start,
            END => Special::End,
            MESSAGE => Special::Message,
            CALL => Special::Call,
            FIRST_SPECIAL..=LAST_SPECIAL => Special::Reserved(id),
            _ => return None,
        })
    }

    /// The id of this special token.
    pub fn id(self) -> u32 {
        match self {
            Special::StartOfText => STARTOFTEXT,
            Special::EndOfText => ENDOFTEXT,
            Special::Return => RETURN,
            Special::Constrain => CONSTRAIN,
            Special::Channel => CHANNEL,
            Special::Start => START,
            Special::End => END,
            Special::Message => MESSAGE,
            Special::Call => CALL,
            Special::Reserved(id) => id,
        }
    }

    /// The literal text of a named special token (`<|channel|>`); `None` for reserved ones,
    /// whose text is built by [`special_text`].
    pub fn literal(self) -> Option<&'static str> {
        Some(match self {
            Special::StartOfText => "<|startoftext|>",
            Special::EndOfText => "<|endoftext|>",
            Special::Return => "<|return|>",
            Special::Constrain => "<|constrain|>",
            Special::Channel => "<|channel|>",
            Special::Start => "<|start|>",
            Special::End => "<|end|>",
            Special::Message => "<|message|>",
            Special::Call => "<|call|>",
            Special::Reserved(_) => return None,
        })
    }

    /// Parses the name between `<|` and `|>` (`channel`, `reserved_200013`).
    pub fn from_name(name: &[u8]) -> Option<Special> {
        Some(match name {
            b"startoftext" => Special::StartOfText,
            b"endoftext" => Special::EndOfText,
            b"return" => Special::Return,
            b"constrain" => Special::Constrain,
            b"channel" => Special::Channel,
            b"start" => Special::Start,
            b"end" => Special::End,
            b"message" => Special::Message,
            b"call" => Special::Call,
            _ => {
                let digits = name.strip_prefix(b"reserved_")?;
                if digits.is_empty() || digits.len() > 6 || digits[0] == b'0' {
                    return None;
                }
                let mut id: u32 = 0;
                for &d in digits {
                    if !d.is_ascii_digit() {
                        return None;
                    }
                    id = id * 10 + u32::from(d - b'0');
                }
                match Special::from_id(id) {
                    Some(Special::Reserved(id)) => Special::Reserved(id),
                    _ => return None,
                }
            }
        })
    }
}

/// Is this id a special token of o200k_harmony?
pub fn is_special(id: u32) -> bool {
    (FIRST_SPECIAL..=LAST_SPECIAL).contains(&id)
}

/// The text of special token `id` (`<|channel|>`, `<|reserved_200013|>`), or `None` when the id
/// is not special.
pub fn special_text(id: u32) -> Option<String> {
    let special = Special::from_id(id)?;
    Some(match special.literal() {
        Some(text) => text.to_string(),
        None => format!("<|reserved_{id}|>"),
    })
}

/// Every special token of o200k_harmony with its text, in id order (199998..=201087).
pub fn all_specials() -> impl Iterator<Item = (u32, String)> {
    (FIRST_SPECIAL..=LAST_SPECIAL).filter_map(|id| special_text(id).map(|t| (id, t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_round_trip_for_every_special() {
        for (id, text) in all_specials() {
            let name = &text.as_bytes()[2..text.len() - 2];
            let special = Special::from_name(name).expect("every special text parses back");
            assert_eq!(special.id(), id, "{text} must map back to its id");
        }
        assert_eq!(
            all_specials().count(),
            (LAST_SPECIAL - FIRST_SPECIAL + 1) as usize
        );
    }

    #[test]
    fn reserved_names_of_named_ids_are_not_specials() {
        assert_eq!(Special::from_name(b"reserved_200002"), None);
        assert_eq!(Special::from_name(b"reserved_201088"), None);
        assert_eq!(Special::from_name(b"reserved_0200013"), None);
        assert_eq!(
            Special::from_name(b"reserved_200013"),
            Some(Special::Reserved(200_013))
        );
    }
}
