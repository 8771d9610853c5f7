//! JSON Schema -> the TypeScript-like type the reference writes in the tools section.
//!
//! A line-by-line port of `openai-harmony`'s `json_schema_to_typescript` (0.0.8), so that
//! every schema renders to exactly the same text.

use serde_json::Value;
use std::fmt::Write as _;

fn is_enum(schema: &Value) -> bool {
    schema
        .get("enum")
        .and_then(|e| e.as_array())
        .is_some_and(|arr| !arr.is_empty())
}

fn is_nullable(schema: &Value) -> bool {
    schema
        .get("nullable")
        .and_then(|n| n.as_bool())
        .unwrap_or(false)
}

/// `default: "x"` for a string default outside an enum, `default: x` for an enum's string,
/// `default: <json>` otherwise.
fn default_comment(schema: &Value, default: &Value) -> String {
    match default.as_str() {
        Some(s) if !is_enum(schema) => format!("default: \"{s}\""),
        Some(s) => format!("default: {s}"),
        None => format!("default: {default}"),
    }
}

/// The TypeScript type of `schema`, with nested lines indented by `indent`.
pub fn json_schema_to_typescript(schema: &Value, indent: &str) -> String {
    if let Some(arr) = schema.get("oneOf").and_then(|v| v.as_array()) {
        let mut out = String::new();
        let mut first = true;
        for variant in arr {
            if !first {
                out.push('\n');
                let _ = write!(out, "{indent} | ");
            } else {
                let _ = write!(out, "\n{indent} | ");
                first = false;
            }
            let mut type_str = json_schema_to_typescript(variant, &format!("{indent}   "));
            if is_nullable(variant) && !type_str.contains("null") {
                type_str.push_str(" | null");
            }
            out.push_str(&type_str);
            let mut trailing = Vec::new();
            if let Some(desc) = variant.get("description").and_then(|d| d.as_str()) {
                trailing.push(desc.to_string());
            }
            if let Some(default) = variant.get("default") {
                // The reference's top-level variant rule: an enum's string default is written
                // as JSON (quoted).
                if default.is_string() && !is_enum(variant) {
                    trailing.push(format!("default: \"{}\"", default.as_str().unwrap_or("")));
                } else {
                    trailing.push(format!("default: {default}"));
                }
            }
            if !trailing.is_empty() {
                let _ = write!(out, " // {}", trailing.join(" "));
            }
        }
        return out;
    }
    if let Some(types) = schema.get("type").and_then(|v| v.as_array()) {
        let names: Vec<&str> = types
            .iter()
            .filter_map(|t| t.as_str())
            .map(|t| if t == "integer" { "number" } else { t })
            .collect();
        if !names.is_empty() {
            return names.join(" | ");
        }
    }
    if let Some(ty) = schema.get("type").and_then(|v| v.as_str()) {
        return match ty {
            "object" => object_to_typescript(schema, indent),
            "string" => {
                if let Some(arr) = schema.get("enum").and_then(|e| e.as_array()) {
                    let enums: Vec<String> = arr
                        .iter()
                        .filter_map(|v| v.as_str().map(|s| format!("\"{s}\"")))
                        .collect();
                    if !enums.is_empty() {
                        return enums.join(" | ");
                    }
                }
                "string".to_string()
            }
            "number" | "integer" => "number".to_string(),
            "boolean" => "boolean".to_string(),
            "array" => match schema.get("items") {
                Some(items) => format!("{}[]", json_schema_to_typescript(items, indent)),
                None => "Array<any>".to_string(),
            },
            _ => "any".to_string(),
        };
    }
    if let Some(one_of) = schema.get("oneOf") {
        if let Some(arr) = one_of.as_array() {
            let mut out = String::new();
            let mut first = true;
            for variant in arr {
                if !first {
                    out.push_str("\n | ");
                } else {
                    first = false;
                }
                out.push_str(&json_schema_to_typescript(variant, indent));
            }
            return out;
        }
    }
    "any".to_string()
}

fn object_to_typescript(schema: &Value, indent: &str) -> String {
    let mut out = String::new();
    if let Some(desc) = schema.get("description").and_then(|d| d.as_str()) {
        let _ = writeln!(out, "{indent}// {desc}");
    }
    out.push_str("{\n");
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|arr| arr.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        for (key, val) in props {
            let optional = if required.contains(&key.as_str()) {
                ""
            } else {
                "?"
            };
            if let Some(title) = val.get("title").and_then(|t| t.as_str()) {
                let _ = write!(out, "{indent}// {title}\n{indent}//\n");
            }
            if val.get("oneOf").is_none() {
                if let Some(desc) = val.get("description").and_then(|d| d.as_str()) {
                    let _ = writeln!(out, "{indent}// {desc}");
                }
            }
            if let Some(arr) = val.get("examples").and_then(|e| e.as_array()) {
                if !arr.is_empty() {
                    let _ = writeln!(out, "{indent}// Examples:");
                    for ex in arr {
                        if let Some(ex) = ex.as_str() {
                            let _ = writeln!(out, "{indent}// - \"{ex}\"");
                        }
                    }
                }
            }
            if let Some(arr) = val.get("oneOf").and_then(|o| o.as_array()) {
                one_of_property(&mut out, key, optional, val, arr, indent);
                continue;
            }
            let _ = write!(out, "{indent}{key}{optional}: ");
            let mut type_str = json_schema_to_typescript(val, &format!("{indent}    "));
            if is_nullable(val) && !type_str.contains("null") {
                type_str.push_str(" | null");
            }
            out.push_str(&type_str);
            out.push(',');
            if val.get("oneOf").is_none() {
                if let Some(default) = val.get("default") {
                    let _ = write!(out, " // {}", default_comment(val, default));
                }
            }
            out.push('\n');
        }
    }
    let _ = write!(out, "{indent}}}");
    out
}

fn one_of_property(
    out: &mut String,
    key: &str,
    optional: &str,
    val: &Value,
    variants: &[Value],
    indent: &str,
) {
    let property_desc = val.get("description").and_then(|d| d.as_str());
    let first_desc = variants
        .first()
        .and_then(|v| v.get("description"))
        .and_then(|d| d.as_str());
    let skip_property_desc = property_desc.is_some() && property_desc == first_desc;
    let mut rendered_desc_above = false;
    if !skip_property_desc {
        if let Some(desc) = property_desc {
            let _ = writeln!(out, "{indent}// {desc}");
            rendered_desc_above = true;
        }
    }
    if let Some(default) = val.get("default") {
        let _ = writeln!(out, "{indent}// {}", default_comment(val, default));
    }
    let _ = writeln!(out, "{indent}{key}{optional}:");
    for (i, variant) in variants.iter().enumerate() {
        let _ = write!(out, "{indent} | ");
        let mut type_str = json_schema_to_typescript(variant, &format!("{indent}   "));
        if is_nullable(variant) && !type_str.contains("null") {
            type_str.push_str(" | null");
        }
        out.push_str(&type_str);
        let mut trailing = Vec::new();
        if !(i == 0 && rendered_desc_above) {
            if let Some(desc) = variant.get("description").and_then(|d| d.as_str()) {
                if Some(desc) != property_desc {
                    trailing.push(desc.to_string());
                }
            }
        }
        if let Some(default) = variant.get("default") {
            trailing.push(default_comment(variant, default));
        }
        if !trailing.is_empty() {
            let _ = write!(out, " // {}", trailing.join(" "));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{indent},");
}
