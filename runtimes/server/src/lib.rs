//! `gpt-oss-server`: an OpenAI-compatible HTTP server over any
//! [`InferenceBackend`](gpt_oss_runtimes::InferenceBackend).
//!
//! Request flow: the body is read under the size limit ([`body`]) and parsed and validated
//! once into valid types ([`validate`], on the bounded [`cpu_pool`], off the async threads).
//! Every handler then calls the one entry point, [`infer::start`]: it renders the prompt to
//! harmony token ids ([`codec`], on the pool), checks it against the model, picks the parser
//! and the grammar the output must follow ([`grammar`]), waits for admission by the FIFO queue
//! ([`queue`]) and starts a stream of events ([`generation`]) that owns its concurrency
//! permit. The handlers ([`chat`], [`completions`], [`responses`]) only turn requests into
//! [`infer::Input`] and those events into JSON or SSE.

pub mod args;
pub mod body;
pub mod chat;
pub mod codec;
pub mod completions;
pub mod cpu_pool;
pub mod error;
pub mod generation;
pub mod grammar;
pub mod infer;
pub mod info;
pub mod loader;
pub mod logprobs;
pub mod metrics;
pub mod queue;
pub mod registration;
pub mod responses;
pub mod server;
pub mod sse;
pub mod state;
pub mod stop;
pub mod validate;

pub use args::Args;
pub use error::ApiError;
pub use server::{router, serve, shutdown_signal, spawn_model_load};
pub use state::{AppState, LoadedModel, ModelState, ServerConfig};

#[cfg(test)]
mod tests;
