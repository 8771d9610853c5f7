//! Loading a model folder into a [`LoadedModel`].

use std::path::Path;
use std::sync::Arc;

use gpt_oss_runtimes::{DeviceMap, LibrarySearch, OnnxBackend, OnnxBackendConfig};

use crate::state::LoadedModel;

/// How to run an ONNX model (the server flags that reach the engine).
#[derive(Debug, Clone)]
pub struct OnnxOptions {
    pub device: DeviceMap,
    pub max_concurrent: u32,
    /// At most this many tokens per sequence (`None`: the model's context, fitted to memory).
    pub max_model_len: Option<u32>,
    /// The prefix cache's memory in bytes (0: off).
    pub prefix_cache_bytes: usize,
}

/// Loads the onnxruntime-genai export in `folder` (genai_config.json, model.onnx,
/// tokenizer.json). Blocking: call it from a blocking thread.
pub fn load_onnx(
    folder: &Path,
    model_name: &str,
    options: &OnnxOptions,
) -> Result<LoadedModel, String> {
    let tokenizer = harmony::Tokenizer::from_dir(folder).map_err(|e| e.to_string())?;
    let mut config = OnnxBackendConfig::new(
        folder,
        options.device,
        options.max_concurrent,
        LibrarySearch::from_process(),
    );
    config.model_name = Some(model_name.to_string());
    config.max_seq_len = options.max_model_len;
    config.prefix_cache_bytes = options.prefix_cache_bytes;
    let backend = OnnxBackend::load(config).map_err(|e| e.to_string())?;
    Ok(LoadedModel {
        backend: Arc::new(backend),
        tokenizer,
        grammars: Default::default(),
    })
}
