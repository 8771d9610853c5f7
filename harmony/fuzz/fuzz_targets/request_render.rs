//! Request parsing, validation and rendering as `gpt-oss-server` does them, on arbitrary
//! bytes as a request body: `validate::parse_body` (JSON + field paths), `validate::chat` /
//! `validate::completion`, then `codec::render_chat` / `codec::encode_prompt` into harmony
//! token ids. Properties: no panic; every refusal is an OpenAI error with a 4xx status; a
//! rendered chat prompt ends with `<|start|>assistant`.
#![no_main]

use std::sync::OnceLock;

use gpt_oss_server::{codec, validate};
use harmony::Tokenizer;
use libfuzzer_sys::fuzz_target;
use openai_types::{ChatCompletionRequest, CompletionRequest};

const MODEL: &str = "gpt-oss-20b";

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::o200k_harmony().expect("built-in o200k_harmony"))
}

fn check_refusal(e: &gpt_oss_server::ApiError) {
    let status = e.status().as_u16();
    assert!(
        (400..500).contains(&status),
        "a bad request became {status}: {e}"
    );
    let body = e.body().to_json();
    let v: serde_json::Value = serde_json::from_str(&body).expect("error body is JSON");
    assert!(v["error"]["message"].is_string(), "no message: {body}");
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    match validate::parse_body::<ChatCompletionRequest>(data) {
        Ok(req) => match validate::chat(req, MODEL) {
            Ok(valid) => match codec::render_chat(tok, &valid) {
                Ok(ids) => {
                    let tail = tok.decode(&ids[ids.len().saturating_sub(2)..]);
                    assert_eq!(tail, "<|start|>assistant", "prompt does not end for the assistant");
                }
                Err(e) => check_refusal(&e),
            },
            Err(e) => check_refusal(&e),
        },
        Err(e) => check_refusal(&e),
    }
    match validate::parse_body::<CompletionRequest>(data) {
        Ok(req) => match validate::completion(req, MODEL) {
            Ok(valid) => {
                if let validate::ValidPrompt::Text(t) = &valid.prompt {
                    if let Err(e) = codec::encode_prompt(tok, t) {
                        check_refusal(&e);
                    }
                }
            }
            Err(e) => check_refusal(&e),
        },
        Err(e) => check_refusal(&e),
    }
});
