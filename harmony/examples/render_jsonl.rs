//! Renders a JSONL corpus of OpenAI chat requests into harmony token ids with the project's
//! own renderer (used by `runtimes/nano/gen_corpus.py` to build gpt-oss-nano's training data).
//!
//! Each input line: `{"id", "request": <chat completion request>, "completion": "<harmony
//! text the assistant writes after the prompt>", "date"?: "YYYY-MM-DD", ...}`.
//! Each output line: the input's `id` and `group`, `prompt` (the request rendered for
//! completion, ending in `<|start|>assistant`) and `completion` (the completion text encoded
//! with special tokens).
//!
//! ```sh
//! cargo run -p harmony --example render_jsonl < requests.jsonl > tokens.jsonl
//! ```

use std::io::{BufRead, BufWriter, Write};

use harmony::render::RequestOptions;
use harmony::{Renderer, Tokenizer};
use openai_types::ChatCompletionRequest;
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tokenizer = Tokenizer::o200k_harmony()?;
    let renderer = Renderer::new(&tokenizer);
    let stdin = std::io::stdin();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let request: ChatCompletionRequest = serde_json::from_value(row["request"].clone())
            .map_err(|e| format!("line {}: request: {e}", n + 1))?;
        let options = RequestOptions {
            conversation_start_date: row["date"].as_str().map(str::to_string),
            ..RequestOptions::default()
        };
        let prompt = renderer
            .render_request(&request, &options)
            .map_err(|e| format!("line {}: render: {e}", n + 1))?;
        let completion = match row["completion"].as_str() {
            Some(text) => tokenizer.encode_with_special_tokens(text)?,
            None => Vec::new(),
        };
        let rendered = json!({
            "id": row["id"],
            "group": row["group"],
            "prompt": prompt,
            "completion": completion,
        });
        writeln!(out, "{rendered}")?;
    }
    out.flush()?;
    Ok(())
}
