//! OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`.

use serde::{Deserialize, Serialize};

/// The body of every error response, and the payload of an SSE error event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// The error classes OpenAI uses, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400
    InvalidRequest,
    /// 401
    Authentication,
    /// 403
    Permission,
    /// 404
    NotFound,
    /// 409
    Conflict,
    /// 411: a body the server cannot take without its length.
    LengthRequired,
    /// 413
    RequestTooLarge,
    /// 429
    RateLimit,
    /// 500
    Server,
    /// 502: a backend answered with something unusable.
    BadGateway,
    /// 503
    Unavailable,
    /// 504
    Timeout,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::LengthRequired => 411,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::RateLimit => 429,
            ErrorKind::Server => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// The `type` field, as OpenAI writes it.
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::Conflict => {
                "invalid_request_error"
            }
            ErrorKind::RequestTooLarge | ErrorKind::LengthRequired => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Server => "server_error",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::Unavailable => "service_unavailable",
            ErrorKind::Timeout => "timeout",
        }
    }
}

impl ErrorResponse {
    /// An error of `kind`, naming the offending request field in `param` when there is one.
    pub fn new(
        kind: ErrorKind,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ErrorResponse {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.type_name().to_string(),
                param: param.map(str::to_string),
                code: code.map(str::to_string),
            },
        }
    }

    /// 400 for an invalid field; `param` names the field path.
    pub fn invalid(message: impl Into<String>, param: impl Into<String>) -> Self {
        let param = param.into();
        ErrorResponse {
            error: ErrorDetail {
                message: message.into(),
                kind: ErrorKind::InvalidRequest.type_name().to_string(),
                param: Some(param),
                code: Some("invalid_value".to_string()),
            },
        }
    }

    /// The JSON text of this error.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#
                .to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_all_four_fields_even_when_null() {
        let e = ErrorResponse::new(
            ErrorKind::NotFound,
            "no such model",
            None,
            Some("model_not_found"),
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("valid JSON");
        let obj = v["error"].as_object().expect("error object");
        for k in ["message", "type", "param", "code"] {
            assert!(
                obj.contains_key(k),
                "OpenAI error JSON must always carry `{k}`"
            );
        }
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}
