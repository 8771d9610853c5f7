//! The server's use of the `harmony` crate: rendering requests to token ids
//! (`harmony::Renderer`), turning generated tokens into OpenAI deltas
//! (`harmony::parser::TokenParser` + `harmony::openai::DeltaMapper`), and the
//! seed's `thinking` / `parsed` (`harmony::openai::ParsedResponse`).

use gpt_oss_runtimes::Capabilities;
use harmony::openai::{DeltaMapper, ParsedResponse, SeedContext, StopCause, ToolGate};
use harmony::parser::TokenParser;
use harmony::render::RequestOptions;
use harmony::{tokens, RenderError, Renderer, Role, StreamDecoder, Tokenizer};
use openai_types::{ChatDelta, FinishReason, Parsed, Thinking};

use crate::error::ApiError;
use crate::generation::DeltaParser;
use crate::stop::AnswerStopMatcher;
use crate::validate::{ToolPlan, ValidChat};

/// Stop tokens of every generation: `<|return|>`, `<|call|>` and the model's eos ids.
pub fn stop_token_ids(caps: &Capabilities) -> Vec<u32> {
    let mut ids = tokens::STOP_TOKENS_FOR_ASSISTANT_ACTIONS.to_vec();
    for id in &caps.eos_token_ids {
        if !ids.contains(id) {
            ids.push(*id);
        }
    }
    ids
}

/// The most prompt tokens a model with `context_length` takes (one position is left for the
/// first generated token).
fn prompt_token_limit(context_length: u32) -> usize {
    (context_length as usize).saturating_sub(1)
}

/// A text prompt of `/v1/completions`: special tokens written as text are special tokens.
/// A text that needs more than `context_length - 1` tokens is refused with 400
/// `context_length_exceeded`; when its length alone proves that, before it is tokenized.
pub fn encode_prompt(
    tokenizer: &Tokenizer,
    text: &str,
    context_length: u32,
) -> Result<Vec<u32>, ApiError> {
    let limit = prompt_token_limit(context_length);
    let too_long = |tokens, exact| ApiError::ContextLengthExceeded {
        param: "prompt",
        tokens,
        exact,
        context_length,
    };
    let at_least = tokenizer.min_tokens_for_bytes(text.len());
    if at_least > limit {
        return Err(too_long(at_least, false));
    }
    let ids = tokenizer
        .encode_with_special_tokens(text)
        .map_err(|e| ApiError::field("prompt", format!("could not be tokenized: {e}")))?;
    if ids.len() > limit {
        return Err(too_long(ids.len(), true));
    }
    Ok(ids)
}

/// Renders a chat request into prompt token ids ending with `<|start|>assistant`,
/// with today's date in the system message, as the reference servers do.
/// A conversation that needs more than `context_length - 1` tokens is refused with 400
/// `context_length_exceeded` as soon as that is certain (a text far too long is refused
/// before it is tokenized; see [`Renderer::with_token_limit`]).
pub fn render_chat(
    tokenizer: &Tokenizer,
    valid: &ValidChat,
    context_length: u32,
) -> Result<Vec<u32>, ApiError> {
    let options = RequestOptions {
        conversation_start_date: Some(today_utc()),
        ..RequestOptions::default()
    };
    Renderer::with_token_limit(tokenizer, prompt_token_limit(context_length))
        .render_request(&valid.render, &options)
        .map_err(|e| match e {
            RenderError::TooManyTokens { at_least, .. } => ApiError::ContextLengthExceeded {
                param: "messages",
                tokens: at_least,
                exact: false,
                context_length,
            },
            RenderError::InvalidRequest { message, param } => {
                let message = if message.contains('`') || message.starts_with(&param) {
                    message
                } else {
                    format!("`{param}`: {message}")
                };
                ApiError::InvalidField { message, param }
            }
            RenderError::ToolWithoutName { index } => ApiError::field(
                format!("messages[{index}].tool_call_id"),
                "does not name the tool call this message answers",
            ),
            RenderError::Encode(e) => {
                ApiError::field("messages", format!("could not be tokenized: {e}"))
            }
        })
}

/// `YYYY-MM-DD` of the current UTC day (days-to-civil, no calendar crate needed).
fn today_utc() -> String {
    let days = (openai_types::unix_now() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// What the prefill of `tool_choice: "required"` writes of the recipient before the model
/// picks a tool: `functions.` when every offered tool is a plain function, nothing when some
/// live in other namespaces (`crm.lookup`), whose recipients do not start with `functions.`.
pub fn required_call_prefix(valid: &ValidChat) -> &'static str {
    let dotted = valid
        .render
        .tools
        .iter()
        .flatten()
        .any(|t| t.function.name.contains('.'));
    if dotted {
        ""
    } else {
        "functions."
    }
}

/// Tokens the server writes after `<|start|>assistant` to force a tool call
/// (`tool_choice` `required` or named): the header of a call to the named
/// function, or of a call to some function whose name the model completes.
pub fn prefill(tokenizer: &Tokenizer, valid: &ValidChat) -> Result<Vec<u32>, ApiError> {
    let text = match &valid.tool_plan {
        ToolPlan::NoTools | ToolPlan::Auto => return Ok(Vec::new()),
        ToolPlan::Required => format!("<|channel|>commentary to={}", required_call_prefix(valid)),
        ToolPlan::Named(name) => format!(
            "<|channel|>commentary to={} <|constrain|>json<|message|>",
            harmony::render::tool_recipient(name)
        ),
    };
    tokenizer
        .encode_with_special_tokens(&text)
        .map_err(|e| ApiError::Internal(format!("could not encode the tool-call prefill: {e}")))
}

fn finish_reason_of(cause: StopCause) -> FinishReason {
    match cause {
        StopCause::Stop => FinishReason::Stop,
        StopCause::Length => FinishReason::Length,
    }
}

/// Raw text output: each token's text (special tokens literal) as `content`.
struct RawText {
    decoder: StreamDecoder,
    prefix: Option<String>,
    /// Counts analysis tokens for `usage` even though the text is not parsed for the client.
    counter: TokenParser,
    /// Chat in raw mode: a `<|call|>` ending is a tool call (the proxy parses it).
    call_means_tool_calls: bool,
    /// Chat in raw mode: stop strings, matched on the answer the raw text carries.
    answer_stop: Option<AnswerStop>,
    /// Special tokens are left out of the text (a completion constrained to JSON, whose only
    /// special token is the `<|return|>` that ends it).
    text_only: bool,
}

/// Stop strings for raw chat output. They apply to the answer (what a parsed response
/// carries as `content`: final-channel text), never to the reasoning or the harmony
/// framing, so a client that parses the raw text (the LB's edge rewriting) gets the
/// `content` a parsed server gives for the same request.
struct AnswerStop {
    /// Maps the parse of the output (`RawText::counter`) to OpenAI deltas: their `content`
    /// is the answer.
    mapper: DeltaMapper,
    matcher: AnswerStopMatcher,
    /// Stop strings are not looked for in the first `min_tokens` tokens (vLLM), as on the
    /// parsed path.
    min_tokens: u32,
    generated: u32,
    deltas: Vec<ChatDelta>,
}

impl RawText {
    fn emit(text: String, out: &mut Vec<ChatDelta>) {
        if !text.is_empty() {
            out.push(ChatDelta {
                content: Some(text),
                ..ChatDelta::default()
            });
        }
    }
}

impl DeltaParser for RawText {
    fn push(&mut self, token: u32, out: &mut Vec<ChatDelta>) {
        let mut text = self.prefix.take().unwrap_or_default();
        let Some(a) = self.answer_stop.as_mut() else {
            self.counter.push(token, &mut |_| {});
            if self.text_only && token >= tokens::FIRST_SPECIAL {
                return;
            }
            self.decoder.push_into(token, &mut text);
            Self::emit(text, out);
            return;
        };
        if a.matcher.matched() {
            return;
        }
        if !text.is_empty() {
            let mut kept = String::new();
            a.matcher.push(&text, false, &mut kept);
            text = kept;
        }
        a.generated += 1;
        a.deltas.clear();
        let (mapper, deltas) = (&mut a.mapper, &mut a.deltas);
        self.counter
            .push(token, &mut |e| mapper.on_event(e, deltas));
        let answer = token < tokens::FIRST_SPECIAL
            && a.generated >= a.min_tokens
            && a.deltas.iter().any(|d| d.content.is_some());
        let mut piece = String::new();
        self.decoder.push_into(token, &mut piece);
        a.matcher.push(&piece, answer, &mut text);
        Self::emit(text, out);
    }

    fn finish(
        &mut self,
        cause: StopCause,
        stop_token: Option<u32>,
        out: &mut Vec<ChatDelta>,
    ) -> FinishReason {
        let mut text = self.prefix.take().unwrap_or_default();
        match self.answer_stop.as_mut() {
            Some(a) if a.matcher.matched() => text.clear(),
            Some(a) => {
                let mut rest = String::new();
                a.matcher.push(&text, false, &mut rest);
                a.matcher.finish(&mut rest);
                self.decoder.finish_into(&mut rest);
                text = rest;
            }
            None => self.decoder.finish_into(&mut text),
        }
        Self::emit(text, out);
        match stop_token {
            Some(tokens::CALL) if self.call_means_tool_calls && cause == StopCause::Stop => {
                FinishReason::ToolCalls
            }
            _ => finish_reason_of(cause),
        }
    }

    fn reasoning_tokens(&self) -> u32 {
        self.counter.counts().analysis
    }

    fn stop_matched(&self) -> bool {
        self.answer_stop
            .as_ref()
            .is_some_and(|a| a.matcher.matched())
    }
}

fn raw_text(tokenizer: &Tokenizer, prefix: &str, call_means_tool_calls: bool) -> RawText {
    RawText {
        decoder: tokenizer.stream_decoder(),
        prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
        counter: TokenParser::new(tokenizer, Some(Role::Assistant)),
        call_means_tool_calls,
        answer_stop: None,
        text_only: false,
    }
}

/// Decoded text out, for `/v1/completions`. With `text_only` special tokens are left out (a
/// completion constrained to JSON does not end its text with `<|return|>`); otherwise they
/// appear as literal text.
pub fn text_parser(tokenizer: &Tokenizer, text_only: bool) -> Box<dyn DeltaParser> {
    Box::new(RawText {
        text_only,
        ..raw_text(tokenizer, "", false)
    })
}

/// Parsed output: harmony's token parser and its OpenAI delta mapping.
struct HarmonyDeltas {
    parser: TokenParser,
    mapper: Option<DeltaMapper>,
}

impl HarmonyDeltas {
    fn feed(&mut self, token: Option<u32>, out: &mut Vec<ChatDelta>) {
        let Some(mapper) = self.mapper.as_mut() else {
            return;
        };
        let start = out.len();
        let mut sink = |e: harmony::parser::Event<'_>| mapper.on_event(e, out);
        match token {
            Some(t) => self.parser.push(t, &mut sink),
            None => self.parser.finish(&mut sink),
        }
        // The handlers send `role` in their own first chunk.
        for d in &mut out[start..] {
            d.role = None;
        }
    }
}

impl DeltaParser for HarmonyDeltas {
    fn push(&mut self, token: u32, out: &mut Vec<ChatDelta>) {
        self.feed(Some(token), out);
    }

    fn finish(
        &mut self,
        cause: StopCause,
        _stop_token: Option<u32>,
        out: &mut Vec<ChatDelta>,
    ) -> FinishReason {
        self.feed(None, out);
        let mut last = Vec::new();
        let reason = self
            .mapper
            .take()
            .and_then(|m| m.finish(cause, None, &mut last).finish_reason);
        out.extend(last.into_iter().filter(|d| {
            let mut d = d.clone();
            d.role = None;
            !d.is_empty()
        }));
        reason.unwrap_or_else(|| finish_reason_of(cause))
    }

    fn reasoning_tokens(&self) -> u32 {
        self.parser.counts().analysis
    }
}

/// The parser for a chat response: raw harmony text when `raw`, else OpenAI fields, with
/// tool calls only to the functions `tools` allows. `prefill` (the forced start of the
/// assistant message) is fed first.
///
/// With `raw`, the parser also matches `stop` (from the `min_tokens`-th generated token on)
/// on the answer inside the raw text and ends the output before the stop string
/// ([`DeltaParser::stop_matched`]); the generation's own matcher, which looks at all of
/// `content`, must then be given no stop strings. Parsed output leaves `stop` to it.
pub fn chat_parser(
    tokenizer: &Tokenizer,
    raw: bool,
    tools: ToolGate,
    prefill: &[u32],
    stop: &[String],
    min_tokens: u32,
) -> Box<dyn DeltaParser> {
    if raw {
        let prefix = tokenizer.decode(prefill);
        let mut p = raw_text(tokenizer, &prefix, true);
        if !stop.is_empty() {
            let mut mapper = DeltaMapper::new(tools);
            let mut ignored = Vec::new();
            p.counter
                .push_all(prefill, &mut |e| mapper.on_event(e, &mut ignored));
            p.answer_stop = Some(AnswerStop {
                mapper,
                matcher: AnswerStopMatcher::new(stop.to_vec()),
                min_tokens,
                generated: 0,
                deltas: Vec::new(),
            });
        }
        return Box::new(p);
    }
    let mut p = HarmonyDeltas {
        parser: TokenParser::new(tokenizer, Some(Role::Assistant)),
        mapper: Some(DeltaMapper::new(tools)),
    };
    // The prefill's deltas are kept: a forced tool call must reach the client.
    let mut pending = Vec::new();
    for &id in prefill {
        p.push(id, &mut pending);
    }
    Box::new(Prefilled { inner: p, pending })
}

/// Emits the prefill's deltas with the first generated token.
struct Prefilled<P> {
    inner: P,
    pending: Vec<ChatDelta>,
}

impl<P: DeltaParser> DeltaParser for Prefilled<P> {
    fn push(&mut self, token: u32, out: &mut Vec<ChatDelta>) {
        out.append(&mut self.pending);
        self.inner.push(token, out);
    }

    fn finish(
        &mut self,
        cause: StopCause,
        stop_token: Option<u32>,
        out: &mut Vec<ChatDelta>,
    ) -> FinishReason {
        out.append(&mut self.pending);
        self.inner.finish(cause, stop_token, out)
    }

    fn reasoning_tokens(&self) -> u32 {
        self.inner.reasoning_tokens()
    }
}

/// The seed's `thinking` and `parsed` for a finished response, from what the client got.
pub fn seed_fields(valid: &ValidChat, response: &ParsedResponse) -> (Thinking, Parsed) {
    let seed = SeedContext::from_request(&valid.render);
    (response.thinking(), response.parsed(&seed))
}
