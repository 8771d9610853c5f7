//! Automatic prefix caching on the tiny gpt-oss fixture (attention sinks, sliding window of 16 on
//! layers 0 and 2), both exports: the fullkv one (every layer's buffer holds every position) and
//! the windowed one (window-sized buffers that GroupQueryAttention evicts in place). Blocks are the
//! test configuration's prefill chunk of 24 tokens, which is not a multiple of the window.
//!
//! Exactness is checked against a backend with the cache off: the same prompts, greedy, token
//! for token, with shared prefixes shorter and longer than the window, under concurrency, and
//! after eviction.

mod common;

use std::path::Path;

use common::*;
use futures::future::join_all;
use futures::StreamExt;
use gpt_oss_runtimes::{
    GenerateRequest, GenerationUsage, InferenceBackend, OnnxBackend, SamplingParams, TokenEvent,
};

const BLOCK: u32 = 24;

fn backend(dir: &Path, max_concurrent: u32, cache_bytes: usize) -> OnnxBackend {
    let mut c = config_for(dir, max_concurrent);
    c.prefix_cache_bytes = cache_bytes;
    OnnxBackend::load(c).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// Runs a request to the end: its tokens and its usage.
async fn run_usage(
    backend: &dyn InferenceBackend,
    request: GenerateRequest,
) -> (Vec<u32>, GenerationUsage) {
    let mut stream = backend.generate(request).await.expect("accepted");
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            TokenEvent::Token(t) => tokens.push(t),
            TokenEvent::Logprob(_) => {}
            TokenEvent::Finish { usage, .. } => return (tokens, usage),
            TokenEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("no Finish event");
}

fn greedy(id: &str, prompt: Vec<u32>) -> GenerateRequest {
    request(id, prompt, SamplingParams::greedy(), vec![], 24)
}

/// 325 tokens: three golden prompts end to end (harmony chat, long text, a tool-call history).
fn base() -> Vec<u32> {
    let p = prompts();
    let get = |name: &str| {
        p.iter()
            .find(|(n, ..)| n == name)
            .map(|(_, ids, _)| ids.clone())
            .unwrap_or_else(|| panic!("golden prompt {name}"))
    };
    [
        get("harmony_chat"),
        get("long_text"),
        get("tool_call_history"),
    ]
    .concat()
}

/// `base[..shared]` followed by a suffix of its own (the unicode golden prompt, shifted so two
/// suffixes differ).
fn branch(shared: usize, salt: u32) -> Vec<u32> {
    let b = base();
    let suffix: Vec<u32> = prompts()
        .into_iter()
        .find(|(n, ..)| n == "unicode_code")
        .map(|(_, ids, _)| ids)
        .expect("unicode_code")
        .into_iter()
        .map(|t| t + salt)
        .collect();
    [&b[..shared], &suffix[..]].concat()
}

/// Whole blocks a prompt of `len` tokens sharing `shared` with a cached one can reuse.
fn reusable(shared: usize, len: usize) -> u32 {
    (shared.min(len - 1) as u32 / BLOCK) * BLOCK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_with_reuse_equals_greedy_output_without_it_across_the_window() {
    for (variant, dir) in variants() {
        let off = backend(dir, 1, 0);
        let on = backend(dir, 1, 64 << 20);
        let b = base();
        // (prompt, cached tokens expected on the cache-on backend, in this order)
        let first = run_usage(&on, greedy("base", b.clone())).await;
        assert_eq!(first.1.cached_tokens, 0, "{variant}: nothing cached yet");
        let mut cases: Vec<(String, Vec<u32>, u32)> = vec![
            // shares fewer tokens than the window, and than a block: nothing to reuse
            ("shared 10".into(), branch(10, 0), 0),
            // more than the window, one block
            ("shared 40".into(), branch(40, 1), reusable(40, 59)),
            // many blocks, cut inside a block
            ("shared 200".into(), branch(200, 2), reusable(200, 219)),
            // the same prompt again: all whole blocks but the one holding the last token
            ("same prompt".into(), b.clone(), reusable(b.len(), b.len())),
        ];
        // a conversation's next turn: the prompt, what the model said, and more
        let next: Vec<u32> = [&b[..], &first.0[..], &branch(0, 3)[..]].concat();
        cases.push((
            "next turn".into(),
            next.clone(),
            reusable(b.len(), next.len()),
        ));
        for (name, prompt, cached) in cases {
            let want = run_usage(&off, greedy(&name, prompt.clone())).await;
            let got = run_usage(&on, greedy(&name, prompt.clone())).await;
            assert_eq!(
                got.0, want.0,
                "{variant}, {name}: greedy ids differ with the prefix cache"
            );
            assert_eq!(
                got.1.cached_tokens, cached,
                "{variant}, {name}: cached tokens"
            );
            assert_eq!(want.1.cached_tokens, 0, "the cache is off");
            assert_eq!(got.1.prompt_tokens as usize, prompt.len());
        }
        let stats = on.prefix_cache_stats().expect("the cache is on");
        assert_eq!(stats.queries, 6, "{variant}: {stats:?}");
        assert_eq!(stats.hits, 4, "{variant}: {stats:?}");
        assert!(off.prefix_cache_stats().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_sharing_a_prefix_get_what_they_get_alone() {
    for (variant, dir) in variants() {
        let off = backend(dir, 1, 0);
        let on = backend(dir, 4, 64 << 20);
        let prompts: Vec<Vec<u32>> = (0..6).map(|i| branch(100 + 30 * i, i as u32)).collect();
        let mut want = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            want.push(
                run_usage(&off, greedy(&format!("alone {i}"), p.clone()))
                    .await
                    .0,
            );
        }
        // warm the cache with the shared part, then everything at once (batched decoding)
        run_usage(&on, greedy("warm", base())).await;
        let got = join_all(
            prompts
                .iter()
                .enumerate()
                .map(|(i, p)| run_usage(&on, greedy(&format!("together {i}"), p.clone()))),
        )
        .await;
        for (i, ((tokens, usage), want)) in got.iter().zip(&want).enumerate() {
            assert_eq!(tokens, want, "{variant}: request {i} differs");
            assert!(
                usage.cached_tokens >= 96,
                "{variant}: request {i} reused {usage:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_eviction_prompts_are_still_exact_and_the_budget_holds() {
    for (variant, dir) in variants() {
        // the size of a block, from a roomy cache
        let probe = backend(dir, 1, 64 << 20);
        run_usage(&probe, greedy("probe", base())).await;
        let s = probe.prefix_cache_stats().expect("on");
        let block_bytes = (s.bytes / s.blocks) as usize;
        drop(probe);

        let off = backend(dir, 1, 0);
        // room for 5 blocks: base alone has 13
        let on = backend(dir, 1, 5 * block_bytes + block_bytes / 2);
        let others: Vec<Vec<u32>> = (0..3).map(|i| branch(30 * i, 10 + i as u32)).collect();
        for (i, p) in std::iter::once(base()).chain(others).enumerate() {
            let want = run_usage(&off, greedy(&format!("p{i}"), p.clone())).await;
            let got = run_usage(&on, greedy(&format!("p{i}"), p.clone())).await;
            assert_eq!(got.0, want.0, "{variant}: prompt {i} differs");
            let s = on.prefix_cache_stats().expect("on");
            assert!(s.bytes <= s.budget_bytes, "{variant}: {s:?}");
        }
        // base again: whatever of it survived is reused, and the answer is the same
        let want = run_usage(&off, greedy("again", base())).await;
        let got = run_usage(&on, greedy("again", base())).await;
        assert_eq!(got.0, want.0, "{variant}: base after eviction differs");
        assert!(
            got.1.cached_tokens < reusable(325, 325),
            "{variant}: {:?}",
            got.1
        );
        let s = on.prefix_cache_stats().expect("on");
        assert!(s.evictions > 0, "{variant}: {s:?}");
        assert!(s.blocks <= 5, "{variant}: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reuses_a_cached_prefix_and_each_sequence_reports_it() {
    let dir = windowed_model_dir();
    let off = backend(dir, 1, 0);
    let on = backend(dir, 4, 64 << 20);
    let p = branch(150, 5);
    let want = run_usage(&off, greedy("alone", p.clone())).await;
    run_usage(&on, greedy("warm", base())).await;
    let group: Vec<GenerateRequest> = (0..3)
        .map(|i| greedy(&format!("n{i}"), p.clone()))
        .collect();
    let streams = on.generate_group(group).await.expect("accepted");
    for mut stream in streams {
        let mut tokens = Vec::new();
        let mut usage = None;
        while let Some(e) = stream.next().await {
            match e {
                TokenEvent::Token(t) => tokens.push(t),
                TokenEvent::Finish { usage: u, .. } => usage = Some(u),
                TokenEvent::Error(e) => panic!("{e}"),
                TokenEvent::Logprob(_) => {}
            }
        }
        assert_eq!(tokens, want.0);
        assert_eq!(usage.expect("finish").cached_tokens, reusable(150, p.len()));
    }
}
