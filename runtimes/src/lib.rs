//! Inference runtimes for gpt-oss.
//!
//! - [`backend`]: the [`InferenceBackend`] trait that the HTTP server holds as
//!   `Arc<dyn InferenceBackend>`, and the request / event types it speaks.
//!
//! A runtime takes prompt token ids and returns a stream of sampled token ids that
//! ends in exactly one [`TokenEvent::Finish`]. It knows nothing about HTTP, chat
//! messages or harmony: rendering and parsing happen in the `harmony` crate.

pub mod backend;

pub use backend::*;
