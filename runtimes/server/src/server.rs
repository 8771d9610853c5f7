//! The router, API-key check, model loading and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::state::{AppState, LoadedModel, ModelState};
use crate::{chat, completions, info, responses};

/// Builds the HTTP routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::handler))
        .route("/v1/completions", post(completions::handler))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route("/v1/models", get(info::models))
        .route("/v1/models/{*id}", get(info::model))
        .route("/queue/status", get(info::queue_status))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .merge(api)
        .fallback(info::not_found)
        .method_not_allowed_fallback(info::method_not_allowed)
        .with_state(state)
}

/// 401 unless the request carries `Authorization: Bearer <api key>` (when one is set).
async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = state.config.api_key.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => {
            state.metrics.error("unauthorized");
            ApiError::Unauthorized("Incorrect API key provided".to_string()).into_response()
        }
        None => {
            state.metrics.error("unauthorized");
            ApiError::Unauthorized(
                "You didn't provide an API key: send `Authorization: Bearer <key>`".to_string(),
            )
            .into_response()
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Loads the model on a blocking thread and publishes it in `state`; until then (or
/// if loading fails) generation requests get 503.
pub fn spawn_model_load<F>(state: Arc<AppState>, load: F)
where
    F: FnOnce() -> Result<LoadedModel, String> + Send + 'static,
{
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(load).await {
            Ok(Ok(model)) => {
                let caps = model.backend.capabilities();
                tracing::info!(
                    model = %caps.model_name,
                    device = %caps.device,
                    context_length = caps.context_length,
                    seconds = started.elapsed().as_secs_f64(),
                    "model loaded"
                );
                state.set_model(ModelState::Ready(Arc::new(model)));
            }
            Ok(Err(reason)) => {
                tracing::error!(%reason, "model failed to load; generation requests get 503");
                state.set_model(ModelState::Failed(reason));
            }
            Err(e) => {
                tracing::error!(error = %e, "model loader panicked");
                state.set_model(ModelState::Failed(format!("the model loader crashed: {e}")));
            }
        }
    });
}

/// Serves until `shutdown` resolves; then stops accepting, refuses waiting requests,
/// and gives in-flight ones `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&state));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        // Requests already accepted (generating or waiting) are served; the
        // deadline below bounds how long that may take.
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections; finishing accepted requests"
        );
        let _ = tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    let mut server = server;
    tokio::select! {
        res = &mut server => return flatten(res),
        _ = rx => {}
    }
    match tokio::time::timeout(grace, &mut server).await {
        Ok(res) => flatten(res),
        Err(_) => {
            let q = state.admission.status();
            tracing::warn!(
                running = q.running,
                "shutdown deadline passed; dropping in-flight requests"
            );
            server.abort();
            Ok(())
        }
    }
}

fn flatten(res: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    match res {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
