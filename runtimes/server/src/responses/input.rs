//! A Responses request, validated: its input items read from JSON (naming the offending
//! field), its tools sorted into what the model is offered and what is only accepted, and the
//! conversation turned into the chat request that the harmony renderer takes.

use openai_types::{
    ChatCompletionRequest, ChatMessage, FunctionCall, FunctionCallItem, FunctionCallOutputItem,
    FunctionDefinition, Item, ItemContent, MessageItem, NamedFunction, NamedToolChoice,
    ReasoningConfig, ReasoningItem, ReasoningText, ResponseFormat, ResponsesRequest, Role,
    TextConfig, TextFormat, Tool, ToolCall, ToolChoice, ToolChoiceMode,
};
use serde_json::{Map, Value};

use super::seal::Sealer;
use crate::error::ApiError;
use crate::validate::{self, ValidChat};

/// Hosted tools of OpenAI's platform that this server cannot run: accepted in `tools` (clients
/// such as Codex CLI send them by default) and not offered to the model.
pub const HOSTED_TOOLS: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "web_search_2025_08_26",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "computer",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "custom",
    "tool_search",
];

/// `include` values OpenAI defines; only `reasoning.encrypted_content` changes the output here.
const KNOWN_INCLUDES: &[&str] = &[
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "code_interpreter_call.outputs",
];

/// Request fields OpenAI defines that change nothing here when given with these values (or any
/// value, for those mapped to `None`).
const ACCEPTED_FIELDS: &[(&str, Option<&str>)] = &[
    ("service_tier", None),
    ("safety_identifier", None),
    ("client_metadata", None),
    ("stream_options", None),
    ("prompt_cache_retention", None),
    ("max_tool_calls", None),
    ("top_logprobs", Some("0")),
    ("background", Some("false")),
];

/// A Responses request after validation, before its conversation is joined to the one it
/// continues.
#[derive(Debug, Clone)]
pub struct ValidResponses {
    /// The request's input as items, with the ids the server gave those that had none.
    pub input_items: Vec<Item>,
    pub instructions: Option<String>,
    /// `tools` as given (echoed in the response).
    pub tools: Vec<Value>,
    /// The function tools offered to the model, as chat tools.
    pub functions: Vec<Tool>,
    pub tool_choice: Value,
    pub chat_tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: bool,
    pub reasoning: ReasoningConfig,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub text: TextConfig,
    pub metadata: Map<String, Value>,
    pub user: Option<String>,
    pub prompt_cache_key: Option<String>,
    /// `auto`: drop the oldest items when the conversation does not fit.
    pub truncation_auto: bool,
    pub store: bool,
    pub stream: bool,
    /// `include` asked for `reasoning.encrypted_content`.
    pub include_encrypted: bool,
    pub previous_response_id: Option<String>,
}

fn field(param: impl Into<String>, what: impl std::fmt::Display) -> ApiError {
    ApiError::field(param, what)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Validates `req` against the served model; `sealer` opens `encrypted_content` of reasoning
/// items. Errors name the field (`input[2].call_id`, `tools[0].type`, ...).
pub fn validate(
    mut req: ResponsesRequest,
    served: &str,
    sealer: &Sealer,
) -> Result<ValidResponses, ApiError> {
    validate::check_model(req.model.as_deref(), served)?;
    for (key, value) in std::mem::take(&mut req.extra) {
        match ACCEPTED_FIELDS.iter().find(|(k, _)| *k == key) {
            Some((_, None)) => {}
            Some((_, Some(want))) => {
                if !value.is_null() && value.to_string() != *want {
                    return Err(field(
                        key.clone(),
                        format!("is not supported by this server (only {want})"),
                    ));
                }
            }
            None => {
                let supported_elsewhere = matches!(
                    key.as_str(),
                    "prompt" | "conversation" | "context_management"
                );
                if supported_elsewhere && !value.is_null() {
                    return Err(field(key.clone(), "is not supported by this server"));
                }
                if !supported_elsewhere {
                    return Err(ApiError::UnknownParameter(key));
                }
            }
        }
    }
    let input_items = match req.input.take() {
        None => Vec::new(),
        Some(Value::String(s)) => vec![Item::Message(MessageItem {
            id: Some(new_id("msg")),
            role: "user".to_string(),
            content: vec![ItemContent::InputText { text: s }],
            status: None,
            phase: None,
        })],
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| input_item(v, i, sealer))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(field("input", "must be a string or a list of items")),
    };
    if input_items.is_empty() && req.previous_response_id.is_none() {
        return Err(field("input", "must not be empty"));
    }
    let tools = req.tools.take().unwrap_or_default();
    let functions = function_tools(&tools)?;
    let tool_choice_given = req.tool_choice.take();
    let chat_tool_choice = tool_choice(tool_choice_given.as_ref(), &functions)?;
    let include = req.include.take().unwrap_or_default();
    for (i, inc) in include.iter().enumerate() {
        if !KNOWN_INCLUDES.contains(&inc.as_str()) {
            return Err(field(
                format!("include[{i}]"),
                format!("`{inc}` is not a value OpenAI defines"),
            ));
        }
    }
    let metadata = metadata(req.metadata.take())?;
    let truncation_auto = match req.truncation.as_deref() {
        None | Some("disabled") => false,
        Some("auto") => true,
        Some(other) => {
            return Err(field(
                "truncation",
                format!("must be `auto` or `disabled`, got `{other}`"),
            ))
        }
    };
    if let Some(id) = &req.previous_response_id {
        if id.is_empty() {
            return Err(field("previous_response_id", "must not be empty"));
        }
    }
    Ok(ValidResponses {
        input_items,
        instructions: req.instructions.take().filter(|s| !s.is_empty()),
        tools,
        functions,
        tool_choice: tool_choice_given.unwrap_or_else(|| Value::from("auto")),
        chat_tool_choice,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        reasoning: req.reasoning.take().unwrap_or_default(),
        max_output_tokens: req.max_output_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        text: req.text.take().unwrap_or_default(),
        metadata,
        user: req.user.take(),
        prompt_cache_key: req.prompt_cache_key.take(),
        truncation_auto,
        store: req.store.unwrap_or(true),
        stream: req.stream.unwrap_or(false),
        include_encrypted: include.iter().any(|i| i == "reasoning.encrypted_content"),
        previous_response_id: req.previous_response_id.take(),
    })
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(field(format!("{at}.{key}"), "must be a string")),
        None => Err(field(format!("{at}.{key}"), "is required")),
    }
}

/// One `input` item from JSON.
fn input_item(v: Value, i: usize, sealer: &Sealer) -> Result<Item, ApiError> {
    let at = format!("input[{i}]");
    let Value::Object(obj) = v else {
        return Err(field(at, "must be an object (an item)"));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(field(format!("{at}.type"), "must be a string")),
        // The SDKs' "easy input message": `{"role": ..., "content": ...}`.
        None if obj.contains_key("role") => "message",
        None => return Err(field(format!("{at}.type"), "is required")),
    };
    let id = obj.get("id").and_then(Value::as_str).map(str::to_string);
    match kind {
        "message" => {
            let role = str_field(&obj, "role", &at)?;
            if !matches!(role, "user" | "system" | "developer" | "assistant") {
                return Err(field(
                    format!("{at}.role"),
                    format!("must be `user`, `system`, `developer` or `assistant`, got `{role}`"),
                ));
            }
            let content = match obj.get("content") {
                Some(Value::String(s)) => vec![if role == "assistant" {
                    ItemContent::output_text(s.clone())
                } else {
                    ItemContent::InputText { text: s.clone() }
                }],
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| content_part(p, &format!("{at}.content[{j}]")))
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(field(
                        format!("{at}.content"),
                        "must be a string or a list of content parts",
                    ))
                }
                None => return Err(field(format!("{at}.content"), "is required")),
            };
            Ok(Item::Message(MessageItem {
                id: Some(id.unwrap_or_else(|| new_id("msg"))),
                role: role.to_string(),
                content,
                status: obj
                    .get("status")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                phase: obj.get("phase").and_then(Value::as_str).map(str::to_string),
            }))
        }
        "function_call" => {
            let call_id = str_field(&obj, "call_id", &at)?;
            if call_id.is_empty() {
                return Err(field(format!("{at}.call_id"), "must not be empty"));
            }
            Ok(Item::FunctionCall(FunctionCallItem {
                id: Some(id.unwrap_or_else(|| new_id("fc"))),
                call_id: call_id.to_string(),
                name: str_field(&obj, "name", &at)?.to_string(),
                arguments: str_field(&obj, "arguments", &at)?.to_string(),
                namespace: obj
                    .get("namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                status: Some("completed".to_string()),
            }))
        }
        "function_call_output" => {
            let call_id = str_field(&obj, "call_id", &at)?;
            let output = match obj.get("output") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    for (j, p) in parts.iter().enumerate() {
                        content_part(p, &format!("{at}.output[{j}]"))?;
                    }
                    Value::Array(parts.clone())
                }
                Some(_) => {
                    return Err(field(
                        format!("{at}.output"),
                        "must be a string or a list of content parts",
                    ))
                }
                None => return Err(field(format!("{at}.output"), "is required")),
            };
            Ok(Item::FunctionCallOutput(FunctionCallOutputItem {
                id: Some(id.unwrap_or_else(|| new_id("fco"))),
                call_id: call_id.to_string(),
                output,
                status: Some("completed".to_string()),
            }))
        }
        "reasoning" => {
            let item: ReasoningItem = serde_json::from_value(Value::Object(obj.clone()))
                .map_err(|e| field(at.clone(), format!("is not a reasoning item: {e}")))?;
            let has_text = item
                .content
                .as_ref()
                .is_some_and(|c| c.iter().any(|t| !t.text.is_empty()));
            let mut item = item;
            if !has_text {
                if let Some(sealed) = &item.encrypted_content {
                    let text = sealer.open(sealed).ok_or_else(|| {
                        field(
                            format!("{at}.encrypted_content"),
                            "could not be verified: it was not made by this server (or its \
                             key changed), or it was altered",
                        )
                    })?;
                    item.content = Some(vec![ReasoningText::new(text)]);
                }
            }
            // Kept in plain text: the store is the server's own.
            item.encrypted_content = None;
            item.id = Some(id.unwrap_or_else(|| new_id("rs")));
            Ok(Item::Reasoning(item))
        }
        "item_reference" => Err(field(
            format!("{at}.type"),
            "item references are not supported; send the item itself, or continue with \
             `previous_response_id`",
        )),
        other => Err(field(
            format!("{at}.type"),
            format!(
                "unknown item type `{other}`; this server takes `message`, `function_call`, \
                 `function_call_output` and `reasoning` items"
            ),
        )),
    }
}

/// A text content part (`input_text`, `output_text`, `refusal`); others are refused: this
/// model reads text only.
fn content_part(p: &Value, at: &str) -> Result<ItemContent, ApiError> {
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "input_text" | "output_text" | "text" | "refusal" => {
            let key = if kind == "refusal" { "refusal" } else { "text" };
            let text = p
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| field(format!("{at}.{key}"), "must be a string"))?
                .to_string();
            Ok(match kind {
                "output_text" => ItemContent::output_text(text),
                "refusal" => ItemContent::Refusal { refusal: text },
                _ => ItemContent::InputText { text },
            })
        }
        "" => Err(field(format!("{at}.type"), "is required")),
        other => Err(field(
            format!("{at}.type"),
            format!(
                "content parts of type `{other}` are not supported; this model reads text only"
            ),
        )),
    }
}

/// The function tools of `tools`, as chat tools; hosted tools are skipped, unknown kinds refused.
fn function_tools(tools: &[Value]) -> Result<Vec<Tool>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let kind = t
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| field(format!("{at}.type"), "is required"))?;
        match kind {
            "function" => out.push(function_tool(t, &at, None)?),
            "namespace" => {
                let ns = t
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| field(format!("{at}.name"), "is required"))?;
                let inner = t
                    .get("tools")
                    .and_then(Value::as_array)
                    .ok_or_else(|| field(format!("{at}.tools"), "must be a list of tools"))?;
                for (j, f) in inner.iter().enumerate() {
                    let inner_at = format!("{at}.tools[{j}]");
                    match f.get("type").and_then(Value::as_str) {
                        Some("function") => out.push(function_tool(f, &inner_at, Some(ns))?),
                        // Free-form tools inside a namespace: accepted, not offered.
                        Some("custom") => {}
                        _ => {
                            return Err(field(
                                format!("{inner_at}.type"),
                                "must be `function` or `custom`",
                            ))
                        }
                    }
                }
            }
            k if HOSTED_TOOLS.contains(&k) => {}
            other => {
                return Err(field(
                    format!("{at}.type"),
                    format!("unknown tool type `{other}`"),
                ))
            }
        }
    }
    Ok(out)
}

/// A function tool; inside a namespace its name is `namespace.name` (harmony's recipient).
/// `strict` defaults to true, as in OpenAI's Responses API.
fn function_tool(t: &Value, at: &str, namespace: Option<&str>) -> Result<Tool, ApiError> {
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| field(format!("{at}.name"), "is required"))?;
    let parameters = t.get("parameters").filter(|p| !p.is_null()).cloned();
    if parameters.as_ref().is_some_and(|p| !p.is_object()) {
        return Err(field(
            format!("{at}.parameters"),
            "must be a JSON Schema object",
        ));
    }
    Ok(Tool {
        kind: "function".to_string(),
        function: FunctionDefinition {
            name: match namespace {
                Some(ns) => format!("{ns}.{name}"),
                None => name.to_string(),
            },
            description: t
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            parameters,
            // Responses tools are strict unless they say otherwise (OpenAI: "If omitted,
            // Responses attempts to use strict validation"): arguments follow the schema.
            strict: Some(t.get("strict").and_then(Value::as_bool).unwrap_or(true)),
        },
    })
}

fn tool_choice(v: Option<&Value>, functions: &[Tool]) -> Result<Option<ToolChoice>, ApiError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let mode = |m| Ok(Some(ToolChoice::Mode(m)));
    match v {
        Value::String(s) => match s.as_str() {
            "none" => mode(ToolChoiceMode::None),
            // With no function to call, `auto` and `required` mean nothing the model can do.
            "auto" => mode(ToolChoiceMode::Auto),
            "required" if functions.is_empty() => Err(field(
                "tool_choice",
                "`required` needs a `function` tool: no function tool is defined",
            )),
            "required" => mode(ToolChoiceMode::Required),
            other => Err(field(
                "tool_choice",
                format!("must be `none`, `auto`, `required` or an object, got `{other}`"),
            )),
        },
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = o
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| field("tool_choice.name", "is required"))?;
                let full = match o.get("namespace").and_then(Value::as_str) {
                    Some(ns) => format!("{ns}.{name}"),
                    None => name.to_string(),
                };
                if !functions.iter().any(|t| t.function.name == full) {
                    return Err(field(
                        "tool_choice.name",
                        format!("`{name}` is not one of the function `tools` of this request"),
                    ));
                }
                Ok(Some(ToolChoice::Named(NamedToolChoice {
                    kind: "function".to_string(),
                    function: NamedFunction { name: full },
                })))
            }
            Some(other) => Err(field(
                "tool_choice.type",
                format!(
                    "`{other}` cannot be forced here: only `function` tools run on this server"
                ),
            )),
            None => Err(field("tool_choice.type", "is required")),
        },
        _ => Err(field("tool_choice", "must be a string or an object")),
    }
}

/// OpenAI's limits: at most 16 pairs, keys up to 64 characters, string values up to 512.
fn metadata(m: Option<Map<String, Value>>) -> Result<Map<String, Value>, ApiError> {
    let m = m.unwrap_or_default();
    if m.len() > 16 {
        return Err(field(
            "metadata",
            format!("has {} keys; at most 16", m.len()),
        ));
    }
    for (k, v) in &m {
        if k.chars().count() > 64 {
            return Err(field(
                format!("metadata.{k}"),
                "keys are at most 64 characters",
            ));
        }
        match v {
            Value::String(s) if s.chars().count() <= 512 => {}
            Value::String(_) => {
                return Err(field(
                    format!("metadata.{k}"),
                    "values are at most 512 characters",
                ))
            }
            _ => return Err(field(format!("metadata.{k}"), "values must be strings")),
        }
    }
    Ok(m)
}

/// The text of a message's content, or of a function call's output.
fn item_text(parts: &[ItemContent]) -> String {
    parts.iter().map(ItemContent::text).collect()
}

fn output_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                p.get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(Value::as_str)
            })
            .collect(),
        other => other.to_string(),
    }
}

/// The chat request the harmony renderer takes for `items` (the conversation continued from,
/// then the request's input; `first_input` is the index of the first input item, for error
/// paths), validated as chat requests are. Reasoning goes onto the assistant message that
/// follows it; consecutive function calls become one assistant message.
pub fn to_chat(
    v: &ValidResponses,
    items: &[Item],
    first_input: usize,
    served: &str,
) -> Result<ValidChat, ApiError> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(instructions) = &v.instructions {
        messages.push(ChatMessage::text(Role::Developer, instructions.clone()));
    }
    let mut reasoning: Option<String> = None;
    let mut call_ids = std::collections::HashSet::new();
    let at = |i: usize| {
        if i >= first_input {
            format!("input[{}]", i - first_input)
        } else {
            format!("previous_response_id (item {i} of the stored conversation)")
        }
    };
    for (i, item) in items.iter().enumerate() {
        match item {
            Item::Message(m) => {
                let role = match m.role.as_str() {
                    "user" => Role::User,
                    "system" => Role::System,
                    "developer" => Role::Developer,
                    _ => Role::Assistant,
                };
                let mut msg = ChatMessage::text(role, item_text(&m.content));
                if role == Role::Assistant {
                    msg.reasoning_content = reasoning.take();
                }
                messages.push(msg);
            }
            Item::Reasoning(r) => {
                let text: String = match &r.content {
                    Some(c) if !c.is_empty() => c.iter().map(|t| t.text.as_str()).collect(),
                    _ => r.summary.iter().map(|s| s.text.as_str()).collect(),
                };
                match &mut reasoning {
                    Some(prev) => prev.push_str(&text),
                    None => reasoning = Some(text),
                }
            }
            Item::FunctionCall(c) => {
                call_ids.insert(c.call_id.as_str());
                let name = match &c.namespace {
                    Some(ns) => format!("{ns}.{}", c.name),
                    None => c.name.clone(),
                };
                let call = ToolCall {
                    id: c.call_id.clone(),
                    kind: "function".to_string(),
                    function: FunctionCall {
                        name,
                        arguments: c.arguments.clone(),
                    },
                };
                let joins_previous = reasoning.is_none()
                    && matches!(items.get(i.wrapping_sub(1)), Some(Item::FunctionCall(_)));
                match messages.last_mut() {
                    Some(last) if joins_previous && last.role == Role::Assistant => {
                        last.tool_calls.get_or_insert_with(Vec::new).push(call);
                    }
                    _ => {
                        let mut msg = ChatMessage::text(Role::Assistant, String::new());
                        msg.content = None;
                        msg.reasoning_content = reasoning.take();
                        msg.tool_calls = Some(vec![call]);
                        messages.push(msg);
                    }
                }
            }
            Item::FunctionCallOutput(o) => {
                if !call_ids.contains(o.call_id.as_str()) {
                    return Err(field(
                        format!("{}.call_id", at(i)),
                        format!(
                            "no `function_call` item before it has call_id `{}`",
                            o.call_id
                        ),
                    ));
                }
                let mut msg = ChatMessage::text(Role::Tool, output_text(&o.output));
                msg.tool_call_id = Some(o.call_id.clone());
                messages.push(msg);
            }
        }
    }
    if let Some(r) = reasoning.take() {
        // Reasoning with nothing after it: an assistant turn of analysis only.
        let mut msg = ChatMessage::text(Role::Assistant, String::new());
        msg.reasoning_content = Some(r);
        messages.push(msg);
    }
    let response_format = match &v.text.format {
        None | Some(TextFormat::Text) => None,
        Some(TextFormat::JsonObject) => Some(ResponseFormat::JsonObject),
        Some(TextFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        }) => Some(ResponseFormat::JsonSchema {
            json_schema: openai_types::JsonSchemaFormat {
                name: name.clone(),
                description: description.clone(),
                schema: schema.clone(),
                strict: *strict,
            },
        }),
    };
    let req = ChatCompletionRequest {
        messages,
        model: None,
        max_completion_tokens: v.max_output_tokens,
        temperature: v.temperature,
        top_p: v.top_p,
        tools: (!v.functions.is_empty()).then(|| v.functions.clone()),
        tool_choice: if v.functions.is_empty() {
            None
        } else {
            v.chat_tool_choice.clone()
        },
        parallel_tool_calls: Some(v.parallel_tool_calls),
        response_format,
        reasoning_effort: v.reasoning.effort,
        user: v.user.clone(),
        ..ChatCompletionRequest::default()
    };
    validate::chat(req, served).map_err(|e| rename_param(e, first_input))
}

/// Names a chat field of an error as the Responses field it came from.
fn rename_param(e: ApiError, first_input: usize) -> ApiError {
    let ApiError::InvalidField { message, param } = e else {
        return e;
    };
    let renamed = if param == "max_completion_tokens" {
        "max_output_tokens".to_string()
    } else if let Some(rest) = param.strip_prefix("tools[") {
        format!("tools[{}", rest.replace(".function.", "."))
    } else if param.starts_with("response_format") {
        param.replacen("response_format.json_schema", "text.format", 1)
    } else if param.starts_with("messages") {
        // Message indices shift with `instructions` and merged calls: name the input as a whole.
        let _ = first_input;
        "input".to_string()
    } else {
        param.clone()
    };
    ApiError::InvalidField {
        message: message.replace(&format!("`{param}`"), &format!("`{renamed}`")),
        param: renamed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openai_types::MessageContent;
    use serde_json::json;

    fn valid(body: Value) -> Result<ValidResponses, ApiError> {
        let req: ResponsesRequest = serde_json::from_value(body).expect("request");
        validate(req, "gpt-oss-20b", &Sealer::ephemeral())
    }

    fn param(e: ApiError) -> String {
        match e {
            ApiError::InvalidField { param, .. } => param,
            ApiError::UnknownParameter(p) => p,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn a_string_input_is_one_user_message() {
        let v = valid(json!({"input": "hi"})).expect("valid");
        let chat = to_chat(&v, &v.input_items, 0, "gpt-oss-20b").expect("chat");
        assert_eq!(chat.render.messages.len(), 1);
        assert_eq!(chat.render.messages[0].role, Role::User);
    }

    #[test]
    fn bad_items_name_their_field() {
        let e = valid(json!({"input": [{"type": "web_search_call", "id": "x"}]})).unwrap_err();
        assert_eq!(param(e), "input[0].type");
        let e =
            valid(json!({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}))
                .unwrap_err();
        assert_eq!(param(e), "input[0].call_id");
        let e = valid(json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}))
            .unwrap_err();
        assert_eq!(param(e), "input[0].content[0].type");
        let e = valid(json!({"input": "hi", "frobnicate": 1})).unwrap_err();
        assert_eq!(param(e), "frobnicate");
        let e = valid(json!({"input": "hi", "tools": [{"type": "teleport"}]})).unwrap_err();
        assert_eq!(param(e), "tools[0].type");
        let e = valid(json!({"input": [{"type": "reasoning", "summary": [], "encrypted_content": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}))
            .unwrap_err();
        assert_eq!(param(e), "input[0].encrypted_content");
    }

    #[test]
    fn an_output_without_its_call_is_refused() {
        let v = valid(json!({"input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call_output", "call_id": "call_9", "output": "sunny"}
        ]}))
        .expect("items parse");
        let e = to_chat(&v, &v.input_items, 0, "gpt-oss-20b").unwrap_err();
        assert_eq!(param(e), "input[1].call_id");
    }

    #[test]
    fn calls_and_reasoning_become_one_assistant_turn() {
        let sealer = Sealer::ephemeral();
        let sealed = sealer.seal("need the weather");
        let req: ResponsesRequest = serde_json::from_value(json!({
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sealed},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"location\":\"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"location\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]}
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
                      {"type": "web_search"}]
        }))
        .expect("request");
        let v = validate(req, "gpt-oss-20b", &sealer).expect("valid");
        assert_eq!(v.functions.len(), 1, "web_search is accepted, not offered");
        let chat = to_chat(&v, &v.input_items, 0, "gpt-oss-20b").expect("chat");
        let m = &chat.render.messages;
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[0].role, Role::Developer);
        assert_eq!(m[2].role, Role::Assistant);
        assert_eq!(m[2].reasoning_content.as_deref(), Some("need the weather"));
        assert_eq!(m[2].tool_calls.as_ref().map(Vec::len), Some(2));
        assert_eq!(m[4].content, Some(MessageContent::Text("rain".into())));
    }

    #[test]
    fn namespace_functions_are_offered_under_their_namespace() {
        let v = valid(
            json!({"input": "hi", "tools": [{"type": "namespace", "name": "crm",
            "description": "customers", "tools": [{"type": "function", "name": "lookup"}]}],
            "tool_choice": {"type": "function", "name": "lookup", "namespace": "crm"}}),
        )
        .expect("valid");
        assert_eq!(v.functions[0].function.name, "crm.lookup");
    }
}
