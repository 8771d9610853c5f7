//! Grammar-constrained sampling with [`llguidance`]: before each token is sampled, the logits of
//! every token the grammar does not allow at that point are set to minus infinity.
//!
//! - [`Vocabulary`]: the token trie llguidance walks, built once per model from the bytes of each
//!   token id (special tokens are marked, so a grammar names them as `<|channel|>` and free text
//!   can never produce them).
//! - [`GrammarCompiler`]: compiles grammars for that vocabulary (Lark syntax with `%json{...}`
//!   JSON Schema embedding, see llguidance's `docs/syntax.md`).
//! - [`Constraint`]: the state of one sequence in one grammar; a request carries it to the engine,
//!   which calls [`Constraint::mask`] before sampling and [`Constraint::commit`] after.
//!
//! The engine knows nothing about harmony or JSON: what the grammar says is the caller's business.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, InferenceCapabilities, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

/// Why a grammar could not be compiled or followed.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The vocabulary could not be turned into a token trie.
    #[error("could not build the token trie: {0}")]
    Vocabulary(String),
    /// The grammar (or a JSON Schema in it) is invalid or uses something llguidance does not
    /// support; the message names it.
    #[error("{0}")]
    Grammar(String),
    /// The sequence left the grammar (a token outside the mask was fed, or the parser failed).
    #[error("the constrained sequence failed: {0}")]
    Step(String),
}

/// Splits bytes into token ids the way the model's tokenizer does (used by llguidance to
/// tokenize literal strings of a grammar).
pub type TokenizeFn = dyn Fn(&[u8]) -> Vec<u32> + Send + Sync;

struct Env {
    trie: TokTrie,
    tokenize: Box<TokenizeFn>,
}

impl toktrie::TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        (self.tokenize)(s)
    }
}

/// The token trie of one model's vocabulary.
#[derive(Clone)]
pub struct Vocabulary {
    env: TokEnv,
}

impl fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vocabulary")
            .field("vocab_size", &self.env.tok_trie().vocab_size())
            .finish()
    }
}

impl Vocabulary {
    /// Builds the trie. `tokens[id]` holds the bytes of token `id`; for a special token
    /// (`is_special(id)`) it holds its name (`<|channel|>`). `eos` is the token that ends a
    /// sequence once the grammar is complete. `tokenize` must give the tokenizer's own ids.
    pub fn new(
        tokens: Vec<Vec<u8>>,
        is_special: impl Fn(u32) -> bool,
        eos: u32,
        tokenize: Box<TokenizeFn>,
    ) -> Result<Vocabulary, ConstraintError> {
        let vocab_size = u32::try_from(tokens.len())
            .map_err(|_| ConstraintError::Vocabulary("more than 2^32 tokens".to_string()))?;
        if eos >= vocab_size {
            return Err(ConstraintError::Vocabulary(format!(
                "the end-of-sequence id {eos} is outside the vocabulary of {vocab_size}"
            )));
        }
        let words: Vec<Vec<u8>> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, bytes)| {
                if is_special(id as u32) && !bytes.is_empty() {
                    let mut marked = Vec::with_capacity(bytes.len() + 1);
                    marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    marked.extend_from_slice(&bytes);
                    marked
                } else {
                    bytes
                }
            })
            .collect();
        let info = TokRxInfo::new(vocab_size, eos);
        let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &words))
            .map_err(|_| ConstraintError::Vocabulary("llguidance rejected the tokens".into()))?;
        Ok(Vocabulary {
            env: Arc::new(Env { trie, tokenize }),
        })
    }

    /// Number of token ids.
    pub fn len(&self) -> usize {
        self.env.tok_trie().vocab_size()
    }

    /// Whether the vocabulary is empty (never, for a real model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compiles grammars for one vocabulary. Shared by all requests of a model; compiling is
/// thread-safe.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// Prepares llguidance's lexer slices for `vocabulary` (about a second for 200k tokens).
    pub fn new(vocabulary: &Vocabulary) -> Result<GrammarCompiler, ConstraintError> {
        let mut factory = ParserFactory::new(
            &vocabulary.env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(GrammarCompiler { factory })
    }

    /// Compiles a Lark grammar (llguidance's dialect: `%json{...}` embeds a JSON Schema,
    /// `<|name|>` is a special token) into the start state of a sequence.
    pub fn compile_lark(&self, lark: &str) -> Result<Constraint, ConstraintError> {
        let started = Instant::now();
        let grammar = TopLevelGrammar::from_lark(lark.to_string());
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Grammar(e));
        }
        tracing::debug!(
            us = started.elapsed().as_micros() as u64,
            "grammar compiled"
        );
        Ok(Constraint {
            matcher,
            mask: None,
        })
    }
}

/// One sequence's position in its grammar. Cloning gives an independent copy (each of the
/// `n` sequences of a request follows its own).
pub struct Constraint {
    matcher: Matcher,
    /// The last computed mask, for [`Constraint::allows_other_than`].
    mask: Option<SimpleVob>,
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            mask: self.mask.clone(),
        }
    }
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets the logit of every token the grammar does not allow next to minus infinity.
    /// Logits past the vocabulary (padding rows of the model's head) are masked too. When the
    /// grammar is complete only the end-of-sequence token stays.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::Step(e.to_string()))?;
        apply(&mask, logits);
        self.mask = Some(mask);
        Ok(())
    }

    /// Whether the last mask allows some token outside `ids` (used to keep stop tokens out
    /// for `min_tokens` only when the grammar leaves another choice).
    pub fn allows_other_than(&self, ids: &[u32]) -> bool {
        let Some(mask) = &self.mask else { return true };
        let mut other = false;
        mask.iter_set_entries(|i| other |= !ids.contains(&(i as u32)));
        other
    }

    /// Advances the grammar by the sampled token.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Step(e.to_string()))
    }

    /// Whether the grammar accepts what was generated so far as complete.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

/// Minus infinity for every logit whose token is not in `mask`.
fn apply(mask: &SimpleVob, logits: &mut [f32]) {
    let words = mask.as_slice();
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary (ids 0..256 are the bytes) plus three specials.
    fn vocabulary() -> Vocabulary {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        tokens.push(b"<|start|>".to_vec()); // 256
        tokens.push(b"<|end|>".to_vec()); // 257
        tokens.push(b"<|return|>".to_vec()); // 258
        Vocabulary::new(
            tokens,
            |id| id >= 256,
            258,
            Box::new(|s: &[u8]| s.iter().map(|&b| u32::from(b)).collect()),
        )
        .expect("a byte vocabulary builds")
    }

    fn allowed(c: &mut Constraint, n: usize) -> Vec<u32> {
        let mut logits = vec![0.0f32; n];
        c.mask(&mut logits).expect("mask");
        (0..n as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect()
    }

    #[test]
    fn the_mask_follows_the_grammar_and_special_tokens() {
        let compiler = GrammarCompiler::new(&vocabulary()).expect("compiler");
        let mut c = compiler
            .compile_lark(r#"start: <|start|> ("yes" | "no") <|return|>"#)
            .expect("grammar");
        assert_eq!(allowed(&mut c, 259), vec![256], "only <|start|> first");
        c.commit(256).expect("commit");
        assert_eq!(allowed(&mut c, 300), vec![u32::from(b'n'), u32::from(b'y')]);
        for &b in b"no" {
            c.commit(u32::from(b)).expect("commit");
        }
        assert_eq!(allowed(&mut c, 259), vec![258]);
        assert!(c.allows_other_than(&[]) && !c.allows_other_than(&[258]));
    }

    #[test]
    fn free_text_never_produces_special_tokens() {
        let compiler = GrammarCompiler::new(&vocabulary()).expect("compiler");
        let mut c = compiler
            .compile_lark("start: TEXT <|end|>\nTEXT: /(.|\\n)*/")
            .expect("grammar");
        let a = allowed(&mut c, 259);
        assert!(a.contains(&u32::from(b'a')) && a.contains(&257));
        assert!(!a.contains(&256) && !a.contains(&258), "{a:?}");
    }

    #[test]
    fn json_schema_errors_name_the_keyword() {
        let compiler = GrammarCompiler::new(&vocabulary()).expect("compiler");
        let err = compiler
            .compile_lark(r#"start: %json{"type":"array","unevaluatedItems": false}"#)
            .map(|_| ())
            .expect_err("unknown keywords are rejected");
        assert!(err.to_string().contains("unevaluatedItems"), "{err}");
        let mut c = compiler
            .compile_lark(r#"start: %json{"x-guidance":{"whitespace_flexible":false},"type":"object","properties":{"a":{"enum":[1]}},"required":["a"],"additionalProperties":false}"#)
            .expect("schema");
        for &b in br#"{"a":"# {
            c.commit(u32::from(b)).expect("commit");
        }
        assert_eq!(allowed(&mut c, 259), vec![u32::from(b'1')]);
    }
}
