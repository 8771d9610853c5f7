//! Measures the ONNX backend on a model folder: prefill and decode tokens/s for one sequence, and
//! total generated tokens/s with several concurrent requests. Prints one JSON object per line.
//!
//! ```text
//! cargo run --release -p gpt-oss-runtimes --example bench_onnx -- \
//!     --model runtimes/fixture/out/large/windowed --concurrency 1,2,4,8 --prompt-len 128 --new-tokens 64
//! ```
//! `benches/runtime/run` runs it beside onnxruntime-genai's generator on the same folder.
//!
//! Each load prints `{"engine":"ours","phase":"load","load_s":…,"rss_bytes":…}` (resident memory
//! right after the load, from `/proc/self/status`). `--greedy-prompts N` also prints, after the first
//! load, the greedy ids of N prompts (`{"phase":"greedy","index":i,"tokens":[…]}`, `--new-tokens`
//! each), which `benches/realshape/run` compares with onnxruntime-genai's.

use std::path::PathBuf;
use std::time::Instant;

use futures::future::join_all;
use futures::StreamExt;
use gpt_oss_runtimes::{
    DeviceMap, GenerateRequest, InferenceBackend, LibrarySearch, OnnxBackend, OnnxBackendConfig,
    SamplingParams, TokenEvent,
};
use tokio_util::sync::CancellationToken;

struct Args {
    model: PathBuf,
    concurrency: Vec<u32>,
    prompt_len: usize,
    new_tokens: u32,
    repeats: usize,
    /// Slots of the engine; 0 means "equal to the concurrency of the run".
    max_concurrent: u32,
    token_range: u32,
    intra_threads: Option<usize>,
    max_seq_len: Option<u32>,
    /// Prompt tokens per prefill step; `None`: the whole prompt in one step.
    prefill_chunk: Option<usize>,
    /// Prompts whose greedy ids are printed after the first load (0: none).
    greedy_prompts: usize,
    /// `cpu`, `cuda`, `cuda:N` or `auto`, as the server's `--device-map`.
    device: DeviceMap,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::new(),
        concurrency: vec![1, 2, 4, 8],
        prompt_len: 128,
        new_tokens: 64,
        repeats: 2,
        max_concurrent: 0,
        token_range: 3000,
        intra_threads: None,
        max_seq_len: None,
        greedy_prompts: 0,
        prefill_chunk: None,
        device: DeviceMap::Cpu,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()?),
            "--concurrency" => {
                a.concurrency = value()?
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse()
                            .map_err(|_| format!("bad concurrency {c:?}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--prompt-len" => a.prompt_len = value()?.parse().map_err(|_| "bad --prompt-len")?,
            "--new-tokens" => a.new_tokens = value()?.parse().map_err(|_| "bad --new-tokens")?,
            "--repeats" => a.repeats = value()?.parse().map_err(|_| "bad --repeats")?,
            "--max-concurrent" => {
                a.max_concurrent = value()?.parse().map_err(|_| "bad --max-concurrent")?
            }
            "--token-range" => a.token_range = value()?.parse().map_err(|_| "bad --token-range")?,
            "--max-seq-len" => {
                a.max_seq_len = Some(value()?.parse().map_err(|_| "bad --max-seq-len")?)
            }
            "--greedy-prompts" => {
                a.greedy_prompts = value()?.parse().map_err(|_| "bad --greedy-prompts")?
            }
            "--device-map" => {
                a.device = value()?
                    .parse()
                    .map_err(|e| format!("bad --device-map: {e}"))?
            }
            "--prefill-chunk" => {
                a.prefill_chunk = Some(value()?.parse().map_err(|_| "bad --prefill-chunk")?)
            }
            "--intra-threads" => {
                a.intra_threads = Some(value()?.parse().map_err(|_| "bad --intra-threads")?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.model.as_os_str().is_empty() {
        return Err("--model DIR is required".into());
    }
    Ok(a)
}

/// A deterministic prompt (the same one onnxruntime-genai's script builds: see benches/runtime).
fn prompt(index: usize, len: usize, range: u32) -> Vec<u32> {
    (0..len)
        .map(|i| ((i as u64 * 7919 + index as u64 * 104_729 + 17) % u64::from(range)) as u32 + 1)
        .collect()
}

struct Timing {
    ttft: f64,
    decode: f64,
    tokens: usize,
    ids: Vec<u32>,
}

/// Resident set size of this process in bytes (`VmRSS` of `/proc/self/status`; 0 where absent).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

async fn one(backend: &OnnxBackend, prompt: Vec<u32>, new_tokens: u32) -> Timing {
    let start = Instant::now();
    let request = GenerateRequest {
        request_id: "bench".into(),
        prompt,
        sampling: SamplingParams::greedy(),
        stop_token_ids: vec![],
        max_new_tokens: new_tokens,
        cancel: CancellationToken::new(),
        constraint: None,
    };
    let mut stream = match backend.generate(request).await {
        Ok(s) => s,
        Err(e) => panic!("generate: {e}"),
    };
    let mut first = None;
    let mut ids = Vec::new();
    while let Some(e) = stream.next().await {
        match e {
            TokenEvent::Token(t) => {
                ids.push(t);
                first.get_or_insert_with(Instant::now);
            }
            TokenEvent::Logprob(_) => {}
            TokenEvent::Finish { .. } => break,
            TokenEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    Timing {
        ttft: (first - start).as_secs_f64(),
        decode: (end - first).as_secs_f64(),
        tokens: ids.len(),
        ids,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_onnx: {e}");
            std::process::exit(2);
        }
    };
    for (round, &c) in args.concurrency.iter().enumerate() {
        let slots = if args.max_concurrent == 0 {
            c
        } else {
            args.max_concurrent
        };
        let mut config = OnnxBackendConfig::new(
            &args.model,
            args.device,
            slots,
            LibrarySearch::from_process(),
        );
        config.prefill_chunk = args.prefill_chunk.unwrap_or(args.prompt_len).max(1);
        config.intra_threads = args.intra_threads;
        config.max_seq_len = args.max_seq_len;
        let loading = Instant::now();
        let backend = match OnnxBackend::load(config) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("bench_onnx: {e}");
                std::process::exit(1);
            }
        };
        let load_s = loading.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"engine": "ours", "phase": "load", "slots": slots,
                "load_s": load_s, "rss_bytes": rss_bytes()})
        );
        if round == 0 {
            for i in 0..args.greedy_prompts {
                let run = one(
                    &backend,
                    prompt(i, args.prompt_len, args.token_range),
                    args.new_tokens,
                )
                .await;
                println!(
                    "{}",
                    serde_json::json!({"engine": "ours", "phase": "greedy", "index": i,
                        "tokens": run.ids})
                );
            }
        }
        // Warm-up: one short generation.
        // (at most 32 prompt tokens: a long --prompt-len would double the cost of a prefill run)
        one(
            &backend,
            prompt(999, args.prompt_len.min(32), args.token_range),
            4,
        )
        .await;
        let mut best: Option<(f64, Vec<Timing>)> = None;
        for _ in 0..args.repeats.max(1) {
            let start = Instant::now();
            let runs = join_all((0..c as usize).map(|i| {
                one(
                    &backend,
                    prompt(i, args.prompt_len, args.token_range),
                    args.new_tokens,
                )
            }))
            .await;
            let wall = start.elapsed().as_secs_f64();
            if best.as_ref().is_none_or(|(w, _)| wall < *w) {
                best = Some((wall, runs));
            }
        }
        let Some((wall, runs)) = best else { continue };
        let tokens: usize = runs.iter().map(|r| r.tokens).sum();
        let r0 = &runs[0];
        let line = serde_json::json!({
            "engine": "ours",
            "concurrency": c,
            "slots": slots,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "wall_s": wall,
            "tokens_per_s": tokens as f64 / wall,
            "ttft_s": r0.ttft,
            "prefill_tokens_per_s": args.prompt_len as f64 / r0.ttft,
            "decode_tokens_per_s": (r0.tokens.saturating_sub(1)) as f64 / r0.decode,
        });
        println!("{line}");
        drop(backend);
    }
}
