//! `GET /health`, `/queue/status`, `/v1/models`, `/v1/models/{id}`, `/metrics`, and
//! the JSON answers for unknown routes and wrong methods.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use gpt_oss_runtimes::Health;
use openai_types::{Model, ModelList};
use serde_json::json;

use crate::error::ApiError;
use crate::state::{AppState, ModelState};

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let queue = state.admission.status();
    let model_state = state.model.read().clone();
    let (status, detail, device) = match model_state {
        ModelState::Loading => ("loading", None, None),
        ModelState::Failed(reason) => ("failed", Some(reason), None),
        ModelState::Ready(m) => {
            let device = Some(m.backend.capabilities().device.clone());
            match m.backend.health().await {
                Health::Ready => ("ok", None, device),
                Health::Loading => ("loading", None, device),
                Health::Failed { reason } => ("failed", Some(reason), device),
            }
        }
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": status,
        "model": state.config.model_name,
        "device": device,
        "detail": detail,
        "queue": queue,
    });
    (code, Json(body)).into_response()
}

pub async fn queue_status(State(state): State<Arc<AppState>>) -> Json<crate::queue::QueueStatus> {
    Json(state.admission.status())
}

fn model_object(state: &AppState) -> Model {
    let mut model = Model::new(
        state.config.model_name.clone(),
        state.started,
        "gpt-oss-server",
    );
    if let ModelState::Ready(m) = &*state.model.read() {
        model.max_model_len = Some(m.backend.capabilities().context_length);
    }
    model
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList::new(vec![model_object(&state)]))
}

pub async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    if id == state.config.model_name {
        Ok(Json(model_object(&state)))
    } else {
        state.metrics.error("not_found");
        Err(ApiError::ModelNotFound(id))
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (prefill_tokens, prefix_cache) = match &*state.model.read() {
        ModelState::Ready(m) => (
            m.backend.prefill_tokens_total(),
            m.backend.prefix_cache_stats(),
        ),
        _ => (None, None),
    };
    let text = state
        .metrics
        .render(state.admission.status(), prefill_tokens, prefix_cache);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn not_found(State(state): State<Arc<AppState>>, method: Method, uri: Uri) -> ApiError {
    state.metrics.error("not_found");
    ApiError::RouteNotFound(format!("Invalid URL ({method} {})", uri.path()))
}

pub async fn method_not_allowed(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
) -> ApiError {
    state.metrics.error("method_not_allowed");
    ApiError::MethodNotAllowed(format!("Method {method} is not allowed on {}", uri.path()))
}

/// `system_fingerprint`: the same for every response of one model served by one build of this
/// server (the crate version, the model's name and its shape), different when either changes.
pub fn system_fingerprint(model_name: &str, caps: &gpt_oss_runtimes::Capabilities) -> String {
    // FNV-1a: stable across runs and platforms (the std hasher is randomly keyed).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = [
        env!("CARGO_PKG_VERSION"),
        model_name,
        &caps.model_name,
        &caps.context_length.to_string(),
        &caps.vocab_size.to_string(),
    ];
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("fp_{:012x}", hash & 0xffff_ffff_ffff)
}
