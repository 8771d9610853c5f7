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

    /// The stream's end was seen: `[DONE]`, or the terminal event of a stream that has one
    /// (see `BodyRewriter::terminal_seen`).
    pub fn done_seen(&self) -> bool {
        self.rewriter
            .as_ref()
            .and_then(|r| r.terminal_seen())
            .unwrap_or(self.done_seen)
    }

    fn track_done(&mut self, data: &[u8]) {
        if self.done_seen || !self.sse || data.is_empty() {
            return;
        }
        // `[DONE]` may straddle two chunks: search the previous chunk's tail with this one's
        // head, then this chunk.
        let head = &data[..data.len().min(DONE.len() - 1)];
        let mut seam = std::mem::take(&mut self.tail);
        seam.extend_from_slice(head);
        if memchr::memmem::find(&seam, DONE).is_some() || memchr::memmem::find(data, DONE).is_some()
        {
            self.done_seen = true;
        }
        let keep = DONE.len() - 1;
        if data.len() >= keep {
            self.tail = data[data.len() - keep..].to_vec();
        } else {
            let start = seam.len().saturating_sub(keep);
            self.tail = seam[start..].to_vec();
        }
    }

    /// Filter one body chunk on its way downstream. At the end of a stream that never sent
    /// `[DONE]`, append an error event and `[DONE]` so that no client hangs or mistakes a
    /// truncated stream for a complete one. Returns `Ok(true)` when it did so. Without a
    /// rewriter the chunk is passed on as it is (no copy).
    ///
    /// Errors: the rewriter refused the body (not valid JSON, an SSE event over the limit);
    /// nothing of this chunk is passed on.
    pub fn on_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<bool, ApiError> {
        let mut out: Option<Bytes> = match (self.rewriter.as_mut(), body.take()) {
            (Some(r), Some(data)) => Some(r.chunk(&data)?),
            (_, data) => data,
        };
        if end_of_stream {
            if let Some(r) = self.rewriter.as_mut() {
                out = Some(concat(out, r.finish()?));
            }
        }
        if let Some(o) = &out {
            self.track_done(o);
        }
        let mut broke = false;
        if end_of_stream && self.sse && !self.done_seen() && !self.terminated && self.status < 300 {
            let e = ApiError::new(
                openai_types::ErrorKind::BadGateway,
                "the backend ended the stream before its end ([DONE] or a terminal event)",
                None,
                Some("stream_truncated"),
            );
            let frames = match self.rewriter.as_mut() {
                Some(r) => r.termination_frames(&e),
                None => e.sse_termination(),
            };
            out = Some(concat(out, frames));
            self.terminated = true;
            self.done_seen = true;
            broke = true;
        }
        *body = out.filter(|o| !o.is_empty());
        Ok(broke)
    }

    /// Frames that end the stream after a backend failure, when the client can still take them.
    pub fn termination(&mut self, err: &ApiError) -> Option<Bytes> {
        if !self.sse || self.done_seen() || self.terminated {
            return None;
        }
        self.terminated = true;
        let mut out = BytesMut::new();
        if let Some(r) = self.rewriter.as_mut() {
            // What the rewriter still holds is sent before the error event, unless it is what
            // broke the stream.
            if let Ok(rest) = r.finish() {
                out.extend_from_slice(&rest);
            }
        }
        match self.rewriter.as_mut() {
            Some(r) => out.extend_from_slice(&r.termination_frames(err)),
            None => out.extend_from_slice(&err.sse_termination()),
        }
        Some(out.freeze())
    }
}

/// `a` then `b`, copying only when both have bytes.
fn concat(a: Option<Bytes>, b: Bytes) -> Bytes {
    match a {
        None => b,
        Some(a) if b.is_empty() => a,
        Some(a) if a.is_empty() => b,
        Some(a) => {
            let mut m = BytesMut::with_capacity(a.len() + b.len());
            m.extend_from_slice(&a);
            m.extend_from_slice(&b);
            m.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_split_across_chunks_is_seen() {
        let mut s = ResponseState::new(200, true, None);
        let mut a = Some(Bytes::from_static(b"data: {}\n\ndata: [DO"));
        assert!(!s.on_body(&mut a, false).expect("ok"));
        let mut b = Some(Bytes::from_static(b"NE]\n\n"));
        assert!(
            !s.on_body(&mut b, true).expect("ok"),
            "a complete stream must not get an error event"
        );
        assert!(s.done_seen());
    }

    #[test]
    fn truncated_stream_gets_error_event_and_done() {
        let mut s = ResponseState::new(200, true, None);
        let mut a = Some(Bytes::from_static(b"data: {\"x\":1}\n\n"));
        s.on_body(&mut a, false).expect("ok");
        let mut end = None;
        assert!(s.on_body(&mut end, true).expect("ok"));
        let text = String::from_utf8(end.expect("frames").to_vec()).expect("utf8");
        assert!(text.contains("\"error\""), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
}
