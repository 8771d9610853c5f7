//! The ONNX backend against the PyTorch reference: greedy ids token for token on every golden
//! prompt (including prompts longer than the sliding window and generations that cross it), and
//! the first step's logits.

mod common;

use common::*;
use gpt_oss_runtimes::onnx::library;
use gpt_oss_runtimes::onnx::{ModelOptions, OnnxModel};
use gpt_oss_runtimes::{DeviceMap, LibrarySearch, SamplingParams, StopReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_equals_pytorch_on_every_golden_prompt_on_both_exports() {
    for (variant, dir) in variants() {
        greedy_matches(variant, &load_from(dir, 1)).await;
    }
}

/// The same through the batched engine: four sequences decode together, joining and leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_greedy_generation_equals_pytorch_on_both_exports() {
    let new_tokens = golden()["new_tokens"].as_u64().expect("new_tokens") as u32;
    for (variant, dir) in variants() {
        let backend = load_from(dir, 4);
        let runs = prompts()
            .into_iter()
            .map(|(name, prompt, expected)| {
                let backend = &backend;
                async move {
                    let got = run(
                        backend,
                        request(&name, prompt, SamplingParams::greedy(), vec![], new_tokens),
                    )
                    .await;
                    (name, got, expected)
                }
            })
            .collect::<Vec<_>>();
        for (name, (tokens, reason), expected) in futures::future::join_all(runs).await {
            assert_eq!(reason, StopReason::Length, "{variant} {name}");
            assert_eq!(
                tokens, expected,
                "{variant} export, prompt {name:?}, batched"
            );
        }
    }
}

async fn greedy_matches(variant: &str, backend: &gpt_oss_runtimes::OnnxBackend) {
    let new_tokens = golden()["new_tokens"].as_u64().expect("new_tokens") as u32;
    let window = golden()["model_config"]["sliding_window"]
        .as_u64()
        .expect("window") as usize;
    let mut crossed_window = false;
    for (name, prompt, expected) in prompts() {
        crossed_window |= prompt.len() + expected.len() > window;
        // No stop ids: the golden ids run past the stop tokens.
        let (tokens, reason) = run(
            backend,
            request(&name, prompt, SamplingParams::greedy(), vec![], new_tokens),
        )
        .await;
        assert_eq!(reason, StopReason::Length, "{name}");
        if let Some(i) = tokens.iter().zip(&expected).position(|(a, b)| a != b) {
            panic!(
                "{variant} export, prompt {name:?}: token {i} is {} but PyTorch gives {}\n ours:   {tokens:?}\n golden: {expected:?}",
                tokens[i], expected[i]
            );
        }
        assert_eq!(tokens.len(), expected.len(), "{name}");
    }
    assert!(
        crossed_window,
        "the golden set must cross the sliding window"
    );
}

#[test]
fn first_step_logits_match_the_reference_checksums() {
    let env = library::environment(&LibrarySearch::from_process()).expect("ONNX Runtime");
    let options = ModelOptions {
        device: DeviceMap::Cpu,
        intra_threads: None,
    };
    for (variant, dir) in variants() {
        let mut model = OnnxModel::load(&env, dir, &options).expect("load");
        first_step_logits(variant, &mut model);
    }
}

fn first_step_logits(variant: &str, model: &mut OnnxModel) {
    for p in golden()["prompts"].as_array().expect("prompts") {
        let name = p["name"].as_str().expect("name");
        let prompt: Vec<u32> = p["prompt_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let reference = &p["first_step_logits"];
        let mut seq = model
            .new_sequence(model.capacity_for(prompt.len(), 1))
            .expect("sequence");
        model.forward(&mut seq, &prompt).expect("prefill");
        let logits = seq.logits();
        assert_eq!(
            logits.len(),
            golden()["vocab_size"].as_u64().expect("vocab") as usize
        );
        let f = |k: &str| reference[k].as_f64().unwrap_or_else(|| panic!("{k}"));
        let sum: f64 = logits.iter().map(|&x| x as f64).sum();
        let sum_abs: f64 = logits.iter().map(|&x| (x as f64).abs()).sum();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let min = logits.iter().copied().fold(f32::INFINITY, f32::min) as f64;
        let close = |what: &str, ours: f64, theirs: f64, tol: f64| {
            assert!(
                (ours - theirs).abs() <= tol,
                "{variant} export, prompt {name:?}: logits {what} is {ours}, the reference has {theirs} (tolerance {tol})"
            );
        };
        // fp32 on two runtimes: element-wise agreement to ~1e-4, sums over 201,088 entries to ~1e-5 relative.
        close("sum", sum, f("sum"), 1e-5 * f("sum_abs") + 1e-3);
        close("sum_abs", sum_abs, f("sum_abs"), 1e-5 * f("sum_abs"));
        close("max", max, f("max"), 1e-3);
        close("min", min, f("min"), 1e-3);
        assert_eq!(
            gpt_oss_runtimes::sampling::argmax(logits) as u64,
            reference["argmax"].as_u64().expect("argmax"),
            "prompt {name:?}: argmax"
        );
        for (i, v) in reference["first8"]
            .as_array()
            .expect("first8")
            .iter()
            .enumerate()
        {
            close(
                &format!("[{i}]"),
                logits[i] as f64,
                v.as_f64().expect("value"),
                1e-3,
            );
        }
        let ids = reference["top5_ids"].as_array().expect("top5_ids");
        let values = reference["top5_values"].as_array().expect("top5_values");
        for (id, v) in ids.iter().zip(values) {
            let id = id.as_u64().expect("id") as usize;
            close(
                &format!("[{id}] (top 5)"),
                logits[id] as f64,
                v.as_f64().expect("value"),
                1e-3,
            );
        }
    }
}
