//! Loading a model folder into a [`LoadedModel`].

use std::path::Path;
use std::sync::Arc;

use gpt_oss_runtimes::{DeviceMap, LibrarySearch, OnnxBackend, OnnxBackendConfig};

use crate::state::LoadedModel;

/// Loads the onnxruntime-genai export in `folder` (genai_config.json, model.onnx,
/// tokenizer.json) on `device`, serving at most `max_model_len` tokens per sequence (`None`: the
/// model's context, fitted to memory). Blocking: call it from a blocking thread.
pub fn load_onnx(
    folder: &Path,
    model_name: &str,
    device: DeviceMap,
    max_concurrent: u32,
    max_model_len: Option<u32>,
) -> Result<LoadedModel, String> {
    let tokenizer = harmony::Tokenizer::from_dir(folder).map_err(|e| e.to_string())?;
    let mut config = OnnxBackendConfig::new(
        folder,
        device,
        max_concurrent,
        LibrarySearch::from_process(),
    );
    config.model_name = Some(model_name.to_string());
    config.max_seq_len = max_model_len;
    let backend = OnnxBackend::load(config).map_err(|e| e.to_string())?;
    Ok(LoadedModel {
        backend: Arc::new(backend),
        tokenizer,
        grammars: Default::default(),
    })
}
