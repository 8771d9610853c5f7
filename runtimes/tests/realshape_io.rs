//! Our loader on gpt-oss-20b-shaped exports that cannot run here (issue 18): the genai_config.json
//! and graph inputs/outputs of onnxruntime-genai's int4 exports of the 20b shape, for the CPU and
//! for CUDA (`fixture/realshape/`, copied from the exports `benches/realshape/make_models.py
//! --copy-fixture` makes; the weights are not committed), read by the same checks a load runs.

use std::path::{Path, PathBuf};

use gpt_oss_runtimes::onnx::genai_config::GenaiConfig;
use gpt_oss_runtimes::onnx::{GraphIo, GraphValue, ModelSpec};
use ort::value::TensorElementType;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixture/realshape")
        .join(name)
}

/// io.json: `{"inputs": [{"name", "elem_type" (ONNX's TensorProto number), "shape"}], "outputs": …}`.
fn graph_io(dir: &Path) -> GraphIo {
    let text = std::fs::read_to_string(dir.join("io.json")).expect("io.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("io.json is JSON");
    let values = |key: &str| -> Vec<GraphValue> {
        json[key]
            .as_array()
            .expect("a list")
            .iter()
            .map(|v| {
                let ty = match v["elem_type"].as_u64().expect("elem_type") {
                    1 => TensorElementType::Float32,
                    6 => TensorElementType::Int32,
                    7 => TensorElementType::Int64,
                    10 => TensorElementType::Float16,
                    16 => TensorElementType::Bfloat16,
                    other => panic!("element type {other} not expected in a gpt-oss export"),
                };
                let shape = v["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_i64().expect("dim"))
                    .collect();
                GraphValue {
                    name: v["name"].as_str().expect("name").to_string(),
                    tensor: Some((ty, shape)),
                }
            })
            .collect()
    };
    GraphIo {
        inputs: values("inputs"),
        outputs: values("outputs"),
    }
}

fn spec(name: &str) -> ModelSpec {
    let dir = fixture(name);
    let config = GenaiConfig::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    ModelSpec::new(&config, &graph_io(&dir), &dir.join("model.onnx"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_int4_exports_of_the_20b_shape_are_read_as_gpt_oss_20b() {
    for (name, kv) in [
        ("int4-cpu", TensorElementType::Float32),
        ("int4-cuda", TensorElementType::Float16),
    ] {
        let s = spec(name);
        assert_eq!(
            (s.num_kv_heads, s.head_size, s.vocab_size),
            (8, 64, 201_088),
            "{name}"
        );
        assert_eq!(s.context_length, 131_072, "{name}");
        assert_eq!(s.window, 128, "{name}: layer 0 slides over 128 tokens");
        assert_eq!(s.layers(), 2, "{name}");
        assert_eq!(s.windowed_layers(), vec![0], "{name}");
        assert_eq!(s.kv_type(), kv, "{name}: KV element type");
        assert_eq!(s.logits_type(), kv, "{name}: logits element type");
        assert!(s.eos_token_ids.contains(&200_002), "{name}");
    }
}

#[test]
fn a_graph_that_lacks_a_named_kv_input_is_refused_naming_it() {
    let dir = fixture("int4-cuda");
    let config = GenaiConfig::load(&dir).expect("config");
    let mut io = graph_io(&dir);
    io.inputs.retain(|v| v.name != "past_key_values.1.value");
    let err = ModelSpec::new(&config, &io, &dir.join("model.onnx"))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("past_key_values.1.value"), "{err}");
}
