//! The gpt-oss harmony format: render OpenAI chat requests into harmony prompts and parse what
//! the model writes back, exactly as OpenAI's reference (`openai-harmony`) does, but tolerant
//! of malformed output and fast enough to sit on every token.
//!
//! Pure: no network, no environment, no clock. The only I/O is loading a `tokenizer.json`
//! from a path the caller gives.
//!
//! # Vocabulary and tokenizer
//! - [`tokens`]: the special token ids (`tokens::START` = 200006, ... reserved up to 201087),
//!   [`tokens::Special`].
//! - [`Tokenizer`] (on the `tokenizers` crate): [`Tokenizer::o200k_harmony`] (built-in, no file),
//!   [`Tokenizer::from_dir`] / [`Tokenizer::from_file`] (a model folder's `tokenizer.json`);
//!   `encode_ordinary`, `encode_with_special_tokens`, `decode` (never fails),
//!   [`Tokenizer::stream_decoder`] -> [`StreamDecoder`] (deltas never split a character).
//!
//! # Rendering
//! - [`Renderer::new`]`(&tokenizer)`, then
//!   [`Renderer::render_request`]`(&ChatCompletionRequest, &RequestOptions)` -> prompt ids
//!   ending with `<|start|>assistant` (or `render_request_into` a caller buffer).
//! - Harmony-level: [`Message`], [`SystemContent`], [`DeveloperContent`],
//!   [`Renderer::render_for_completion`] / `render_conversation_into` with
//!   [`render::ConversationConfig`] (the drop-earlier-analysis rule).
//! - [`render::conversation_from_request`] shows the conversation a request becomes;
//!   [`render::RenderError::InvalidRequest`] names the request field (`param`) at fault.
//!
//! # Parsing
//! - [`parser::TokenParser`] (ids) and [`parser::TextParser`] (decoded text with literal
//!   special tokens, chunks split at any byte) emit [`parser::Event`]s through a callback:
//!   `MessageStart(&Header)`, `ContentDelta(&str)`, `MessageEnd(EndReason)`. Never fail.
//!   `TokenParser::counts()` gives analysis / total token counts for `usage`.
//! - Whole-output helpers: [`parser::parse_completion_tokens`], [`parser::parse_text`].
//!
//! # Mapping to OpenAI
//! - One rule places every piece of output: [`openai::Router`] (tool calls only to the
//!   functions an [`openai::ToolGate`] allows; preambles to `content`; unplaced text to
//!   reasoning when there is a `final` message; nothing after `<|return|>` / `<|call|>`).
//! - Non-streaming: [`openai::ResponseAccumulator`] (`on_event` ... `finish(StopCause)`)
//!   -> [`openai::ParsedResponse`] -> `to_message(Option<&SeedContext>)` ->
//!   `openai_types::AssistantMessage` (with the seed's `thinking` / `parsed` when given a
//!   [`openai::SeedContext`], built by `SeedContext::from_request`).
//! - Streaming: [`openai::DeltaMapper`] (`on_event(e, &mut Vec<ChatDelta>)` ...
//!   `finish(StopCause, seed, &mut out)`) -> `openai_types::ChatDelta`s and the final
//!   [`openai::ParsedResponse`] (finish reason included).
//! - [`openai::usage`]`(prompt_tokens, counts)` -> `openai_types::Usage` with
//!   `thinking_tokens` / `reasoning_tokens`.
//!
//! ```
//! use harmony::{openai, parser::TokenParser, render::RequestOptions, Renderer, Tokenizer};
//! let tokenizer = Tokenizer::o200k_harmony().unwrap();
//! let request: openai_types::ChatCompletionRequest = serde_json::from_str(
//!     r#"{"messages":[{"role":"user","content":"What is 2 + 2?"}]}"#).unwrap();
//! let prompt = Renderer::new(&tokenizer).render_request(&request, &RequestOptions::default()).unwrap();
//! assert_eq!(tokenizer.decode(&prompt[prompt.len() - 2..]), "<|start|>assistant");
//!
//! let output = tokenizer.encode_with_special_tokens(
//!     "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>").unwrap();
//! let mut parser = TokenParser::new(&tokenizer, Some(harmony::Role::Assistant));
//! let mut acc = openai::ResponseAccumulator::new(openai::ToolGate::from_request(&request));
//! for id in output { parser.push(id, &mut |e| acc.on_event(e)); }
//! parser.finish(&mut |e| acc.on_event(e));
//! let response = acc.finish(openai::StopCause::Stop);
//! let message = response.to_message(None);
//! assert_eq!(message.content.as_deref(), Some("4"));
//! assert_eq!(message.reasoning_content.as_deref(), Some("Easy."));
//! assert_eq!(parser.counts().analysis, 2);
//! ```
#![forbid(unsafe_code)]

pub mod message;
pub mod openai;
pub mod parser;
pub mod render;
pub mod tokenizer;
pub mod tokens;

pub use message::{
    ChannelConfig, Content, DeveloperContent, Message, ReasoningEffort, ResponseFormatSpec, Role,
    SystemContent, ToolDescription, ToolNamespace,
};
pub use render::{ConversationConfig, RenderError, Renderer};
pub use tokenizer::{EncodeError, StreamDecoder, Tokenizer, TokenizerError};
