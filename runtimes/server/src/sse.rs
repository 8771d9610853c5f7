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

/// A streamed chunk as an SSE event. With `include_usage`, every chunk without usage (all but
/// the last) carries `"usage": null`, as OpenAI sends it.
pub fn chunk_event<T: Serialize>(chunk: &T, include_usage: bool) -> Event {
    if !include_usage {
        return json_event(chunk);
    }
    match serde_json::to_value(chunk) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.entry("usage").or_insert(serde_json::Value::Null);
            json_event(&map)
        }
        _ => json_event(chunk),
    }
}
