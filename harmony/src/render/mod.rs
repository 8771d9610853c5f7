//! Rendering: harmony conversations and OpenAI chat requests -> token ids.
//!
//! Everything renders into a caller-supplied buffer (`Extend<u32>`); the `Vec`-returning
//! helpers sit on top. The output equals `openai-harmony`'s for the same conversation.

mod request;
mod schema;

use std::cell::Cell;
use std::fmt::Write as _;

pub use request::{
    conversation_from_request, developer_instructions, tool_recipient, RequestOptions,
};
pub use schema::json_schema_to_typescript;

use crate::message::{Content, DeveloperContent, Message, Role, SystemContent, ToolNamespace};
use crate::tokenizer::{EncodeError, Tokenizer};
use crate::tokens;

/// Why a conversation could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A tool message has no author name (the tool it comes from).
    #[error("tool message {index} has no tool name")]
    ToolWithoutName { index: usize },
    /// The request cannot be rendered; `param` names the offending field
    /// (`messages[3].tool_call_id`).
    #[error("{message}")]
    InvalidRequest { message: String, param: String },
    /// The conversation has more tokens than the renderer's limit
    /// ([`Renderer::with_token_limit`]); rendering stopped as soon as that was certain.
    /// `at_least` is a lower bound on the conversation's token count (more than `limit`).
    #[error("the conversation has at least {at_least} tokens, more than the limit of {limit}")]
    TooManyTokens { at_least: usize, limit: usize },
}

/// Conversation-level rendering options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConversationConfig {
    /// The harmony guide's rule: earlier chain of thought is dropped once a turn ended in a
    /// `final` message and the conversation went on, so every `analysis` message before the
    /// last such `final` one is left out; the analysis after it (the turn whose tool calls are
    /// still open) is kept.
    /// `openai-harmony`'s default differs: it drops only when the conversation's last
    /// assistant message is `final`, and then only analysis before the first `final`.
    pub auto_drop_analysis: bool,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            auto_drop_analysis: true,
        }
    }
}

/// Renders harmony conversations and OpenAI chat requests to token ids.
#[derive(Clone, Debug)]
pub struct Renderer {
    tokenizer: Tokenizer,
    /// At most this many text tokens may be rendered (see [`Renderer::with_token_limit`]).
    limit: Option<usize>,
    /// Text tokens rendered so far by this renderer.
    rendered: Cell<usize>,
}

impl Renderer {
    pub fn new(tokenizer: &Tokenizer) -> Renderer {
        Renderer {
            tokenizer: tokenizer.clone(),
            limit: None,
            rendered: Cell::new(0),
        }
    }

    /// A renderer for one prompt that must fit `limit` tokens: rendering fails with
    /// [`RenderError::TooManyTokens`] as soon as the tokens rendered so far plus a lower bound
    /// for the next text ([`Tokenizer::min_tokens_for_bytes`], found without encoding it)
    /// exceed `limit`, so a prompt far larger than the context is refused before it is
    /// tokenized. Only text tokens are counted (the structural `<|start|>`, `<|message|>`...
    /// are not), so a prompt that fits is never refused; the caller still checks the final
    /// length. The count accumulates over every render call of this renderer: make one per
    /// prompt.
    pub fn with_token_limit(tokenizer: &Tokenizer, limit: usize) -> Renderer {
        Renderer {
            limit: Some(limit),
            ..Renderer::new(tokenizer)
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    #[inline]
    fn text<B: Extend<u32>>(&self, text: &str, into: &mut B) -> Result<(), RenderError> {
        let Some(limit) = self.limit else {
            self.tokenizer.encode_ordinary_into(text, into)?;
            return Ok(());
        };
        let before = self.rendered.get();
        let at_least = before + self.tokenizer.min_tokens_for_bytes(text.len());
        if at_least > limit {
            return Err(RenderError::TooManyTokens { at_least, limit });
        }
        let mut counted = Counting { into, n: 0 };
        self.tokenizer.encode_ordinary_into(text, &mut counted)?;
        let rendered = before + counted.n;
        self.rendered.set(rendered);
        if rendered > limit {
            return Err(RenderError::TooManyTokens {
                at_least: rendered,
                limit,
            });
        }
        Ok(())
    }

    /// Renders one message. `has_function_tools` adds the functions-to-commentary line to a
    /// system message (the conversation declares function tools).
    pub fn render_message_into<B: Extend<u32>>(
        &self,
        message: &Message,
        has_function_tools: bool,
        into: &mut B,
    ) -> Result<(), RenderError> {
        self.render_message_at(message, 0, has_function_tools, into)
    }

    fn render_message_at<B: Extend<u32>>(
        &self,
        message: &Message,
        index: usize,
        has_function_tools: bool,
        into: &mut B,
    ) -> Result<(), RenderError> {
        into.extend([tokens::START]);
        if message.role == Role::Tool {
            match &message.name {
                Some(name) => self.text(name, into)?,
                None => return Err(RenderError::ToolWithoutName { index }),
            }
        } else {
            match &message.name {
                Some(name) => {
                    self.text(message.role.as_str(), into)?;
                    self.text(&format!(":{name}"), into)?;
                }
                None => self.text(message.role.as_str(), into)?,
            }
        }
        if let Some(recipient) = &message.recipient {
            if recipient != "all" {
                self.text(&format!(" to={recipient}"), into)?;
            }
        }
        if let Some(channel) = &message.channel {
            into.extend([tokens::CHANNEL]);
            self.text(channel, into)?;
        }
        if let Some(content_type) = &message.content_type {
            match content_type.strip_prefix("<|constrain|>") {
                Some(rest) => {
                    self.text(" ", into)?;
                    into.extend([tokens::CONSTRAIN]);
                    self.text(rest, into)?;
                }
                None => self.text(&format!(" {content_type}"), into)?,
            }
        }
        into.extend([tokens::MESSAGE]);
        for content in &message.content {
            match content {
                Content::Text(t) => self.text(t, into)?,
                Content::System(sys) => {
                    self.text(&system_text(sys, has_function_tools), into)?;
                }
                Content::Developer(dev) => self.text(&developer_text(dev), into)?,
            }
        }
        if message.role == Role::Assistant && message.recipient.is_some() {
            into.extend([tokens::CALL]);
        } else {
            into.extend([tokens::END]);
        }
        Ok(())
    }

    /// Renders a conversation (no trailing `<|start|>`).
    pub fn render_conversation_into<B: Extend<u32>>(
        &self,
        messages: &[Message],
        config: ConversationConfig,
        into: &mut B,
    ) -> Result<(), RenderError> {
        let has_function_tools = messages.iter().any(|m| {
            m.content
                .iter()
                .any(|c| matches!(c, Content::Developer(d) if d.has_function_tools()))
        });
        let cutoff = analysis_cutoff(messages);
        for (i, m) in messages.iter().enumerate() {
            let dropped = config.auto_drop_analysis
                && cutoff.is_some_and(|c| i < c)
                && m.role == Role::Assistant
                && m.channel.as_deref() == Some("analysis");
            if !dropped {
                self.render_message_at(m, i, has_function_tools, into)?;
            }
        }
        Ok(())
    }

    /// Renders a conversation followed by `<|start|>{next_role}`, ready for sampling.
    pub fn render_for_completion_into<B: Extend<u32>>(
        &self,
        messages: &[Message],
        next_role: Role,
        config: ConversationConfig,
        into: &mut B,
    ) -> Result<(), RenderError> {
        self.render_conversation_into(messages, config, into)?;
        into.extend([tokens::START]);
        self.text(next_role.as_str(), into)
    }

    /// [`Renderer::render_for_completion_into`] into a new `Vec`.
    pub fn render_for_completion(
        &self,
        messages: &[Message],
        next_role: Role,
        config: ConversationConfig,
    ) -> Result<Vec<u32>, RenderError> {
        let mut out = Vec::new();
        self.render_for_completion_into(messages, next_role, config, &mut out)?;
        Ok(out)
    }

    /// Renders an OpenAI chat request into the prompt for the assistant's next turn (ends with
    /// `<|start|>assistant`).
    pub fn render_request_into<B: Extend<u32>>(
        &self,
        request: &openai_types::ChatCompletionRequest,
        options: &RequestOptions,
        into: &mut B,
    ) -> Result<(), RenderError> {
        let messages = conversation_from_request(request, options)?;
        self.render_for_completion_into(
            &messages,
            Role::Assistant,
            ConversationConfig::default(),
            into,
        )
    }

    /// [`Renderer::render_request_into`] into a new `Vec`.
    pub fn render_request(
        &self,
        request: &openai_types::ChatCompletionRequest,
        options: &RequestOptions,
    ) -> Result<Vec<u32>, RenderError> {
        let mut out = Vec::new();
        self.render_request_into(request, options, &mut out)?;
        Ok(out)
    }
}

/// An `Extend<u32>` that counts what passes through it.
struct Counting<'a, B> {
    into: &'a mut B,
    n: usize,
}

impl<B: Extend<u32>> Extend<u32> for Counting<'_, B> {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, iter: I) {
        let n = &mut self.n;
        self.into.extend(iter.into_iter().inspect(|_| *n += 1));
    }
}

/// The harmony guide's rule for earlier chain of thought: once a turn ended in a `final`
/// message and the conversation went on, that turn's analysis (and every earlier one) is
/// dropped; only the turn whose tool calls are still open keeps it. Analysis messages before
/// the returned index are dropped: the last `final` message when messages follow it, else the
/// one before it (a conversation ending in a `final` message keeps that turn's analysis, as
/// the reference does).
fn analysis_cutoff(messages: &[Message]) -> Option<usize> {
    let is_final = |m: &Message| m.role == Role::Assistant && m.channel.as_deref() == Some("final");
    let mut finals = messages
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, m)| is_final(m))
        .map(|(i, _)| i);
    match finals.next() {
        Some(last) if last + 1 < messages.len() => Some(last),
        Some(_) => finals.next(),
        None => None,
    }
}

/// The text of a system message, as the reference writes it.
pub fn system_text(sys: &SystemContent, has_function_tools: bool) -> String {
    let mut sections: Vec<String> = Vec::new();
    let mut top: Vec<String> = Vec::new();
    if let Some(id) = &sys.model_identity {
        top.push(id.clone());
    }
    if let Some(cutoff) = &sys.knowledge_cutoff {
        top.push(format!("Knowledge cutoff: {cutoff}"));
    }
    if let Some(date) = &sys.conversation_start_date {
        top.push(format!("Current date: {date}"));
    }
    if !top.is_empty() {
        sections.push(top.join("\n"));
    }
    if let Some(effort) = sys.reasoning_effort {
        sections.push(format!("Reasoning: {}", effort.as_str()));
    }
    if !sys.tools.is_empty() {
        sections.push(tools_section(&sys.tools));
    }
    if let Some(cc) = &sys.channel_config {
        if !cc.valid_channels.is_empty() {
            let mut line = format!("# Valid channels: {}.", cc.valid_channels.join(", "));
            if cc.channel_required {
                line.push_str(" Channel must be included for every message.");
            }
            if has_function_tools {
                line.push_str(
                    "\nCalls to these tools must go to the commentary channel: 'functions'.",
                );
            }
            sections.push(line);
        }
    }
    sections.join("\n\n")
}

/// The text of a developer message, as the reference writes it (plus response formats, which
/// the reference's Rust renderer lacks; they follow its documented layout).
pub fn developer_text(dev: &DeveloperContent) -> String {
    let mut sections: Vec<String> = Vec::new();
    if let Some(instr) = &dev.instructions {
        sections.push("# Instructions".to_string());
        sections.push(instr.clone());
    }
    if !dev.tools.is_empty() {
        sections.push(tools_section(&dev.tools));
    }
    if !dev.response_formats.is_empty() {
        let mut s = String::from("# Response Formats");
        for f in &dev.response_formats {
            let _ = write!(s, "\n\n## {}\n\n", f.name);
            if let Some(desc) = &f.description {
                let _ = writeln!(s, "// {desc}");
            }
            s.push_str(&f.schema);
        }
        sections.push(s);
    }
    sections.join("\n\n")
}

/// `# Tools` with one `## namespace` section per namespace.
fn tools_section(namespaces: &[ToolNamespace]) -> String {
    let mut sections = vec!["# Tools".to_string()];
    for ns in namespaces {
        let mut lines: Vec<String> = vec![format!("## {}\n", ns.name)];
        if let Some(desc) = &ns.description {
            for line in desc.lines() {
                if ns.tools.is_empty() {
                    lines.push(line.to_string());
                } else {
                    lines.push(format!("// {line}"));
                }
            }
        }
        if !ns.tools.is_empty() {
            lines.push(format!("namespace {} {{\n", ns.name));
            for tool in &ns.tools {
                for line in tool.description.lines() {
                    lines.push(format!("// {line}"));
                }
                match &tool.parameters {
                    Some(params) => lines.push(format!(
                        "type {} = (_: {}) => any;\n",
                        tool.name,
                        json_schema_to_typescript(params, "")
                    )),
                    None => lines.push(format!("type {} = () => any;\n", tool.name)),
                }
            }
            lines.push(format!("}} // namespace {}", ns.name));
        }
        sections.push(lines.join("\n"));
    }
    sections.join("\n\n")
}
