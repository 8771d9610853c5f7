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
    // One pass over the names the request has (most carry none of these), then removal.
    let mut drop: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n) || **n == header::AUTHORIZATION || **n == header::EXPECT)
        .cloned()
        .collect();
    if req.headers.contains_key(header::CONNECTION) {
        drop.extend(connection_listed(&req.headers));
    }
    for name in &drop {
        req.remove_header(name);
    }
    if let Some(ip) = client_ip {
        // An IP address's text is always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
            append_to_list(req, HeaderName::from_static("x-forwarded-for"), v)?;
        }
    }
    req.insert_header(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    )?;
    req.insert_header(header::HOST, backend.host_header.clone())?;
    // The body is sent whole: its length, unless the client's header already says so.
    let length_holds = req
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes())
        .eq([body_len.to_string().as_bytes()]);
    if !length_holds {
        req.insert_header(header::CONTENT_LENGTH, HeaderValue::from(body_len))?;
    }
    if let Some(auth) = &backend.authorization {
        req.insert_header(header::AUTHORIZATION, auth.clone())?;
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

/// Set the list header `name` (`Via`, `X-Forwarded-For`) to its values so far, joined by
/// `, `, followed by `value` (RFC 9110 section 5.3: a list field's lines combine that way).
/// Empty and non-ASCII values so far are dropped.
pub fn append_to_list(
    req: &mut RequestHeader,
    name: HeaderName,
    value: HeaderValue,
) -> pingora::Result<()> {
    let mut prior = req
        .headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|s| !s.trim().is_empty())
        .peekable();
    if prior.peek().is_none() {
        return req.insert_header(name, value);
    }
    let mut joined = Vec::new();
    for p in prior {
        joined.extend_from_slice(p.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.as_bytes());
    let joined = HeaderValue::from_bytes(&joined).map_err(|_| {
        pingora::Error::explain(pingora::ErrorType::InternalError, "bad list header value")
    })?;
    req.insert_header(name, joined)
}

/// Strip hop-by-hop headers from the backend's response (framing is Pingora's job).
pub fn downstream_response(resp: &mut ResponseHeader) {
    let mut drop: Vec<HeaderName> = resp
        .headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n) && **n != header::TRANSFER_ENCODING)
        .cloned()
        .collect();
    if resp.headers.contains_key(header::CONNECTION) {
        drop.extend(
            connection_listed(&resp.headers)
                .into_iter()
                .filter(|n| *n != header::TRANSFER_ENCODING),
        );
    }
    for name in &drop {
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
