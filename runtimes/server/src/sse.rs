//! Server-sent events as OpenAI streams them: `data: <json>` per chunk, errors as
//! `data: {"error": ...}`, and a final `data: [DONE]`.

use axum::response::sse::Event;
use serde::Serialize;

use crate::error::ApiError;

pub fn json_event<T: Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(s) => Event::default().data(s),
        Err(e) => error_event(&ApiError::Internal(format!(
            "could not serialize a chunk: {e}"
        ))),
    }
}

/// An error in the middle of a stream: the OpenAI SDKs raise it as an `APIError`.
pub fn error_event(e: &ApiError) -> Event {
    tracing::warn!(error = %e, "error event sent in a stream");
    Event::default().data(e.body().to_json())
}

pub fn done_event() -> Event {
    Event::default().data("[DONE]")
}
