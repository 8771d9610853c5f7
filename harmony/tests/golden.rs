//! Golden tests: the reference's own fixtures (`tests/data`, from openai-harmony 0.0.8), with
//! the conversations its tests render and the completions its tests parse.

use harmony::parser::{self, EndReason, Header, ParsedMessage};
use harmony::{
    ChannelConfig, ConversationConfig, DeveloperContent, Message, ReasoningEffort, Renderer, Role,
    SystemContent, Tokenizer, ToolDescription, ToolNamespace,
};
use serde_json::json;

fn tok() -> Tokenizer {
    Tokenizer::o200k_harmony().expect("built-in tokenizer")
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
        .replace("\r\n", "\n")
        .trim_end()
        .to_string()
}

const IDENTITY: &str = "You are ChatGPT, a large language model trained by OpenAI.";

fn sys() -> SystemContent {
    SystemContent::default()
}

/// Renders for completion (no analysis dropping unless asked) and compares token ids with the
/// fixture encoded with special tokens.
fn assert_renders_tokens(messages: &[Message], config: ConversationConfig, name: &str) {
    let t = tok();
    let got = Renderer::new(&t)
        .render_for_completion(messages, Role::Assistant, config)
        .expect("render");
    let want = t
        .encode_with_special_tokens(&fixture(name))
        .expect("encode fixture");
    assert_eq!(
        got,
        want,
        "{name}: tokens differ\n--- ours\n{}\n--- fixture\n{}",
        t.decode(&got),
        t.decode(&want)
    );
}

/// Compares decoded text, as the reference's tests of these fixtures do.
fn assert_renders_text(messages: &[Message], config: ConversationConfig, name: &str) {
    let t = tok();
    let got = Renderer::new(&t)
        .render_for_completion(messages, Role::Assistant, config)
        .expect("render");
    assert_eq!(t.decode(&got), fixture(name), "{name}");
}

const NO_DROP: ConversationConfig = ConversationConfig {
    auto_drop_analysis: false,
};
const DROP: ConversationConfig = ConversationConfig {
    auto_drop_analysis: true,
};

#[test]
fn test_simple_convo() {
    assert_renders_tokens(
        &[
            Message::new(Role::System, sys().with_model_identity(IDENTITY)),
            Message::new(Role::User, "What is 2 + 2?"),
        ],
        NO_DROP,
        "test_simple_convo.txt",
    );
}

#[test]
fn test_simple_convo_with_effort() {
    let q = "What is the capital of the largest country in the world?";
    for (effort, name, with_instructions) in [
        (
            ReasoningEffort::Low,
            "test_simple_convo_low_effort.txt",
            true,
        ),
        (
            ReasoningEffort::Medium,
            "test_simple_convo_medium_effort.txt",
            true,
        ),
        (
            ReasoningEffort::High,
            "test_simple_convo_high_effort.txt",
            true,
        ),
        (
            ReasoningEffort::Low,
            "test_simple_convo_low_effort_no_instruction.txt",
            false,
        ),
        (
            ReasoningEffort::Medium,
            "test_simple_convo_medium_effort_no_instruction.txt",
            false,
        ),
        (
            ReasoningEffort::High,
            "test_simple_convo_high_effort_no_instruction.txt",
            false,
        ),
    ] {
        let mut convo = vec![Message::new(
            Role::System,
            sys()
                .with_model_identity(IDENTITY)
                .with_reasoning_effort(effort),
        )];
        if with_instructions {
            convo.push(Message::new(
                Role::Developer,
                DeveloperContent::default()
                    .with_instructions("Answer the user's questions like a robot."),
            ));
        }
        convo.push(Message::new(Role::User, q));
        assert_renders_tokens(&convo, NO_DROP, name);
    }
}

#[test]
fn test_reasoning_system_message() {
    assert_renders_tokens(
        &[
            Message::new(
                Role::System,
                sys()
                    .with_reasoning_effort(ReasoningEffort::Medium)
                    .with_channel_config(Some(ChannelConfig::require(&["analysis", "final"]))),
            ),
            Message::new(Role::User, "What is 2 + 2?"),
        ],
        NO_DROP,
        "test_reasoning_system_message.txt",
    );
}

#[test]
fn test_reasoning_system_message_no_instruction() {
    assert_renders_tokens(
        &[
            Message::new(
                Role::System,
                sys()
                    .with_reasoning_effort(ReasoningEffort::High)
                    .with_channel_config(Some(ChannelConfig::require(&["analysis", "final"]))),
            ),
            Message::new(
                Role::User,
                "What is the best place to eat candy in the world?",
            ),
        ],
        NO_DROP,
        "test_reasoning_system_message_no_instruction.txt",
    );
}

#[test]
fn test_reasoning_system_message_with_dates() {
    assert_renders_tokens(
        &[
            Message::new(
                Role::System,
                sys()
                    .with_reasoning_effort(ReasoningEffort::Medium)
                    .with_conversation_start_date("2021-01-01")
                    .with_knowledge_cutoff("2021-01")
                    .with_channel_config(Some(ChannelConfig::require(&["analysis", "final"]))),
            ),
            Message::new(Role::User, "What is 42 * pi?"),
        ],
        NO_DROP,
        "test_reasoning_system_message_with_dates.txt",
    );
}

/// Functions without parameters, enums with defaults, arrays, descriptions, titles, examples,
/// nullable and oneOf all render as the reference renders them.
#[test]
fn test_render_functions_with_parameters() {
    let dev = DeveloperContent::default()
        .with_instructions("Always respond in riddles")
        .with_function_tools(vec![
            ToolDescription::new("get_location", "Gets the location of the user.", None),
            ToolDescription::new(
                "get_current_weather",
                "Gets the current weather in the provided location.",
                Some(json!({
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                        "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
                    },
                    "required": ["location"]
                })),
            ),
            ToolDescription::new(
                "get_multiple_weathers",
                "Gets the current weather in the provided list of locations.",
                Some(json!({
                    "type": "object",
                    "properties": {
                        "locations": {"type": "array", "items": {"type": "string"}, "description": "List of city and state, e.g. [\"San Francisco, CA\", \"New York, NY\"]"},
                        "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
                    },
                    "required": ["locations"]
                })),
            ),
            ToolDescription::new(
                "kitchensink",
                "A function with various complex schemas.",
                Some(json!({
                    "description": "params object",
                    "type": "object",
                    "properties": {
                        "string": {"type": "string", "title": "STRING", "description": "A string", "examples": ["hello", "world"]},
                        "string_nullable": {"type": "string", "nullable": true, "description": "A nullable string", "default": "the default"},
                        "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
                        "oneof_string_or_number": {
                            "oneOf": [
                                {"type": "string", "default": "default_string_in_oneof"},
                                {"type": "number", "description": "numbers can happen too"}
                            ],
                            "description": "a oneof",
                            "default": 20
                        }
                    }
                })),
            ),
        ]);
    assert_renders_text(
        &[
            Message::new(
                Role::System,
                sys()
                    .with_reasoning_effort(ReasoningEffort::High)
                    .with_conversation_start_date("2025-06-28"),
            ),
            Message::new(Role::Developer, dev),
            Message::new(Role::User, "What is the weather like in SF?"),
        ],
        NO_DROP,
        "test_render_functions_with_parameters.txt",
    );
}

#[test]
fn test_browser_and_python_tool() {
    assert_renders_text(
        &[Message::new(
            Role::System,
            sys()
                .with_conversation_start_date("2025-06-28")
                .with_tools(ToolNamespace::browser())
                .with_tools(ToolNamespace::python()),
        )],
        NO_DROP,
        "test_browser_and_python_tool.txt",
    );
}

#[test]
fn test_no_tools() {
    assert_renders_text(
        &[Message::new(
            Role::System,
            sys().with_conversation_start_date("2025-06-28"),
        )],
        DROP,
        "test_no_tools.txt",
    );
}

#[test]
fn test_browser_tool_only() {
    assert_renders_text(
        &[Message::new(
            Role::System,
            sys()
                .with_conversation_start_date("2025-06-28")
                .with_tools(ToolNamespace::browser()),
        )],
        DROP,
        "test_browser_tool_only.txt",
    );
}

#[test]
fn test_browser_and_function_tool() {
    assert_renders_text(
        &[
            Message::new(
                Role::System,
                sys()
                    .with_conversation_start_date("2025-06-28")
                    .with_tools(ToolNamespace::browser()),
            ),
            Message::new(
                Role::Developer,
                DeveloperContent::default().with_function_tools(vec![ToolDescription::new(
                    "lookup_weather",
                    "Use this tool to lookup the weather in a given location. Call it with the parameter 'location', can be any textual description of a location.",
                    Some(json!({
                        "type": "object",
                        "properties": {"location": {"type": "string"}},
                        "required": ["location"]
                    })),
                )]),
            ),
        ],
        DROP,
        "test_browser_and_function_tool.txt",
    );
}

#[test]
fn test_dropping_cot_by_default() {
    assert_renders_text(
        &[
            Message::new(Role::User, "What is 2 + 2?"),
            Message::new(
                Role::Assistant,
                "User asks: “What is 2 + 2?” Simple arithmetic. Provide answer.",
            )
            .with_channel("analysis"),
            Message::new(Role::Assistant, "2 + 2 equals 4.").with_channel("final"),
            Message::new(Role::User, "What about 9 / 2?"),
        ],
        DROP,
        "test_dropping_cot_by_default.txt",
    );
}

#[test]
fn test_does_not_drop_if_ongoing_analysis() {
    assert_renders_text(
        &[
            Message::new(Role::User, "What is the weather in SF?"),
            Message::new(
                Role::Assistant,
                "User asks: “What is the weather in SF?” We need to use lookup_weather tool.",
            )
            .with_channel("analysis"),
            Message::new(Role::Assistant, "{\"location\": \"San Francisco\"}")
                .with_channel("commentary")
                .with_recipient("functions.lookup_weather")
                .with_content_type("<|constrain|>json"),
            Message::new(
                Role::Tool,
                "{\"temperature\": 20, \"description\": \"sunny\"}",
            )
            .with_name("functions.lookup_weather"),
        ],
        DROP,
        "test_does_not_drop_if_ongoing_analysis.txt",
    );
}

#[test]
fn test_preserve_cot() {
    assert_renders_text(
        &[
            Message::new(Role::User, "What is 2 + 2?"),
            Message::new(
                Role::Assistant,
                "User asks a simple question: \"What is 2 + 2?\" The answer: 4.",
            )
            .with_channel("analysis"),
            Message::new(Role::Assistant, "2 + 2 equals 4.").with_channel("final"),
            Message::new(Role::User, "What about 9 / 2?"),
        ],
        NO_DROP,
        "test_preserve_cot.txt",
    );
}

#[test]
fn test_keep_analysis_between_finals() {
    let t = tok();
    let mut got = Vec::new();
    Renderer::new(&t)
        .render_conversation_into(
            &[
                Message::new(Role::User, "What is 2 + 2?"),
                Message::new(Role::Assistant, "thinking 2+2").with_channel("analysis"),
                Message::new(Role::Assistant, "4").with_channel("final"),
                Message::new(Role::User, "What is 3 + 5?"),
                Message::new(Role::Assistant, "thinking 3+5").with_channel("analysis"),
                Message::new(Role::Assistant, "8").with_channel("final"),
            ],
            DROP,
            &mut got,
        )
        .expect("render");
    assert_eq!(
        t.decode(&got),
        fixture("test_keep_analysis_between_finals.txt")
    );
}

fn msg(role: Role, channel: Option<&str>, content: &str) -> ParsedMessage {
    ParsedMessage {
        header: Header {
            role,
            channel: channel.map(str::to_string),
            ..Header::default()
        },
        content: content.to_string(),
        end: Some(EndReason::End),
    }
}

fn ids_of(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|s| s.parse().expect("token id"))
        .collect()
}

#[test]
fn test_simple_reasoning_response() {
    let ids = ids_of(&fixture("test_simple_reasoning_response.txt"));
    let got = parser::parse_completion_tokens(&tok(), &ids);
    let mut want = vec![
        msg(
            Role::Assistant,
            Some("analysis"),
            "User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer.",
        ),
        msg(Role::Assistant, Some("final"), "2 + 2 = 4."),
    ];
    // the fixture ends the analysis with `<|return|>` and the final is cut off
    want[0].end = Some(EndReason::Return);
    want[1].end = Some(EndReason::Eof);
    assert_eq!(got, want);
}

#[test]
fn test_simple_tool_call() {
    let ids = ids_of(&fixture("test_simple_tool_call.txt"));
    let got = parser::parse_completion_tokens(&tok(), &ids);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0].content,
        "User asks: \"What is the weather in Tokyo?\" We need to use lookup_weather tool."
    );
    assert_eq!(got[0].header.channel.as_deref(), Some("analysis"));
    assert_eq!(got[1].content, "{\"location\": \"Tokyo\"}");
    assert_eq!(got[1].header.channel.as_deref(), Some("analysis"));
    assert_eq!(got[1].header.recipient.as_deref(), Some("lookup_weather"));
    assert_eq!(got[1].header.content_type.as_deref(), Some("code"));
}

#[test]
fn test_tool_response_parsing() {
    let t = tok();
    let text = fixture("test_tool_response_parsing.txt");
    let ids = t.encode_with_special_tokens(&text).expect("encode");
    assert_eq!(t.decode(&ids), text);
    let mut p = parser::TokenParser::new(&t, None);
    let mut c = parser::MessageCollector::default();
    for id in ids {
        p.push(id, &mut |e| c.on_event(e));
    }
    p.finish(&mut |e| c.on_event(e));
    assert_eq!(c.messages.len(), 1);
    let m = &c.messages[0];
    assert_eq!(m.header.role, Role::Tool);
    assert_eq!(m.header.name.as_deref(), Some("browser.search"));
    assert_eq!(m.header.channel.as_deref(), Some("commentary"));
    assert_eq!(m.header.recipient.as_deref(), Some("assistant"));
    assert_eq!(m.content, "{\"result\": \"https://openai.com/\"}");
}

#[test]
fn test_streamable_parser() {
    let t = tok();
    let ids = t
        .encode_with_special_tokens(&fixture("test_streamable_parser.txt"))
        .expect("encode");
    let got = parser::parse_completion_tokens(&t, &ids);
    // The reference counts 3 finished messages; the 4th is cut off (our Eof message).
    let finished: Vec<_> = got
        .iter()
        .filter(|m| m.end != Some(EndReason::Eof))
        .collect();
    assert_eq!(finished.len(), 3, "{got:#?}");
    assert_eq!(got[1].header.recipient.as_deref(), Some("browser.search"));
    assert_eq!(got[1].header.content_type.as_deref(), Some("code"));
    assert_eq!(got[1].end, Some(EndReason::Call));
}

#[test]
fn test_tool_call_with_constrain_marker_adjacent() {
    for text in [
        "<|start|>assistant to=functions.get_weather<|channel|>commentary<|constrain|>json<|message|>{\"location\": \"Tokyo\"}<|end|>",
        "<|start|>assistant<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>{\"location\": \"Tokyo\"}<|call|>",
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{\"location\": \"Tokyo\"}<|call|>",
    ] {
        let got = parser::parse_text(text, None);
        assert_eq!(got.len(), 1, "{text}");
        let h = &got[0].header;
        assert_eq!(h.role, Role::Assistant);
        assert_eq!(h.channel.as_deref(), Some("commentary"));
        assert_eq!(h.recipient.as_deref(), Some("functions.get_weather"));
        assert_eq!(h.content_type.as_deref(), Some("<|constrain|>json"));
        assert_eq!(got[0].content, "{\"location\": \"Tokyo\"}");
    }
}

/// A header closed before `<|message|>` yields no text: its words may be header words
/// (`to=`, a content type) and never reach the answer. The reference, in non-strict mode,
/// recovers `Hello` as content here; the documented rule wins.
#[test]
fn test_missing_message_token_yields_no_text() {
    let got = parser::parse_text("<|channel|>commentary Hello<|end|>", Some(Role::Assistant));
    assert!(got.is_empty(), "{got:?}");
    // text where a header belongs, without header tokens, is still text
    let got = parser::parse_text("Hello<|end|>", Some(Role::Assistant));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header.channel, None);
    assert_eq!(got[0].content, "Hello");
}

#[test]
fn test_streamable_parser_flushes_partial_bytes_on_eos() {
    let t = tok();
    let mut ids = t
        .encode_with_special_tokens("<|start|>assistant<|message|>")
        .expect("encode");
    ids.push(9552);
    ids.extend(t.encode_ordinary("Hi").expect("encode"));
    let mut p = parser::TokenParser::new(&t, None);
    let mut c = parser::MessageCollector::default();
    p.push_all(&ids, &mut |e| c.on_event(e));
    p.finish(&mut |e| c.on_event(e));
    assert_eq!(c.messages.len(), 1);
    assert_eq!(c.messages[0].content, " \u{FFFD}Hi");
}

#[test]
fn test_streamable_parser_does_not_leak_bytes_between_messages() {
    let t = tok();
    let mut ids = t
        .encode_with_special_tokens("<|start|>assistant<|message|>")
        .expect("encode");
    ids.extend([9552, 9552]);
    ids.extend(
        t.encode_with_special_tokens("<|end|><|start|>assistant<|message|>Hi<|end|>")
            .expect("encode"),
    );
    let got = parser::parse_completion_tokens(&t, &ids);
    let got: Vec<_> = got
        .into_iter()
        .filter(|m| m.header.role == Role::Assistant)
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].content, "Hi");
    assert_eq!(got[1].header.channel, None);
}

#[test]
fn test_parse_completion_with_invalid_content_token() {
    let t = tok();
    let mut ids = t
        .encode_with_special_tokens(
            "<|start|>assistant<|channel|>analysis<|message|>Practice invalid token handling.",
        )
        .expect("encode");
    ids.push(u32::MAX);
    let mut p = parser::TokenParser::new(&t, None);
    let mut c = parser::MessageCollector::default();
    p.push_all(&ids, &mut |e| c.on_event(e));
    p.finish(&mut |e| c.on_event(e));
    assert_eq!(
        c.messages[0].content,
        "Practice invalid token handling.\u{FFFD}"
    );
    assert_eq!(c.messages[0].end, Some(EndReason::Eof));
}
