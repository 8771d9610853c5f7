//! Response body handling: SSE `[DONE]` tracking, ending broken streams, and the optional
//! edge rewriting of the body (see `rewrite`).

use bytes::{Bytes, BytesMut};

use crate::error::ApiError;
use crate::rewrite::BodyRewriter;

const DONE: &[u8] = b"data: [DONE]";

/// Per-response state, kept in the request context.
pub struct ResponseState {
    pub status: u16,
    pub sse: bool,
    done_seen: bool,
    /// The last bytes passed downstream, to find `[DONE]` split across chunks.
    tail: Vec<u8>,
    rewriter: Option<Box<dyn BodyRewriter>>,
    /// The stream was ended by us with an error event.
    pub terminated: bool,
}

impl ResponseState {
    pub fn new(status: u16, sse: bool, rewriter: Option<Box<dyn BodyRewriter>>) -> Self {
        ResponseState {
            status,
            sse,
            done_seen: false,
            tail: Vec::new(),
            rewriter,
            terminated: false,
        }
    }

    pub fn done_seen(&self) -> bool {
        self.done_seen
    }

    fn track_done(&mut self, data: &[u8]) {
        if self.done_seen || !self.sse {
            return;
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(data);
        if window.windows(DONE.len()).any(|w| w == DONE) {
            self.done_seen = true;
        }
        let keep = window.len().min(DONE.len());
        self.tail = window[window.len() - keep..].to_vec();
    }

    /// Filter one body chunk on its way downstream. At the end of a stream that never sent
    /// `[DONE]`, append an error event and `[DONE]` so that no client hangs or mistakes a
    /// truncated stream for a complete one. Returns true when it did so.
    pub fn on_body(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) -> bool {
        let mut out = BytesMut::new();
        if let Some(data) = body.take() {
            match self.rewriter.as_mut() {
                Some(r) => out.extend_from_slice(&r.chunk(&data)),
                None => out.extend_from_slice(&data),
            }
        }
        if end_of_stream {
            if let Some(r) = self.rewriter.as_mut() {
                out.extend_from_slice(&r.finish());
            }
        }
        self.track_done(&out);
        let mut broke = false;
        if end_of_stream && self.sse && !self.done_seen && !self.terminated && self.status < 300 {
            let e = ApiError::new(
                openai_types::ErrorKind::BadGateway,
                "the backend ended the stream before [DONE]",
                None,
                Some("stream_truncated"),
            );
            out.extend_from_slice(&e.sse_termination());
            self.terminated = true;
            self.done_seen = true;
            broke = true;
        }
        *body = if out.is_empty() {
            None
        } else {
            Some(out.freeze())
        };
        broke
    }

    /// Frames that end the stream after a backend failure, when the client can still take them.
    pub fn termination(&mut self, err: &ApiError) -> Option<Bytes> {
        if !self.sse || self.done_seen || self.terminated {
            return None;
        }
        self.terminated = true;
        let mut out = BytesMut::new();
        if let Some(r) = self.rewriter.as_mut() {
            out.extend_from_slice(&r.finish());
        }
        out.extend_from_slice(&err.sse_termination());
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_split_across_chunks_is_seen() {
        let mut s = ResponseState::new(200, true, None);
        let mut a = Some(Bytes::from_static(b"data: {}\n\ndata: [DO"));
        assert!(!s.on_body(&mut a, false));
        let mut b = Some(Bytes::from_static(b"NE]\n\n"));
        assert!(
            !s.on_body(&mut b, true),
            "a complete stream must not get an error event"
        );
        assert!(s.done_seen());
    }

    #[test]
    fn truncated_stream_gets_error_event_and_done() {
        let mut s = ResponseState::new(200, true, None);
        let mut a = Some(Bytes::from_static(b"data: {\"x\":1}\n\n"));
        s.on_body(&mut a, false);
        let mut end = None;
        assert!(s.on_body(&mut end, true));
        let text = String::from_utf8(end.expect("frames").to_vec()).expect("utf8");
        assert!(text.contains("\"error\""), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
}
