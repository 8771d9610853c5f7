//! Log-probabilities in OpenAI's shapes: chat's `logprobs.content[]` entries and the
//! completions endpoint's `tokens` / `token_logprobs` / `top_logprobs` / `text_offset` lists.

use gpt_oss_runtimes::TokenLogprob;
use harmony::Tokenizer;
use serde_json::{json, Map, Value};

/// What OpenAI sends for an impossible token (JSON has no infinity).
const IMPOSSIBLE: f32 = -9999.0;

fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        IMPOSSIBLE
    }
}

fn token_text(tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tokenizer.token_bytes_or_replacement(id).to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// One entry of chat's `logprobs.content`: the token, its log-probability, its UTF-8 bytes
/// and the `top_logprobs` alternatives.
pub fn chat_entry(tokenizer: &Tokenizer, lp: &TokenLogprob) -> Value {
    let (token, bytes) = token_text(tokenizer, lp.token);
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|&(id, l)| {
            let (token, bytes) = token_text(tokenizer, id);
            json!({"token": token, "logprob": finite(l), "bytes": bytes})
        })
        .collect();
    json!({"token": token, "logprob": finite(lp.logprob), "bytes": bytes, "top_logprobs": top})
}

/// Chat's `choices[].logprobs` object for these entries.
pub fn chat_logprobs(content: Vec<Value>) -> Value {
    json!({"content": content, "refusal": null})
}

/// The completions endpoint's `logprobs` object, built up token by token.
#[derive(Debug, Default)]
pub struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Map<String, Value>>,
    text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Appends tokens; `offset` is where their text starts in the choice's `text`.
    pub fn push(&mut self, tokenizer: &Tokenizer, lps: &[TokenLogprob], mut offset: usize) {
        for lp in lps {
            let (token, _) = token_text(tokenizer, lp.token);
            self.text_offset.push(offset);
            offset += token.len();
            self.tokens.push(token);
            self.token_logprobs.push(finite(lp.logprob));
            let mut top = Map::new();
            for &(id, l) in &lp.top {
                top.insert(token_text(tokenizer, id).0, Value::from(finite(l)));
            }
            self.top_logprobs.push(top);
        }
    }

    /// The JSON object, emptying the lists (for the next streamed chunk).
    pub fn take(&mut self) -> Value {
        let this = std::mem::take(self);
        json!({
            "tokens": this.tokens,
            "token_logprobs": this.token_logprobs,
            "top_logprobs": this.top_logprobs,
            "text_offset": this.text_offset,
        })
    }
}
