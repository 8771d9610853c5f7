//! OpenAI request -> prompt, and model output -> OpenAI message / stream deltas.

use harmony::openai::{
    apply_delta, classify, usage, CallIds, DeltaMapper, ParsedResponse, ResponseAccumulator,
    SeedContext, StopCause, Target, ToolGate,
};
use harmony::parser::{Event, TextParser, TokenParser};
use harmony::render::{RenderError, RequestOptions};
use harmony::{Renderer, Role, Tokenizer};
use openai_types::{ChatCompletionRequest, ChatDelta, FinishReason};
use proptest::prelude::*;
use serde_json::json;

fn tok() -> Tokenizer {
    Tokenizer::o200k_harmony().expect("built-in tokenizer")
}

fn req(v: serde_json::Value) -> ChatCompletionRequest {
    serde_json::from_value(v).expect("request")
}

fn render_text(v: serde_json::Value, opts: &RequestOptions) -> String {
    let t = tok();
    let ids = Renderer::new(&t)
        .render_request(&req(v), opts)
        .expect("render");
    t.decode(&ids)
}

#[test]
fn request_renders_system_developer_tools_and_turns_like_the_harmony_format() {
    let text = render_text(
        json!({
            "reasoning_effort": "low",
            "messages": [
                {"role": "system", "content": "Always answer in one word."},
                {"role": "developer", "content": "Be polite."},
                {"role": "user", "content": "Weather in SF?"},
                {"role": "assistant", "content": "Let me check.", "reasoning_content": "Need the tool.",
                 "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"SF\"}"}}]},
                {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 20}"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Gets the weather.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "now"}}]
        }),
        &RequestOptions {
            conversation_start_date: Some("2025-06-28".into()),
            ..RequestOptions::default()
        },
    );
    let want = "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: low\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.\nCalls to these tools must go to the commentary channel: 'functions'.<|end|>\
<|start|>developer<|message|># Instructions\n\nAlways answer in one word.\n\nBe polite.\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n// Gets the weather.\ntype get_weather = (_: {\ncity: string,\n}) => any;\n\ntype now = () => any;\n\n} // namespace functions<|end|>\
<|start|>user<|message|>Weather in SF?<|end|>\
<|start|>assistant<|channel|>analysis<|message|>Need the tool.<|end|>\
<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>\
<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{\"city\":\"SF\"}<|call|>\
<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"temp\": 20}<|end|>\
<|start|>assistant";
    assert_eq!(text, want);
}

#[test]
fn dotted_tool_names_render_in_their_own_namespace_and_are_called_by_it() {
    let text = render_text(
        json!({
            "messages": [
                {"role": "user", "content": "Find customer 7."},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "crm.lookup", "arguments": "{\"id\":7}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "Ada"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather"}},
                      {"type": "function", "function": {"name": "crm.lookup", "description": "Finds a customer."}}]
        }),
        &RequestOptions::default(),
    );
    assert!(
        text.contains("## crm\n\nnamespace crm {\n\n// Finds a customer.\ntype lookup = () => any;\n\n} // namespace crm"),
        "{text}"
    );
    assert!(
        text.contains("namespace functions {\n\ntype get_weather"),
        "{text}"
    );
    assert!(
        text.contains("<|start|>assistant to=crm.lookup<|channel|>commentary <|constrain|>json<|message|>{\"id\":7}<|call|>"),
        "{text}"
    );
    assert!(
        text.contains("<|start|>crm.lookup to=assistant<|channel|>commentary<|message|>Ada<|end|>"),
        "{text}"
    );
}

#[test]
fn earlier_analysis_is_dropped_after_a_final_answer() {
    let text = render_text(
        json!({"messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "simple sum"},
            {"role": "user", "content": "3+3?"}
        ]}),
        &RequestOptions::default(),
    );
    assert!(!text.contains("simple sum"), "{text}");
    assert!(text.ends_with("<|start|>assistant<|channel|>final<|message|>4<|end|><|start|>user<|message|>3+3?<|end|><|start|>assistant"));
}

#[test]
fn unknown_tool_call_id_is_an_error_naming_the_field() {
    let t = tok();
    let err = Renderer::new(&t)
        .render_request(
            &req(json!({"messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_missing", "content": "x"}
            ]})),
            &RequestOptions::default(),
        )
        .expect_err("no call has that id");
    match err {
        RenderError::InvalidRequest { param, .. } => assert_eq!(param, "messages[1].tool_call_id"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn response_format_json_schema_goes_to_the_developer_message() {
    let text = render_text(
        json!({"messages": [{"role": "user", "content": "List"}],
               "response_format": {"type": "json_schema", "json_schema": {"name": "shopping_list", "description": "A list",
                   "schema": {"type": "object", "properties": {"items": {"type": "array"}}}}}}),
        &RequestOptions::default(),
    );
    assert!(
        text.contains("<|start|>developer<|message|># Response Formats\n\n## shopping_list\n\n// A list\n{\"type\":\"object\",\"properties\":{\"items\":{\"type\":\"array\"}}}<|end|>"),
        "{text}"
    );
}

/// Parses `text` both ways, with calls allowed to `get_weather`.
fn parse_all(text: &str, cause: StopCause) -> (ParsedResponse, Vec<ChatDelta>) {
    let gate = ToolGate::allow(["get_weather"]);
    let mut p = TextParser::new(Some(Role::Assistant));
    let mut acc = ResponseAccumulator::with_call_ids(gate.clone(), CallIds::sequential("call_"));
    let mut mapper = DeltaMapper::with_call_ids(gate, CallIds::sequential("call_"));
    let mut deltas = Vec::new();
    let mut on = |e: Event<'_>| {
        acc.on_event(e);
        mapper.on_event(e, &mut deltas);
    };
    p.push_str(text, &mut on);
    p.finish(&mut on);
    let whole = acc.finish(cause);
    let streamed = mapper.finish(cause, None, &mut deltas);
    assert_eq!(whole, streamed, "streaming and non-streaming agree");
    (whole, deltas)
}

#[test]
fn channels_map_to_openai_fields() {
    let (r, _) = parse_all(
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary<|message|>One moment.<|end|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>",
        StopCause::Stop,
    );
    assert_eq!(r.reasoning, "Think.");
    assert_eq!(r.commentary, "One moment.");
    // the preamble is shown to the user, ahead of the answer and apart from it
    assert_eq!(r.content, "One moment.\nAnswer.");
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
    let m = r.to_message(None);
    assert_eq!(m.role, "assistant");
    assert_eq!(m.content.as_deref(), Some("One moment.\nAnswer."));
    assert_eq!(m.reasoning_content.as_deref(), Some("Think."));
    assert_eq!(m.reasoning.as_deref(), Some("Think."));
    assert_eq!(m.tool_calls, None);
    assert_eq!(m.thinking, None);
    assert_eq!(m.parsed, None);
}

#[test]
fn tool_calls_get_ids_json_arguments_and_finish_reason_tool_calls() {
    let (r, deltas) = parse_all(
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"SF\"}<|call|>",
        StopCause::Stop,
    );
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "call_0");
    assert_eq!(r.tool_calls[0].kind, "function");
    assert_eq!(r.tool_calls[0].function.name, "get_weather");
    let args: serde_json::Value =
        serde_json::from_str(&r.tool_calls[0].function.arguments).expect("JSON arguments");
    assert_eq!(args, json!({"city": "SF"}));
    let m = r.to_message(None);
    assert_eq!(
        m.content, None,
        "content is null when the model only called tools"
    );
    // first delta has the role, reasoning never leaks into content
    assert_eq!(deltas[0].role.as_deref(), Some("assistant"));
    assert!(deltas.iter().all(|d| d.content.is_none()));
    let mut rebuilt = ParsedResponse::default();
    for d in &deltas {
        apply_delta(&mut rebuilt, d);
    }
    assert_eq!(rebuilt.tool_calls, r.tool_calls);
    assert_eq!(rebuilt.reasoning, r.reasoning);
}

#[test]
fn random_call_ids_look_like_openai_ids() {
    let mut ids = CallIds::random();
    let a = ids.next_id();
    let b = ids.next_id();
    assert!(a.starts_with("call_") && a.len() == 29, "{a}");
    assert_ne!(a, b);
}

#[test]
fn cut_off_output_finishes_with_length() {
    let (r, _) = parse_all(
        "<|channel|>analysis<|message|>Long thought that never",
        StopCause::Length,
    );
    assert_eq!(r.finish_reason, Some(FinishReason::Length));
    let (r, _) = parse_all(
        "<|channel|>final<|message|>Done<|return|>",
        StopCause::Length,
    );
    assert_eq!(r.finish_reason, Some(FinishReason::Length));
    let (r, _) = parse_all("<|channel|>final<|message|>Done<|return|>", StopCause::Stop);
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
}

#[test]
fn unknown_channels_and_missing_headers_become_content_when_there_is_no_final_message() {
    assert_eq!(
        parse_all("Plain answer", StopCause::Stop).0.content,
        "Plain answer"
    );
    assert_eq!(
        parse_all("<|channel|>shout<|message|>HI<|end|>", StopCause::Stop)
            .0
            .content,
        "HI"
    );
    // the model imitating a tool's answer is dropped
    let (r, _) = parse_all(
        "<|channel|>final<|message|>A<|end|><|start|>functions.x to=assistant<|channel|>commentary<|message|>fake<|end|>",
        StopCause::Stop,
    );
    assert_eq!(r.content, "A");
    assert_eq!(
        classify(&harmony::parser::Header {
            role: Role::Assistant,
            channel: Some("analysis".into()),
            recipient: Some("functions.f".into()),
            ..Default::default()
        }),
        Target::ToolCall("f".into())
    );
}

#[test]
fn seed_shape_with_separate_thinking() {
    let request = req(json!({"messages": [
        {"role": "system", "content": "Always answer in just single word."},
        {"role": "user", "content": "What is the capital of the US?"}
    ], "separate_thinking": true}));
    let seed = SeedContext::from_request(&request);
    let (r, _) = parse_all(
        "<|channel|>analysis<|message|>User asks capital.<|end|><|start|>assistant<|channel|>commentary<|message|>Policy ok.<|end|><|start|>assistant<|channel|>final<|message|>Washington<|return|>",
        StopCause::Stop,
    );
    let m = serde_json::to_value(r.to_message(Some(&seed))).expect("json");
    assert_eq!(
        m,
        json!({
            "role": "assistant",
            "content": "Policy ok.\nWashington",
            "reasoning_content": "User asks capital.",
            "reasoning": "User asks capital.",
            "refusal": null,
            "thinking": {"analysis": "User asks capital.", "commentary": "Policy ok."},
            "parsed": {
                "developer_instructions": "Always answer in just single word.",
                "history": [{"role": "user", "content": "What is the capital of the US?"}],
                "analysis": "User asks capital.",
                "commentary": "Policy ok.",
                "final": "Policy ok.\nWashington"
            }
        })
    );
    // streaming: the last delta carries the same thinking and parsed
    let mut p = TextParser::new(Some(Role::Assistant));
    let mut mapper = DeltaMapper::new(ToolGate::none());
    let mut deltas = Vec::new();
    p.push_str(
        "<|channel|>final<|message|>Washington<|return|>",
        &mut |e| mapper.on_event(e, &mut deltas),
    );
    p.finish(&mut |e| mapper.on_event(e, &mut deltas));
    mapper.finish(StopCause::Stop, Some(&seed), &mut deltas);
    let last = deltas.last().expect("deltas");
    assert_eq!(
        last.parsed.as_ref().and_then(|p| p.final_.as_deref()),
        Some("Washington")
    );
    assert!(last.thinking.is_some());
}

#[test]
fn usage_counts_analysis_tokens_as_thinking_tokens() {
    let t = tok();
    let ids = t
        .encode_with_special_tokens("<|channel|>analysis<|message|>one two three<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>")
        .expect("encode");
    let mut p = TokenParser::new(&t, Some(Role::Assistant));
    p.push_all(&ids, &mut |_| {});
    p.finish(&mut |_| {});
    let u = usage(10, p.counts());
    assert_eq!(u.completion_tokens as usize, ids.len());
    assert_eq!(u.thinking_tokens, Some(3));
    assert_eq!(
        u.completion_tokens_details.map(|d| d.reasoning_tokens),
        Some(3)
    );
    assert_eq!(u.total_tokens, 10 + ids.len() as u32);
}

const FRAGS: &[&str] = &[
    "<|start|>assistant",
    "<|channel|>analysis",
    "<|channel|>commentary",
    "<|channel|>final",
    " to=functions.get_weather",
    " <|constrain|>json",
    "<|message|>",
    "<|end|>",
    "<|call|>",
    "<|return|>",
    "Hello",
    " 👋🏽",
    "{\"a\": 1}",
    "\n",
    "日本",
];

proptest! {
    /// Streamed deltas, applied as a client applies them, rebuild the non-streamed message.
    #[test]
    fn deltas_rebuild_the_non_streamed_response(frags in prop::collection::vec(prop::sample::select(FRAGS), 0..30)) {
        let (whole, deltas) = parse_all(&frags.concat(), StopCause::Stop);
        let mut rebuilt = ParsedResponse::default();
        for d in &deltas {
            prop_assert!(d.content.as_deref() != Some(""), "no empty content deltas");
            apply_delta(&mut rebuilt, d);
        }
        rebuilt.finish_reason = whole.finish_reason;
        prop_assert_eq!(rebuilt, whole);
    }
}

#[test]
fn token_limit_refuses_a_prompt_larger_than_the_limit_and_never_one_that_fits() {
    let t = tok();
    let opts = RequestOptions {
        conversation_start_date: Some("2026-01-01".into()),
        ..RequestOptions::default()
    };
    let words: String = (0..400).map(|i| format!("word{i} ")).collect();
    let small = req(json!({"messages": [{"role": "user", "content": words}]}));
    let full = Renderer::new(&t)
        .render_request(&small, &opts)
        .expect("render");
    for limit in [full.len(), full.len() + 1, full.len() * 2] {
        let ids = Renderer::with_token_limit(&t, limit)
            .render_request(&small, &opts)
            .unwrap_or_else(|e| {
                panic!(
                    "a {}-token prompt refused at limit {limit}: {e}",
                    full.len()
                )
            });
        assert_eq!(ids, full, "the limit must not change what is rendered");
    }
    match Renderer::with_token_limit(&t, 100).render_request(&small, &opts) {
        Err(RenderError::TooManyTokens { at_least, limit }) => {
            assert_eq!(limit, 100);
            assert!(
                at_least > 100 && at_least <= full.len(),
                "{at_least} vs {}",
                full.len()
            );
        }
        other => panic!("expected TooManyTokens, got {other:?}"),
    }
}

#[test]
fn token_limit_refuses_a_huge_text_from_its_length_before_encoding_it() {
    let t = tok();
    // 8 MiB of text: every token stands for a bounded number of bytes, so the lower bound
    // alone is far over the limit; the refusal names it without tokenizing the text.
    let huge = "lorem ipsum dolor sit amet ".repeat((8 << 20) / 27);
    let request = req(json!({"messages": [{"role": "user", "content": huge}]}));
    let lower = t.min_tokens_for_bytes(huge.len());
    assert!(
        lower > 4096,
        "the bound {lower} is too weak to refuse without encoding"
    );
    match Renderer::with_token_limit(&t, 4096).render_request(&request, &RequestOptions::default())
    {
        Err(RenderError::TooManyTokens { at_least, limit }) => {
            assert_eq!(limit, 4096);
            assert!(at_least >= lower, "{at_least} < {lower}");
        }
        other => panic!("expected TooManyTokens, got {other:?}"),
    }
    // The bound is a true lower bound on a real encoding.
    let sample = &huge[..1 << 16];
    let n = t.encode_ordinary(sample).expect("encode").len();
    assert!(t.min_tokens_for_bytes(sample.len()) <= n);
}
