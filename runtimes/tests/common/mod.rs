//! Shared by the ONNX backend tests: the committed tiny gpt-oss fixture and its golden outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use futures::StreamExt;
use gpt_oss_runtimes::{
    DeviceMap, GenerateRequest, InferenceBackend, LibrarySearch, OnnxBackend, OnnxBackendConfig,
    SamplingParams, StopReason, TokenEvent,
};
use tokio_util::sync::CancellationToken;

pub fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixture/tiny")
}

pub fn golden() -> &'static serde_json::Value {
    static GOLDEN: OnceLock<serde_json::Value> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let path = fixture_root().join("golden.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
    })
}

/// The fullkv export (the committed archive: every layer's KV is full length, the window lives
/// only in the graph), unpacked once per test binary from `fixture/tiny/model.tar.xz`.
pub fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let archive = fixture_root().join("model.tar.xz");
        let sha = golden()["archive"]["sha256"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tiny-gpt-oss-{}", &sha[..16.min(sha.len())]));
        if !dir.join("genai_config.json").is_file() {
            let partial = dir.with_extension(format!("partial-{}", std::process::id()));
            std::fs::create_dir_all(&partial).expect("create fixture dir");
            let status = Command::new("tar")
                .arg("-xJf")
                .arg(&archive)
                .arg("-C")
                .arg(&partial)
                .status()
                .expect("run tar");
            assert!(status.success(), "tar -xJf {} failed", archive.display());
            // Another test binary may have won the race; either copy is complete.
            if std::fs::rename(&partial, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
        dir
    })
}

/// The windowed export (the builder's default: window-sized KV on the sliding layers,
/// `sliding_window` in genai_config): the fullkv folder with `fixture/tiny/windowed/*` on top.
pub fn windowed_model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let overlay = fixture_root().join(
            golden()["windowed_overlay"]["dir"]
                .as_str()
                .expect("overlay dir"),
        );
        let base = model_dir();
        let dir = base.with_file_name(format!(
            "{}-windowed",
            base.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        if !dir.join(".complete").is_file() {
            let partial = dir.with_extension(format!("partial-{}", std::process::id()));
            std::fs::create_dir_all(&partial).expect("create fixture dir");
            for entry in std::fs::read_dir(base).expect("fixture") {
                let entry = entry.expect("entry");
                let to = partial.join(entry.file_name());
                if std::fs::hard_link(entry.path(), &to).is_err() {
                    std::fs::copy(entry.path(), &to).expect("copy");
                }
            }
            for entry in std::fs::read_dir(&overlay).expect("overlay") {
                let entry = entry.expect("entry");
                let to = partial.join(entry.file_name());
                let _ = std::fs::remove_file(&to);
                std::fs::copy(entry.path(), &to).expect("copy overlay");
            }
            std::fs::write(partial.join(".complete"), b"").expect("marker");
            if std::fs::rename(&partial, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
        dir
    })
}

/// Both export variants, named.
pub fn variants() -> [(&'static str, &'static Path); 2] {
    [("fullkv", model_dir()), ("windowed", windowed_model_dir())]
}

pub fn config_for(dir: &Path, max_concurrent: u32) -> OnnxBackendConfig {
    let mut c = OnnxBackendConfig::new(
        dir,
        DeviceMap::Cpu,
        max_concurrent,
        LibrarySearch::from_process(),
    );
    c.model_name = Some("tiny-gpt-oss".into());
    // Smaller than most golden prompts and not a multiple of the window (16), so the golden tests
    // prove chunked prefill, including chunks that straddle the window.
    c.prefill_chunk = 24;
    c
}

pub fn config(max_concurrent: u32) -> OnnxBackendConfig {
    config_for(model_dir(), max_concurrent)
}

pub fn load_from(dir: &Path, max_concurrent: u32) -> OnnxBackend {
    OnnxBackend::load(config_for(dir, max_concurrent))
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

pub fn load(max_concurrent: u32) -> OnnxBackend {
    load_from(model_dir(), max_concurrent)
}

pub fn prompts() -> Vec<(String, Vec<u32>, Vec<u32>)> {
    golden()["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| {
            let ids = |k: &str| -> Vec<u32> {
                p[k].as_array()
                    .unwrap_or_else(|| panic!("{k}"))
                    .iter()
                    .map(|v| v.as_u64().expect("id") as u32)
                    .collect()
            };
            (
                p["name"].as_str().expect("name").to_string(),
                ids("prompt_ids"),
                ids("greedy_ids"),
            )
        })
        .collect()
}

pub fn request(
    id: &str,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    stop: Vec<u32>,
    max_new_tokens: u32,
) -> GenerateRequest {
    GenerateRequest {
        request_id: id.to_string(),
        prompt,
        sampling,
        stop_token_ids: stop,
        max_new_tokens,
        cancel: CancellationToken::new(),
        constraint: None,
    }
}

/// Runs a request to the end: the tokens and the finish reason.
pub async fn run(
    backend: &dyn InferenceBackend,
    request: GenerateRequest,
) -> (Vec<u32>, StopReason) {
    let mut stream = backend.generate(request).await.expect("generate accepted");
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            TokenEvent::Token(t) => tokens.push(t),
            TokenEvent::Logprob(_) => {}
            TokenEvent::Finish { reason, usage } => {
                assert_eq!(
                    usage.completion_tokens as usize,
                    tokens.len(),
                    "usage counts the streamed tokens"
                );
                assert!(
                    stream.next().await.is_none(),
                    "Finish must be the last event"
                );
                return (tokens, reason);
            }
            TokenEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("the stream ended without a Finish event");
}
