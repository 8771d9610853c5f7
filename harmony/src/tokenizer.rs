//! The o200k_harmony tokenizer, on the `tokenizers` crate.
//!
//! Two ways to get one:
//! - [`Tokenizer::from_file`] / [`Tokenizer::from_dir`] load a model folder's `tokenizer.json`;
//! - [`Tokenizer::o200k_harmony`] builds the vocabulary with no file from outside, from the
//!   o200k_base ranks that the `tiktoken-rs` crate embeds: ranks become byte-level BPE merges
//!   (as `transformers`' `TikTokenConverter` does) and the harmony special tokens
//!   199998..=201087 are added on top. It is built once, lazily, and shared.
//!
//! Encoding goes through `tokenizers`; decoding goes through a flat id -> bytes table, so it
//! never fails and never allocates per token. [`StreamDecoder`] turns ids into text deltas that
//! never split a multi-byte character.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::tokens::{self, NAMED_SPECIALS};

/// The pre-tokenization pattern of o200k_base / o200k_harmony.
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+",
);

/// Number of ordinary (non-special) tokens in o200k_base.
const O200K_ORDINARY: u32 = tokens::FIRST_SPECIAL;

/// Why a tokenizer could not be loaded or built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("could not load tokenizer from `{path}`: {message}")]
    Load { path: PathBuf, message: String },
    #[error("could not build the built-in o200k_harmony tokenizer: {0}")]
    Build(String),
    #[error("tokenizer maps special token `{token}` to id {found:?}, harmony needs {expected}")]
    SpecialTokenMismatch {
        token: String,
        expected: u32,
        found: Option<u32>,
    },
}

/// Why text could not be encoded (the `tokenizers` pipeline reported an error).
#[derive(Debug, thiserror::Error)]
#[error("could not encode text: {0}")]
pub struct EncodeError(String);

/// The o200k_harmony tokenizer. Cloning is cheap (shared inner state).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Special tokens are recognized in the input (`encode_with_special_tokens`).
    with_specials: tokenizers::Tokenizer,
    /// Special tokens are encoded as ordinary text (`encode_ordinary`).
    ordinary: tokenizers::Tokenizer,
    table: TokenTable,
    /// The most input bytes one token stands for (the longest token, special tokens' text
    /// included); `None` when the pipeline normalizes text, so that a token's bytes need not
    /// be the bytes it was encoded from.
    max_token_bytes: Option<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.table.len())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let hf = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Tokenizer::from_hf(hf)
    }

    /// Loads `tokenizer.json` from a model folder.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Wraps a `tokenizers` tokenizer; checks that the harmony special tokens have their ids.
    pub fn from_hf(hf: tokenizers::Tokenizer) -> Result<Tokenizer, TokenizerError> {
        for (text, id) in NAMED_SPECIALS {
            let found = hf.token_to_id(text);
            if found != Some(id) {
                return Err(TokenizerError::SpecialTokenMismatch {
                    token: text.to_string(),
                    expected: id,
                    found,
                });
            }
        }
        let table = TokenTable::from_hf(&hf);
        Tokenizer::from_hf_with_table(hf, table)
    }

    /// The built-in o200k_harmony tokenizer (built once, on first use, from data compiled into
    /// the binary; no file is read).
    pub fn o200k_harmony() -> Result<Tokenizer, TokenizerError> {
        static BUILT: OnceLock<Result<Tokenizer, String>> = OnceLock::new();
        BUILT
            .get_or_init(|| build_o200k_harmony().map_err(|e| e.to_string()))
            .clone()
            .map_err(TokenizerError::Build)
    }

    /// The underlying `tokenizers` tokenizer (special tokens recognized in input).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner.with_specials
    }

    /// Number of ids the tokenizer knows (201088 for o200k_harmony).
    pub fn vocab_size(&self) -> usize {
        self.inner.table.len()
    }

    /// A lower bound on the number of tokens that `text_bytes` bytes of text encode to, in
    /// either mode, found without encoding: every token stands for at most
    /// the longest token's bytes. 0 when the tokenizer normalizes text (no bound is known).
    /// Used to refuse a prompt that cannot fit a context before spending time encoding it.
    pub fn min_tokens_for_bytes(&self, text_bytes: usize) -> usize {
        match self.inner.max_token_bytes {
            Some(m) => text_bytes.div_ceil(m),
            None => 0,
        }
    }

    /// Encodes text with special-token text encoded as ordinary text, appending to `into`.
    pub fn encode_ordinary_into<B: Extend<u32>>(
        &self,
        text: &str,
        into: &mut B,
    ) -> Result<(), EncodeError> {
        if text.is_empty() {
            return Ok(());
        }
        let enc = self
            .inner
            .ordinary
            .encode_fast(text, false)
            .map_err(|e| EncodeError(e.to_string()))?;
        into.extend(enc.get_ids().iter().copied());
        Ok(())
    }

    /// Encodes text with special-token text encoded as ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        let mut out = Vec::new();
        self.encode_ordinary_into(text, &mut out)?;
        Ok(out)
    }

    /// Encodes text; special-token text (`<|start|>`) becomes the special token.
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .inner
            .with_specials
            .encode_fast(text, false)
            .map_err(|e| EncodeError(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes of one token (special tokens give their text, `<|channel|>`); `None` for an
    /// unknown id.
    #[inline]
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner.table.get(id)
    }

    /// Appends the bytes of `ids` to `out`; an unknown id gives U+FFFD.
    pub fn decode_bytes_into(&self, ids: &[u32], out: &mut Vec<u8>) {
        for &id in ids {
            out.extend_from_slice(self.token_bytes_or_replacement(id));
        }
    }

    /// The bytes of one token, or those of U+FFFD for an unknown id.
    #[inline]
    pub fn token_bytes_or_replacement(&self, id: u32) -> &[u8] {
        self.inner.table.get(id).unwrap_or(REPLACEMENT.as_bytes())
    }

    /// Decodes ids to text; special tokens appear as their text, unknown ids and invalid UTF-8
    /// become U+FFFD. Never fails.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        self.decode_bytes_into(ids, &mut bytes);
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder {
            tokenizer: self.clone(),
            utf8: Utf8Stream::default(),
        }
    }
}

/// Turns ids into text deltas; a delta never ends inside a multi-byte character (the
/// incomplete bytes wait for the next token). Invalid bytes become U+FFFD, as
/// `String::from_utf8_lossy` would make them over the whole sequence.
#[derive(Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    utf8: Utf8Stream,
}

impl StreamDecoder {
    /// Appends the complete characters that `id` finishes to `out`.
    pub fn push_into(&mut self, id: u32, out: &mut String) {
        let bytes = self.tokenizer.token_bytes_or_replacement(id);
        self.utf8.push(bytes, &mut |s| out.push_str(s));
    }

    /// The complete characters that `id` finishes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let mut out = String::new();
        self.push_into(id, &mut out);
        out
    }

    /// Flushes bytes left at the end of the stream (as U+FFFD).
    pub fn finish_into(&mut self, out: &mut String) {
        self.utf8.finish(&mut |s| out.push_str(s));
    }

    /// Flushes bytes left at the end of the stream (as U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.finish_into(&mut out);
        out
    }
}

/// Incremental lossy UTF-8 decoding: feeds bytes split anywhere, emits `&str` pieces whose
/// concatenation equals `String::from_utf8_lossy` of all the bytes.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Utf8Stream {
    carry: [u8; 4],
    carry_len: u8,
}

const REPLACEMENT: &str = "\u{FFFD}";

impl Utf8Stream {
    /// Is a partial character waiting for its next bytes?
    #[inline]
    pub(crate) fn has_carry(&self) -> bool {
        self.carry_len > 0
    }

    /// Feeds bytes; calls `emit` with each complete piece of text (never empty).
    #[inline]
    pub(crate) fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&str)) {
        if self.carry_len > 0 {
            bytes = self.complete_carry(bytes, emit);
        }
        loop {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    if !s.is_empty() {
                        emit(s);
                    }
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if valid > 0 {
                        // SAFETY-free: from_utf8 validated this prefix.
                        if let Ok(s) = std::str::from_utf8(&bytes[..valid]) {
                            emit(s);
                        }
                    }
                    match e.error_len() {
                        Some(n) => {
                            emit(REPLACEMENT);
                            bytes = &bytes[valid + n..];
                        }
                        None => {
                            let rest = &bytes[valid..];
                            self.carry[..rest.len()].copy_from_slice(rest);
                            self.carry_len = rest.len() as u8;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Completes (or rejects) the carried partial character with the first bytes of `bytes`;
    /// returns the bytes not consumed.
    fn complete_carry<'b>(&mut self, bytes: &'b [u8], emit: &mut impl FnMut(&str)) -> &'b [u8] {
        let have = self.carry_len as usize;
        let take = bytes.len().min(4 - have);
        let mut tmp = [0u8; 4];
        tmp[..have].copy_from_slice(&self.carry[..have]);
        tmp[have..have + take].copy_from_slice(&bytes[..take]);
        let window = &tmp[..have + take];
        let first_len = utf8_len(window[0]);
        if first_len <= window.len() {
            if let Ok(s) = std::str::from_utf8(&window[..first_len]) {
                emit(s);
                self.carry_len = 0;
                return &bytes[first_len - have..];
            }
        }
        match std::str::from_utf8(window) {
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => {
                // Still incomplete: every byte of `bytes` joins the carry.
                self.carry[..have + take].copy_from_slice(window);
                self.carry_len = (have + take) as u8;
                &bytes[take..]
            }
            Err(e) => {
                // The carried prefix cannot be completed: it is one replacement character
                // (the maximal invalid subpart); bytes after it are read again.
                let n = e.error_len().unwrap_or(have).max(1);
                emit(REPLACEMENT);
                self.carry_len = 0;
                &bytes[n.saturating_sub(have).min(bytes.len())..]
            }
            Ok(_) => {
                // Unreachable for a carried lead byte; treat the carry as complete text.
                self.carry_len = 0;
                if let Ok(s) = std::str::from_utf8(window) {
                    emit(s);
                }
                &bytes[take..]
            }
        }
    }

    /// Ends the stream: a carried partial character becomes U+FFFD.
    #[inline]
    pub(crate) fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        if self.carry_len > 0 {
            self.carry_len = 0;
            emit(REPLACEMENT);
        }
    }
}

#[inline]
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// Flat id -> bytes table.
struct TokenTable {
    bytes: Vec<u8>,
    /// `offsets[id]..offsets[id + 1]`; an empty range with `known[id] == false` is unknown.
    offsets: Vec<u32>,
    known: Vec<bool>,
}

impl TokenTable {
    fn len(&self) -> usize {
        self.known.len()
    }

    #[inline]
    fn get(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        if *self.known.get(i)? {
            let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
            Some(&self.bytes[a..b])
        } else {
            None
        }
    }

    /// Bytes of the longest known token.
    fn max_len(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }

    fn from_entries(entries: Vec<Option<Vec<u8>>>) -> TokenTable {
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len() + 1);
        let mut known = Vec::with_capacity(entries.len());
        offsets.push(0);
        for e in entries {
            known.push(e.is_some());
            if let Some(b) = e {
                bytes.extend_from_slice(&b);
            }
            offsets.push(bytes.len() as u32);
        }
        TokenTable {
            bytes,
            offsets,
            known,
        }
    }

    fn from_hf(hf: &tokenizers::Tokenizer) -> TokenTable {
        let unicode_to_byte: HashMap<char, u8> = byte_to_unicode()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let vocab = hf.get_vocab(true);
        let added = hf.get_added_tokens_decoder();
        let max_id = vocab.values().copied().max().unwrap_or(0) as usize;
        let mut entries: Vec<Option<Vec<u8>>> = vec![None; max_id + 1];
        for (token, id) in vocab {
            let bytes = if added.contains_key(&id) {
                token.into_bytes()
            } else {
                let mut b = Vec::with_capacity(token.len());
                for c in token.chars() {
                    match unicode_to_byte.get(&c) {
                        Some(&byte) => b.push(byte),
                        None => {
                            let mut buf = [0u8; 4];
                            b.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                b
            };
            entries[id as usize] = Some(bytes);
        }
        TokenTable::from_entries(entries)
    }
}

/// GPT-2's byte -> printable character table used by byte-level BPE.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            let c = 256 + n;
            n += 1;
            c
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

fn build_o200k_harmony() -> Result<Tokenizer, TokenizerError> {
    let build = |m: String| TokenizerError::Build(m);
    let base = tiktoken_rs::o200k_base().map_err(|e| build(e.to_string()))?;
    let mut ranks: Vec<Vec<u8>> = Vec::with_capacity(O200K_ORDINARY as usize);
    for rank in 0..O200K_ORDINARY {
        let bytes = base
            .decode_bytes(&[rank])
            .map_err(|e| build(format!("rank {rank}: {e}")))?;
        ranks.push(bytes);
    }
    drop(base);

    let to_unicode = byte_to_unicode();
    let as_str = |b: &[u8]| -> String { b.iter().map(|&x| to_unicode[x as usize]).collect() };

    // Ranks -> merges, as transformers' TikTokenConverter: for each token, every split into two
    // tokens of the vocabulary is a merge, ordered by the rank of the token it builds.
    let rank_of: HashMap<&[u8], u32> = ranks
        .iter()
        .enumerate()
        .map(|(r, b)| (b.as_slice(), r as u32))
        .collect();
    let mut merges: Vec<(String, String)> = Vec::with_capacity(ranks.len() * 2);
    let mut local: Vec<(u32, u32, usize)> = Vec::new();
    for token in &ranks {
        if token.len() < 2 {
            continue;
        }
        local.clear();
        for i in 1..token.len() {
            let (l, r) = token.split_at(i);
            if let (Some(&rl), Some(&rr)) = (rank_of.get(l), rank_of.get(r)) {
                local.push((rl, rr, i));
            }
        }
        local.sort_unstable();
        for &(_, _, i) in &local {
            let (l, r) = token.split_at(i);
            merges.push((as_str(l), as_str(r)));
        }
    }
    let vocab: Vocab = ranks
        .iter()
        .enumerate()
        .map(|(r, b)| (as_str(b), r as u32))
        .collect();
    drop(rank_of);

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(true)
        .build()
        .map_err(|e| build(e.to_string()))?;

    let split = Split::new(
        SplitPattern::Regex(O200K_PATTERN.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| build(e.to_string()))?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]);
    let mut hf = tokenizers::Tokenizer::new(bpe);
    hf.with_pre_tokenizer(Some(pre));
    hf.with_decoder(Some(ByteLevel::new(false, false, false)));
    let specials: Vec<AddedToken> = tokens::all_specials()
        .map(|(_, text)| AddedToken::from(text, true))
        .collect();
    hf.add_special_tokens(&specials);

    let mut entries: Vec<Option<Vec<u8>>> = ranks.into_iter().map(Some).collect();
    for (_, text) in tokens::all_specials() {
        entries.push(Some(text.into_bytes()));
    }
    let tokenizer = Tokenizer::from_hf_with_table(hf, TokenTable::from_entries(entries))?;
    for (id, text) in tokens::all_specials() {
        let found = tokenizer.hf().token_to_id(&text);
        if found != Some(id) {
            return Err(TokenizerError::SpecialTokenMismatch {
                token: text,
                expected: id,
                found,
            });
        }
    }
    Ok(tokenizer)
}

impl Tokenizer {
    fn from_hf_with_table(
        hf: tokenizers::Tokenizer,
        table: TokenTable,
    ) -> Result<Tokenizer, TokenizerError> {
        // Byte-level BPE without a normalizer: the tokens of a text are a partition of its
        // bytes, so no token covers more input than its own bytes.
        let max_token_bytes = hf
            .get_normalizer()
            .is_none()
            .then(|| table.max_len())
            .filter(|&m| m > 0);
        let mut with_specials = hf;
        with_specials.set_encode_special_tokens(false);
        let mut ordinary = with_specials.clone();
        ordinary.set_encode_special_tokens(true);
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                with_specials,
                ordinary,
                table,
                max_token_bytes,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lossy_pieces(chunks: &[&[u8]]) -> String {
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        for c in chunks {
            s.push(c, &mut |p| out.push_str(p));
        }
        s.finish(&mut |p| out.push_str(p));
        out
    }

    #[test]
    fn utf8_stream_matches_lossy_decoding_at_every_split() {
        let samples: [&[u8]; 6] = [
            "héllo wörld 👋🏽 日本語".as_bytes(),
            b"\xF0\x9F\x91",
            b"a\xE2\x82b\xFF\xC3",
            b"\xE2\x82\xE2\x82\xAC",
            b"\xF4\x90\x80\x80 \xED\xA0\x80",
            b"\xC3\x28\xF0\x28\x8C\xBC",
        ];
        for bytes in samples {
            let want = String::from_utf8_lossy(bytes).into_owned();
            assert_eq!(lossy_pieces(&[bytes]), want, "one piece");
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    let got = lossy_pieces(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                    assert_eq!(got, want, "split at {i},{j} of {bytes:?}");
                }
            }
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(lossy_pieces(&bytewise), want, "byte by byte");
        }
    }
}
