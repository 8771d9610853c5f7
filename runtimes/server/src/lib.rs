//! `gpt-oss-server`: an OpenAI-compatible HTTP server over any
//! [`InferenceBackend`](gpt_oss_runtimes::InferenceBackend).
//!
//! Request flow: the body is read under the size limit ([`body`]), parsed and
//! validated once into valid types ([`validate`]), rendered to harmony token ids
//! ([`codec`]) — these three on the bounded [`cpu_pool`], off the async threads — given the grammar its output must follow ([`grammar`]), admitted by the FIFO queue ([`queue`]), and generated as a stream
//! of events ([`generation`]) that owns its concurrency permit. Chat and completion
//! handlers ([`chat`], [`completions`]) turn those events into JSON or SSE.

pub mod args;
pub mod body;
pub mod chat;
pub mod codec;
pub mod completions;
pub mod cpu_pool;
pub mod error;
pub mod generation;
pub mod grammar;
pub mod info;
pub mod loader;
pub mod logprobs;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod sse;
pub mod state;
pub mod stop;
pub mod submit;
pub mod validate;

pub use args::Args;
pub use error::ApiError;
pub use server::{router, serve, shutdown_signal, spawn_model_load};
pub use state::{AppState, LoadedModel, ModelState, ServerConfig};

#[cfg(test)]
mod tests;
