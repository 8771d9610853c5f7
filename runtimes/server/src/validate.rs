//! Request validation: the wire types are parsed once, field path reported on any
//! type error, and turned into the "valid" types the handlers use. Every error
//! names the offending field in backticks and in `param`.

use gpt_oss_runtimes::SamplingParams;
use openai_types::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, MessageContent, Prompt, ReasoningEffort,
    ResponseFormat, Role, Stop, Tool, ToolChoice, ToolChoiceMode,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// OpenAI allows at most four stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 4;

/// Fields OpenAI accepts that change nothing here; they are accepted and ignored.
const IGNORED_CHAT_FIELDS: &[&str] = &[
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
];
const IGNORED_COMPLETION_FIELDS: &[&str] = &[];

/// OpenAI chat fields this server does not implement, accepted at these values (their default)
/// or `null`; any other value is a 400 naming the field.
const CHAT_FIELDS_AT_DEFAULT: &[(&str, &str)] = &[
    ("modalities", r#"["text"]"#),
    ("prediction", "null"),
    ("audio", "null"),
    ("functions", "null"),
    ("function_call", "null"),
    ("web_search_options", "null"),
];

/// Takes the fields of `CHAT_FIELDS_AT_DEFAULT` out of `extra`; 400 for a value other than
/// the default or `null`.
fn fields_at_default(extra: &mut serde_json::Map<String, Value>) -> Result<(), ApiError> {
    for (field, default) in CHAT_FIELDS_AT_DEFAULT {
        let Some(value) = extra.remove(*field) else {
            continue;
        };
        let default: Value = serde_json::from_str(default).unwrap_or(Value::Null);
        if !value.is_null() && value != default {
            return Err(ApiError::field(
                *field,
                format!("is not supported by this server; only {default} or null is accepted"),
            ));
        }
    }
    Ok(())
}

/// The logit-changing fields of OpenAI and vLLM, shared by chat and completions.
struct LogitFields {
    presence_penalty: Option<Value>,
    frequency_penalty: Option<Value>,
    repetition_penalty: Option<Value>,
    min_p: Option<Value>,
    logit_bias: Option<Value>,
}

impl LogitFields {
    /// Takes the fields that are not typed in the request out of `extra`.
    fn take(extra: &mut serde_json::Map<String, Value>) -> LogitFields {
        LogitFields {
            presence_penalty: extra.remove("presence_penalty"),
            frequency_penalty: extra.remove("frequency_penalty"),
            repetition_penalty: extra.remove("repetition_penalty"),
            min_p: extra.remove("min_p"),
            logit_bias: extra.remove("logit_bias"),
        }
    }
}

fn number_in(
    value: Option<&Value>,
    param: &str,
    default: f64,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<f32, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(default as f32),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && ok(x) => Ok(x as f32),
            Some(x) => Err(ApiError::field(param, format!("must be {range}, got {x}"))),
            None => Err(ApiError::field(param, format!("must be a number, got {v}"))),
        },
    }
}

/// Applies penalties, `logit_bias` and `min_p` to `sampling`, checking their ranges.
fn logit_fields(sampling: &mut SamplingParams, f: LogitFields) -> Result<(), ApiError> {
    let between = |lo: f64, hi: f64| move |x: f64| (lo..=hi).contains(&x);
    sampling.presence_penalty = number_in(
        f.presence_penalty.as_ref(),
        "presence_penalty",
        0.0,
        between(-2.0, 2.0),
        "between -2 and 2",
    )?;
    sampling.frequency_penalty = number_in(
        f.frequency_penalty.as_ref(),
        "frequency_penalty",
        0.0,
        between(-2.0, 2.0),
        "between -2 and 2",
    )?;
    sampling.repetition_penalty = number_in(
        f.repetition_penalty.as_ref(),
        "repetition_penalty",
        1.0,
        |x| x > 0.0,
        "greater than 0",
    )?;
    sampling.min_p = number_in(
        f.min_p.as_ref(),
        "min_p",
        0.0,
        between(0.0, 1.0),
        "between 0 and 1",
    )?;
    sampling.logit_bias = match f.logit_bias {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => {
            let mut bias = Vec::with_capacity(map.len());
            for (key, value) in &map {
                let param = format!("logit_bias.{key}");
                let id = key
                    .parse::<u32>()
                    .ok()
                    .filter(|id| *id < harmony::tokens::VOCAB_SIZE)
                    .ok_or_else(|| {
                        ApiError::field(
                            param.as_str(),
                            format!(
                                "keys must be token ids below {}, got `{key}`",
                                harmony::tokens::VOCAB_SIZE
                            ),
                        )
                    })?;
                let b = number_in(
                    Some(value),
                    &param,
                    0.0,
                    between(-100.0, 100.0),
                    "between -100 and 100",
                )?;
                bias.push((id, b));
            }
            bias
        }
        Some(v) => {
            return Err(ApiError::field(
                "logit_bias",
                format!("must be an object mapping token ids to biases, got {v}"),
            ))
        }
    };
    Ok(())
}

/// Parses a JSON body into `T`, naming the field path of the first type error.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Some(path) = openai_types::json::find_duplicate_key(body) {
        return Err(ApiError::field(
            path.clone(),
            format!("duplicate key `{path}` in the JSON body"),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::InvalidJson(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    if !value.is_object() {
        return Err(ApiError::InvalidJson(
            "the request body must be a JSON object".to_string(),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            // A missing top-level field: serde says "missing field `x`".
            let param = inner
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_else(|| "body".to_string());
            ApiError::InvalidField {
                message: format!("`{param}`: {inner}"),
                param,
            }
        } else {
            ApiError::field(path, inner)
        }
    })
}

/// How the request wants tools used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolPlan {
    /// No tools were given, or `tool_choice: "none"`.
    NoTools,
    /// The model decides.
    Auto,
    /// The model must call one of the tools.
    Required,
    /// The model must call this function.
    Named(String),
}

/// A chat request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidChat {
    /// The request as the harmony renderer gets it: `tools` are removed for
    /// `tool_choice: "none"` and reduced to the named one for a named choice.
    pub render: ChatCompletionRequest,
    pub max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub tool_plan: ToolPlan,
    /// How many independent choices (`n`).
    pub n: u32,
    /// Tools were offered but `tool_choice` is `"none"`: no recipient may be written.
    pub tools_withheld: bool,
    pub separate_thinking: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// A completions request that passed validation.
#[derive(Debug, Clone)]
pub enum ValidPrompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct ValidCompletion {
    pub prompt: ValidPrompt,
    pub max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub echo: bool,
    /// How many independent choices (`n`).
    pub n: u32,
    pub stream: bool,
    pub include_usage: bool,
    /// The JSON the completion text must be (`json_object`, `json_schema`); `None` or `text`
    /// leaves it free.
    pub response_format: Option<ResponseFormat>,
}

/// Checks what `response_format` can say before its schema is compiled: a `json_schema` has a
/// name and, if it has a schema, an object.
fn response_format(format: Option<&ResponseFormat>) -> Result<(), ApiError> {
    if let Some(ResponseFormat::JsonSchema { json_schema }) = format {
        if json_schema.name.is_empty() {
            return Err(ApiError::field(
                "response_format.json_schema.name",
                "must not be empty",
            ));
        }
        if json_schema.schema.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(ApiError::field(
                "response_format.json_schema.schema",
                "must be a JSON Schema object",
            ));
        }
    }
    Ok(())
}

/// Checks `model` against the served name; a missing `model` means the served one.
pub fn check_model(model: Option<&str>, served: &str) -> Result<(), ApiError> {
    match model {
        Some(m) if m != served => Err(ApiError::ModelNotFound(m.to_string())),
        _ => Ok(()),
    }
}

fn max_tokens(value: Option<i64>, param: &str) -> Result<Option<u32>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v < 1 => Err(ApiError::field(
            param,
            format!("must be at least 1, got {v}"),
        )),
        Some(v) => Ok(Some(u32::try_from(v).unwrap_or(u32::MAX))),
    }
}

/// The sampling fields every generation endpoint shares.
struct SamplingFields {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<i64>,
    min_tokens: Option<i64>,
}

/// `min_tokens` (vLLM): at least 0 and, when the request sets one, at most its token limit.
fn min_tokens(
    value: Option<i64>,
    max_tokens: Option<u32>,
    max_param: &str,
) -> Result<u32, ApiError> {
    let Some(v) = value else { return Ok(0) };
    if v < 0 {
        return Err(ApiError::field(
            "min_tokens",
            format!("must be at least 0, got {v}"),
        ));
    }
    let v = u32::try_from(v).unwrap_or(u32::MAX);
    if let Some(max) = max_tokens {
        if v > max {
            return Err(ApiError::field(
                "min_tokens",
                format!("must be at most `{max_param}` ({max}), got {v}"),
            ));
        }
    }
    Ok(v)
}

fn sampling(
    fields: SamplingFields,
    max_tokens: Option<u32>,
    max_param: &str,
) -> Result<SamplingParams, ApiError> {
    let SamplingFields {
        temperature,
        top_p,
        top_k,
        seed,
        min_tokens: min,
    } = fields;
    let temperature = temperature.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::field(
            "temperature",
            format!("must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
        return Err(ApiError::field(
            "top_p",
            format!("must be greater than 0 and at most 1, got {top_p}"),
        ));
    }
    let top_k = match top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k < -1 => {
            return Err(ApiError::field(
                "top_k",
                format!("must be -1 (off) or positive, got {k}"),
            ))
        }
        Some(k) => Some(u32::try_from(k).unwrap_or(u32::MAX)),
    };
    Ok(SamplingParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k,
        // Negative seeds are accepted, as OpenAI does; their bits make the u64 seed.
        seed: seed.map(|s| s as u64),
        min_tokens: min_tokens(min, max_tokens, max_param)?,
        ..SamplingParams::greedy()
    })
}

fn stop(stop: Option<&Stop>) -> Result<Vec<String>, ApiError> {
    let list = stop.map(Stop::to_vec).unwrap_or_default();
    if list.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::field(
            "stop",
            format!(
                "at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {}",
                list.len()
            ),
        ));
    }
    for (i, s) in list.iter().enumerate() {
        if s.is_empty() {
            let param = match stop {
                Some(Stop::Many(_)) => format!("stop[{i}]"),
                _ => "stop".to_string(),
            };
            return Err(ApiError::field(param, "a stop sequence must not be empty"));
        }
    }
    Ok(list)
}

/// OpenAI's limit on `n`.
pub const MAX_N: u32 = 128;
/// OpenAI's limit on chat's `top_logprobs`.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// OpenAI's limit on the completions endpoint's `logprobs`.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// `n`: how many independent choices, 1 to [`MAX_N`].
fn n(n: Option<i64>) -> Result<u32, ApiError> {
    match n {
        None => Ok(1),
        Some(v) if (1..=i64::from(MAX_N)).contains(&v) => Ok(v as u32),
        Some(v) => Err(ApiError::field(
            "n",
            format!("must be between 1 and {MAX_N}, got {v}"),
        )),
    }
}

/// Chat's `logprobs` / `top_logprobs`: how many alternatives to report, `None` for no
/// log-probabilities.
fn chat_logprobs(logprobs: Option<bool>, top: Option<i64>) -> Result<Option<u32>, ApiError> {
    let top = match top {
        None => None,
        Some(t) if (0..=i64::from(MAX_TOP_LOGPROBS)).contains(&t) => Some(t as u32),
        Some(t) => {
            return Err(ApiError::field(
                "top_logprobs",
                format!("must be between 0 and {MAX_TOP_LOGPROBS}, got {t}"),
            ))
        }
    };
    match (logprobs.unwrap_or(false), top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(t)) if t > 0 => Err(ApiError::field(
            "top_logprobs",
            "requires `logprobs` to be true",
        )),
        (false, _) => Ok(None),
    }
}

/// The completions endpoint's integer `logprobs` (0 to [`MAX_COMPLETION_LOGPROBS`]).
fn completion_logprobs(value: Option<&Value>) -> Result<Option<u32>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(k) if k <= u64::from(MAX_COMPLETION_LOGPROBS) => Ok(Some(k as u32)),
            _ => Err(ApiError::field(
                "logprobs",
                format!("must be an integer between 0 and {MAX_COMPLETION_LOGPROBS}, got {v}"),
            )),
        },
    }
}

fn unknown_fields(
    extra: &serde_json::Map<String, Value>,
    ignored: &[&str],
) -> Result<(), ApiError> {
    for key in extra.keys() {
        if !ignored.contains(&key.as_str()) {
            return Err(ApiError::UnknownParameter(key.clone()));
        }
    }
    Ok(())
}

fn unsupported_if(cond: bool, param: &str, why: &str) -> Result<(), ApiError> {
    if cond {
        Err(ApiError::field(param, why))
    } else {
        Ok(())
    }
}

fn tool_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn messages(messages: &[ChatMessage]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::field(
            "messages",
            "must contain at least one message",
        ));
    }
    let mut call_ids = std::collections::HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        if let Some(MessageContent::Parts(parts)) = &m.content {
            for (j, p) in parts.iter().enumerate() {
                if let openai_types::ContentPart::Other(v) = p {
                    let kind = v.get("type").and_then(Value::as_str).unwrap_or("unknown");
                    return Err(ApiError::field(
                        format!("messages[{i}].content[{j}]"),
                        format!("content parts of type `{kind}` are not supported; this model reads text only"),
                    ));
                }
            }
        }
        match m.role {
            Role::Assistant => {
                if let Some(calls) = &m.tool_calls {
                    for (j, c) in calls.iter().enumerate() {
                        if c.kind != "function" {
                            return Err(ApiError::field(
                                format!("messages[{i}].tool_calls[{j}].type"),
                                format!("must be `function`, got `{}`", c.kind),
                            ));
                        }
                        call_ids.insert(c.id.as_str());
                    }
                }
            }
            Role::Tool => {
                let Some(id) = m.tool_call_id.as_deref() else {
                    return Err(ApiError::field(
                        format!("messages[{i}].tool_call_id"),
                        "is required on a `tool` message",
                    ));
                };
                if !call_ids.contains(id) && m.name.is_none() {
                    return Err(ApiError::field(
                        format!("messages[{i}].tool_call_id"),
                        format!("`{id}` does not match a `tool_calls[].id` of an earlier assistant message"),
                    ));
                }
            }
            _ => {
                if m.content.is_none() {
                    return Err(ApiError::field(
                        format!("messages[{i}].content"),
                        format!("is required on a `{}` message", m.role.as_str()),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn tools(tools: &[Tool]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::field(
                format!("tools[{i}].type"),
                format!("only `function` tools are supported, got `{}`", t.kind),
            ));
        }
        if !tool_name_ok(&t.function.name) {
            return Err(ApiError::field(
                format!("tools[{i}].function.name"),
                "must be 1 to 64 characters of a-z, A-Z, 0-9, `_`, `-` or `.`",
            ));
        }
        if !seen.insert(t.function.name.as_str()) {
            return Err(ApiError::field(
                format!("tools[{i}].function.name"),
                format!("`{}` is defined twice", t.function.name),
            ));
        }
        if let Some(p) = &t.function.parameters {
            if !p.is_object() {
                return Err(ApiError::field(
                    format!("tools[{i}].function.parameters"),
                    "must be a JSON Schema object",
                ));
            }
        }
    }
    Ok(())
}

/// Validates a chat request against the served model.
pub fn chat(mut req: ChatCompletionRequest, served_model: &str) -> Result<ValidChat, ApiError> {
    check_model(req.model.as_deref(), served_model)?;
    fields_at_default(&mut req.extra)?;
    let mut logit = LogitFields::take(&mut req.extra);
    logit.presence_penalty = req.presence_penalty.map(Value::from);
    logit.frequency_penalty = req.frequency_penalty.map(Value::from);
    logit.logit_bias = req.logit_bias.take().map(Value::Object);
    unknown_fields(&req.extra, IGNORED_CHAT_FIELDS)?;
    messages(&req.messages)?;
    let max_param = match req.max_completion_tokens {
        Some(_) => "max_completion_tokens",
        None => "max_tokens",
    };
    let max_tokens = max_tokens(req.max_completion_tokens.or(req.max_tokens), max_param)?;
    let mut sampling = sampling(
        SamplingFields {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            min_tokens: req.min_tokens,
        },
        max_tokens,
        max_param,
    )?;
    logit_fields(&mut sampling, logit)?;
    let stop = stop(req.stop.as_ref())?;
    let n = n(req.n)?;
    sampling.logprobs = chat_logprobs(req.logprobs, req.top_logprobs)?;
    let stream = req.stream.unwrap_or(false);
    unsupported_if(
        req.stream_options.is_some() && !stream,
        "stream_options",
        "is only allowed when `stream` is true",
    )?;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    response_format(req.response_format.as_ref())?;
    let given_tools = req.tools.take().unwrap_or_default();
    tools(&given_tools)?;
    let tool_plan = match (&req.tool_choice, given_tools.is_empty()) {
        (None, true) | (Some(ToolChoice::Mode(ToolChoiceMode::None)), _) => ToolPlan::NoTools,
        (Some(ToolChoice::Mode(ToolChoiceMode::Auto)), true) => ToolPlan::NoTools,
        (None, false) | (Some(ToolChoice::Mode(ToolChoiceMode::Auto)), false) => ToolPlan::Auto,
        (Some(ToolChoice::Mode(ToolChoiceMode::Required)), false) => ToolPlan::Required,
        (Some(ToolChoice::Named(named)), false) => {
            if named.kind != "function" {
                return Err(ApiError::field(
                    "tool_choice.type",
                    format!("must be `function`, got `{}`", named.kind),
                ));
            }
            if !given_tools
                .iter()
                .any(|t| t.function.name == named.function.name)
            {
                return Err(ApiError::field(
                    "tool_choice.function.name",
                    format!(
                        "`{}` is not one of the `tools` of this request",
                        named.function.name
                    ),
                ));
            }
            ToolPlan::Named(named.function.name.clone())
        }
        (Some(_), true) => {
            return Err(ApiError::field(
                "tool_choice",
                "requires `tools`: no tool is defined to call",
            ))
        }
    };
    let tools_withheld = tool_plan == ToolPlan::NoTools && !given_tools.is_empty();
    req.tools = match &tool_plan {
        ToolPlan::NoTools => None,
        ToolPlan::Auto | ToolPlan::Required => Some(given_tools),
        ToolPlan::Named(name) => Some(
            given_tools
                .into_iter()
                .filter(|t| &t.function.name == name)
                .collect(),
        ),
    };
    req.tool_choice = None;
    let separate_thinking = req.separate_thinking.unwrap_or(false);
    if req.reasoning_effort.is_none() {
        req.reasoning_effort = Some(ReasoningEffort::Medium);
    }
    req.extra.clear();
    Ok(ValidChat {
        render: req,
        max_tokens,
        sampling,
        stop,
        tool_plan,
        n,
        tools_withheld,
        separate_thinking,
        stream,
        include_usage,
    })
}

/// Validates a completions request against the served model.
pub fn completion(
    mut req: CompletionRequest,
    served_model: &str,
) -> Result<ValidCompletion, ApiError> {
    check_model(req.model.as_deref(), served_model)?;
    let logit = LogitFields::take(&mut req.extra);
    let logprobs = completion_logprobs(req.extra.remove("logprobs").as_ref())?;
    for key in req.extra.keys() {
        let known_unsupported = matches!(key.as_str(), "suffix" | "best_of");
        let value = &req.extra[key];
        let harmless = value.is_null()
            || value == &Value::from(0)
            || value == &Value::from(1) && key == "best_of";
        if known_unsupported && !harmless {
            return Err(ApiError::field(
                key.as_str(),
                "is not supported by this server",
            ));
        }
        if !known_unsupported && !IGNORED_COMPLETION_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::UnknownParameter(key.clone()));
        }
    }
    let prompt = match req.prompt {
        Prompt::Text(s) => ValidPrompt::Text(s),
        Prompt::Tokens(t) => ValidPrompt::Tokens(t),
        Prompt::Texts(mut v) if v.len() == 1 => ValidPrompt::Text(v.remove(0)),
        Prompt::TokenBatches(mut v) if v.len() == 1 => ValidPrompt::Tokens(v.remove(0)),
        Prompt::Texts(_) | Prompt::TokenBatches(_) => {
            return Err(ApiError::field(
                "prompt",
                "batches of prompts are not supported; send one prompt per request",
            ))
        }
    };
    let empty = match &prompt {
        ValidPrompt::Text(s) => s.is_empty(),
        ValidPrompt::Tokens(t) => t.is_empty(),
    };
    if empty {
        return Err(ApiError::field("prompt", "must not be empty"));
    }
    let stream = req.stream.unwrap_or(false);
    unsupported_if(
        req.stream_options.is_some() && !stream,
        "stream_options",
        "is only allowed when `stream` is true",
    )?;
    let n = n(req.n)?;
    let max_tokens = max_tokens(req.max_tokens, "max_tokens")?;
    let mut sampling = sampling(
        SamplingFields {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            min_tokens: req.min_tokens,
        },
        max_tokens,
        "max_tokens",
    )?;
    logit_fields(&mut sampling, logit)?;
    sampling.logprobs = logprobs;
    response_format(req.response_format.as_ref())?;
    Ok(ValidCompletion {
        prompt,
        max_tokens,
        sampling,
        stop: stop(req.stop.as_ref())?,
        echo: req.echo.unwrap_or(false),
        n,
        stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        response_format: req.response_format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_err(body: &str) -> ApiError {
        let req: ChatCompletionRequest = match parse_body(body.as_bytes()) {
            Ok(r) => r,
            Err(e) => return e,
        };
        chat(req, "m").expect_err("the request must be rejected")
    }

    fn param(e: &ApiError) -> Option<String> {
        e.body().error.param
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let e = chat_err(r#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#);
        assert_eq!(param(&e).as_deref(), Some("temperature"));
        let e = chat_err(r#"{"messages":[{"role":"wizard","content":"hi"}]}"#);
        assert_eq!(param(&e).as_deref(), Some("messages[0].role"));
        let e = chat_err(r#"{"model":"m"}"#);
        assert_eq!(param(&e).as_deref(), Some("messages"));
        assert!(e.to_string().contains("`messages`"), "{e}");
    }

    #[test]
    fn range_errors_name_the_field() {
        for (body, field) in [
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-5}"#,
                "max_completion_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":2.5}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                "top_p",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":0}"#, "n"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"n":129}"#,
                "n",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":3}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"presence_penalty":2.5}"#,
                "presence_penalty",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logit_bias":{"abc":1}}"#,
                "logit_bias.abc",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logit_bias":{"5":101}}"#,
                "logit_bias.5",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"modalities":["text","audio"]}"#,
                "modalities",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"min_p":2}"#,
                "min_p",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"min_tokens":-1}"#,
                "min_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":4,"min_tokens":5}"#,
                "min_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":4,"min_tokens":9}"#,
                "min_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
                "stop",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"frobnicate":1}"#,
                "frobnicate",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tool_choice":"required"}"#,
                "tool_choice",
            ),
            (r#"{"messages":[]}"#, "messages"),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"messages":[{"role":"tool","content":"x"}]}"#,
                "messages[0].tool_call_id",
            ),
        ] {
            let e = chat_err(body);
            assert_eq!(param(&e).as_deref(), Some(field), "{body} -> {e}");
            assert_eq!(e.status().as_u16(), 400, "{body}");
        }
    }

    #[test]
    fn named_tool_choice_must_name_a_given_tool() {
        let e = chat_err(
            r#"{"messages":[{"role":"user","content":"x"}],
                "tools":[{"type":"function","function":{"name":"a"}}],
                "tool_choice":{"type":"function","function":{"name":"b"}}}"#,
        );
        assert_eq!(param(&e).as_deref(), Some("tool_choice.function.name"));
    }

    #[test]
    fn tool_choice_none_renders_without_tools() {
        let req: ChatCompletionRequest = parse_body(
            br#"{"messages":[{"role":"user","content":"x"}],
                "tools":[{"type":"function","function":{"name":"a"}}],
                "tool_choice":"none"}"#,
        )
        .expect("valid JSON");
        let v = chat(req, "m").expect("valid");
        assert_eq!(v.tool_plan, ToolPlan::NoTools);
        assert!(v.render.tools.is_none());
    }

    #[test]
    fn openai_fields_at_their_default_or_null_are_accepted() {
        let req: ChatCompletionRequest = parse_body(
            br#"{"messages":[{"role":"user","content":"x"}],"modalities":["text"],"prediction":null,
                "audio":null,"functions":null,"function_call":null,"logprobs":false,"top_logprobs":0,
                "logit_bias":{"12":-5},"presence_penalty":0.5,"frequency_penalty":-0.5,
                "repetition_penalty":1.1,"min_p":0.05,"n":3}"#,
        )
        .expect("valid JSON");
        let v = chat(req, "m").expect("accepted");
        assert_eq!(v.n, 3);
        assert_eq!(v.sampling.logit_bias, vec![(12, -5.0)]);
        assert_eq!(v.sampling.presence_penalty, 0.5);
        assert_eq!(v.sampling.frequency_penalty, -0.5);
        assert!((v.sampling.repetition_penalty - 1.1).abs() < 1e-6);
        assert!((v.sampling.min_p - 0.05).abs() < 1e-6);
        assert_eq!(v.sampling.logprobs, None);
        let e = chat_err(r#"{"messages":[{"role":"user","content":"x"}],"frobnicate":1}"#);
        assert_eq!(e.body().error.code.as_deref(), Some("unknown_parameter"));
    }

    #[test]
    fn unknown_model_is_404() {
        let e = chat_err(r#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(e.status().as_u16(), 404);
    }

    #[test]
    fn invalid_json_is_400() {
        let e = chat_err("{not json");
        assert_eq!(e.status().as_u16(), 400);
        let e = chat_err("[1,2]");
        assert_eq!(e.status().as_u16(), 400);
    }
}
