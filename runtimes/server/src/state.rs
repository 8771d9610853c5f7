//! What every handler shares: configuration, the loaded model, the queue, metrics.

use std::sync::Arc;

use gpt_oss_runtimes::InferenceBackend;
use harmony::Tokenizer;
use parking_lot::RwLock;

use crate::args::Args;
use crate::cpu_pool::CpuPool;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::queue::Admission;

/// A model ready to serve: the engine and the tokenizer of its folder.
pub struct LoadedModel {
    pub backend: Arc<dyn InferenceBackend>,
    pub tokenizer: Tokenizer,
    /// Grammar compilation for constrained decoding, over this tokenizer's vocabulary.
    pub grammars: crate::grammar::Compilers,
}

/// Where the model is in its life.
#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<LoadedModel>),
    Failed(String),
}

/// Settings the handlers read, taken from [`Args`] once.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub model_name: String,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub raw_output: bool,
    pub default_max_tokens: u32,
    pub retry_after_secs: u64,
    /// The Responses API's SQLite file; `None` keeps responses in memory.
    pub responses_store: Option<std::path::PathBuf>,
    /// The key that seals reasoning (`encrypted_content`); `None`: a key of this process.
    pub reasoning_key_file: Option<std::path::PathBuf>,
}

impl From<&Args> for ServerConfig {
    fn from(a: &Args) -> Self {
        ServerConfig {
            model_name: a.model_name.clone(),
            api_key: a.api_key.clone().filter(|k| !k.is_empty()),
            max_body_bytes: a.max_body_bytes,
            raw_output: a.raw_output,
            default_max_tokens: a.default_max_tokens,
            retry_after_secs: a.retry_after_secs,
            responses_store: a.responses_store_path(),
            reasoning_key_file: a.reasoning_key_path(),
        }
    }
}

pub struct AppState {
    pub config: ServerConfig,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    /// Where parsing, rendering and tokenizing run, off the async worker threads.
    pub cpu: CpuPool,
    pub model: RwLock<ModelState>,
    /// `created` of the model in `/v1/models`: when this server started.
    pub started: u64,
    /// The Responses API's store and reasoning key.
    pub responses: crate::responses::Responses,
}

impl AppState {
    pub fn new(config: ServerConfig, max_concurrent: u32, max_queue: u32) -> Arc<Self> {
        let cpu = CpuPool::new(
            CpuPool::workers_for_this_machine(),
            max_queue,
            config.retry_after_secs,
        );
        let responses = crate::responses::Responses::new(
            config.responses_store.clone(),
            config.reasoning_key_file.clone(),
        );
        Arc::new(AppState {
            responses,
            config,
            admission: Admission::new(max_concurrent, max_queue),
            metrics: Arc::new(Metrics::default()),
            cpu,
            model: RwLock::new(ModelState::Loading),
            started: openai_types::unix_now(),
        })
    }

    pub fn set_model(&self, state: ModelState) {
        *self.model.write() = state;
    }

    /// The loaded model, or 503 while it loads or after it failed to load.
    pub fn ready_model(&self) -> Result<Arc<LoadedModel>, ApiError> {
        match &*self.model.read() {
            ModelState::Ready(m) => Ok(Arc::clone(m)),
            ModelState::Loading => Err(ApiError::ModelNotLoaded(
                "the model is not loaded yet; retry shortly".to_string(),
            )),
            ModelState::Failed(reason) => Err(ApiError::ModelNotLoaded(format!(
                "the model is not loaded: {reason}"
            ))),
        }
    }
}
