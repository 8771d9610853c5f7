//! Credentials: the admin token of the admin API, and the client API keys of `/v1/*`.

use std::net::IpAddr;

use openai_types::ErrorKind;

use crate::error::ApiError;
use crate::state::Snapshot;

/// Constant-time comparison of two secrets.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Check the admin credentials of a request: `Authorization: Bearer <admin token>` when a
/// token is configured (401 without one, 403 with a wrong one); with no token configured,
/// only loopback clients (403 otherwise).
pub fn authorize_admin(
    snap: &Snapshot,
    headers: &http::HeaderMap,
    client: Option<IpAddr>,
) -> Result<(), ApiError> {
    match &snap.admin_token {
        Some(token) => match bearer(headers) {
            None => Err(ApiError::new(
                ErrorKind::Authentication,
                "The admin API requires Authorization: Bearer <admin token>.",
                None,
                Some("missing_admin_token"),
            )),
            Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorKind::Permission,
                "The admin token is not valid.",
                None,
                Some("invalid_admin_token"),
            )),
        },
        None if client.is_some_and(|ip| ip.is_loopback()) => Ok(()),
        None => Err(ApiError::new(
            ErrorKind::Permission,
            "No admin token is configured: the admin API only accepts clients on loopback.",
            None,
            Some("admin_loopback_only"),
        )),
    }
}

/// Check client API keys, when configured, for `/v1/*`: 401 `invalid_api_key` without a
/// listed key.
pub fn authorize_client(snap: &Snapshot, headers: &http::HeaderMap) -> Result<(), ApiError> {
    let keys = &snap.config.client_api_keys;
    if keys.is_empty() {
        return Ok(());
    }
    let ok = bearer(headers).is_some_and(|given| {
        keys.iter()
            .any(|k| same_secret(given.as_bytes(), k.as_bytes()))
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::Authentication,
            "Incorrect or missing API key. Send Authorization: Bearer <key>.",
            None,
            Some("invalid_api_key"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing_and_secret_comparison() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("bearer   abc "),
        );
        assert_eq!(bearer(&h), Some("abc"), "the scheme is case-insensitive");
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic abc"),
        );
        assert_eq!(bearer(&h), None);
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
