//! OpenAI chat request -> harmony conversation.

use std::collections::HashMap;

use openai_types::{ChatCompletionRequest, ChatMessage, MessageContent, ResponseFormat};

use crate::message::{
    DeveloperContent, Message, ReasoningEffort, ResponseFormatSpec, Role, SystemContent,
    ToolDescription, ToolNamespace, DEFAULT_KNOWLEDGE_CUTOFF, DEFAULT_MODEL_IDENTITY,
};
use crate::render::RenderError;

/// What the request does not say: the caller's settings for the system message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestOptions {
    /// The identity line (default: the reference's).
    pub model_identity: String,
    /// `Knowledge cutoff: ...` (default `2024-06`).
    pub knowledge_cutoff: Option<String>,
    /// `Current date: ...` (an ISO date such as `2025-06-28`); the library never reads the
    /// clock, the caller passes it.
    pub conversation_start_date: Option<String>,
    /// Effort when the request has no `reasoning_effort` (default medium).
    pub default_reasoning_effort: ReasoningEffort,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            model_identity: DEFAULT_MODEL_IDENTITY.to_string(),
            knowledge_cutoff: Some(DEFAULT_KNOWLEDGE_CUTOFF.to_string()),
            conversation_start_date: None,
            default_reasoning_effort: ReasoningEffort::Medium,
        }
    }
}

/// The harmony recipient of a call to function `name`: `functions.NAME` for a plain name,
/// and the name itself for a dotted one (`crm.lookup`: function `lookup` of the tool namespace
/// `crm`, which the developer message declares as `namespace crm { ... }`).
pub fn tool_recipient(name: &str) -> String {
    if name.contains('.') {
        name.to_string()
    } else {
        format!("functions.{name}")
    }
}

fn invalid(message: impl Into<String>, param: impl Into<String>) -> RenderError {
    RenderError::InvalidRequest {
        message: message.into(),
        param: param.into(),
    }
}

/// The text of a message's content (`None` content is empty); non-text parts are an error
/// naming `messages[i].content`.
fn content_text(m: &ChatMessage, i: usize) -> Result<String, RenderError> {
    match &m.content {
        None => Ok(String::new()),
        Some(c) => c.as_text().ok_or_else(|| {
            invalid(
                format!("messages[{i}].content: only text content parts are supported"),
                format!("messages[{i}].content"),
            )
        }),
    }
}

/// The developer instructions of a request: its system and developer messages, joined by a
/// blank line, in order. `None` when there are none.
pub fn developer_instructions(request: &ChatCompletionRequest) -> Option<String> {
    let texts: Vec<String> = request
        .messages
        .iter()
        .filter(|m| {
            matches!(
                m.role,
                openai_types::Role::System | openai_types::Role::Developer
            )
        })
        .filter_map(|m| m.content.as_ref().and_then(MessageContent::as_text))
        .filter(|t| !t.is_empty())
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n\n"))
}

/// Builds the harmony conversation for a request: the system message, the developer message
/// (instructions from the request's system and developer messages, function tools, response
/// format), then the turns. Assistant turns give back their reasoning (analysis), their
/// content (final, or commentary when it precedes tool calls) and their tool calls
/// (commentary to `functions.NAME`, `<|constrain|>json`); tool messages are attributed to the
/// function named by the call their `tool_call_id` answers.
pub fn conversation_from_request(
    request: &ChatCompletionRequest,
    options: &RequestOptions,
) -> Result<Vec<Message>, RenderError> {
    let effort = request
        .reasoning_effort
        .map(ReasoningEffort::from)
        .unwrap_or(options.default_reasoning_effort);
    let mut system = SystemContent::default()
        .with_model_identity(options.model_identity.clone())
        .with_reasoning_effort(effort);
    system.knowledge_cutoff = options.knowledge_cutoff.clone();
    system.conversation_start_date = options.conversation_start_date.clone();

    let mut out = vec![Message::new(Role::System, system)];

    let mut dev = DeveloperContent {
        instructions: developer_instructions(request),
        ..DeveloperContent::default()
    };
    if let Some(tools) = &request.tools {
        // Plain names go into `namespace functions`; `ns.name` into `namespace ns`.
        let mut namespaces: Vec<(String, Vec<ToolDescription>)> = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if t.kind != "function" {
                return Err(invalid(
                    format!("tools[{i}].type: only `function` tools are supported"),
                    format!("tools[{i}].type"),
                ));
            }
            let (ns, name) = t
                .function
                .name
                .split_once('.')
                .unwrap_or(("functions", t.function.name.as_str()));
            let desc = ToolDescription::new(
                name.to_string(),
                t.function.description.clone().unwrap_or_default(),
                t.function.parameters.clone(),
            );
            match namespaces.iter_mut().find(|(n, _)| n == ns) {
                Some((_, list)) => list.push(desc),
                None => namespaces.push((ns.to_string(), vec![desc])),
            }
        }
        for (name, descs) in namespaces {
            dev = dev.with_tools(ToolNamespace::new(name, None, descs));
        }
    }
    match &request.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema
                .schema
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "{\"type\":\"object\"}".to_string());
            dev.response_formats.push(ResponseFormatSpec {
                name: json_schema.name.clone(),
                description: json_schema.description.clone(),
                schema,
            });
        }
        Some(ResponseFormat::JsonObject) => dev.response_formats.push(ResponseFormatSpec {
            name: "json_object".to_string(),
            description: Some("Respond with a single JSON object.".to_string()),
            schema: "{\"type\":\"object\"}".to_string(),
        }),
        Some(ResponseFormat::Text) | None => {}
    }
    if dev.instructions.is_some() || !dev.tools.is_empty() || !dev.response_formats.is_empty() {
        out.push(Message::new(Role::Developer, dev));
    }

    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in request.messages.iter().enumerate() {
        match m.role {
            openai_types::Role::System | openai_types::Role::Developer => {
                // Non-text content is reported here; the text went into the instructions.
                content_text(m, i)?;
            }
            openai_types::Role::User => {
                out.push(Message::new(Role::User, content_text(m, i)?));
            }
            openai_types::Role::Assistant => {
                if let Some(reasoning) = m.reasoning_text() {
                    if !reasoning.is_empty() {
                        out.push(Message::new(Role::Assistant, reasoning).with_channel("analysis"));
                    }
                }
                let calls = m.tool_calls.as_deref().unwrap_or(&[]);
                let text = content_text(m, i)?;
                if !text.is_empty() {
                    let channel = if calls.is_empty() {
                        "final"
                    } else {
                        "commentary"
                    };
                    out.push(Message::new(Role::Assistant, text).with_channel(channel));
                }
                for call in calls {
                    call_names.insert(call.id.as_str(), call.function.name.as_str());
                    out.push(
                        Message::new(Role::Assistant, call.function.arguments.clone())
                            .with_channel("commentary")
                            .with_recipient(tool_recipient(&call.function.name))
                            .with_content_type("<|constrain|>json"),
                    );
                }
            }
            openai_types::Role::Tool => {
                let by_id = m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| call_names.get(id).copied());
                let name = match (by_id, m.name.as_deref()) {
                    (Some(n), _) => n,
                    (None, Some(n)) => n,
                    (None, None) => {
                        return Err(invalid(
                            format!(
                                "messages[{i}].tool_call_id: no earlier assistant tool call has id {:?}",
                                m.tool_call_id.as_deref().unwrap_or("")
                            ),
                            format!("messages[{i}].tool_call_id"),
                        ))
                    }
                };
                out.push(Message::tool_result(
                    tool_recipient(name),
                    content_text(m, i)?,
                ));
            }
        }
    }
    Ok(out)
}
