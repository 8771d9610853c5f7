//! The cost of grammar-constrained decoding: tokens/s of the same model with and without a
//! grammar, in the same run, alternating so that machine noise hits both; the per-token cost of
//! the mask (computing it, applying it, advancing the grammar) measured apart from the model;
//! and the compile time of the chat grammar for a 50-property JSON Schema.
//!
//!   cargo bench -p benches --bench constrained -- [--model DIR] [--tokens N] [--reps R]
//!
//! Without `--model`, the committed tiny fixture is unpacked and used (its forward pass is very
//! cheap, so the mask's share is the largest there). Prints a table and the ratios.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use gpt_oss_runtimes::constraint::Constraint;
use gpt_oss_runtimes::{
    DeviceMap, GenerateRequest, InferenceBackend, LibrarySearch, OnnxBackend, OnnxBackendConfig,
    SamplingParams, TokenEvent,
};
use gpt_oss_server::grammar;
use harmony::Tokenizer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Opts {
    model: Option<PathBuf>,
    tokens: u32,
    reps: u32,
}

fn opts() -> Opts {
    let mut o = Opts {
        model: None,
        tokens: 128,
        reps: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => o.model = args.next().map(PathBuf::from),
            "--tokens" => o.tokens = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.tokens),
            "--reps" => o.reps = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.reps),
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

fn fixture() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let archive = root.join("runtimes/fixture/tiny/model.tar.xz");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("constrained-fixture");
    if !dir.join("genai_config.json").is_file() {
        std::fs::create_dir_all(&dir).expect("create fixture dir");
        let ok = std::process::Command::new("tar")
            .arg("-xJf")
            .arg(&archive)
            .arg("-C")
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "tar -xJf {} failed", archive.display());
    }
    dir
}

/// A chat request whose output grammar is the harmony grammar around this schema.
fn chat(schema: Value, max_tokens: u32) -> gpt_oss_server::validate::ValidChat {
    let body = json!({
        "messages": [{"role": "user", "content": "List some facts as JSON."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "facts", "strict": true, "schema": schema}}
    });
    let req: openai_types::ChatCompletionRequest = serde_json::from_value(body).expect("request");
    gpt_oss_server::validate::chat(req, "bench").expect("valid request")
}

/// A schema that cannot be complete before thousands of tokens: many strings, so that the
/// whole measured run is constrained (the model writes string contents, where the mask
/// allows most of the vocabulary, and separators, where it allows a handful of tokens).
fn long_schema() -> Value {
    json!({"type": "object", "properties": {
        "facts": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 5000}
    }, "required": ["facts"], "additionalProperties": false})
}

fn fifty_properties() -> Value {
    let mut props = serde_json::Map::new();
    let mut required = Vec::new();
    for i in 0..50 {
        let name = format!("field_{i}");
        let schema = match i % 5 {
            0 => json!({"type": "string"}),
            1 => json!({"type": "integer"}),
            2 => json!({"type": "number"}),
            3 => json!({"type": "boolean"}),
            _ => json!({"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}}),
        };
        props.insert(name.clone(), schema);
        required.push(name);
    }
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// Tokens generated, seconds, and the tokens themselves, for one request.
async fn generate(
    backend: &Arc<dyn InferenceBackend>,
    prompt: &[u32],
    n: u32,
    constraint: Option<Constraint>,
) -> (u32, f64, Vec<u32>) {
    let t = Instant::now();
    let req = GenerateRequest {
        request_id: "bench".into(),
        prompt: prompt.to_vec(),
        sampling: SamplingParams::greedy(),
        stop_token_ids: vec![],
        max_new_tokens: n,
        cancel: CancellationToken::new(),
        constraint,
    };
    let mut s = backend.generate(req).await.expect("generate");
    let mut tokens = Vec::new();
    while let Some(ev) = s.next().await {
        match ev {
            TokenEvent::Token(t) => tokens.push(t),
            TokenEvent::Logprob(_) => {}
            TokenEvent::Finish { .. } => break,
            TokenEvent::Error(e) => panic!("backend error: {e}"),
        }
    }
    (tokens.len() as u32, t.elapsed().as_secs_f64(), tokens)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn main() {
    let o = opts();
    let model_dir = o.model.clone().unwrap_or_else(fixture);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tokenizer = Tokenizer::from_dir(&model_dir).expect("tokenizer.json");
        let config =
            OnnxBackendConfig::new(&model_dir, DeviceMap::Cpu, 1, LibrarySearch::from_process());
        let backend: Arc<dyn InferenceBackend> =
            Arc::new(OnnxBackend::load(config).expect("load model"));
        let vocab = backend.capabilities().vocab_size as usize;

        let t = Instant::now();
        let compilers = grammar::Compilers::default();
        compilers.get(&tokenizer).await.expect("compiler");
        let trie_s = t.elapsed().as_secs_f64();

        let fifty = chat(fifty_properties(), o.tokens);
        let mut compile_ms = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            grammar::for_chat(&compilers, &tokenizer, &fifty)
                .await
                .expect("50-property schema compiles")
                .expect("a constraint");
            compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }

        let long = chat(long_schema(), o.tokens);
        let context_length = backend.capabilities().context_length;
        let prompt =
            gpt_oss_server::codec::render_chat(&tokenizer, &long, context_length).expect("render");
        let constraint = grammar::for_chat(&compilers, &tokenizer, &long)
            .await
            .expect("compiles")
            .expect("a constraint");

        // Warm up both paths.
        generate(&backend, &prompt, 8, None).await;
        generate(&backend, &prompt, 8, Some(constraint.clone())).await;

        let (mut free, mut constrained) = (Vec::new(), Vec::new());
        let mut sample_tokens = Vec::new();
        for _ in 0..o.reps {
            let (n, s, _) = generate(&backend, &prompt, o.tokens, None).await;
            free.push(n as f64 / s);
            let (n, s, tokens) =
                generate(&backend, &prompt, o.tokens, Some(constraint.clone())).await;
            assert_eq!(n, o.tokens, "the constrained run must not end early");
            constrained.push(n as f64 / s);
            sample_tokens = tokens;
        }

        // The mask alone: replay the constrained tokens through a fresh grammar state.
        let mut c = constraint.clone();
        let mut logits = vec![0.0f32; vocab];
        let t = Instant::now();
        for &tok in &sample_tokens {
            logits.iter_mut().for_each(|l| *l = 0.0);
            c.mask(&mut logits).expect("mask");
            assert!(
                logits[tok as usize].is_finite(),
                "the replayed token is allowed"
            );
            c.commit(tok).expect("commit");
        }
        let mask_us = t.elapsed().as_secs_f64() * 1e6 / sample_tokens.len().max(1) as f64;

        let (f, k) = (median(free), median(constrained));
        println!("model: {}", model_dir.display());
        println!("tokens per request: {}, repetitions: {}", o.tokens, o.reps);
        println!("| path | tokens/s (median) |");
        println!("|---|---|");
        println!("| unconstrained | {f:.1} |");
        println!("| constrained (JSON Schema in the harmony grammar) | {k:.1} |");
        println!("constrained / unconstrained: {:.3}x", k / f);
        println!("mask per token (compute + apply + advance): {mask_us:.1} µs");
        println!("model time per unconstrained token: {:.1} µs", 1e6 / f);
        println!(
            "token trie + lexer slices (once per model): {:.2} s",
            trie_s
        );
        println!(
            "grammar compile, 50-property schema: median {:.2} ms (first {:.2} ms)",
            median(compile_ms.clone()),
            compile_ms[0]
        );
    });
}
