//! `genai_config.json`, as onnxruntime-genai's model builder writes it.
//!
//! Only the fields the decoder loop needs are read; unknown fields are ignored so newer builders
//! keep working.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

#[derive(Debug, Clone, Deserialize)]
pub struct GenaiConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub search: SearchSection,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSection {
    /// Prompt plus generated tokens, at most.
    pub context_length: u32,
    pub decoder: DecoderSection,
    pub eos_token_id: TokenIds,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(rename = "type")]
    pub model_type: String,
    pub vocab_size: u32,
}

/// One id or a list of ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DecoderSection {
    pub filename: String,
    pub head_size: u32,
    pub hidden_size: u32,
    pub num_attention_heads: u32,
    pub num_hidden_layers: u32,
    pub num_key_value_heads: u32,
    pub inputs: DecoderInputs,
    pub outputs: DecoderOutputs,
    #[serde(default)]
    pub sliding_window: Option<SlidingWindow>,
}

/// Graph input names. The KV names are `printf` templates with one `%d` for the layer.
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderInputs {
    pub input_ids: String,
    #[serde(default)]
    pub attention_mask: Option<String>,
    #[serde(default)]
    pub position_ids: Option<String>,
    /// GroupQueryAttention's `seqlens_k` when the graph takes it as an input (int32 `[batch]`).
    #[serde(default)]
    pub past_sequence_length: Option<String>,
    /// GroupQueryAttention's `total_sequence_length` when the graph takes it as an input (int32 scalar).
    #[serde(default)]
    pub total_sequence_length: Option<String>,
    pub past_key_names: String,
    pub past_value_names: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DecoderOutputs {
    pub logits: String,
    pub present_key_names: String,
    pub present_value_names: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SlidingWindow {
    pub window_size: u32,
    /// Layers with a window; all layers when absent.
    #[serde(default)]
    pub layers: Option<Vec<u32>>,
    /// Positions kept beyond the window.
    #[serde(default)]
    pub cache_slack: u32,
    #[serde(default)]
    pub slide_key_value_cache: bool,
    #[serde(default)]
    pub slide_inputs: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SearchSection {
    #[serde(default = "default_true")]
    pub past_present_share_buffer: bool,
    #[serde(default)]
    pub max_length: Option<u32>,
}

impl Default for SearchSection {
    fn default() -> Self {
        SearchSection {
            past_present_share_buffer: true,
            max_length: None,
        }
    }
}

fn default_true() -> bool {
    true
}

impl GenaiConfig {
    /// Reads and checks `DIR/genai_config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("genai_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let config: GenaiConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        config
            .check()
            .map_err(|reason| ModelError::Config { path, reason })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let d = &self.model.decoder;
        if d.num_hidden_layers == 0 || d.num_key_value_heads == 0 || d.head_size == 0 {
            return Err("model.decoder: num_hidden_layers, num_key_value_heads and head_size must be positive".into());
        }
        if self.model.context_length == 0 {
            return Err("model.context_length must be positive".into());
        }
        for (field, template) in [
            (
                "model.decoder.inputs.past_key_names",
                &d.inputs.past_key_names,
            ),
            (
                "model.decoder.inputs.past_value_names",
                &d.inputs.past_value_names,
            ),
            (
                "model.decoder.outputs.present_key_names",
                &d.outputs.present_key_names,
            ),
            (
                "model.decoder.outputs.present_value_names",
                &d.outputs.present_value_names,
            ),
        ] {
            if template.matches("%d").count() != 1 {
                return Err(format!(
                    "{field} must contain exactly one `%d`, got {template:?}"
                ));
            }
        }
        if let Some(w) = &d.sliding_window {
            if w.window_size == 0 {
                return Err("model.decoder.sliding_window.window_size must be positive".into());
            }
            if let Some(layers) = &w.layers {
                if let Some(bad) = layers.iter().find(|&&l| l >= d.num_hidden_layers) {
                    return Err(format!(
                        "model.decoder.sliding_window.layers names layer {bad}, but the model has {} layers",
                        d.num_hidden_layers
                    ));
                }
            }
            if w.slide_key_value_cache || w.slide_inputs {
                return Err("model.decoder.sliding_window: slide_key_value_cache and slide_inputs are not supported".into());
            }
        }
        if !self.search.past_present_share_buffer {
            tracing::info!("genai_config.json sets past_present_share_buffer=false; the runtime shares the buffers anyway");
        }
        Ok(())
    }

    /// The end-of-sequence ids.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.model.eos_token_id.to_vec()
    }

    /// The smallest KV buffer that GroupQueryAttention accepts on the windowed layers
    /// (window plus slack), or 0 without a window.
    pub fn min_kv_capacity(&self) -> u32 {
        self.model
            .decoder
            .sliding_window
            .as_ref()
            .map_or(0, |w| w.window_size.saturating_add(w.cache_slack))
    }
}

/// Expands a `%d` template for one layer.
pub fn layer_name(template: &str, layer: u32) -> String {
    template.replacen("%d", &layer.to_string(), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILDER_OUTPUT: &str = r#"{
        "model": {
            "bos_token_id": 1, "context_length": 256,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx", "head_size": 16, "hidden_size": 64,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
                "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
                "sliding_window": {"window_size": 8, "slide_key_value_cache": false, "slide_inputs": false, "layers": [0], "cache_slack": 0}
            },
            "eos_token_id": [200002, 199999], "pad_token_id": 199999, "type": "gptoss", "vocab_size": 201088
        },
        "search": {"past_present_share_buffer": true, "max_length": 256, "top_k": 50}
    }"#;

    #[test]
    fn parses_what_the_builder_writes() {
        let c: GenaiConfig = serde_json::from_str(BUILDER_OUTPUT).expect("builder output parses");
        c.check().expect("valid");
        assert_eq!(c.eos_token_ids(), vec![200002, 199999]);
        assert_eq!(c.min_kv_capacity(), 8);
        assert_eq!(
            layer_name(&c.model.decoder.inputs.past_key_names, 1),
            "past_key_values.1.key"
        );
    }

    #[test]
    fn a_window_layer_out_of_range_is_named() {
        let text = BUILDER_OUTPUT.replace("\"layers\": [0]", "\"layers\": [5]");
        let c: GenaiConfig = serde_json::from_str(&text).expect("parses");
        let err = c.check().expect_err("layer 5 of 2");
        assert!(err.contains("sliding_window.layers"), "{err}");
    }
}
