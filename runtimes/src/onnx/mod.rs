//! The ONNX Runtime backend: runs an onnxruntime-genai export of gpt-oss (`genai_config.json`,
//! `model.onnx` + `model.onnx.data`) on the CPU or the CUDA execution provider.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use gpt_oss_runtimes::{InferenceBackend, LibrarySearch, OnnxBackend, OnnxBackendConfig, DeviceMap};
//! let config = OnnxBackendConfig::new("models/gpt-oss-20b", DeviceMap::Auto, 4, LibrarySearch::from_process());
//! let backend: Arc<dyn InferenceBackend> =
//!     Arc::new(tokio::task::spawn_blocking(move || OnnxBackend::load(config)).await??);
//! # Ok(()) }
//! ```

mod engine;
pub mod genai_config;
pub mod library;
pub mod model;
pub mod prefix_cache;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;

use crate::device::DeviceMap;
use crate::{
    BackendError, Capabilities, GenerateRequest, Health, InferenceBackend, TokenEvent, TokenStream,
};
pub use library::{LibraryError, LibraryLocation, LibrarySearch};
pub use model::{GraphIo, GraphValue, ModelOptions, ModelSpec, OnnxModel, SequenceCache};

/// Why a model could not be loaded or run. Every variant names the file or the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("invalid {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("ONNX Runtime cannot load {path}: {reason}")]
    Onnx { path: PathBuf, reason: String },
    #[error("{config} does not match {model}: {reason}")]
    Mismatch {
        config: PathBuf,
        model: PathBuf,
        reason: String,
    },
    #[error("the CUDA execution provider cannot run on cuda:{device}: {reason} (use --device-map cpu or auto)")]
    Cuda { device: u32, reason: String },
    #[error("{0}")]
    Runtime(String),
    #[error("the engine thread could not start: {0}")]
    Thread(String),
}

/// How to build an [`OnnxBackend`].
#[derive(Debug, Clone)]
pub struct OnnxBackendConfig {
    /// The onnxruntime-genai folder.
    pub model_dir: PathBuf,
    pub device: DeviceMap,
    /// Sequences generated at once; more requests wait in FIFO order.
    pub max_concurrent: u32,
    /// Where the ONNX Runtime library is.
    pub library: LibrarySearch,
    /// Reported in [`Capabilities::model_name`]; the folder's name when `None`.
    pub model_name: Option<String>,
    /// ONNX Runtime intra-op threads; `None` lets ONNX Runtime choose.
    pub intra_threads: Option<usize>,
    /// Prompt tokens fed per step ([`DEFAULT_PREFILL_CHUNK`] by default). Bounds the
    /// `[chunk, vocab]` logits a prefill step allocates and lets other sequences decode between chunks.
    pub prefill_chunk: usize,
    /// Caps prompt plus completion below the model's `context_length`. With batching the decode
    /// pool holds `max_concurrent` rows of this many tokens for every layer, allocated at load, so
    /// a long-context model needs a cap (`None`: the model's context length, lowered at load
    /// when the decode pool would not fit in half of the memory available, see
    /// [`fit_context_length`]).
    pub max_seq_len: Option<u32>,
    /// Memory for automatic prefix caching, in bytes ([`DEFAULT_PREFIX_CACHE_BYTES`] by default;
    /// 0 turns it off; CPU only): the KV of recently prefilled prompts is kept, in blocks of
    /// `prefill_chunk` tokens, and reused by prompts that start with the same blocks (see
    /// [`prefix_cache`]).
    pub prefix_cache_bytes: usize,
}

/// The prefix cache's memory unless configured: 1 GiB (llama.cpp's `--cache-ram` defaults to
/// 8 GiB; gpt-oss-20b's blocks of 256 tokens take about 20 MiB each in float32).
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 1 << 30;

/// The context length the CPU decode pool can hold: `context_length` when `slots` rows of it fit in
/// `budget_bytes`, else the largest multiple of 1,024 tokens that fits (never below `floor`, the
/// smallest buffer the graph accepts). vLLM refuses to start in this case ("the model's max seq
/// len is larger than the maximum number of tokens that can be stored in KV cache"); we start with
/// the shorter context and log it, since the pool is only a cap on how long one request can be.
pub fn fit_context_length(
    context_length: usize,
    slots: usize,
    kv_bytes_per_token: u64,
    budget_bytes: u64,
    floor: usize,
) -> usize {
    let per_token = kv_bytes_per_token
        .saturating_mul(slots.max(1) as u64)
        .max(1);
    let fits = (budget_bytes / per_token) as usize;
    if fits >= context_length {
        return context_length;
    }
    (fits / 1024 * 1024).max(floor).min(context_length)
}

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` where it cannot be read).
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines().find_map(|l| {
        l.strip_prefix("MemAvailable:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    })
}

/// Prompt tokens per prefill step unless configured: 256 x 201,088 fp32 logits are 206 MB.
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

impl OnnxBackendConfig {
    pub fn new(
        model_dir: impl Into<PathBuf>,
        device: DeviceMap,
        max_concurrent: u32,
        library: LibrarySearch,
    ) -> Self {
        OnnxBackendConfig {
            model_dir: model_dir.into(),
            device,
            max_concurrent,
            library,
            model_name: None,
            intra_threads: None,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            max_seq_len: None,
            prefix_cache_bytes: DEFAULT_PREFIX_CACHE_BYTES,
        }
    }
}

/// The ONNX Runtime backend. Its engine runs on its own thread; [`InferenceBackend::generate`]
/// only queues the request and returns the stream.
pub struct OnnxBackend {
    capabilities: Capabilities,
    commands: Mutex<mpsc::Sender<engine::Command>>,
    alive: Arc<AtomicBool>,
    counters: Arc<engine::Counters>,
}

/// What the engine is doing, as of its latest round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineLoad {
    /// Sequences being generated (at most `max_concurrent`).
    pub active: usize,
    /// Requests queued inside the engine, waiting for a slot.
    pub waiting: usize,
}

impl std::fmt::Debug for OnnxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxBackend")
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

impl OnnxBackend {
    /// Loads the library and the model and starts the engine thread. Blocking (seconds for a big
    /// model): call it from `spawn_blocking` or before the runtime starts.
    pub fn load(config: OnnxBackendConfig) -> Result<Self, ModelError> {
        let env = library::environment(&config.library)?;
        let options = ModelOptions {
            device: config.device,
            intra_threads: config.intra_threads,
        };
        let mut model = OnnxModel::load(&env, &config.model_dir, &options)?;
        if let Some(cap) = config.max_seq_len {
            model.cap_context_length(cap as usize);
        } else if config.max_concurrent > 1 && model.supports_batching() {
            // The decode pool holds every slot at the full context length; a long-context model
            // (gpt-oss: 131,072 tokens, 12.9 GB per slot in float32) must not take all memory.
            if let Some(available) = mem_available() {
                let slots = config.max_concurrent as usize;
                let fitted = fit_context_length(
                    model.spec.context_length,
                    slots,
                    model.kv_bytes_per_token(),
                    available / 2,
                    model.spec.min_kv_capacity,
                );
                if fitted < model.spec.context_length {
                    tracing::warn!(
                        context_length = model.spec.context_length,
                        max_model_len = fitted,
                        slots,
                        kv_bytes_per_token = model.kv_bytes_per_token(),
                        available_bytes = available,
                        "the decode pool at the model's full context would not fit in half of the \
                         available memory; serving a shorter context (set --max-model-len to choose)"
                    );
                    model.cap_context_length(fitted);
                }
            }
        }
        let model_name = config
            .model_name
            .clone()
            .unwrap_or_else(|| folder_name(&config.model_dir));
        let capabilities = Capabilities {
            model_name,
            context_length: model.spec.context_length as u32,
            device: model.device.to_string(),
            eos_token_ids: model.spec.eos_token_ids.clone(),
            vocab_size: model.spec.vocab_size as u32,
            max_concurrent_sequences: config.max_concurrent.max(1),
        };
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let engine_alive = Arc::clone(&alive);
        let counters = Arc::new(engine::Counters::default());
        let engine_counters = Arc::clone(&counters);
        let max_concurrent = config.max_concurrent.max(1) as usize;
        let prefill_chunk = config.prefill_chunk.max(1);
        let prefix_cache_bytes = config.prefix_cache_bytes;
        std::thread::Builder::new()
            .name("onnx-engine".into())
            .spawn(move || {
                engine::run(
                    model,
                    rx,
                    max_concurrent,
                    prefill_chunk,
                    prefix_cache_bytes,
                    engine_alive,
                    engine_counters,
                )
            })
            .map_err(|e| ModelError::Thread(e.to_string()))?;
        Ok(OnnxBackend {
            capabilities,
            commands: Mutex::new(tx),
            alive,
            counters,
        })
    }

    /// Sequences in flight and requests waiting inside the engine.
    pub fn load_now(&self) -> EngineLoad {
        EngineLoad {
            active: self.counters.active.load(Ordering::SeqCst),
            waiting: self.counters.waiting.load(Ordering::SeqCst),
        }
    }

    fn validate(&self, request: &GenerateRequest) -> Result<(), BackendError> {
        let caps = &self.capabilities;
        if request.prompt.is_empty() {
            return Err(BackendError::EmptyPrompt);
        }
        if request.prompt.len() as u64 + 1 > u64::from(caps.context_length) {
            return Err(BackendError::PromptTooLong {
                prompt_tokens: request.prompt.len().min(u32::MAX as usize) as u32,
                context_length: caps.context_length,
            });
        }
        if let Some(&bad) = request.prompt.iter().find(|&&t| t >= caps.vocab_size) {
            return Err(BackendError::InvalidToken(bad));
        }
        Ok(())
    }
}

fn folder_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gpt-oss".to_string())
}

#[async_trait]
impl InferenceBackend for OnnxBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn health(&self) -> Health {
        if self.alive.load(Ordering::SeqCst) {
            Health::Ready
        } else {
            Health::Failed {
                reason: "the ONNX engine thread stopped".into(),
            }
        }
    }

    async fn generate(&self, request: GenerateRequest) -> Result<TokenStream, BackendError> {
        self.validate(&request)?;
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel::<TokenEvent>();
        let request_id = request.request_id.clone();
        {
            let commands = self
                .commands
                .lock()
                .map_err(|_| BackendError::Internal("the engine queue lock is poisoned".into()))?;
            commands
                .send(engine::Command::Submit(vec![engine::Job {
                    request,
                    events,
                }]))
                .map_err(|_| BackendError::Unavailable("the ONNX engine thread stopped".into()))?;
        }
        tracing::debug!(%request_id, "queued");
        let stream = async_stream(move |cx| rx.poll_recv(cx));
        Ok(Box::pin(stream))
    }

    /// Queues the group as one engine job: with the batched CPU engine the prompt is prefilled
    /// once and its KV cache copied into a decode-pool row per sequence; without batching
    /// (`max_concurrent == 1`, CUDA) each sequence prefills on its own. Requests whose prompts
    /// differ are queued one by one.
    async fn generate_group(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<TokenStream>, BackendError> {
        let same_prompt = requests.windows(2).all(|w| w[0].prompt == w[1].prompt);
        if requests.len() < 2 || !same_prompt {
            let mut streams = Vec::with_capacity(requests.len());
            for request in requests {
                streams.push(self.generate(request).await?);
            }
            return Ok(streams);
        }
        for request in &requests {
            self.validate(request)?;
        }
        let mut jobs = Vec::with_capacity(requests.len());
        let mut streams: Vec<TokenStream> = Vec::with_capacity(requests.len());
        for request in requests {
            let (events, mut rx) = tokio::sync::mpsc::unbounded_channel::<TokenEvent>();
            jobs.push(engine::Job { request, events });
            streams.push(Box::pin(async_stream(move |cx| rx.poll_recv(cx))));
        }
        let commands = self
            .commands
            .lock()
            .map_err(|_| BackendError::Internal("the engine queue lock is poisoned".into()))?;
        commands
            .send(engine::Command::Submit(jobs))
            .map_err(|_| BackendError::Unavailable("the ONNX engine thread stopped".into()))?;
        Ok(streams)
    }

    fn prefill_tokens_total(&self) -> Option<u64> {
        Some(self.counters.prefill_tokens.load(Ordering::Relaxed))
    }

    fn prefix_cache_stats(&self) -> Option<crate::PrefixCacheStats> {
        self.counters.prefix_cache.lock().ok().and_then(|s| *s)
    }
}

/// A stream from a poll function (no extra dependency for one adapter).
fn async_stream<F>(poll: F) -> futures::stream::PollFn<F>
where
    F: FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Option<TokenEvent>>,
{
    futures::stream::poll_fn(poll)
}

#[cfg(test)]
mod tests {
    use super::fit_context_length;

    #[test]
    fn the_decode_pool_is_fitted_to_the_memory_budget() {
        // gpt-oss-20b in float32: 98,304 bytes per token per slot.
        let per_token = 2 * 24 * 8 * 64 * 4;
        // Two slots at 131,072 tokens need 25.8 GB; 8 GB holds 40,690 tokens each -> 39,936.
        assert_eq!(
            fit_context_length(131_072, 2, per_token, 8_000_000_000, 128),
            39_936
        );
        // Enough memory: the model's own context.
        assert_eq!(
            fit_context_length(131_072, 2, per_token, 30_000_000_000, 128),
            131_072
        );
        // Almost none: the smallest buffer the graph accepts.
        assert_eq!(
            fit_context_length(131_072, 8, per_token, 1_000_000, 256),
            256
        );
        // A short-context model is never lengthened.
        assert_eq!(fit_context_length(512, 2, per_token, 0, 1024), 512);
    }
}
