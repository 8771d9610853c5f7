//! Header rewriting between client and backend.

use pingora::http::{RequestHeader, ResponseHeader};

use crate::backend::Backend;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Names listed in `Connection` plus the fixed hop-by-hop set.
fn hop_by_hop_names(headers: &http::HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = HOP_BY_HOP.iter().map(|s| s.to_string()).collect();
    for v in headers.get_all(http::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for n in s.split(',') {
                let n = n.trim().to_ascii_lowercase();
                if !n.is_empty() {
                    names.push(n);
                }
            }
        }
    }
    names
}

/// Prepare the request for `backend`: strip hop-by-hop headers and the client's credentials,
/// append `X-Forwarded-For`, set `Host`, the backend's key, the body length and the path.
pub fn upstream_request(
    req: &mut RequestHeader,
    backend: &Backend,
    client_ip: Option<std::net::IpAddr>,
    body_len: usize,
) -> pingora::Result<()> {
    for name in hop_by_hop_names(&req.headers) {
        req.remove_header(name.as_str());
    }
    req.remove_header("authorization");
    req.remove_header("content-length");
    req.remove_header("expect");
    if let Some(ip) = client_ip {
        let prior = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let xff = if prior.is_empty() {
            ip.to_string()
        } else {
            format!("{prior}, {ip}")
        };
        req.insert_header("x-forwarded-for", xff)?;
    }
    req.insert_header("x-forwarded-proto", "http")?;
    req.insert_header("host", backend.url.authority())?;
    req.insert_header("content-length", body_len.to_string())?;
    if let Some(key) = &backend.def.api_key {
        req.insert_header("authorization", format!("Bearer {key}"))?;
    }
    if !backend.url.prefix.is_empty() {
        let path = req.uri.path();
        // A prefix of `/v1` and a request for `/v1/chat/completions` must not double `/v1`.
        let tail = path
            .strip_prefix("/v1")
            .filter(|_| backend.url.prefix.ends_with("/v1"))
            .unwrap_or(path);
        let new = format!("{}{}", backend.url.prefix, tail);
        let uri: http::Uri = new.parse().map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "bad upstream path")
        })?;
        req.set_uri(uri);
    }
    Ok(())
}

/// Strip hop-by-hop headers from the backend's response (framing is Pingora's job).
pub fn downstream_response(resp: &mut ResponseHeader) {
    for name in hop_by_hop_names(&resp.headers) {
        if name == "transfer-encoding" {
            continue;
        }
        resp.remove_header(name.as_str());
    }
}
