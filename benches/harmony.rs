//! harmony against openai-harmony 0.0.8, same inputs, same run.
//!
//! `cargo bench -p benches --bench harmony` runs the criterion groups (render, token parser,
//! text parser), then prints one `ratio ...` line per pair, measured again side by side.
//! The reference loads its vocabulary offline: the o200k_base ranks embedded in tiktoken-rs are
//! written to a temporary folder named by `TIKTOKEN_ENCODINGS_BASE`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use criterion::{Criterion, Throughput};
use harmony::parser::{Event, TextParser, TokenParser};
use harmony::render::{conversation_from_request, RequestOptions};
use harmony::{Content, Message, Renderer, Role, Tokenizer};
use openai_harmony::chat as oh;
use openai_harmony::{HarmonyEncoding, HarmonyEncodingName, StreamableParser};

fn load_reference() -> HarmonyEncoding {
    let dir = std::env::temp_dir().join(format!("harmony-bench-tiktoken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let base = tiktoken_rs::o200k_base().expect("o200k_base");
    let mut file = String::with_capacity(4 << 20);
    for rank in 0..199_998u32 {
        let bytes = base.decode_bytes(&[rank]).expect("rank");
        file.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
        file.push(' ');
        file.push_str(&rank.to_string());
        file.push('\n');
    }
    std::fs::write(dir.join("o200k_base.tiktoken"), file).expect("write vocab");
    std::env::set_var("TIKTOKEN_ENCODINGS_BASE", &dir);
    openai_harmony::load_harmony_encoding(HarmonyEncodingName::HarmonyGptOss).expect("reference")
}

/// A long completion: rounds of analysis, a tool call, a preamble and a final answer, with
/// unicode, code and numbers.
fn completion_text() -> String {
    let analysis = "The user asks about the weather in Zürich and Tokyo (東京). We should call get_weather for both, compare temperatures like 21.5°C vs 27°C, and answer concisely. Let's think: 3 * 7 = 21; the sum of 1..100 is 5050. 👍 ";
    let final_ = "Here is the comparison:\n\n| city | temp |\n|---|---|\n| Zürich | 21.5 °C |\n| 東京 | 27 °C |\n\n```python\nprint(max(21.5, 27))\n```\nTokyo is warmer today. 🌤️ ";
    let mut s = String::new();
    for i in 0..20 {
        if i > 0 {
            s.push_str("<|start|>assistant");
        }
        s.push_str("<|channel|>analysis<|message|>");
        for _ in 0..4 {
            s.push_str(analysis);
        }
        s.push_str("<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\": \"Zürich, CH\", \"unit\": \"celsius\"}<|call|>");
        s.push_str(
            "<|start|>assistant<|channel|>commentary<|message|>Checking both cities now.<|end|>",
        );
        s.push_str("<|start|>assistant<|channel|>final<|message|>");
        for _ in 0..3 {
            s.push_str(final_);
        }
        s.push_str("<|end|>");
    }
    s
}

fn request() -> openai_types::ChatCompletionRequest {
    let mut messages = vec![
        serde_json::json!({"role": "system", "content": "You are a concise weather assistant. Answer in the user's language."}),
    ];
    for i in 0..6 {
        messages.push(serde_json::json!({"role": "user", "content": format!("What is the weather in city number {i}? Compare it with Zürich and 東京, please, with numbers like 21.5 °C.")}));
        messages.push(serde_json::json!({"role": "assistant", "content": null, "reasoning_content": "Need to call get_weather for the city.", "tool_calls": [{"id": format!("call_{i}"), "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Zürich\"}"}}]}));
        messages.push(serde_json::json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": "{\"temperature\": 21.5, \"unit\": \"celsius\", \"sky\": \"clear\"}"}));
        messages.push(serde_json::json!({"role": "assistant", "content": "It is 21.5 °C and clear in Zürich; 東京 is warmer at 27 °C. 🌤️"}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "And tomorrow?"}));
    serde_json::from_value(serde_json::json!({
        "messages": messages,
        "reasoning_effort": "high",
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Gets the current weather in the provided location.", "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}}, "required": ["location"]}}},
            {"type": "function", "function": {"name": "get_forecast", "description": "Forecast for the next days.", "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "days": {"type": "integer", "default": 3}, "hourly": {"type": "boolean"}}, "required": ["location"]}}},
            {"type": "function", "function": {"name": "now", "description": "Current time."}}
        ]
    }))
    .expect("request")
}

fn to_ref(m: &Message) -> oh::Message {
    let content = m
        .content
        .iter()
        .map(|c| match c {
            Content::Text(t) => oh::Content::from(t.clone()),
            Content::System(s) => oh::Content::SystemContent(
                oh::SystemContent::new()
                    .with_model_identity(s.model_identity.clone().unwrap_or_default())
                    .with_reasoning_effort(match s.reasoning_effort {
                        Some(harmony::ReasoningEffort::Low) => oh::ReasoningEffort::Low,
                        Some(harmony::ReasoningEffort::High) => oh::ReasoningEffort::High,
                        _ => oh::ReasoningEffort::Medium,
                    }),
            ),
            Content::Developer(d) => {
                let mut dev = oh::DeveloperContent::new();
                if let Some(i) = &d.instructions {
                    dev = dev.with_instructions(i.clone());
                }
                for ns in &d.tools {
                    dev = dev.with_tools(oh::ToolNamespaceConfig::new(
                        ns.name.clone(),
                        ns.description.clone(),
                        ns.tools
                            .iter()
                            .map(|t| {
                                oh::ToolDescription::new(
                                    t.name.clone(),
                                    t.description.clone(),
                                    t.parameters.clone(),
                                )
                            })
                            .collect(),
                    ));
                }
                oh::Content::DeveloperContent(dev)
            }
        })
        .collect();
    oh::Message {
        author: oh::Author {
            role: match m.role {
                Role::User => oh::Role::User,
                Role::Assistant => oh::Role::Assistant,
                Role::System => oh::Role::System,
                Role::Developer => oh::Role::Developer,
                Role::Tool => oh::Role::Tool,
            },
            name: m.name.clone(),
        },
        recipient: m.recipient.clone(),
        content,
        channel: m.channel.clone(),
        content_type: m.content_type.clone(),
    }
}

struct Inputs {
    tokenizer: Tokenizer,
    reference: HarmonyEncoding,
    ids: Vec<u32>,
    text: String,
    /// The text cut where the tokens are (byte ranges; may split characters).
    token_chunks: Vec<(usize, usize)>,
    /// The text as a stream decoder gives it, one delta per token.
    deltas: Vec<String>,
    request: openai_types::ChatCompletionRequest,
    ref_convo: Vec<oh::Message>,
}

fn inputs() -> Inputs {
    let tokenizer = Tokenizer::o200k_harmony().expect("tokenizer");
    let reference = load_reference();
    let text = completion_text();
    let ids = tokenizer.encode_with_special_tokens(&text).expect("encode");
    assert_eq!(
        ids,
        reference.tokenizer().encode_with_special_tokens(&text),
        "same ids"
    );
    let mut token_chunks = Vec::with_capacity(ids.len());
    let mut at = 0;
    for &id in &ids {
        let n = tokenizer.token_bytes(id).map_or(0, |b| b.len());
        token_chunks.push((at, at + n));
        at += n;
    }
    assert_eq!(at, text.len());
    let mut decoder = tokenizer.stream_decoder();
    let mut deltas: Vec<String> = ids.iter().map(|&id| decoder.push(id)).collect();
    deltas.push(decoder.finish());
    let request = request();
    let opts = RequestOptions::default();
    let ref_convo = conversation_from_request(&request, &opts)
        .expect("convo")
        .iter()
        .map(to_ref)
        .collect();
    Inputs {
        tokenizer,
        reference,
        ids,
        text,
        token_chunks,
        deltas,
        request,
        ref_convo,
    }
}

fn ours_token_parse(inp: &Inputs) -> usize {
    let mut p = TokenParser::new(&inp.tokenizer, Some(Role::Assistant));
    let mut bytes = 0usize;
    let mut sink = |e: Event<'_>| {
        if let Event::ContentDelta(d) = e {
            bytes += d.len();
        }
    };
    for &id in &inp.ids {
        p.push(id, &mut sink);
    }
    p.finish(&mut sink);
    bytes
}

fn reference_token_parse(inp: &Inputs) -> usize {
    let mut p =
        StreamableParser::new(inp.reference.clone(), Some(oh::Role::Assistant)).expect("parser");
    let mut bytes = 0usize;
    for &id in &inp.ids {
        p.process(id).expect("process");
        if let Ok(Some(d)) = p.last_content_delta() {
            bytes += d.len();
        }
    }
    p.process_eos().expect("eos");
    bytes
}

fn ours_text_parse_whole(inp: &Inputs) -> usize {
    let mut p = TextParser::new(Some(Role::Assistant));
    let mut bytes = 0usize;
    let mut sink = |e: Event<'_>| {
        if let Event::ContentDelta(d) = e {
            bytes += d.len();
        }
    };
    p.push_str(&inp.text, &mut sink);
    p.finish(&mut sink);
    bytes
}

/// As a proxy reads them from SSE frames: one decoded text delta per token (never a split
/// character; special tokens literal).
fn ours_text_parse_per_delta(inp: &Inputs) -> usize {
    let mut p = TextParser::new(Some(Role::Assistant));
    let mut bytes = 0usize;
    let mut sink = |e: Event<'_>| {
        if let Event::ContentDelta(d) = e {
            bytes += d.len();
        }
    };
    for d in &inp.deltas {
        p.push_str(d, &mut sink);
    }
    p.finish(&mut sink);
    bytes
}

fn ours_text_parse_per_token(inp: &Inputs) -> usize {
    let mut p = TextParser::new(Some(Role::Assistant));
    let mut bytes = 0usize;
    let mut sink = |e: Event<'_>| {
        if let Event::ContentDelta(d) = e {
            bytes += d.len();
        }
    };
    let t = inp.text.as_bytes();
    for &(a, b) in &inp.token_chunks {
        p.push(&t[a..b], &mut sink);
    }
    p.finish(&mut sink);
    bytes
}

fn ours_render(inp: &Inputs, buf: &mut Vec<u32>) -> usize {
    buf.clear();
    Renderer::new(&inp.tokenizer)
        .render_request_into(&inp.request, &RequestOptions::default(), buf)
        .expect("render");
    buf.len()
}

fn reference_render(inp: &Inputs, buf: &mut Vec<u32>) -> usize {
    buf.clear();
    inp.reference
        .render_conversation_for_completion_into(
            &inp.ref_convo,
            oh::Role::Assistant,
            buf,
            Some(&Default::default()),
        )
        .expect("render");
    buf.len()
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`), so that the
/// figures hold on a machine busy with other work; `None` where the kernel does not say.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Seconds per call (wall clock, and CPU time of this thread when known), over at least
/// `min` of repeated calls.
fn time_per_call(min: Duration, mut f: impl FnMut() -> usize) -> (f64, Option<f64>) {
    black_box(f());
    let mut n = 0u64;
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    while start.elapsed() < min {
        black_box(f());
        n += 1;
    }
    let wall = start.elapsed().as_secs_f64() / n as f64;
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some((b - a) as f64 / 1e9 / n as f64),
        _ => None,
    };
    (wall, cpu)
}

fn main() {
    let inp = inputs();
    let mut ours_prompt = Vec::new();
    let mut ref_prompt = Vec::new();
    ours_render(&inp, &mut ours_prompt);
    reference_render(&inp, &mut ref_prompt);
    assert_eq!(ours_prompt, ref_prompt, "both render the same prompt");
    assert_eq!(ours_token_parse(&inp), ours_text_parse_per_token(&inp));
    assert_eq!(ours_token_parse(&inp), ours_text_parse_per_delta(&inp));
    assert_eq!(ours_token_parse(&inp), ours_text_parse_whole(&inp));
    let n_tok = inp.ids.len() as u64;
    let n_bytes = inp.text.len() as u64;
    println!(
        "inputs: completion {} tokens / {} bytes; prompt {} tokens",
        n_tok,
        n_bytes,
        ours_prompt.len()
    );

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let mut g = c.benchmark_group("token_parser");
    g.throughput(Throughput::Elements(n_tok));
    g.bench_function("ours", |b| b.iter(|| ours_token_parse(&inp)));
    g.bench_function("openai-harmony", |b| b.iter(|| reference_token_parse(&inp)));
    g.finish();

    let mut g = c.benchmark_group("text_parser");
    g.throughput(Throughput::Bytes(n_bytes));
    g.bench_function("ours_one_chunk", |b| b.iter(|| ours_text_parse_whole(&inp)));
    g.bench_function("ours_chunk_per_token", |b| {
        b.iter(|| ours_text_parse_per_token(&inp))
    });
    g.finish();

    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Elements(ours_prompt.len() as u64));
    g.bench_function("ours", |b| b.iter(|| ours_render(&inp, &mut ours_prompt)));
    g.bench_function("openai-harmony", |b| {
        b.iter(|| reference_render(&inp, &mut ref_prompt))
    });
    g.finish();
    c.final_summary();

    // Side by side, for the ratios: wall clock, and CPU time of the bench thread (what the
    // code costs when other processes share the cores).
    let min = Duration::from_secs(2);
    let ours_tok = time_per_call(min, || ours_token_parse(&inp));
    let ref_tok = time_per_call(min, || reference_token_parse(&inp));
    let text_whole = time_per_call(min, || ours_text_parse_whole(&inp));
    let text_tok = time_per_call(min, || ours_text_parse_per_token(&inp));
    let text_delta = time_per_call(min, || ours_text_parse_per_delta(&inp));
    let ours_r = time_per_call(min, || ours_render(&inp, &mut ours_prompt));
    let ref_r = time_per_call(min, || reference_render(&inp, &mut ref_prompt));
    let mtok = |s: f64| n_tok as f64 / s / 1e6;
    let mbs = |s: f64| n_bytes as f64 / s / 1e6;
    for (label, pick) in [
        (
            "wall",
            (|t: (f64, Option<f64>)| Some(t.0)) as fn((f64, Option<f64>)) -> Option<f64>,
        ),
        ("cpu", |t: (f64, Option<f64>)| t.1),
    ] {
        let (Some(ot), Some(rt), Some(tw), Some(tt), Some(td), Some(or), Some(rr)) = (
            pick(ours_tok),
            pick(ref_tok),
            pick(text_whole),
            pick(text_tok),
            pick(text_delta),
            pick(ours_r),
            pick(ref_r),
        ) else {
            continue;
        };
        println!(
            "ratio ({label}) token_parser ours/openai-harmony = {:.1}x (ours {:.1} M tok/s, openai-harmony StreamableParser {:.2} M tok/s; target >= 10x)",
            rt / ot,
            mtok(ot),
            mtok(rt)
        );
        println!(
            "ratio ({label}) text_parser ours/openai-harmony token parser = {:.1}x (ours {:.0} MB/s in one chunk, {:.0} MB/s one decoded delta per token, {:.0} MB/s one token's bytes per chunk; target >= 500 MB/s)",
            rt / tw,
            mbs(tw),
            mbs(td),
            mbs(tt)
        );
        println!(
            "ratio ({label}) render ours/openai-harmony = {:.2}x (ours {:.0} us, openai-harmony {:.0} us per {}-token prompt)",
            rr / or,
            or * 1e6,
            rr * 1e6,
            ours_prompt.len()
        );
    }
}
