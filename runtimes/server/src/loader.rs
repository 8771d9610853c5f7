//! Loading a model folder into a [`LoadedModel`].

use std::path::Path;

use crate::state::LoadedModel;

/// Loads the ONNX export in `folder` on `device` (`auto`, `cpu`, `cuda`, `cuda:N`).
pub fn load_onnx(
    folder: &Path,
    model_name: &str,
    device: &str,
    max_concurrent: u32,
) -> Result<LoadedModel, String> {
    let _ = (model_name, device, max_concurrent);
    let _tokenizer = harmony::Tokenizer::from_dir(folder).map_err(|e| e.to_string())?;
    Err("the ONNX backend is not wired in yet".to_string())
}
