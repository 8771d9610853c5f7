//! The HTTP layer's own overhead: tokens/s through `gpt-oss-server` (JSON and SSE)
//! against the same `OnnxBackend` called directly, same model, same prompt, same
//! greedy settings, in the same run, alternating so that machine noise hits both.
//!
//!   cargo bench -p benches --bench server_overhead -- [--model DIR] [--tokens N] [--reps R] [--out DIR]
//!
//! Without `--model`, the committed tiny fixture is unpacked and used. Prints a
//! table and the ratios; with `--out`, writes `summary.md` and `results.json` there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use gpt_oss_runtimes::{
    DeviceMap, GenerateRequest, InferenceBackend, LibrarySearch, OnnxBackend, OnnxBackendConfig,
    SamplingParams, TokenEvent,
};
use gpt_oss_server::{AppState, LoadedModel, ModelState, ServerConfig};
use harmony::Tokenizer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Opts {
    model: Option<PathBuf>,
    tokens: u32,
    reps: u32,
    out: Option<PathBuf>,
}

fn opts() -> Opts {
    let mut o = Opts {
        model: None,
        tokens: 128,
        reps: 5,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => o.model = args.next().map(PathBuf::from),
            "--tokens" => o.tokens = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.tokens),
            "--reps" => o.reps = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.reps),
            "--out" => o.out = args.next().map(PathBuf::from),
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

fn fixture() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let archive = root.join("runtimes/fixture/tiny/model.tar.xz");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-overhead-fixture");
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

fn chat_request(max_tokens: u32) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "max_tokens": max_tokens,
        "temperature": 0.0
    })
}

/// Direct: tokens generated and seconds, for one request.
async fn direct(
    backend: &Arc<dyn InferenceBackend>,
    prompt: &[u32],
    stop: &[u32],
    n: u32,
) -> (u32, f64) {
    let t = Instant::now();
    let req = GenerateRequest {
        request_id: "bench".into(),
        prompt: prompt.to_vec(),
        sampling: SamplingParams::greedy(),
        stop_token_ids: stop.to_vec(),
        max_new_tokens: n,
        cancel: CancellationToken::new(),
        constraint: None,
    };
    let mut s = backend.generate(req).await.expect("generate");
    let mut count = 0;
    while let Some(ev) = s.next().await {
        match ev {
            TokenEvent::Token(_) => count += 1,
            TokenEvent::Logprob(_) => {}
            TokenEvent::Finish { .. } => break,
            TokenEvent::Error(e) => panic!("backend error: {e}"),
        }
    }
    (count, t.elapsed().as_secs_f64())
}

async fn via_json(client: &reqwest::Client, url: &str, n: u32) -> (u32, f64) {
    let t = Instant::now();
    let v: Value = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat_request(n))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let c = v["usage"]["completion_tokens"].as_u64().expect("usage") as u32;
    (c, t.elapsed().as_secs_f64())
}

async fn via_sse(client: &reqwest::Client, url: &str, n: u32) -> (u32, f64) {
    let t = Instant::now();
    let mut body = chat_request(n);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("send");
    let mut bytes = resp.bytes_stream();
    let mut text = String::new();
    while let Some(b) = bytes.next().await {
        text.push_str(&String::from_utf8_lossy(&b.expect("bytes")));
    }
    let usage = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["usage"]["completion_tokens"].as_u64())
        .last()
        .expect("usage chunk") as u32;
    (usage, t.elapsed().as_secs_f64())
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
        let config = OnnxBackendConfig::new(&model_dir, DeviceMap::Cpu, 1, LibrarySearch::from_process());
        let backend: Arc<dyn InferenceBackend> = Arc::new(OnnxBackend::load(config).expect("load model"));
        let caps = backend.capabilities().clone();

        let req: openai_types::ChatCompletionRequest =
            serde_json::from_value(chat_request(o.tokens)).expect("request");
        let state = AppState::new(
            ServerConfig {
                model_name: "bench".into(),
                api_key: None,
                max_body_bytes: 1 << 20,
                raw_output: false,
                default_max_tokens: o.tokens,
                retry_after_secs: 1,
                responses_store: None,
                reasoning_key_file: None,
            },
            1,
            16,
        );
        state.set_model(ModelState::Ready(Arc::new(LoadedModel {
            backend: Arc::clone(&backend),
            tokenizer: tokenizer.clone(),
            grammars: Default::default(),
        })));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gpt_oss_server::serve(
            listener,
            Arc::clone(&state),
            async move {
                let _ = stop_rx.await;
            },
            std::time::Duration::from_secs(1),
        ));
        let client = reqwest::Client::new();

        // The exact prompt the server renders, through the server's own validation and codec.
        let valid = gpt_oss_server::validate::chat(req, "bench").expect("valid request");
        let prompt = gpt_oss_server::codec::render_chat(&tokenizer, &valid, caps.context_length)
            .expect("render");
        let stop = gpt_oss_server::codec::stop_token_ids(&caps);

        // Warm up both paths.
        direct(&backend, &prompt, &stop, 8).await;
        via_json(&client, &url, 8).await;

        let mut rows: Vec<(&str, u32, f64)> = Vec::new();
        let (mut d_tok, mut d_s, mut j_tok, mut j_s, mut s_tok, mut s_s) = (0u32, 0.0, 0u32, 0.0, 0u32, 0.0);
        for _ in 0..o.reps {
            let (t, s) = direct(&backend, &prompt, &stop, o.tokens).await;
            d_tok += t;
            d_s += s;
            let (t, s) = via_json(&client, &url, o.tokens).await;
            j_tok += t;
            j_s += s;
            let (t, s) = via_sse(&client, &url, o.tokens).await;
            s_tok += t;
            s_s += s;
        }
        rows.push(("backend called directly", d_tok, d_s));
        rows.push(("server, JSON response", j_tok, j_s));
        rows.push(("server, SSE stream", s_tok, s_s));
        let direct_tps = f64::from(d_tok) / d_s;
        let mut md = String::new();
        md.push_str(&format!(
            "Model `{}` on {}, greedy, {} tokens per request, {} requests per path, one at a time, alternating paths.\n\n",
            model_dir.display(), caps.device, o.tokens, o.reps
        ));
        md.push_str("| path | tokens | seconds | tokens/s | vs direct |\n|---|---:|---:|---:|---:|\n");
        let mut results = Vec::new();
        for (name, tok, secs) in &rows {
            let tps = f64::from(*tok) / secs;
            md.push_str(&format!(
                "| {name} | {tok} | {secs:.2} | {tps:.1} | {:.3}x |\n",
                tps / direct_tps
            ));
            results.push(json!({"path": name, "tokens": tok, "seconds": secs, "tokens_per_s": tps, "ratio_vs_direct": tps / direct_tps}));
        }
        println!("\n{md}");
        if let Some(out) = &o.out {
            std::fs::create_dir_all(out).expect("out dir");
            std::fs::write(out.join("summary.md"), &md).expect("summary.md");
            std::fs::write(
                out.join("results.json"),
                serde_json::to_string_pretty(&json!({"rows": results})).unwrap_or_default(),
            )
            .expect("results.json");
        }
        let _ = stop_tx.send(());
        let _ = server.await;
    });
}
