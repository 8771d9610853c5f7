//! One error type for the HTTP layer, mapped to OpenAI's error JSON with the right
//! status, both as a JSON response and as an SSE `error` event.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gpt_oss_runtimes::BackendError;
use openai_types::{ErrorKind, ErrorResponse};

/// Everything that can go wrong with a request before or while it is served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a field is missing, of the wrong type or out of range. `param` is the field path.
    #[error("{message}")]
    InvalidField { message: String, param: String },
    /// 400: a field OpenAI does not define (code `unknown_parameter`, as OpenAI sends).
    #[error("Unrecognized request argument supplied: `{0}`")]
    UnknownParameter(String),
    /// 400 `context_length_exceeded`, as OpenAI answers: the prompt (`param` is `messages` or
    /// `prompt`) has at least `tokens` tokens (`exact` when counted to the end) and the model
    /// takes at most `context_length` in all.
    #[error(
        "This model's maximum context length is {context_length} tokens. However, your {param} \
         resulted in {}{tokens} tokens. Please reduce the length of the {param}.",
        if *exact { "" } else { "at least " }
    )]
    ContextLengthExceeded {
        param: &'static str,
        tokens: usize,
        exact: bool,
        context_length: u32,
    },
    /// 400: the body is not JSON, or not an object.
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("The model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("{0}")]
    RouteNotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the server is busy: {waiting} requests are already waiting; retry later")]
    QueueFull { waiting: u32, retry_after_secs: u64 },
    /// 503 `model_not_loaded`: the model is loading, or failed to load (the reason).
    #[error("{0}")]
    ModelNotLoaded(String),
    /// 503 `server_shutting_down`: the server stopped taking new work.
    #[error("the server is shutting down; retry on another replica")]
    ShuttingDown,
    /// 503 `cancelled`: the generation was cancelled before it finished.
    #[error("the generation was cancelled")]
    Cancelled,
    /// 503 `engine_unavailable`: the inference engine cannot take work (its thread stopped).
    #[error("{0}")]
    Unavailable(String),
    /// 400 `previous_response_not_found`: `previous_response_id` names no stored response.
    #[error("Previous response with id '{0}' not found.")]
    PreviousResponseNotFound(String),
    /// 404 `not_found`: an object named in the path (a stored response) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 500: a failure of the engine itself, never something the model emitted.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// 400 naming `param` (a dotted field path) in the message and in `param`.
    pub fn field(param: impl Into<String>, what: impl std::fmt::Display) -> Self {
        let param = param.into();
        ApiError::InvalidField {
            message: format!("`{param}`: {what}"),
            param,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::InvalidField { .. }
            | ApiError::ContextLengthExceeded { .. }
            | ApiError::UnknownParameter(_)
            | ApiError::PreviousResponseNotFound(_)
            | ApiError::InvalidJson(_) => ErrorKind::InvalidRequest,
            ApiError::Unauthorized(_) => ErrorKind::Authentication,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => ErrorKind::NotFound,
            // OpenAI answers an unknown response id with 404 and `invalid_request_error`.
            ApiError::NotFound(_) => ErrorKind::InvalidRequest,
            ApiError::MethodNotAllowed(_) => ErrorKind::InvalidRequest,
            ApiError::BodyTooLarge { .. } => ErrorKind::RequestTooLarge,
            ApiError::QueueFull { .. } => ErrorKind::RateLimit,
            ApiError::ModelNotLoaded(_)
            | ApiError::ShuttingDown
            | ApiError::Cancelled
            | ApiError::Unavailable(_) => ErrorKind::Unavailable,
            ApiError::Internal(_) => ErrorKind::Server,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            other => StatusCode::from_u16(other.kind().status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidField { .. } => Some("invalid_value"),
            ApiError::ContextLengthExceeded { .. } => Some("context_length_exceeded"),
            ApiError::UnknownParameter(_) => Some("unknown_parameter"),
            ApiError::InvalidJson(_) => Some("invalid_json"),
            ApiError::Unauthorized(_) => Some("invalid_api_key"),
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::RouteNotFound(_) => Some("not_found"),
            ApiError::MethodNotAllowed(_) => Some("method_not_allowed"),
            ApiError::BodyTooLarge { .. } => Some("request_too_large"),
            ApiError::QueueFull { .. } => Some("queue_full"),
            ApiError::ModelNotLoaded(_) => Some("model_not_loaded"),
            ApiError::ShuttingDown => Some("server_shutting_down"),
            ApiError::Cancelled => Some("cancelled"),
            ApiError::Unavailable(_) => Some("engine_unavailable"),
            ApiError::NotFound(_) => Some("not_found"),
            ApiError::PreviousResponseNotFound(_) => Some("previous_response_not_found"),
            ApiError::Internal(_) => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidField { param, .. } => Some(param),
            ApiError::ContextLengthExceeded { param, .. } => Some(param),
            ApiError::UnknownParameter(param) => Some(param),
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::PreviousResponseNotFound(_) => Some("previous_response_id"),
            _ => None,
        }
    }

    /// The OpenAI error body.
    pub fn body(&self) -> ErrorResponse {
        ErrorResponse::new(self.kind(), self.to_string(), self.param(), self.code())
    }

    /// A short label for the `errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApiError::InvalidField { .. }
            | ApiError::UnknownParameter(_)
            | ApiError::PreviousResponseNotFound(_)
            | ApiError::InvalidJson(_) => "invalid_request",
            ApiError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::ModelNotLoaded(_) => "model_not_loaded",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Cancelled => "cancelled",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotFound(_) => "not_found",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::PromptTooLong {
                prompt_tokens,
                context_length,
            } => ApiError::ContextLengthExceeded {
                param: "messages",
                tokens: prompt_tokens as usize,
                exact: true,
                context_length,
            },
            BackendError::EmptyPrompt => ApiError::field("messages", e),
            BackendError::InvalidToken(_) => ApiError::field("prompt", e),
            BackendError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            BackendError::Internal(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// The HTTP answer of a handler's result, counted in `/metrics` under `endpoint`
/// (`gpt_oss_requests_total`, and `gpt_oss_errors_total` by kind for an error).
pub fn counted(
    metrics: &crate::metrics::Metrics,
    endpoint: &'static str,
    result: Result<Response, ApiError>,
) -> Response {
    match result {
        Ok(resp) => {
            metrics.request(endpoint, resp.status().as_u16());
            resp
        }
        Err(e) => {
            metrics.request(endpoint, e.status().as_u16());
            metrics.error(e.metric_label());
            e.into_response()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request rejected");
        }
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body().to_json(),
        )
            .into_response();
        if let ApiError::QueueFull {
            retry_after_secs, ..
        } = self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if let ApiError::Unauthorized(_) = self {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
