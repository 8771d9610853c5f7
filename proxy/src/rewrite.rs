//! Edge rewriting of backend bodies, by what each body carries. Chat completions from
//! backends of `model_type: gpt-oss` are rewritten only where their `content` carries raw
//! harmony text (`<|channel|>analysis<|message|>...`): into the parsed OpenAI shape
//! (`content`, `reasoning_content`/`reasoning`, `tool_calls`, and the seed's `thinking` and
//! `parsed` when the request set `separate_thinking`). Parsed output (content without special
//! tokens, reasoning, tool-call deltas, finish reasons, usage) passes untouched from any
//! backend, streamed or not; backends of `model_type: openai` are never rewritten.
//!
//! Every non-streaming JSON answer is held whole and checked (valid JSON) before its end is
//! sent. JSON text with lone UTF-16 surrogate escapes (`"\ud83d"`, valid JSON text that
//! `serde_json` refuses) is read leniently, each lone surrogate as U+FFFD.
//!
//! Parsing and the OpenAI mapping are the `harmony` crate's (`TextParser`, `DeltaMapper`,
//! `ResponseAccumulator`); this module only moves JSON and SSE frames around them. Streams
//! are rewritten frame by frame: only an incomplete SSE event is held back, and a special
//! token split across frames is held back by `TextParser` until it is complete.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use harmony::message::Role;
use harmony::openai::{DeltaMapper, ResponseAccumulator, SeedContext, StopCause, ToolGate};
use harmony::parser::TextParser;
use openai_types::{ChatCompletionRequest, ChatDelta, FinishReason, Tool, ToolChoice};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::ApiError;
use openai_types::ErrorKind;

/// Rewrites a response body chunk by chunk.
///
/// Errors: the body cannot be delivered as it is (not valid JSON, an SSE event over the
/// limit); the caller ends the response with that error.
pub trait BodyRewriter: Send + Sync {
    /// Rewrite one chunk; may hold back bytes until an SSE event (or the JSON document) is
    /// complete.
    fn chunk(&mut self, data: &[u8]) -> Result<Bytes, ApiError>;
    /// The end of the body: flush what is held back.
    fn finish(&mut self) -> Result<Bytes, ApiError>;
    /// Whether the body delivered may differ from the backend's (so its `Content-Length`
    /// no longer holds). A rewriter that only checks keeps the backend's framing.
    fn may_change_body(&self) -> bool {
        true
    }
    /// For a stream that ends with a terminal event rather than `[DONE]` (the Responses
    /// API): whether that event was seen. `None`: the stream ends with `[DONE]`.
    fn terminal_seen(&self) -> Option<bool> {
        None
    }
    /// The frames that end a broken stream with `err`: by default chat's error event and
    /// `[DONE]`.
    fn termination_frames(&mut self, err: &ApiError) -> Bytes {
        err.sse_termination()
    }
}

/// The largest non-streaming answer held for checking (bytes).
pub const MAX_JSON_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Request facts a rewriter needs.
#[derive(Debug, Clone)]
pub struct RewriteOptions {
    pub stream: bool,
    pub chat: bool,
    /// The largest SSE event held while rewriting (bytes); a larger one ends the stream.
    pub max_event_bytes: usize,
    /// What rewriting reads from the request, parsed only when an answer needs rewriting.
    pub request: Arc<RequestFacts>,
}

/// The request fields the tool gate needs (the rest of the body is not read).
#[derive(Deserialize)]
struct ToolFields {
    #[serde(default)]
    tools: Option<Vec<Tool>>,
    #[serde(default)]
    tool_choice: Option<ToolChoice>,
}

/// What rewriting reads from the client's request body: the tool gate and, when the request
/// set `separate_thinking`, the seed's request half. The body is parsed on first use, so an
/// answer that needs no rewriting (parsed output, an `openai` backend) never pays for it.
#[derive(Debug)]
pub struct RequestFacts {
    body: Bytes,
    chat: bool,
    separate_thinking: bool,
    parsed: OnceLock<(Option<SeedContext>, ToolGate)>,
}

impl RequestFacts {
    /// Facts of the request `body` (as the client sent it), for a chat request or not.
    pub fn new(body: Bytes, chat: bool, separate_thinking: bool) -> Self {
        RequestFacts {
            body,
            chat,
            separate_thinking,
            parsed: OnceLock::new(),
        }
    }

    fn parsed(&self) -> &(Option<SeedContext>, ToolGate) {
        self.parsed.get_or_init(|| {
            let seed = self.separate_thinking.then(|| {
                serde_json::from_slice::<ChatCompletionRequest>(&self.body)
                    .map(|r| SeedContext::from_request(&r))
                    .unwrap_or_default()
            });
            let tools = if self.chat {
                serde_json::from_slice::<ToolFields>(&self.body)
                    .map(|f| {
                        ToolGate::from_tools(
                            f.tools.as_deref().unwrap_or_default(),
                            f.tool_choice.as_ref(),
                        )
                    })
                    .unwrap_or_default()
            } else {
                ToolGate::none()
            };
            (seed, tools)
        })
    }

    /// The seed's request half (`developer_instructions`, `history`) when the request set
    /// `separate_thinking`.
    pub fn seed(&self) -> Option<&SeedContext> {
        self.parsed().0.as_ref()
    }

    /// The functions the request offered and its `tool_choice` allows: only calls to these
    /// become `tool_calls`. A body whose `tools` cannot be read allows no calls.
    pub fn tools(&self) -> &ToolGate {
        &self.parsed().1
    }
}

impl RewriteOptions {
    /// From the request body as the client sent it.
    pub fn from_request(body: Bytes, stream: bool, chat: bool, separate_thinking: bool) -> Self {
        RewriteOptions {
            stream,
            chat,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            request: Arc::new(RequestFacts::new(body, chat, separate_thinking)),
        }
    }
}

/// The default of `RewriteOptions::max_event_bytes`: 4 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// The body handler for a 2xx response, if any: SSE from a `gpt-oss` chat backend is
/// rewritten event by event; a non-streaming JSON answer from any backend is held whole and
/// checked (and rewritten when it is a `gpt-oss` chat completion).
pub fn for_response(
    model_type: config::ModelType,
    content_type: Option<&str>,
    opts: &RewriteOptions,
) -> Option<Box<dyn BodyRewriter>> {
    let ct = content_type.unwrap_or("");
    let harmony = model_type == config::ModelType::GptOss && opts.chat;
    if ct.starts_with("text/event-stream") {
        harmony.then(|| {
            Box::new(SseRewriter::new(opts.request.clone(), opts.max_event_bytes))
                as Box<dyn BodyRewriter>
        })
    } else if ct.starts_with("application/json") && !opts.stream {
        Some(Box::new(JsonRewriter {
            buf: BytesMut::new(),
            rewrite: harmony,
            request: opts.request.clone(),
        }))
    } else {
        None
    }
}

/// `text` with each lone UTF-16 surrogate escape (`\ud800`-`\udfff` not in a valid pair)
/// replaced by `\ufffd`; `None` when there is none. JSON (RFC 8259 section 8.2) allows such
/// escapes, `serde_json` refuses them.
pub fn replace_lone_surrogates(text: &[u8]) -> Option<Vec<u8>> {
    fn hex4(b: &[u8]) -> Option<u16> {
        let s = std::str::from_utf8(b.get(..4)?).ok()?;
        u16::from_str_radix(s, 16).ok()
    }
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    let mut copied = 0;
    while let Some(off) = memchr::memchr(b'\\', &text[i..]) {
        let at = i + off;
        match text.get(at + 1) {
            Some(b'u') => {
                let Some(unit) = hex4(&text[at + 2..]) else {
                    i = at + 2;
                    continue;
                };
                let lone = match unit {
                    0xD800..=0xDBFF => {
                        let next = (text.get(at + 6..at + 8) == Some(b"\\u"))
                            .then(|| hex4(&text[at + 8..]))
                            .flatten();
                        if matches!(next, Some(0xDC00..=0xDFFF)) {
                            i = at + 12;
                            continue;
                        }
                        true
                    }
                    0xDC00..=0xDFFF => true,
                    _ => false,
                };
                if lone {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
                    o.extend_from_slice(&text[copied..at]);
                    o.extend_from_slice(b"\\ufffd");
                    copied = at + 6;
                }
                i = at + 6;
            }
            Some(_) => i = at + 2,
            None => break,
        }
    }
    out.map(|mut o| {
        o.extend_from_slice(&text[copied.min(text.len())..]);
        o
    })
}

/// Parse JSON, reading lone surrogate escapes as U+FFFD.
pub(crate) fn parse_lenient<T: serde::de::DeserializeOwned>(text: &[u8]) -> serde_json::Result<T> {
    match serde_json::from_slice(text) {
        Ok(v) => Ok(v),
        Err(e) => match replace_lone_surrogates(text) {
            Some(fixed) => serde_json::from_slice(&fixed),
            None => Err(e),
        },
    }
}

fn has_harmony_tokens(s: &str) -> bool {
    s.contains("<|")
}

/// Whether JSON text `raw` may hold a string with harmony's special tokens: it has `<|`, or
/// an escape (`\u003c`, or any `\u` escape, which could spell either character). Text
/// without either has no `<|` in any decoded string, so it needs no parsing to pass on.
fn may_carry_harmony(raw: &[u8]) -> bool {
    memchr::memmem::find(raw, b"<|").is_some() || memchr::memmem::find(raw, b"\\u").is_some()
}

/// A message or delta that already carries parsed fields came from a backend in parsed mode:
/// it is left as it is.
fn already_parsed(v: &Value) -> bool {
    [
        "reasoning_content",
        "reasoning",
        "tool_calls",
        "thinking",
        "parsed",
    ]
    .iter()
    .any(|k| v.get(*k).is_some_and(|x| !x.is_null()))
}

fn cause_of(finish_reason: Option<&str>) -> StopCause {
    if finish_reason == Some("length") {
        StopCause::Length
    } else {
        StopCause::Stop
    }
}

/// Rewrite one non-streaming chat completion (JSON text): each choice whose `content`
/// carries raw harmony, with tool calls only to the functions `tools` allows; `None` leaves
/// the body as it was.
pub fn rewrite_completion(
    body: &[u8],
    seed: Option<&SeedContext>,
    tools: &ToolGate,
) -> Option<Vec<u8>> {
    let mut v: Value = parse_lenient(body).ok()?;
    let choices = v.get_mut("choices")?.as_array_mut()?;
    let mut changed = false;
    for choice in choices.iter_mut() {
        let Some(msg) = choice.get("message") else {
            continue;
        };
        let Some(content) = msg
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            continue;
        };
        // Only raw harmony is rewritten: content without special tokens is already the
        // answer, from a parsed backend or a plain one.
        if !has_harmony_tokens(&content) {
            continue;
        }
        let mut parser = TextParser::new(Some(Role::Assistant));
        let mut acc = ResponseAccumulator::new(tools.clone());
        parser.push_str(&content, &mut |e| acc.on_event(e));
        parser.finish(&mut |e| acc.on_event(e));
        let cause = cause_of(choice.get("finish_reason").and_then(Value::as_str));
        let parsed = acc.finish(cause);
        let message = serde_json::to_value(parsed.to_message(seed)).ok()?;
        if let Some(obj) = choice.as_object_mut() {
            obj.insert("message".into(), message);
            if let Some(fr) = parsed.finish_reason {
                obj.insert("finish_reason".into(), json!(fr.as_str()));
            }
            changed = true;
        }
    }
    changed.then(|| serde_json::to_vec(&v).ok()).flatten()
}

/// The lines of an SSE event, split at LF, CRLF or a bare CR (the SSE specification's line
/// ends).
fn sse_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr2(b'\n', b'\r', rest) {
            None => {
                let line = rest;
                rest = &[];
                Some(line)
            }
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
                Some(line)
            }
        }
    })
}

/// The data of an SSE event: its `data:` lines joined by newlines (borrowed when there is
/// one, the usual case); `None` when it has none.
pub(crate) fn sse_data(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut found: Option<Cow<'_, [u8]>> = None;
    for line in sse_lines(raw) {
        let Some(d) = line.strip_prefix(b"data:") else {
            continue;
        };
        let d = d.strip_prefix(b" ").unwrap_or(d);
        found = Some(match found {
            None => Cow::Borrowed(d),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(d);
                Cow::Owned(joined)
            }
        });
    }
    found
}

/// Finds where SSE events end, scanning each byte once: it resumes where the last call
/// stopped, so an event that arrives in many reads is not rescanned from its start.
pub(crate) struct EventScanner {
    /// Bytes of the pending buffer already scanned.
    pos: usize,
    /// The line being scanned has no byte yet.
    line_empty: bool,
    /// The last byte scanned was a CR (a following LF belongs to the same line end).
    after_cr: bool,
}

impl EventScanner {
    pub(crate) fn new() -> Self {
        EventScanner {
            pos: 0,
            line_empty: true,
            after_cr: false,
        }
    }

    /// The end of the first complete event in `buf` (just after the blank line that ends
    /// it), or `None` when the event is not complete yet. `buf` must be the buffer of the
    /// previous call with bytes appended, or, after `Some(end)`, with `end` bytes removed
    /// from its front.
    pub(crate) fn next_end(&mut self, buf: &[u8]) -> Option<usize> {
        while self.pos < buf.len() {
            if std::mem::take(&mut self.after_cr) && buf[self.pos] == b'\n' {
                self.pos += 1; // the LF of a CRLF line end
                continue;
            }
            // Jump to the next line end; the bytes before it are the line's.
            let Some(i) = memchr::memchr2(b'\n', b'\r', &buf[self.pos..]) else {
                self.line_empty = false;
                self.pos = buf.len();
                return None;
            };
            if i > 0 {
                self.line_empty = false;
            }
            self.pos += i + 1;
            self.after_cr = buf[self.pos - 1] == b'\r';
            if self.line_empty {
                let end = self.pos;
                self.pos = 0;
                return Some(end);
            }
            self.line_empty = true;
        }
        None
    }

    /// Bytes of the incomplete event scanned so far.
    pub(crate) fn pending(&self) -> usize {
        self.pos
    }
}

/// A streamed chunk, borrowed from its text: the members other than `choices` (the
/// envelope: `id`, `object`, `created`, `model`, ...) as raw JSON, and the choices' fields
/// that rewriting reads. A choice of another shape fails the parse (the general path takes it).
struct Frame<'a> {
    envelope: Vec<(Key<'a>, &'a RawValue)>,
    choices: Option<Vec<FrameChoice<'a>>>,
}

/// An object key, borrowed unless it had escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Frame<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Frame<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a chat completion chunk")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Frame<'de>, A::Error> {
                let mut envelope = Vec::with_capacity(8);
                let mut choices = None;
                while let Some(k) = m.next_key::<Key<'de>>()? {
                    if k.0 == "choices" {
                        choices = m.next_value::<Option<Vec<FrameChoice<'de>>>>()?;
                    } else {
                        envelope.push((k, m.next_value::<&'de RawValue>()?));
                    }
                }
                Ok(Frame { envelope, choices })
            }
        }
        d.deserialize_map(V)
    }
}

impl Frame<'_> {
    /// `{` and the envelope's members, each followed by a comma: a frame appends its
    /// `"choices":[...]` and `}`.
    fn envelope_prefix(&self) -> String {
        let mut s = String::with_capacity(128);
        s.push('{');
        for (k, v) in &self.envelope {
            match &k.0 {
                Cow::Borrowed(k) => {
                    s.push('"');
                    s.push_str(k);
                    s.push('"');
                }
                Cow::Owned(k) => {
                    s.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"\"".into()))
                }
            }
            s.push(':');
            s.push_str(v.get());
            s.push(',');
        }
        s
    }
}

/// The fields of a streamed choice that rewriting reads.
#[derive(Deserialize)]
struct FrameChoice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<FrameDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FrameDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    reasoning_content: Option<IgnoredAny>,
    #[serde(default)]
    reasoning: Option<IgnoredAny>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
    #[serde(default)]
    thinking: Option<IgnoredAny>,
    #[serde(default)]
    parsed: Option<IgnoredAny>,
}

impl FrameDelta<'_> {
    /// As `already_parsed`: a parsed field that is present and not null.
    fn already_parsed(&self) -> bool {
        self.reasoning_content.is_some()
            || self.reasoning.is_some()
            || self.tool_calls.is_some()
            || self.thinking.is_some()
            || self.parsed.is_some()
    }
}

/// Non-streaming: the body is one JSON document, held until complete and checked.
struct JsonRewriter {
    buf: BytesMut,
    /// Rewrite raw harmony (a `gpt-oss` chat completion), else only check.
    rewrite: bool,
    request: Arc<RequestFacts>,
}

impl BodyRewriter for JsonRewriter {
    fn chunk(&mut self, data: &[u8]) -> Result<Bytes, ApiError> {
        if self.buf.len() + data.len() > MAX_JSON_ANSWER_BYTES {
            return Err(ApiError::new(
                ErrorKind::BadGateway,
                format!("the backend's answer is over {MAX_JSON_ANSWER_BYTES} bytes"),
                None,
                Some("upstream_bad_response"),
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(Bytes::new())
    }

    fn finish(&mut self) -> Result<Bytes, ApiError> {
        let body = std::mem::take(&mut self.buf).freeze();
        if let Err(e) = parse_lenient::<IgnoredAny>(&body) {
            return Err(ApiError::new(
                ErrorKind::BadGateway,
                format!("the backend answered with a body that is not valid JSON ({e})"),
                None,
                Some("upstream_invalid_json"),
            ));
        }
        if !self.rewrite || !may_carry_harmony(&body) {
            return Ok(body);
        }
        Ok(
            match rewrite_completion(&body, self.request.seed(), self.request.tools()) {
                Some(v) => Bytes::from(v),
                None => body,
            },
        )
    }

    fn may_change_body(&self) -> bool {
        self.rewrite
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No raw harmony seen: deltas pass through as they are.
    Passthrough,
    /// Raw harmony seen in `content`: from then on content is parsed as harmony text and
    /// re-emitted as OpenAI deltas.
    Rewrite,
}

/// Per-choice stream state.
struct ChoiceStream {
    parser: TextParser,
    mapper: Option<DeltaMapper>,
    mode: Mode,
}

impl ChoiceStream {
    fn new() -> Self {
        ChoiceStream {
            parser: TextParser::new(Some(Role::Assistant)),
            mapper: None,
            mode: Mode::Passthrough,
        }
    }

    /// The mode for this delta, by what it carries: the first `content` with special tokens
    /// (in a delta without parsed fields) switches the choice to rewriting for the rest of
    /// the stream; until then deltas (role, parsed content, reasoning, tool calls, finish)
    /// pass through untouched.
    fn decide(
        &mut self,
        content: Option<&str>,
        parsed: impl FnOnce() -> bool,
        request: &RequestFacts,
    ) -> Mode {
        if self.mode == Mode::Passthrough && content.is_some_and(has_harmony_tokens) && !parsed() {
            self.mode = Mode::Rewrite;
            self.mapper = Some(DeltaMapper::new(request.tools().clone()));
        }
        self.mode
    }

    /// Parse one delta's content (and the finish, when it came) and write the OpenAI frames
    /// it makes after `prefix` (the envelope).
    fn rewrite(
        &mut self,
        content: Option<&str>,
        finish: Option<&str>,
        seed: Option<&SeedContext>,
        prefix: &str,
        index: u64,
        out: &mut BytesMut,
    ) {
        let mut deltas = Vec::new();
        let ChoiceStream { parser, mapper, .. } = self;
        if let (Some(text), Some(m)) = (content, mapper.as_mut()) {
            parser.push_str(text, &mut |e| m.on_event(e, &mut deltas));
        }
        let mut final_reason = None;
        if let Some(fr) = finish {
            if let Some(mut m) = mapper.take() {
                parser.finish(&mut |e| m.on_event(e, &mut deltas));
                let parsed = m.finish(cause_of(Some(fr)), seed, &mut deltas);
                final_reason = Some(parsed.finish_reason.map(FinishReason::as_str).unwrap_or(fr));
            }
        }
        for d in &deltas {
            SseRewriter::frame(out, prefix, index, d, None);
        }
        if let Some(fr) = final_reason {
            SseRewriter::frame(out, prefix, index, &ChatDelta::default(), Some(fr));
        }
    }
}

/// Streaming: SSE events are rewritten one by one as they complete.
pub struct SseRewriter {
    pending: BytesMut,
    scanner: EventScanner,
    max_event_bytes: usize,
    choices: BTreeMap<u64, ChoiceStream>,
    /// The request: the seed and the functions calls may go to.
    request: Arc<RequestFacts>,
    /// Some choice is being rewritten: every event is parsed from now on.
    rewriting: bool,
}

impl SseRewriter {
    /// A rewriter that holds at most `max_event_bytes` of one incomplete event, with tool
    /// calls only to the functions `tools` allows.
    pub fn new(request: Arc<RequestFacts>, max_event_bytes: usize) -> Self {
        SseRewriter {
            pending: BytesMut::new(),
            scanner: EventScanner::new(),
            max_event_bytes,
            choices: BTreeMap::new(),
            request,
            rewriting: false,
        }
    }

    /// The serialized envelope (`id`, `object`, `created`, `model`, ...) without its closing
    /// brace, so that each output frame appends its `choices` and `}`.
    fn envelope_prefix(envelope: &Value) -> String {
        let mut s = serde_json::to_string(envelope).unwrap_or_else(|_| "{}".into());
        s.pop(); // the closing '}'
        if s.len() > 1 {
            s.push(',');
        }
        s
    }

    fn frame(
        out: &mut BytesMut,
        prefix: &str,
        index: u64,
        delta: &ChatDelta,
        finish: Option<&str>,
    ) {
        use std::io::Write as _;
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(prefix.as_bytes());
        let mut w = bytes::BufMut::writer(&mut *out);
        // Writing into memory cannot fail; a delta that does not serialize is sent empty.
        if write!(w, "\"choices\":[{{\"index\":{index},\"delta\":").is_err()
            || serde_json::to_writer(&mut w, delta).is_err()
        {
            let _ = w.write_all(b"{}");
        }
        let out = w.into_inner();
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => out.extend_from_slice(
                serde_json::to_string(f)
                    .unwrap_or_else(|_| "null".into())
                    .as_bytes(),
            ),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    /// Rewrite one complete event. The common shape (one `data:` line holding a JSON chunk
    /// whose choices have the usual fields) is handled on borrowed slices: the envelope is
    /// copied as raw JSON and only `index`, `delta.content` and `finish_reason` are read.
    /// Anything else takes the general path on a `serde_json::Value`.
    fn event(&mut self, raw: &[u8], out: &mut BytesMut) {
        if !self.rewriting && !may_carry_harmony(raw) {
            out.extend_from_slice(raw); // no choice is rewritten and none can start here
            return;
        }
        let Some(data) = sse_data(raw) else {
            out.extend_from_slice(raw); // comments, other fields
            return;
        };
        let Ok(text) = std::str::from_utf8(&data) else {
            return self.event_general(raw, out);
        };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
            // [DONE], errors, odd shapes, lone surrogates
            return self.event_general(raw, out);
        };
        let Some(choices) = frame.choices.as_deref().filter(|c| !c.is_empty()) else {
            out.extend_from_slice(raw); // e.g. the usage chunk
            return;
        };
        // Decide each choice's mode first: an event whose choices all pass through is sent
        // exactly as it came.
        let mut rewrite = 0;
        for c in choices {
            let content = c.delta.as_ref().and_then(|d| d.content.as_deref());
            let mode = self
                .choices
                .entry(c.index.unwrap_or(0))
                .or_insert_with(ChoiceStream::new)
                .decide(
                    content,
                    || c.delta.as_ref().is_some_and(FrameDelta::already_parsed),
                    &self.request,
                );
            rewrite += usize::from(mode == Mode::Rewrite);
            self.rewriting |= mode == Mode::Rewrite;
        }
        if rewrite == 0 {
            out.extend_from_slice(raw);
            return;
        }
        if rewrite < choices.len() {
            // Some choices rewritten, others passed on (n > 1 with a parsed-mode choice):
            // the general path re-emits each choice in its own frame.
            return self.event_general(raw, out);
        }
        let prefix = frame.envelope_prefix();
        for c in choices {
            let index = c.index.unwrap_or(0);
            if let Some(st) = self.choices.get_mut(&index) {
                st.rewrite(
                    c.delta.as_ref().and_then(|d| d.content.as_deref()),
                    c.finish_reason.as_deref(),
                    self.request.seed(),
                    &prefix,
                    index,
                    out,
                );
            }
        }
    }

    /// The general path of `event`, on a `serde_json::Value`.
    fn event_general(&mut self, raw: &[u8], out: &mut BytesMut) {
        let Some(data) = sse_data(raw) else {
            out.extend_from_slice(raw);
            return;
        };
        let Ok(mut v) = parse_lenient::<Value>(&data) else {
            out.extend_from_slice(raw); // [DONE], comments, errors: untouched
            return;
        };
        let Some(choices) = v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
        else {
            out.extend_from_slice(raw);
            return;
        };
        if choices.is_empty() {
            out.extend_from_slice(raw); // e.g. the usage chunk
            return;
        }
        let mut envelope = v;
        if let Some(o) = envelope.as_object_mut() {
            o.remove("choices"); // each output frame writes its own
        }
        let mut prefix: Option<String> = None;
        for choice in choices {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finish = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            let content = choice
                .pointer("/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string);
            let st = self.choices.entry(index).or_insert_with(ChoiceStream::new);
            let mode = st.decide(
                content.as_deref(),
                || choice.get("delta").is_some_and(already_parsed),
                &self.request,
            );
            self.rewriting |= mode == Mode::Rewrite;
            if mode != Mode::Rewrite {
                // No raw harmony in this choice (yet): as it is.
                let mut chunk = envelope.clone();
                if let Some(obj) = chunk.as_object_mut() {
                    obj.insert("choices".into(), json!([choice]));
                }
                out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
                continue;
            }
            let prefix = prefix.get_or_insert_with(|| Self::envelope_prefix(&envelope));
            st.rewrite(
                content.as_deref(),
                finish.as_deref(),
                self.request.seed(),
                prefix,
                index,
                out,
            );
        }
    }
}

impl BodyRewriter for SseRewriter {
    fn chunk(&mut self, data: &[u8]) -> Result<Bytes, ApiError> {
        self.pending.extend_from_slice(data);
        let mut out = BytesMut::new();
        while let Some(end) = self.scanner.next_end(&self.pending) {
            let ev = self.pending.split_to(end);
            self.event(&ev, &mut out);
        }
        if self.scanner.pending() > self.max_event_bytes {
            // The oversized event is dropped whole: nothing of it is ever sent.
            self.pending = BytesMut::new();
            self.scanner = EventScanner::new();
            return Err(ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "the backend sent an SSE event over the limit of {} bytes",
                    self.max_event_bytes
                ),
                None,
                Some("upstream_event_too_large"),
            ));
        }
        if self.pending.is_empty() {
            // Give the memory of a large event back once it is done.
            self.pending = BytesMut::new();
        }
        Ok(out.freeze())
    }

    fn finish(&mut self) -> Result<Bytes, ApiError> {
        let mut out = BytesMut::new();
        let rest = std::mem::take(&mut self.pending);
        self.scanner = EventScanner::new();
        if !rest.is_empty() {
            self.event(&rest, &mut out);
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The facts of a request that offered no tools and did not set `separate_thinking`.
    fn no_request() -> Arc<RequestFacts> {
        Arc::new(RequestFacts::new(Bytes::new(), false, false))
    }

    /// A stream whose first special token arrives escaped (`\u003c|`) is still rewritten:
    /// the check that lets events through unparsed never misses a spelling of `<|`.
    #[test]
    fn escaped_special_tokens_are_rewritten() {
        let env = r#""id":"c1","object":"chat.completion.chunk","created":1,"model":"m""#;
        let mut sse = String::new();
        for c in [
            r"\u003c|channel|>final",
            r"\u003C|message|\u003e",
            "Paris",
            r"\u003c\u007creturn\u007c\u003e",
        ] {
            sse.push_str(&format!(
                "data: {{{env},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{c}\"}},\"finish_reason\":null}}]}}\n\n"
            ));
        }
        sse.push_str(&format!(
            "data: {{{env},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: [DONE]\n\n"
        ));
        let mut r = SseRewriter::new(no_request(), DEFAULT_MAX_EVENT_BYTES);
        let mut out = r.chunk(sse.as_bytes()).expect("chunk").to_vec();
        out.extend_from_slice(&r.finish().expect("finish"));
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            !text.contains("channel") && !text.contains("u003c"),
            "{text}"
        );
        assert!(text.contains(r#""content":"Paris""#), "{text}");
        // Content without special tokens, in no spelling, passes byte for byte.
        let plain = format!(
            "data: {{{env},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"a < b | c\"}},\"finish_reason\":null}}]}}\n\n"
        );
        let mut r = SseRewriter::new(no_request(), DEFAULT_MAX_EVENT_BYTES);
        assert_eq!(r.chunk(plain.as_bytes()).expect("chunk"), plain.as_bytes());
    }

    /// The borrowed fast path of `SseRewriter::event` writes the same frames as the general
    /// path on `Value`s, for a stream cut at every 7th byte.
    #[test]
    fn fast_path_equals_the_general_path() {
        let raw = "<|channel|>analysis<|message|>Think \"hard\"\n, é.<|end|><|start|>assistant<|channel|>final<|message|>Washington<|return|>";
        let env = r#""id":"c1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":null"#;
        let mut sse = format!(
            "data: {{{env},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\"}},\"finish_reason\":null}}]}}\n\n"
        );
        let chars: Vec<char> = raw.chars().collect();
        for piece in chars.chunks(3) {
            let c = serde_json::to_string(&piece.iter().collect::<String>()).expect("json");
            sse.push_str(&format!(
                "data: {{{env},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{c}}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            ));
        }
        sse.push_str(&format!(
            "data: {{{env},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n"
        ));
        sse.push_str(&format!(
            "data: {{{env},\"choices\":[],\"usage\":{{\"total_tokens\":3}}}}\n\n"
        ));
        sse.push_str(": a comment\n\ndata: [DONE]\n\n");

        let mut fast = SseRewriter::new(no_request(), DEFAULT_MAX_EVENT_BYTES);
        let mut a = Vec::new();
        for piece in sse.as_bytes().chunks(7) {
            a.extend_from_slice(&fast.chunk(piece).expect("chunk"));
        }
        a.extend_from_slice(&fast.finish().expect("finish"));

        let mut general = SseRewriter::new(no_request(), DEFAULT_MAX_EVENT_BYTES);
        let mut b = BytesMut::new();
        let mut rest = sse.as_bytes();
        let mut scanner = EventScanner::new();
        while let Some(end) = scanner.next_end(rest) {
            general.event_general(&rest[..end], &mut b);
            rest = &rest[end..];
        }
        let frames = |bytes: &[u8]| -> Vec<Value> {
            String::from_utf8_lossy(bytes)
                .split("\n\n")
                .filter(|f| !f.is_empty())
                .map(|f| match f.strip_prefix("data: ") {
                    Some(d) => serde_json::from_str(d).unwrap_or_else(|_| json!(d)),
                    None => json!(f),
                })
                .collect()
        };
        let (fa, fb) = (frames(&a), frames(&b));
        assert_eq!(fa, fb);
        let text: String = fa
            .iter()
            .filter_map(|f| {
                f.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(text, "Washington");
        let reasoning: String = fa
            .iter()
            .filter_map(|f| {
                f.pointer("/choices/0/delta/reasoning_content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(reasoning, "Think \"hard\"\n, é.");
        assert!(String::from_utf8_lossy(&a).ends_with("data: [DONE]\n\n"));
    }

    const RAW: &str = "<|channel|>analysis<|message|>User asks capital.<|end|><|start|>assistant<|channel|>final<|message|>Washington<|return|>";

    #[test]
    fn non_streaming_raw_harmony_is_parsed() {
        let body = json!({"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":RAW},"finish_reason":"stop"}]});
        let out = rewrite_completion(body.to_string().as_bytes(), None, &ToolGate::none())
            .expect("rewritten");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["choices"][0]["message"]["content"], "Washington");
        assert_eq!(
            v["choices"][0]["message"]["reasoning_content"],
            "User asks capital."
        );
        assert!(v["choices"][0]["message"].get("thinking").is_none());
    }

    #[test]
    fn already_parsed_messages_are_left_alone() {
        let body = json!({"choices":[{"index":0,"message":{"role":"assistant","content":"hi","reasoning_content":"r"},"finish_reason":"stop"}]});
        assert!(rewrite_completion(body.to_string().as_bytes(), None, &ToolGate::none()).is_none());
    }

    #[test]
    fn content_without_tokens_passes_untouched() {
        let body = json!({"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]});
        let seed = SeedContext::default();
        assert!(
            rewrite_completion(body.to_string().as_bytes(), Some(&seed), &ToolGate::none())
                .is_none()
        );
    }

    #[test]
    fn lone_surrogates_are_read_as_replacement_characters() {
        assert_eq!(
            replace_lone_surrogates(br#""a\ud83d b""#).as_deref(),
            Some(&br#""a\ufffd b""#[..])
        );
        assert_eq!(
            replace_lone_surrogates(br#""\ud83d\ude00""#),
            None,
            "a valid pair stays"
        );
        assert_eq!(
            replace_lone_surrogates(br#""\ude00\\ud83d""#).as_deref(),
            Some(&br#""\ufffd\\ud83d""#[..]),
            "a lone low surrogate goes; an escaped backslash is not an escape"
        );
        let raw = RAW.replace("Washington", "Washington \\ud83d");
        let body = format!(
            r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}]}}"#,
            raw.replace('"', "\\\"")
        );
        let out = rewrite_completion(body.as_bytes(), None, &ToolGate::none())
            .expect("rewritten despite the surrogate");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["choices"][0]["message"]["content"], "Washington \u{fffd}");
        assert!(!String::from_utf8_lossy(&out).contains("<|"));
    }

    #[test]
    fn parsed_stream_passes_untouched_even_after_an_empty_content_delta() {
        // A parsed gpt-oss-server stream: role with empty content, reasoning, a tool call.
        let frames = [
            json!({"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}),
            json!({"id":"c","choices":[{"index":0,"delta":{"reasoning_content":"Need weather."},"finish_reason":null}]}),
            json!({"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},"finish_reason":null}]}),
            json!({"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ];
        let mut sse = String::new();
        for f in &frames {
            sse.push_str(&format!("data: {f}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        let mut r = SseRewriter::new(no_request(), DEFAULT_MAX_EVENT_BYTES);
        let mut out = Vec::new();
        for read in sse.as_bytes().chunks(5) {
            out.extend_from_slice(&r.chunk(read).expect("chunk"));
        }
        out.extend_from_slice(&r.finish().expect("finish"));
        assert_eq!(
            String::from_utf8_lossy(&out),
            sse,
            "parsed output passes byte for byte"
        );
    }

    #[test]
    fn events_end_at_bare_cr_and_crlf_too() {
        for eol in ["\r", "\r\n", "\n"] {
            let mut sse = String::new();
            for piece in [RAW.get(..20).unwrap_or(""), RAW.get(20..).unwrap_or("")] {
                let d = json!({"id":"c","choices":[{"index":0,"delta":{"content":piece},"finish_reason":null}]});
                sse.push_str(&format!("data: {d}{eol}{eol}"));
            }
            let mut r = SseRewriter::new(no_request(), DEFAULT_MAX_EVENT_BYTES);
            let out = r.chunk(sse.as_bytes()).expect("chunk");
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("<|"), "{eol:?}: raw harmony leaked: {text}");
            assert!(
                text.contains("Washington"),
                "{eol:?}: answer rewritten at once: {text}"
            );
        }
    }

    #[test]
    fn an_event_over_the_limit_ends_the_stream_and_memory_is_bounded() {
        let mut r = SseRewriter::new(no_request(), 1024);
        assert!(r.chunk(b"data: {\"choices\":").is_ok());
        let big = vec![b'x'; 2048];
        let err = r.chunk(&big).expect_err("over the limit");
        assert_eq!(err.status, 502);
    }

    fn sse_chunk(content: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
        )
    }

    fn collect(out: &[u8]) -> (String, String, Vec<String>) {
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        let (mut content, mut reasoning, mut finishes) = (String::new(), String::new(), Vec::new());
        for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
            let data = ev.strip_prefix("data: ").expect("data line");
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).expect("json");
            let c = &v["choices"][0];
            content.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            reasoning.push_str(c["delta"]["reasoning_content"].as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                finishes.push(f.to_string());
            }
        }
        (content, reasoning, finishes)
    }

    #[test]
    fn stream_with_tokens_split_across_frames_and_reads() {
        // Split the raw text into 3-byte deltas so that special tokens straddle frames,
        // then split the SSE bytes into 7-byte network reads.
        let mut sse = String::new();
        let bytes = RAW.as_bytes();
        for piece in bytes.chunks(3) {
            sse.push_str(&sse_chunk(std::str::from_utf8(piece).expect("ascii")));
        }
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
        ));
        sse.push_str("data: [DONE]\n\n");
        let mut r = SseRewriter::new(no_request(), DEFAULT_MAX_EVENT_BYTES);
        let mut out = Vec::new();
        for read in sse.as_bytes().chunks(7) {
            out.extend_from_slice(&r.chunk(read).expect("chunk"));
        }
        out.extend_from_slice(&r.finish().expect("finish"));
        let (content, reasoning, finishes) = collect(&out);
        assert_eq!(content, "Washington");
        assert_eq!(reasoning, "User asks capital.");
        assert_eq!(finishes, vec!["stop".to_string()]);
        assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
        assert!(
            !String::from_utf8_lossy(&out).contains("<|"),
            "no special token may leak"
        );
    }

    const CALL: &str = "<|channel|>commentary<|message|>Checking the weather now.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>";

    /// Rewrites `raw` (a raw backend's content) for a request `body`, non-streamed and
    /// streamed: (content, tool call names, finish reason) of each.
    fn rewrite_both(body: &Value, raw: &str) -> [(String, Vec<String>, String); 2] {
        let gpt_oss = config::ModelType::GptOss;
        let names = |calls: &Value| -> Vec<String> {
            calls
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.pointer("/function/name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        };
        let req = body.to_string();
        let opts = RewriteOptions::from_request(Bytes::from(req.clone()), false, true, false);
        let mut json_rw = for_response(gpt_oss, Some("application/json"), &opts).expect("json");
        let resp = json!({"choices":[{"index":0,"message":{"role":"assistant","content":raw},"finish_reason":"stop"}]});
        let _ = json_rw.chunk(resp.to_string().as_bytes());
        let v: Value = serde_json::from_slice(&json_rw.finish().expect("finish")).expect("json");
        let msg = &v["choices"][0]["message"];
        let json = (
            msg["content"].as_str().unwrap_or("").to_string(),
            names(&msg["tool_calls"]),
            v["choices"][0]["finish_reason"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );

        let opts = RewriteOptions::from_request(Bytes::from(req.clone()), true, true, false);
        let mut sse_rw = for_response(gpt_oss, Some("text/event-stream"), &opts).expect("sse");
        let mut sse = String::new();
        for piece in raw.as_bytes().chunks(5) {
            sse.push_str(&sse_chunk(std::str::from_utf8(piece).expect("ascii")));
        }
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
        ));
        let mut out = Vec::new();
        out.extend_from_slice(&sse_rw.chunk(sse.as_bytes()).expect("chunk"));
        out.extend_from_slice(&sse_rw.finish().expect("finish"));
        let (content, _, finishes) = collect(&out);
        let mut called = Vec::new();
        for ev in String::from_utf8_lossy(&out).split("\n\n") {
            if let Some(v) = ev
                .strip_prefix("data: ")
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
            {
                called.extend(names(&v["choices"][0]["delta"]["tool_calls"]));
            }
        }
        let streamed = (content, called, finishes.concat());
        [json, streamed]
    }

    #[test]
    fn calls_to_functions_the_request_did_not_offer_are_not_tool_calls_at_the_edge() {
        let user = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
        let weather = json!({"type": "function", "function": {"name": "get_weather"}});
        for body in [
            json!({"messages": user}),
            json!({"messages": user, "tools": [weather], "tool_choice": "none"}),
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "get_time"}}]}),
        ] {
            for (content, names, finish) in rewrite_both(&body, CALL) {
                assert!(names.is_empty(), "{body}: {names:?}");
                assert_eq!(finish, "stop", "{body}");
                assert_eq!(content, "Checking the weather now.", "{body}");
            }
        }
        let body = json!({"messages": user, "tools": [weather]});
        for (content, names, finish) in rewrite_both(&body, CALL) {
            assert_eq!(names, ["get_weather"]);
            assert_eq!(finish, "tool_calls");
            assert_eq!(
                content, "Checking the weather now.",
                "the preamble is content"
            );
        }
    }
}
