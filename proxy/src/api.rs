//! Local endpoints: `/health`, `/status`, `/v1/models`, `/v1/models/{id}`, `/metrics`.

use openai_types::{Model, ModelList};
use serde_json::json;

use crate::error::Reply;
use crate::state::{Shared, Snapshot};

/// `GET /health`: 200 when at least one backend is healthy, else 503.
pub fn health(snap: &Snapshot) -> Reply {
    let healthy = snap.backends.iter().filter(|b| b.health.routable()).count();
    let ok = healthy > 0;
    Reply::json(
        if ok { 200 } else { 503 },
        &json!({
            "status": if ok { "healthy" } else { "unhealthy" },
            "healthy_backends": healthy,
            "total_backends": snap.backends.len(),
        }),
    )
}

/// `GET /status`: every backend with its health, load and latency. No secrets.
pub fn status(shared: &Shared, snap: &Snapshot) -> Reply {
    let backends: Vec<serde_json::Value> = snap
        .backends
        .iter()
        .map(|b| {
            let h = b.health.view();
            json!({
                "name": b.name(),
                "url": b.def.url,
                "model_type": b.def.model_type,
                "models": b.def.models,
                "weight": b.def.weight,
                "source": b.source,
                "healthy": b.health.routable(),
                "health": h.status,
                "in_flight": b.inflight(),
                "queue": b.queue_depth(),
                "latency_ms": b.latency_ewma().map(|d| d.as_secs_f64() * 1000.0),
                "requests": b.requests(),
                "errors": b.errors(),
                "consecutive_failures": h.consecutive_failures,
                "last_check_unix_ms": h.last_check_unix_ms,
                "last_error": h.last_error,
                "has_api_key": b.def.api_key.is_some(),
            })
        })
        .collect();
    let mut routes: Vec<serde_json::Value> = snap
        .routes
        .iter()
        .map(|(name, r)| {
            json!({
                "name": name,
                "model": r.model,
                "policy": r.policy_name.as_str(),
                "backends": r.group.iter().map(|b| b.name()).collect::<Vec<_>>(),
                "plugins": snap.plugins.chain(&r.model).map_or_else(Vec::new, |c| {
                    c.iter().map(|p| p.config.name.clone()).collect::<Vec<_>>()
                }),
            })
        })
        .collect();
    routes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Reply::json(
        200,
        &json!({
            "status": if snap.backends.iter().any(|b| b.health.routable()) { "healthy" } else { "unhealthy" },
            "generation": snap.generation,
            "uptime_seconds": shared.started.elapsed().as_secs(),
            "backends": backends,
            "routes": routes,
            "filter_chain": snap.plugins.status(),
        }),
    )
}

fn model_entry(snap: &Snapshot, id: &str) -> Model {
    let owner = snap
        .routes
        .get(id)
        .and_then(|r| r.group.iter().find(|b| b.health.routable()))
        .map(|b| b.name().to_string())
        .unwrap_or_else(|| "gpt-oss-lb".into());
    Model::new(id, 0, owner)
}

/// `GET /v1/models`: the models (and aliases) with a healthy backend.
pub fn models(snap: &Snapshot) -> Reply {
    let list = ModelList::new(
        snap.available_models()
            .iter()
            .map(|m| model_entry(snap, m))
            .collect(),
    );
    Reply::json(200, &serde_json::to_value(list).unwrap_or_default())
}

/// `GET /v1/models/{id}`.
pub fn model(snap: &Snapshot, id: &str) -> Reply {
    match snap.routes.get(id) {
        Some(r) if r.has_healthy() => Reply::json(
            200,
            &serde_json::to_value(model_entry(snap, id)).unwrap_or_default(),
        ),
        _ => Reply::error(&crate::routing::unknown_model(&snap.routes, id)),
    }
}

/// 404 for a model no healthy backend serves, listing those that are available.
pub fn metrics(shared: &Shared, snap: &Snapshot) -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: {
            let mut text = shared.metrics.render(&snap.backends, snap.generation);
            snap.plugins.render_metrics(&mut text);
            bytes::Bytes::from(text)
        },
        headers: Vec::new(),
    }
}
