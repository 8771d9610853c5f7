//! Constrained decoding for chat requests: which harmony output a request allows, as an
//! llguidance Lark grammar over the assistant's tokens after the prompt (and after the forced
//! tool-call header, when `tool_choice` forces one).
//!
//! - `response_format` `json_object` / `json_schema`: an optional analysis message (free text),
//!   then `<|channel|>final<|message|>` with a JSON body matching the schema, then `<|return|>`.
//! - `tool_choice: "required"`: the name of one of the offered functions, its JSON arguments,
//!   `<|call|>`; a named function: its arguments and `<|call|>`.
//! - `tool_choice: "none"` with tools offered: an optional analysis, then a final message; no
//!   header can name a recipient.
//! - `auto` with a `strict` tool: the final message or a call, whose arguments match the schema
//!   of a strict tool.
//!
//! Arguments of a strict tool and `json_schema` bodies follow their JSON Schema; other
//! arguments are a JSON object. JSON is compact (`", "` and `": "` separators, no other
//! whitespace), so a small model cannot wander off into endless whitespace.

use std::sync::Arc;

use gpt_oss_runtimes::constraint::{Constraint, GrammarCompiler, Vocabulary};
use harmony::{tokens, Tokenizer};
use openai_types::{ResponseFormat, Tool};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::error::ApiError;
use crate::validate::{ToolPlan, ValidChat};

/// The grammar compiler of a loaded model, built on first use (the token trie of 201,088 ids
/// takes about a second).
#[derive(Default)]
pub struct Compilers {
    cell: OnceCell<Arc<GrammarCompiler>>,
}

impl Compilers {
    /// The compiler for `tokenizer`'s vocabulary, built on a blocking thread the first time.
    pub async fn get(&self, tokenizer: &Tokenizer) -> Result<Arc<GrammarCompiler>, ApiError> {
        self.cell
            .get_or_try_init(|| {
                let tokenizer = tokenizer.clone();
                async move {
                    tokio::task::spawn_blocking(move || build_compiler(&tokenizer))
                        .await
                        .map_err(|e| ApiError::Internal(format!("grammar compiler: {e}")))?
                }
            })
            .await
            .cloned()
    }
}

/// The token trie of the tokenizer and a compiler over it.
pub fn build_compiler(tokenizer: &Tokenizer) -> Result<Arc<GrammarCompiler>, ApiError> {
    let started = std::time::Instant::now();
    let n = tokenizer.vocab_size() as u32;
    let words: Vec<Vec<u8>> = (0..n)
        .map(|id| {
            tokenizer
                .token_bytes(id)
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        })
        .collect();
    let encoder = tokenizer.clone();
    let vocabulary = Vocabulary::new(
        words,
        tokens::is_special,
        tokens::RETURN,
        Box::new(move |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(text) => encoder.encode_ordinary(text).unwrap_or_default(),
            Err(_) => Vec::new(),
        }),
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let compiler =
        GrammarCompiler::new(&vocabulary).map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        vocab = n,
        "grammar compiler ready"
    );
    Ok(Arc::new(compiler))
}

/// One JSON value the output must contain, and the request field it came from (named in a 400
/// when llguidance cannot compile it).
struct JsonPart {
    schema: Value,
    param: String,
}

/// What the request constrains, before it is written as a grammar.
struct Plan {
    /// The Lark grammar.
    lark: String,
    parts: Vec<JsonPart>,
}

/// The largest magnitude of a number the grammar lets the model write when the schema sets
/// no bound: 15 integer digits.
const NUMBER_BOUND: f64 = 1e15;
/// The finest fraction of a `number` the grammar lets the model write when the schema sets no
/// `multipleOf`: 6 decimals.
const NUMBER_STEP: f64 = 1e-6;

/// Keywords whose values are data, not schemas: never rewritten.
const DATA_KEYWORDS: &[&str] = &["enum", "const", "default", "examples"];

/// Bounds every `number` / `integer` of a schema that has no bounds of its own (at most
/// [`NUMBER_BOUND`] in magnitude and, for `number`, multiples of [`NUMBER_STEP`]), so that a
/// small model cannot write digits until `max_tokens` runs out: JSON Schema numbers are
/// otherwise unbounded lexemes. What the grammar allows still validates against the schema.
fn bound_numbers(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let numeric = |t: &Value| t == "number" || t == "integer";
            let (is_numeric, is_number) = match map.get("type") {
                Some(Value::Array(types)) => (
                    types.iter().any(numeric),
                    types.iter().any(|t| t == "number"),
                ),
                Some(t) => (numeric(t), t == "number"),
                None => (false, false),
            };
            if is_numeric {
                if !map.contains_key("minimum") && !map.contains_key("exclusiveMinimum") {
                    map.insert("minimum".into(), json!(-NUMBER_BOUND));
                }
                if !map.contains_key("maximum") && !map.contains_key("exclusiveMaximum") {
                    map.insert("maximum".into(), json!(NUMBER_BOUND));
                }
                if is_number && !map.contains_key("multipleOf") {
                    map.insert("multipleOf".into(), json!(NUMBER_STEP));
                }
            }
            for (key, value) in map.iter_mut() {
                if !DATA_KEYWORDS.contains(&key.as_str()) {
                    bound_numbers(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_numbers),
        _ => {}
    }
}

/// `json_object` and the arguments of a non-strict function: any JSON object, with keys of at
/// most 32 identifier characters, strings of at most 200 characters and numbers bounded as in
/// [`bound_numbers`], so that a small model cannot ramble inside a key or a value until
/// `max_tokens` runs out.
fn any_json_object() -> Value {
    let object = json!({
        "type": "object",
        "patternProperties": {"^[A-Za-z_][A-Za-z0-9_]{0,31}$": {"$ref": "#/$defs/value"}},
        "additionalProperties": false
    });
    let mut root = object.clone();
    root["$defs"] = json!({"value": {"anyOf": [
        {"type": "string", "maxLength": 200},
        {"type": "number", "minimum": -NUMBER_BOUND, "maximum": NUMBER_BOUND, "multipleOf": NUMBER_STEP},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": "#/$defs/value"}},
        object
    ]}});
    root
}

/// How JSON is written in every constrained body: compact, with the separators of
/// Python's `json.dumps`.
fn with_layout(mut schema: Value) -> Value {
    bound_numbers(&mut schema);
    if let Value::Object(map) = &mut schema {
        map.insert(
            "x-guidance".to_string(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

fn any_object() -> Value {
    any_json_object()
}

/// The schema of a function's arguments: its own when `strict`, else any JSON object.
fn arguments_part(index: usize, tool: &Tool) -> JsonPart {
    let strict = tool.function.strict == Some(true);
    let schema = match (&tool.function.parameters, strict) {
        (Some(p), true) => p.clone(),
        (None, true) => json!({"type": "object", "properties": {}, "additionalProperties": false}),
        _ => any_object(),
    };
    JsonPart {
        schema,
        param: format!("tools[{index}].function.parameters"),
    }
}

/// A Lark string literal (JSON string escaping is valid Lark).
fn literal(s: &str) -> String {
    Value::from(s).to_string()
}

fn json_rule(part: &JsonPart) -> String {
    format!("%json {}", with_layout(part.schema.clone()))
}

/// The JSON a `response_format` asks for: the final message's body of a chat, the whole text of
/// a completion.
fn response_part(format: Option<&ResponseFormat>) -> Option<JsonPart> {
    match format {
        Some(ResponseFormat::JsonObject) => Some(JsonPart {
            schema: any_object(),
            param: "response_format".to_string(),
        }),
        Some(ResponseFormat::JsonSchema { json_schema }) => Some(JsonPart {
            schema: json_schema.schema.clone().unwrap_or_else(any_object),
            param: "response_format.json_schema.schema".to_string(),
        }),
        Some(ResponseFormat::Text) | None => None,
    }
}

const ANALYSIS: &str = "analysis: <|channel|> \"analysis\" <|message|> TEXT <|end|> <|start|> \"assistant\"\nTEXT: /(.|\\n)*/\n";

fn plan(valid: &ValidChat) -> Option<Plan> {
    let tools: &[Tool] = valid.render.tools.as_deref().unwrap_or(&[]);
    let response = response_part(valid.render.response_format.as_ref());
    let any_strict = tools.iter().any(|t| t.function.strict == Some(true));
    let mut parts = Vec::new();
    let mut lark = String::new();
    match &valid.tool_plan {
        ToolPlan::Named(_) => {
            // The prefill wrote the whole header; the arguments follow.
            let tool = tools.first()?;
            let part = arguments_part(0, tool);
            lark.push_str(&format!("start: {} <|call|>\n", json_rule(&part)));
            parts.push(part);
        }
        ToolPlan::Required => {
            // The prefill wrote `<|channel|>commentary to=` and the recipient's common start
            // (`functions.` when every tool is a plain function); a name completes it.
            let written = crate::codec::required_call_prefix(valid);
            let calls = call_rules(tools, &mut parts, &mut lark, Some(written));
            if calls.is_empty() {
                return None;
            }
            lark.push_str(&format!("start: {}\n", calls.join(" | ")));
        }
        ToolPlan::Auto if response.is_some() || any_strict => {
            let calls = call_rules(tools, &mut parts, &mut lark, None);
            let final_rule = final_rule(response, &mut parts);
            lark.push_str(&final_rule);
            lark.push_str(&format!(
                "start: analysis? (final | {})\n{ANALYSIS}",
                calls.join(" | ")
            ));
        }
        ToolPlan::NoTools if response.is_some() || valid.tools_withheld => {
            let final_rule = final_rule(response, &mut parts);
            lark.push_str(&final_rule);
            lark.push_str(&format!("start: analysis? final\n{ANALYSIS}"));
        }
        ToolPlan::Auto | ToolPlan::NoTools => return None,
    }
    Some(Plan { lark, parts })
}

/// `call_i` rules: the recipient of tool `i` (`functions.NAME`, or `ns.NAME` for a namespaced
/// one), its JSON arguments and `<|call|>`. With `prefilled` (the start of the recipient the
/// prefill already wrote after `to=`), the rule begins with the rest of the recipient;
/// without, with `<|channel|>commentary to=`. Returns the rule names.
fn call_rules(
    tools: &[Tool],
    parts: &mut Vec<JsonPart>,
    lark: &mut String,
    prefilled: Option<&str>,
) -> Vec<String> {
    let header = if prefilled.is_none() {
        "<|channel|> \"commentary to=\" "
    } else {
        ""
    };
    let mut calls = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let part = arguments_part(i, t);
        let recipient = harmony::render::tool_recipient(&t.function.name);
        let rest = recipient
            .strip_prefix(prefilled.unwrap_or(""))
            .unwrap_or(&recipient);
        lark.push_str(&format!(
            "call_{i}: {header}{} \" \" <|constrain|> \"json\" <|message|> {} <|call|>\n",
            literal(rest),
            json_rule(&part)
        ));
        parts.push(part);
        calls.push(format!("call_{i}"));
    }
    calls
}

/// The `final` rule: a JSON body when `response` is set, else free text.
fn final_rule(response: Option<JsonPart>, parts: &mut Vec<JsonPart>) -> String {
    let body = match response {
        Some(part) => {
            let rule = json_rule(&part);
            parts.push(part);
            rule
        }
        None => "TEXT".to_string(),
    };
    format!("final: <|channel|> \"final\" <|message|> {body} <|return|>\n")
}

/// The constraint a chat request's output must follow, compiled; `None` when it has none.
/// A schema llguidance cannot compile (an unsupported keyword, an invalid `$ref`) is a 400
/// naming the request field and llguidance's reason.
pub async fn for_chat(
    compilers: &Compilers,
    tokenizer: &Tokenizer,
    valid: &ValidChat,
) -> Result<Option<Constraint>, ApiError> {
    let Some(plan) = plan(valid) else {
        return Ok(None);
    };
    let compiler = compilers.get(tokenizer).await?;
    tokio::task::spawn_blocking(move || compile(&compiler, &plan))
        .await
        .map_err(|e| ApiError::Internal(format!("grammar compilation: {e}")))?
        .map(Some)
}

/// A raw completion's text: the JSON value alone.
fn completion_plan(format: Option<&ResponseFormat>) -> Option<Plan> {
    let part = response_part(format)?;
    Some(Plan {
        lark: format!("start: {}\n", json_rule(&part)),
        parts: vec![part],
    })
}

/// The constraint of a raw completion's text, compiled; `None` unless `response_format` asks
/// for JSON. A raw prompt has no harmony structure to keep: the whole text is the JSON value,
/// and once it is complete only `<|return|>` (a stop token) can follow. Errors as
/// [`for_chat`].
pub async fn for_completion(
    compilers: &Compilers,
    tokenizer: &Tokenizer,
    format: Option<&ResponseFormat>,
) -> Result<Option<Constraint>, ApiError> {
    let Some(plan) = completion_plan(format) else {
        return Ok(None);
    };
    let compiler = compilers.get(tokenizer).await?;
    tokio::task::spawn_blocking(move || compile(&compiler, &plan))
        .await
        .map_err(|e| ApiError::Internal(format!("grammar compilation: {e}")))?
        .map(Some)
}

fn compile(compiler: &GrammarCompiler, plan: &Plan) -> Result<Constraint, ApiError> {
    match compiler.compile_lark(&plan.lark) {
        Ok(c) => Ok(c),
        Err(whole) => {
            // Name the field whose schema is at fault.
            for part in &plan.parts {
                let alone = format!("start: {}\n", json_rule(part));
                if let Err(e) = compiler.compile_lark(&alone) {
                    return Err(ApiError::field(
                        part.param.as_str(),
                        format!("this JSON Schema is not supported for constrained decoding: {e}"),
                    ));
                }
            }
            tracing::error!(error = %whole, grammar = %plan.lark, "the request's grammar does not compile");
            Err(ApiError::Internal(format!(
                "the output grammar does not compile: {whole}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate;

    fn valid(body: &str) -> ValidChat {
        let req = validate::parse_body(body.as_bytes()).expect("JSON");
        validate::chat(req, "m").expect("valid")
    }

    fn compiler() -> Arc<GrammarCompiler> {
        let tokenizer = Tokenizer::o200k_harmony().expect("tokenizer");
        build_compiler(&tokenizer).expect("compiler")
    }

    /// Feeds text (special tokens written as text) and says whether the grammar accepts it
    /// token by token, and whether it ends complete.
    fn follows(c: &mut Constraint, tokenizer: &Tokenizer, text: &str) -> bool {
        let ids = tokenizer.encode_with_special_tokens(text).expect("encode");
        let mut logits = vec![0.0f32; tokens::VOCAB_SIZE as usize];
        for id in ids {
            logits.iter_mut().for_each(|l| *l = 0.0);
            if c.mask(&mut logits).is_err() || !logits[id as usize].is_finite() {
                return false;
            }
            if c.commit(id).is_err() {
                return false;
            }
        }
        true
    }

    #[test]
    fn plans_follow_the_request() {
        let tokenizer = Tokenizer::o200k_harmony().expect("tokenizer");
        let compiler = compiler();
        let schema = valid(
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema",
               "json_schema":{"name":"c","strict":true,"schema":{"type":"object",
               "properties":{"city":{"type":"string"},"n":{"enum":[1,2]}},"required":["city","n"],
               "additionalProperties":false}}}}"#,
        );
        let p = plan(&schema).expect("json_schema is constrained");
        let c = compiler.compile_lark(&p.lark).expect("compiles");
        let ok = "<|channel|>analysis<|message|>Think.\nMore.<|end|><|start|>assistant<|channel|>final<|message|>{\"city\": \"Paris\", \"n\": 2}<|return|>";
        assert!(follows(&mut c.clone(), &tokenizer, ok));
        assert!(follows(
            &mut c.clone(),
            &tokenizer,
            "<|channel|>final<|message|>{\"city\": \"x\", \"n\": 1}<|return|>"
        ));
        for bad in [
            "<|channel|>final<|message|>The capital is Paris.",
            "<|channel|>final<|message|>{\"town\"",
            "<|channel|>final<|message|>{\"city\": \"x\", \"n\": 3",
            "<|channel|>commentary to=functions.f",
            "<|channel|>analysis<|message|>x<|return|>",
        ] {
            assert!(!follows(&mut c.clone(), &tokenizer, bad), "{bad}");
        }

        let tools = r#""tools":[{"type":"function","function":{"name":"get_weather","strict":true,
            "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],
            "additionalProperties":false}}},{"type":"function","function":{"name":"add"}}]"#;
        let required = valid(&format!(
            r#"{{"messages":[{{"role":"user","content":"x"}}],{tools},"tool_choice":"required"}}"#
        ));
        let c = compiler
            .compile_lark(&plan(&required).expect("required").lark)
            .expect("compiles");
        assert!(follows(
            &mut c.clone(),
            &tokenizer,
            "get_weather <|constrain|>json<|message|>{\"city\": \"Oslo\"}<|call|>"
        ));
        assert!(follows(
            &mut c.clone(),
            &tokenizer,
            "add <|constrain|>json<|message|>{\"a\": 1}<|call|>"
        ));
        assert!(!follows(&mut c.clone(), &tokenizer, "get_time"));
        assert!(!follows(
            &mut c.clone(),
            &tokenizer,
            "get_weather <|constrain|>json<|message|>{\"location\""
        ));

        let none = valid(&format!(
            r#"{{"messages":[{{"role":"user","content":"x"}}],{tools},"tool_choice":"none"}}"#
        ));
        let c = compiler
            .compile_lark(&plan(&none).expect("none with tools").lark)
            .expect("compiles");
        assert!(follows(
            &mut c.clone(),
            &tokenizer,
            "<|channel|>final<|message|>Hello there<|return|>"
        ));
        assert!(!follows(
            &mut c.clone(),
            &tokenizer,
            "<|channel|>commentary to=functions.add"
        ));
        assert!(!follows(&mut c.clone(), &tokenizer, " to=functions.add"));

        let plain = valid(r#"{"messages":[{"role":"user","content":"x"}]}"#);
        assert!(plan(&plain).is_none(), "no constraint without a reason");
    }

    #[test]
    fn numbers_without_bounds_get_them_and_data_is_untouched() {
        let mut s = json!({"type": "object", "properties": {
            "a": {"type": "number"}, "b": {"type": "integer", "minimum": 3},
            "c": {"type": ["number", "null"], "multipleOf": 0.5},
            "d": {"enum": [{"type": "number"}]}}});
        bound_numbers(&mut s);
        assert_eq!(
            s["properties"]["a"],
            json!({"type": "number", "minimum": -1e15, "maximum": 1e15, "multipleOf": 1e-6})
        );
        assert_eq!(
            s["properties"]["b"],
            json!({"type": "integer", "minimum": 3, "maximum": 1e15})
        );
        assert_eq!(s["properties"]["c"]["multipleOf"], json!(0.5));
        assert_eq!(s["properties"]["d"], json!({"enum": [{"type": "number"}]}));
        let tokenizer = Tokenizer::o200k_harmony().expect("tokenizer");
        let compiler = compiler();
        let c = compiler
            .compile_lark(&format!(
                "start: {}",
                json_rule(&JsonPart {
                    schema: s,
                    param: String::new()
                })
            ))
            .expect("bounded numbers compile");
        assert!(follows(
            &mut c.clone(),
            &tokenizer,
            r#"{"a": -12.125, "b": 4"#
        ));
        assert!(
            !follows(&mut c.clone(), &tokenizer, r#"{"a": 1.1234567"#),
            "7 decimals"
        );
        assert!(
            !follows(&mut c.clone(), &tokenizer, r#"{"a": 12345678901234567"#),
            "17 digits"
        );
        let mut any = compiler
            .compile_lark(&format!(
                "start: {}",
                json_rule(&JsonPart {
                    schema: any_json_object(),
                    param: String::new()
                })
            ))
            .expect("json_object compiles");
        assert!(follows(
            &mut any,
            &tokenizer,
            r#"{"x": [1, {"y": null}], "z": "w"}"#
        ));
    }

    #[test]
    fn a_completion_is_the_json_alone_then_return() {
        let tokenizer = Tokenizer::o200k_harmony().expect("tokenizer");
        let compiler = compiler();
        assert!(completion_plan(None).is_none());
        assert!(completion_plan(Some(&ResponseFormat::Text)).is_none());
        let plan = completion_plan(Some(&ResponseFormat::JsonObject)).expect("json_object");
        let c = compile(&compiler, &plan).expect("compiles");
        assert!(follows(
            &mut c.clone(),
            &tokenizer,
            r#"{"a": [1, "b"]}<|return|>"#
        ));
        for bad in [
            "Sure: {",
            "<|channel|>final<|message|>{",
            r#"{"a": 1}<|end|>"#,
            "[1]",
        ] {
            assert!(!follows(&mut c.clone(), &tokenizer, bad), "{bad}");
        }
    }

    #[test]
    fn unsupported_schema_keywords_are_named() {
        let compiler = compiler();
        let v = valid(
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema",
               "json_schema":{"name":"c","schema":{"type":"array","unevaluatedItems":false}}}}"#,
        );
        let e = compile(&compiler, &plan(&v).expect("plan")).expect_err("rejected");
        assert_eq!(e.status().as_u16(), 400);
        assert_eq!(
            e.body().error.param.as_deref(),
            Some("response_format.json_schema.schema")
        );
        assert!(e.to_string().contains("unevaluatedItems"), "{e}");
    }
}
