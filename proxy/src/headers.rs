//! Header rewriting between client and backend.

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::backend::Backend;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded. Parsed once: removing by
/// `HeaderName` is a hash lookup, removing by `&str` parses the name on every call.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The names listed in `Connection` (most requests have none).
fn connection_listed(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            names.extend(
                s.split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
            );
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
    if req.headers.contains_key(header::CONNECTION) {
        for name in connection_listed(&req.headers) {
            req.remove_header(&name);
        }
    }
    for name in HOP_BY_HOP.iter().chain(&[
        header::AUTHORIZATION,
        header::CONTENT_LENGTH,
        header::EXPECT,
    ]) {
        req.remove_header(name);
    }
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
    req.insert_header(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    )?;
    req.insert_header(header::HOST, backend.url.authority())?;
    req.insert_header(header::CONTENT_LENGTH, HeaderValue::from(body_len))?;
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
    if resp.headers.contains_key(header::CONNECTION) {
        for name in connection_listed(&resp.headers) {
            if name != header::TRANSFER_ENCODING {
                resp.remove_header(&name);
            }
        }
    }
    for name in HOP_BY_HOP
        .iter()
        .filter(|n| **n != header::TRANSFER_ENCODING)
    {
        resp.remove_header(name);
    }
}
