//! Inference runtimes for gpt-oss.
//!
//! - [`backend`]: the [`InferenceBackend`] trait that the HTTP server holds as
//!   `Arc<dyn InferenceBackend>`, and the request / event types it speaks.
//! - [`onnx`]: the ONNX Runtime backend ([`OnnxBackend`]) for onnxruntime-genai exports.
//! - [`constraint`]: grammar-constrained sampling (llguidance token masks).
//! - [`sampling`]: greedy, temperature, top-k and top-p sampling with a seeded RNG.
//! - [`device`]: `--device-map` (`auto`, `cpu`, `cuda`, `cuda:N`).
//!
//! A runtime takes prompt token ids and returns a stream of sampled token ids that
//! ends in exactly one [`TokenEvent::Finish`]. It knows nothing about HTTP, chat
//! messages or harmony: rendering and parsing happen in the `harmony` crate.

pub mod backend;
pub mod constraint;
pub mod device;
pub mod nano;
pub mod onnx;
pub mod sampling;

pub use backend::*;
pub use device::{Device, DeviceMap, DeviceMapError};
pub use onnx::{EngineLoad, LibrarySearch, ModelError, OnnxBackend, OnnxBackendConfig};
