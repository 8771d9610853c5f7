//! The active health checker: one GET of each backend's health path per round, its result
//! recorded in the backend's `HealthState`, and the queue depth its body reports (for
//! `queue_aware` routing).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use config::HealthCheckConfig;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::backend::Backend;
use crate::health::Status;

/// The queue depth a backend reports in its health JSON, under any of the names servers use.
pub fn parse_queue_depth(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let num = |v: &serde_json::Value| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64));
    const KEYS: &[&str] = &[
        "queue_depth",
        "queue_size",
        "queued",
        "waiting",
        "pending",
        "queue_length",
    ];
    for k in KEYS {
        if let Some(n) = v.get(*k).and_then(num) {
            return Some(n);
        }
    }
    let q = v.get("queue")?;
    if let Some(n) = num(q) {
        return Some(n);
    }
    // gpt-oss-server: {"queue": {"running", "waiting", ...}}: requests ahead of a new one.
    if let Some(w) = q.get("waiting").and_then(num) {
        return Some(w.saturating_add(q.get("running").and_then(num).unwrap_or(0)));
    }
    for k in KEYS.iter().chain(&["depth", "size", "length"]) {
        if let Some(n) = q.get(*k).and_then(num) {
            return Some(n);
        }
    }
    None
}

/// One GET of the health path. Ok(body) on a 2xx.
pub async fn probe(
    connector: &Connector,
    backend: &Backend,
    cfg: &HealthCheckConfig,
    tls: &config::UpstreamTlsConfig,
) -> Result<Bytes, String> {
    let fut = async {
        let mut peer = HttpPeer::new(backend.addr, backend.url.tls, backend.url.host.clone());
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
        peer.options.connection_timeout = Some(cfg.timeout);
        peer.options.read_timeout = Some(cfg.timeout);
        peer.options.write_timeout = Some(cfg.timeout);
        let (mut s, _reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
        let path = format!("{}{}", backend.url.prefix, cfg.path);
        let mut req = RequestHeader::build("GET", path.as_bytes(), None)
            .map_err(|e| format!("request: {e}"))?;
        req.insert_header("host", backend.url.authority())
            .map_err(|e| format!("request: {e}"))?;
        req.insert_header("user-agent", "gpt-oss-lb-health")
            .map_err(|e| format!("request: {e}"))?;
        if let Some(key) = &backend.def.api_key {
            req.insert_header("authorization", format!("Bearer {key}"))
                .map_err(|_| "request: invalid api key header".to_string())?;
        }
        s.write_request_header(Box::new(req))
            .await
            .map_err(|e| format!("write: {}", e.etype().as_str()))?;
        s.finish_request_body()
            .await
            .map_err(|e| format!("write: {}", e.etype().as_str()))?;
        s.read_response_header()
            .await
            .map_err(|e| format!("read: {}", e.etype().as_str()))?;
        let status = s.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
        let mut body = Vec::new();
        while let Some(chunk) = s
            .read_response_body()
            .await
            .map_err(|e| format!("read body: {}", e.etype().as_str()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > 64 * 1024 {
                break;
            }
        }
        if (200..300).contains(&status) {
            Ok(Bytes::from(body))
        } else {
            Err(format!("health endpoint answered {status}"))
        }
    };
    match tokio::time::timeout(cfg.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}ms", cfg.timeout.as_millis())),
    }
}

/// Check one backend and record the result.
pub async fn check_one(
    connector: &Connector,
    backend: Arc<Backend>,
    cfg: &HealthCheckConfig,
    tls: &config::UpstreamTlsConfig,
) {
    if !backend.health.due_for_check(cfg) {
        return;
    }
    let result = probe(connector, &backend, cfg, tls).await;
    let outcome = match result {
        Ok(body) => {
            backend.set_queue_depth(parse_queue_depth(&body));
            Ok(())
        }
        Err(e) => Err(e),
    };
    let err_text = outcome.as_ref().err().cloned();
    if let Some(status) = backend.health.on_check(outcome, cfg) {
        if matches!(status, Status::Unhealthy | Status::Ejected) {
            // its KV cache may be gone with it (a restart): the cache_aware policy starts over
            backend.prefix_record.lock().clear();
        }
        tracing::info!(
            backend = backend.name(),
            ?status,
            error = err_text.as_deref(),
            "health changed"
        );
    }
}

/// The interval to the next round: short while some backend is pending or half-open.
pub fn next_delay(backends: &[Arc<Backend>], cfg: &HealthCheckConfig) -> Duration {
    let fast = backends
        .iter()
        .any(|b| matches!(b.health.status(), Status::Pending | Status::HalfOpen));
    if fast {
        cfg.interval.min(Duration::from_millis(500))
    } else {
        cfg.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_depth_is_read_from_common_shapes() {
        assert_eq!(parse_queue_depth(br#"{"queue_depth": 3}"#), Some(3));
        assert_eq!(
            parse_queue_depth(br#"{"queue": {"waiting": 2, "active": 1}}"#),
            Some(2)
        );
        assert_eq!(parse_queue_depth(br#"{"status":"ok"}"#), None);
        assert_eq!(parse_queue_depth(b"not json"), None);
    }
}
