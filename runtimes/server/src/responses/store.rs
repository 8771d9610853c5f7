//! The server's response store: the shared [`responses_store`] crate (an embedded SQLite
//! database) typed with this crate's response and item types, and its errors as API errors.

use openai_types::{Item, Response};
pub use responses_store::ResponseStore;

use crate::error::ApiError;

/// A stored response and what it was made from (see [`responses_store::Stored`]).
pub type Stored = responses_store::Stored<Response, Item>;

impl From<responses_store::StoreError> for ApiError {
    fn from(e: responses_store::StoreError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

/// OpenAI's 404 for a response id that is not stored.
pub fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(responses_store::not_found_message(id))
}
