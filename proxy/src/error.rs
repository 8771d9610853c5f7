//! Errors as OpenAI error JSON, and writing local responses.

use bytes::Bytes;
use openai_types::{ErrorKind, ErrorResponse};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// An error answer: status + OpenAI error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorResponse,
}

impl ApiError {
    pub fn new(
        kind: ErrorKind,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ApiError {
            status: kind.status(),
            body: ErrorResponse::new(kind, message, param, code),
        }
    }

    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        ApiError {
            status: 400,
            body: ErrorResponse::invalid(message, param),
        }
    }

    pub fn json(&self) -> Bytes {
        Bytes::from(self.body.to_json())
    }

    /// The SSE frames that end a broken stream: an error event, then `[DONE]`.
    pub fn sse_termination(&self) -> Bytes {
        Bytes::from(format!("data: {}\n\ndata: [DONE]\n\n", self.body.to_json()))
    }
}

/// A complete local response.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub headers: Vec<(std::borrow::Cow<'static, str>, String)>,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Reply {
            status,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
            headers: Vec::new(),
        }
    }

    pub fn error(e: &ApiError) -> Self {
        Reply {
            status: e.status,
            content_type: "application/json",
            body: e.json(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::error(&e)
    }
}

/// Write `reply` to the client.
pub async fn write_reply(session: &mut Session, reply: Reply) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(reply.status, Some(4))?;
    h.insert_header("content-type", reply.content_type)?;
    h.insert_header("content-length", reply.body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    for (k, v) in reply.headers {
        h.insert_header(k.into_owned(), v)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(h), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(reply.body), true).await?;
    }
    Ok(())
}
