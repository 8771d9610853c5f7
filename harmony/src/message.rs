//! Harmony conversations: messages with an author, an optional recipient, channel and content
//! type, and the structured contents of the system and developer messages.
//!
//! These mirror `openai-harmony`'s `chat` module, so that a conversation built here renders to
//! the same tokens as the same conversation built there.

use serde::Serialize;

/// The author role of a harmony message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    #[default]
    Assistant,
    System,
    Developer,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Developer => "developer",
            Role::Tool => "tool",
        }
    }

    /// Parses a role word as it appears in a header.
    pub fn parse(word: &str) -> Option<Role> {
        Some(match word {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            "developer" => Role::Developer,
            "tool" => Role::Tool,
            _ => return None,
        })
    }
}

/// `Reasoning: low | medium | high` in the system message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    Low,
    #[default]
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
}

impl From<openai_types::ReasoningEffort> for ReasoningEffort {
    fn from(e: openai_types::ReasoningEffort) -> Self {
        match e {
            openai_types::ReasoningEffort::Low => ReasoningEffort::Low,
            openai_types::ReasoningEffort::Medium => ReasoningEffort::Medium,
            openai_types::ReasoningEffort::High => ReasoningEffort::High,
        }
    }
}

/// The identity line the reference puts first in the system message.
pub const DEFAULT_MODEL_IDENTITY: &str =
    "You are ChatGPT, a large language model trained by OpenAI.";
/// The knowledge cutoff of gpt-oss.
pub const DEFAULT_KNOWLEDGE_CUTOFF: &str = "2024-06";

/// A message of a harmony conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    /// Author name: for tool messages the tool (`functions.get_weather`), else rendered as
    /// `role:name`.
    pub name: Option<String>,
    /// `to=...` in the header; `None` (or `all`) renders nothing.
    pub recipient: Option<String>,
    pub channel: Option<String>,
    /// Content type (`json`, `<|constrain|>json`).
    pub content_type: Option<String>,
    pub content: Vec<Content>,
}

impl Message {
    /// A message with one piece of content.
    pub fn new(role: Role, content: impl Into<Content>) -> Message {
        Message {
            role,
            name: None,
            recipient: None,
            channel: None,
            content_type: None,
            content: vec![content.into()],
        }
    }

    /// A tool's answer: `<|start|>{name} to=assistant<|channel|>commentary<|message|>...`.
    pub fn tool_result(name: impl Into<String>, text: impl Into<String>) -> Message {
        Message::new(Role::Tool, text.into())
            .with_name(name)
            .with_recipient("assistant")
            .with_channel("commentary")
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    pub fn with_recipient(mut self, recipient: impl Into<String>) -> Self {
        self.recipient = Some(recipient.into());
        self
    }
    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The concatenated text content (system and developer contents are skipped).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.content {
            if let Content::Text(t) = c {
                out.push_str(t);
            }
        }
        out
    }
}

/// A piece of message content.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Text(String),
    System(SystemContent),
    Developer(DeveloperContent),
}

impl From<String> for Content {
    fn from(s: String) -> Self {
        Content::Text(s)
    }
}
impl From<&str> for Content {
    fn from(s: &str) -> Self {
        Content::Text(s.to_string())
    }
}
impl From<SystemContent> for Content {
    fn from(s: SystemContent) -> Self {
        Content::System(s)
    }
}
impl From<DeveloperContent> for Content {
    fn from(d: DeveloperContent) -> Self {
        Content::Developer(d)
    }
}

/// The channels the system message declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    pub valid_channels: Vec<String>,
    pub channel_required: bool,
}

impl ChannelConfig {
    /// `# Valid channels: a, b, c. Channel must be included for every message.`
    pub fn require(channels: &[&str]) -> ChannelConfig {
        ChannelConfig {
            valid_channels: channels.iter().map(|c| c.to_string()).collect(),
            channel_required: true,
        }
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig::require(&["analysis", "commentary", "final"])
    }
}

/// The system message: identity, knowledge cutoff, date, reasoning effort, built-in tools,
/// channels.
#[derive(Clone, Debug, PartialEq)]
pub struct SystemContent {
    pub model_identity: Option<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Built-in tool namespaces (`browser`, `python`), rendered in the system message.
    pub tools: Vec<ToolNamespace>,
    pub conversation_start_date: Option<String>,
    pub knowledge_cutoff: Option<String>,
    pub channel_config: Option<ChannelConfig>,
}

impl Default for SystemContent {
    fn default() -> Self {
        SystemContent {
            model_identity: Some(DEFAULT_MODEL_IDENTITY.to_string()),
            reasoning_effort: Some(ReasoningEffort::Medium),
            tools: Vec::new(),
            conversation_start_date: None,
            knowledge_cutoff: Some(DEFAULT_KNOWLEDGE_CUTOFF.to_string()),
            channel_config: Some(ChannelConfig::default()),
        }
    }
}

impl SystemContent {
    pub fn with_model_identity(mut self, identity: impl Into<String>) -> Self {
        self.model_identity = Some(identity.into());
        self
    }
    pub fn with_reasoning_effort(mut self, effort: ReasoningEffort) -> Self {
        self.reasoning_effort = Some(effort);
        self
    }
    pub fn with_conversation_start_date(mut self, date: impl Into<String>) -> Self {
        self.conversation_start_date = Some(date.into());
        self
    }
    pub fn with_knowledge_cutoff(mut self, cutoff: impl Into<String>) -> Self {
        self.knowledge_cutoff = Some(cutoff.into());
        self
    }
    pub fn with_channel_config(mut self, config: Option<ChannelConfig>) -> Self {
        self.channel_config = config;
        self
    }
    /// Adds (or replaces, by name) a tool namespace; namespaces render sorted by name.
    pub fn with_tools(mut self, ns: ToolNamespace) -> Self {
        insert_namespace(&mut self.tools, ns);
        self
    }
}

/// The developer message: `# Instructions`, the function tools and response formats.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DeveloperContent {
    pub instructions: Option<String>,
    pub tools: Vec<ToolNamespace>,
    /// `# Response Formats` (structured output), after the tools. Not in the reference's Rust
    /// type; rendered in its documented layout. Empty renders nothing.
    pub response_formats: Vec<ResponseFormatSpec>,
}

/// One structured-output format: `## {name}\n\n// {description}\n{schema}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFormatSpec {
    pub name: String,
    pub description: Option<String>,
    /// The JSON Schema, as JSON text.
    pub schema: String,
}

impl DeveloperContent {
    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = Some(instructions.into());
        self
    }
    pub fn with_tools(mut self, ns: ToolNamespace) -> Self {
        insert_namespace(&mut self.tools, ns);
        self
    }
    /// Adds the `functions` namespace.
    pub fn with_function_tools(self, tools: Vec<ToolDescription>) -> Self {
        self.with_tools(ToolNamespace {
            name: "functions".to_string(),
            description: None,
            tools,
        })
    }

    /// Does this content declare at least one function tool (in `functions` or in another
    /// namespace of the developer message)?
    pub fn has_function_tools(&self) -> bool {
        self.tools.iter().any(|ns| !ns.tools.is_empty())
    }
}

/// Namespaces are kept sorted by name (the reference keeps them in a `BTreeMap`).
fn insert_namespace(list: &mut Vec<ToolNamespace>, ns: ToolNamespace) {
    match list.binary_search_by(|x| x.name.as_str().cmp(&ns.name)) {
        Ok(i) => list[i] = ns,
        Err(i) => list.insert(i, ns),
    }
}

/// A namespace of tools (`functions`, `browser`, `python`).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolNamespace {
    pub name: String,
    pub description: Option<String>,
    pub tools: Vec<ToolDescription>,
}

/// One tool: name, description and JSON Schema parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDescription {
    pub name: String,
    pub description: String,
    pub parameters: Option<serde_json::Value>,
}

impl ToolDescription {
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Option<serde_json::Value>,
    ) -> ToolDescription {
        ToolDescription {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}

impl ToolNamespace {
    pub fn new(
        name: impl Into<String>,
        description: Option<String>,
        tools: Vec<ToolDescription>,
    ) -> ToolNamespace {
        ToolNamespace {
            name: name.into(),
            description,
            tools,
        }
    }

    /// The reference's built-in `browser` namespace (system message).
    pub fn browser() -> Self {
        ToolNamespace::new(
            "browser",
            Some("Tool for browsing.\nThe `cursor` appears in brackets before each browsing display: `[{cursor}]`.\nCite information from the tool using the following format:\n`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\nDo not quote more than 10 words directly from the tool output.\nsources=web (default: web)".to_string()),
            vec![
                ToolDescription::new(
                    "search",
                    "Searches for information related to `query` and displays `topn` results.",
                    Some(serde_json::json!({
                        "type": "object",
                        "properties": {
                            "query": {"type": "string"},
                            "topn": {"type": "number", "default": 10},
                            "source": {"type": "string"}
                        },
                        "required": ["query"]
                    })),
                ),
                ToolDescription::new(
                    "open",
                    "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, showing `num_lines` lines.\nValid link ids are displayed with the formatting: `【{id}†.*】`.\nIf `cursor` is not provided, the most recent page is implied.\nIf `id` is a string, it is treated as a fully qualified URL associated with `source`.\nIf `loc` is not provided, the viewport will be positioned at the beginning of the document or centered on the most relevant passage, if available.\nUse this function without `id` to scroll to a new location of an opened page.",
                    Some(serde_json::json!({
                        "type": "object",
                        "properties": {
                            "id": {
                                "type": ["number", "string"],
                                "default": -1
                            },
                            "cursor": {"type": "number", "default": -1},
                            "loc": {"type": "number", "default": -1},
                            "num_lines": {"type": "number", "default": -1},
                            "view_source": {"type": "boolean", "default": false},
                            "source": {"type": "string"}
                        }
                    })),
                ),
                ToolDescription::new(
                    "find",
                    "Finds exact matches of `pattern` in the current page, or the page given by `cursor`.",
                    Some(serde_json::json!({
                        "type": "object",
                        "properties": {
                            "pattern": {"type": "string"},
                            "cursor": {"type": "number", "default": -1}
                        },
                        "required": ["pattern"]
                    })),
                ),
            ],
        )
    }

    /// The reference's built-in `python` namespace (system message).
    pub fn python() -> Self {
        ToolNamespace::new(
            "python",
            Some("Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. This tool should be used for internal reasoning, but not for code that is intended to be visible to the user (e.g. when creating plots, tables, or files).\n\nWhen you send a message containing Python code to python, it will be executed in a stateful Jupyter notebook environment. python will respond with the output of the execution or time out after 120.0 seconds. The drive at '/mnt/data' can be used to save and persist user files. Internet access for this session is UNKNOWN. Depends on the cluster.".to_string()),
            vec![],
        )
    }
}
