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

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(url: &str, key: Option<&str>) -> Backend {
        let def = config::BackendConfig {
            name: "b".into(),
            url: url.into(),
            model_type: config::ModelType::GptOss,
            models: vec!["m".into()],
            weight: 1,
            api_key: key.map(str::to_string),
        };
        let parsed = config::check::backend_url(url).expect("url");
        Backend::new(
            def,
            crate::backend::Source::Config,
            parsed,
            "127.0.0.1:1".parse().expect("addr"),
        )
    }

    #[test]
    fn upstream_requests_lose_hop_by_hop_headers_and_client_credentials() {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).expect("req");
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("authorization", "Bearer client-key"),
            ("expect", "100-continue"),
            ("content-length", "999"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-request-id", "keep-me"),
        ] {
            req.insert_header(k.to_string(), v).expect("header");
        }
        let b = backend("http://127.0.0.1:9000/v1", Some("backend-key"));
        upstream_request(&mut req, &b, Some("127.0.0.2".parse().expect("ip")), 42).expect("ok");
        let get = |k: &str| {
            req.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        for gone in ["connection", "x-secret-hop", "keep-alive", "te", "expect"] {
            assert_eq!(get(gone), None, "{gone} must not be forwarded");
        }
        assert_eq!(get("authorization").as_deref(), Some("Bearer backend-key"));
        assert_eq!(get("content-length").as_deref(), Some("42"));
        assert_eq!(
            get("x-forwarded-for").as_deref(),
            Some("10.1.1.1, 127.0.0.2")
        );
        assert_eq!(get("x-request-id").as_deref(), Some("keep-me"));
        assert_eq!(get("host").as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(
            req.uri.path(),
            "/v1/chat/completions",
            "a /v1 prefix is not doubled"
        );
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_but_keep_their_framing() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header("connection", "close, x-hop").expect("h");
        resp.insert_header("x-hop", "1").expect("h");
        resp.insert_header("transfer-encoding", "chunked")
            .expect("h");
        resp.insert_header("retry-after", "3").expect("h");
        downstream_response(&mut resp);
        assert!(resp.headers.get("connection").is_none());
        assert!(resp.headers.get("x-hop").is_none());
        assert!(resp.headers.get("transfer-encoding").is_some());
        assert!(resp.headers.get("retry-after").is_some());
    }
}
