//! Where each piece of model output lands in the OpenAI answer: one test per wrong answer
//! found by feeding inputs from public bug reports against other gpt-oss servers. Each
//! checks the non-streamed answer and the streamed deltas (applied as a client applies
//! them), which must agree.

use harmony::openai::{
    apply_delta, CallIds, DeltaMapper, ParsedResponse, ResponseAccumulator, StopCause, ToolGate,
};
use harmony::parser::{parse_text, TextParser};
use harmony::Role;
use openai_types::{ChatCompletionRequest, ChatDelta, FinishReason};
use serde_json::json;

/// The non-streamed answer and the deltas for `text` (a completion after
/// `<|start|>assistant`), checking that the deltas rebuild the answer.
fn answer(text: &str, gate: &ToolGate) -> (ParsedResponse, Vec<ChatDelta>) {
    let mut acc = ResponseAccumulator::with_call_ids(gate.clone(), CallIds::sequential("call_"));
    let mut p = TextParser::new(Some(Role::Assistant));
    p.push_str(text, &mut |e| acc.on_event(e));
    p.finish(&mut |e| acc.on_event(e));
    let whole = acc.finish(StopCause::Stop);

    let mut mapper = DeltaMapper::with_call_ids(gate.clone(), CallIds::sequential("call_"));
    let mut deltas = Vec::new();
    let mut p = TextParser::new(Some(Role::Assistant));
    p.push_str(text, &mut |e| mapper.on_event(e, &mut deltas));
    p.finish(&mut |e| mapper.on_event(e, &mut deltas));
    let streamed = mapper.finish(StopCause::Stop, None, &mut deltas);
    assert_eq!(streamed, whole, "the stream's own result equals the answer");
    let mut rebuilt = ParsedResponse::default();
    for d in &deltas {
        apply_delta(&mut rebuilt, d);
    }
    rebuilt.finish_reason = whole.finish_reason;
    assert_eq!(rebuilt, whole, "deltas applied in order rebuild the answer");
    (whole, deltas)
}

fn request(v: serde_json::Value) -> ChatCompletionRequest {
    serde_json::from_value(v).expect("request")
}

const WEATHER_CALL: &str = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>";

#[test]
fn calls_to_functions_the_request_did_not_offer_are_not_tool_calls() {
    let weather = json!({"type": "function", "function": {"name": "get_weather"}});
    let other = json!({"type": "function", "function": {"name": "get_time"}});
    let user = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    for (what, req) in [
        ("no tools", json!({"messages": user})),
        (
            "tool_choice none",
            json!({"messages": user, "tools": [weather], "tool_choice": "none"}),
        ),
        (
            "tools without the name",
            json!({"messages": user, "tools": [other]}),
        ),
        (
            "a named tool_choice of another function",
            json!({"messages": user, "tools": [weather, other],
                   "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
        ),
    ] {
        let gate = ToolGate::from_request(&request(req));
        let (r, deltas) = answer(WEATHER_CALL, &gate);
        assert!(r.tool_calls.is_empty(), "{what}: {r:?}");
        assert_eq!(r.finish_reason, Some(FinishReason::Stop), "{what}");
        assert!(deltas.iter().all(|d| d.tool_calls.is_none()), "{what}");
        // the call's arguments are dropped, not shown as the answer
        assert_eq!(r.content, "", "{what}");
        assert_eq!(r.reasoning, "Need the weather.", "{what}");
    }
    for req in [
        json!({"messages": user, "tools": [weather]}),
        json!({"messages": user, "tools": [other, weather], "tool_choice": "required"}),
        json!({"messages": user, "tools": [weather], "tool_choice": "auto"}),
        json!({"messages": user, "tools": [weather, other],
               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ] {
        let (r, _) = answer(WEATHER_CALL, &ToolGate::from_request(&request(req)));
        assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].function.name, "get_weather");
        assert_eq!(
            r.tool_calls[0].function.arguments,
            "{\"location\":\"Paris\"}"
        );
    }
}

#[test]
fn a_header_closed_before_message_yields_no_text() {
    let gate = ToolGate::allow(["get_weather"]);
    for text in [
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|end|>",
        // what a `required` prefill makes the nano model write
        "<|channel|>commentary to=functions.<|end|>",
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|call|>",
        "<|channel|>analysis<|end|><|start|>assistant<|channel|>final<|message|>Hi<|return|>",
    ] {
        let (r, deltas) = answer(text, &gate);
        for d in &deltas {
            for field in [&d.content, &d.reasoning_content, &d.commentary] {
                let f = field.as_deref().unwrap_or("");
                assert!(
                    !f.contains("to=") && !f.contains("<|") && !f.contains("json"),
                    "{text}: header text in a delta: {d:?}"
                );
            }
        }
        assert!(r.tool_calls.is_empty(), "{text}: no call without content");
        assert!(!r.reasoning.contains("to="), "{text}");
        assert!(r.content.is_empty() || r.content == "Hi", "{text}: {r:?}");
    }
    assert!(parse_text(
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|end|>",
        Some(Role::Assistant)
    )
    .is_empty());
}

#[test]
fn the_recipient_is_the_to_token_wherever_it_stands_in_the_header() {
    let gate = ToolGate::allow(["get_weather"]);
    for header in [
        "<|channel|>commentary to=functions.get_weather extra junk here <|constrain|>json",
        "<|channel|>commentary <|constrain|>json to=functions.get_weather",
        "<|channel|>commentary junk to=functions.get_weather",
        " to=functions.get_weather<|channel|>commentary <|constrain|>json",
        "<|constrain|>json<|channel|>commentary to=functions.get_weather",
    ] {
        let text = format!("{header}<|message|>{{\"location\":\"Paris\"}}<|call|>");
        let (r, _) = answer(&text, &gate);
        assert_eq!(r.tool_calls.len(), 1, "{header}: {r:?}");
        assert_eq!(r.tool_calls[0].function.name, "get_weather", "{header}");
        assert_eq!(
            r.tool_calls[0].function.arguments, "{\"location\":\"Paris\"}",
            "{header}"
        );
        assert_eq!(r.content, "", "{header}: header words are not content");
        let m = parse_text(&text, Some(Role::Assistant));
        assert_eq!(
            m[0].header.channel.as_deref(),
            Some("commentary"),
            "{header}"
        );
    }
}

#[test]
fn preambles_are_content_in_json_and_sse_alike() {
    let gate = ToolGate::allow(["get_weather"]);
    let text = "<|channel|>analysis<|message|>User wants weather.<|end|><|start|>assistant<|channel|>commentary<|message|>Checking the weather now.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>";
    let (r, deltas) = answer(text, &gate);
    assert_eq!(r.content, "Checking the weather now.");
    assert_eq!(
        r.commentary, "Checking the weather now.",
        "the seed keeps it"
    );
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    let m = r.to_message(None);
    assert_eq!(m.content.as_deref(), Some("Checking the weather now."));
    assert_eq!(m.tool_calls.map(|c| c.len()), Some(1));
    let streamed: String = deltas.iter().filter_map(|d| d.content.as_deref()).collect();
    assert_eq!(streamed, "Checking the weather now.");
    assert_eq!(
        r.thinking().commentary.as_deref(),
        Some("Checking the weather now.")
    );
}

#[test]
fn text_outside_messages_is_never_glued_to_the_answer() {
    let gate = ToolGate::none();
    // stray text between messages: reasoning, apart from the analysis before it
    let (r, _) = answer(
        "<|channel|>analysis<|message|>think<|end|>stray text<|start|>assistant<|channel|>final<|message|>Answer<|return|>",
        &gate,
    );
    assert_eq!(r.content, "Answer");
    assert_eq!(r.reasoning, "think\nstray text");

    // text with no header, then analysis and final: not shown ahead of the answer
    let (r, _) = answer(
        "We need to answer about Paris.<|end|><|start|>assistant<|channel|>analysis<|message|>More thought.<|end|><|start|>assistant<|channel|>final<|message|>Paris.<|return|>",
        &gate,
    );
    assert_eq!(r.content, "Paris.");
    assert_eq!(r.reasoning, "We need to answer about Paris.\nMore thought.");

    // nothing after a stop token
    let (r, _) = answer(
        "<|channel|>final<|message|>Answer<|return|><|start|>assistant<|channel|>final<|message|>More",
        &gate,
    );
    assert_eq!(r.content, "Answer");
    let (r, _) = answer(
        &format!("{WEATHER_CALL}<|start|>assistant<|channel|>final<|message|>It is sunny."),
        &ToolGate::allow(["get_weather"]),
    );
    assert_eq!(r.content, "");
    assert_eq!(r.tool_calls.len(), 1);

    // without a final message, unplaced text stays the answer
    let (r, _) = answer("Just an answer.", &gate);
    assert_eq!(r.content, "Just an answer.");
    let (r, _) = answer(
        "<|channel|>analysis<|message|>think<|end|>An answer without a header.",
        &gate,
    );
    assert_eq!(r.content, "An answer without a header.");
    assert_eq!(r.reasoning, "think");

    // two final messages: one answer, split where the model split it
    let (r, _) = answer(
        "<|channel|>final<|message|>One.<|end|><|start|>assistant<|channel|>final<|message|>Two.<|return|>",
        &gate,
    );
    assert_eq!(r.content, "One.\nTwo.");
}
