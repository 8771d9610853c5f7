//! Streaming: the text parser gives the same events however its input is split, and the same
//! events as the token parser on the same output.

use harmony::parser::{coalesce, OwnedEvent, TextParser, TokenParser};
use harmony::{Role, Tokenizer};
use proptest::prelude::*;

fn tok() -> Tokenizer {
    Tokenizer::o200k_harmony().expect("built-in tokenizer")
}

fn text_events(pieces: &[&[u8]], role: Option<Role>) -> Vec<OwnedEvent> {
    let mut p = TextParser::new(role);
    let mut out = Vec::new();
    for piece in pieces {
        // valid pieces go through `push_str`, the others through `push`: same events
        let mut on = |e: harmony::parser::Event<'_>| {
            if let harmony::parser::Event::ContentDelta(d) = e {
                assert!(!d.is_empty(), "empty delta");
            }
            out.push(e.to_owned())
        };
        match std::str::from_utf8(piece) {
            Ok(s) => p.push_str(s, &mut on),
            Err(_) => p.push(piece, &mut on),
        }
    }
    p.finish(&mut |e| out.push(e.to_owned()));
    coalesce(out)
}

fn token_events(t: &Tokenizer, ids: &[u32], role: Option<Role>) -> Vec<OwnedEvent> {
    let mut p = TokenParser::new(t, role);
    let mut out = Vec::new();
    for &id in ids {
        p.push(id, &mut |e| out.push(e.to_owned()));
    }
    p.finish(&mut |e| out.push(e.to_owned()));
    coalesce(out)
}

/// Every fixture of the reference (ids fixtures decoded first), both role settings: every
/// split point, byte-by-byte feeding, and the token parser, all give the same events.
#[test]
fn every_split_point_of_every_fixture_gives_the_same_events() {
    let t = tok();
    let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("txt") {
            continue;
        }
        let raw = std::fs::read_to_string(&path).expect("read");
        let text = if raw.split_whitespace().all(|w| w.parse::<u32>().is_ok()) {
            let ids: Vec<u32> = raw
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            t.decode(&ids)
        } else {
            raw
        };
        let bytes = text.as_bytes();
        let ids = t.encode_with_special_tokens(&text).expect("encode");
        for role in [None, Some(Role::Assistant)] {
            let whole = text_events(&[bytes], role);
            assert!(!whole.is_empty(), "{path:?}: no events");
            assert_eq!(
                token_events(&t, &ids, role),
                whole,
                "{path:?}: token parser differs"
            );
            for i in 0..=bytes.len() {
                let split = text_events(&[&bytes[..i], &bytes[i..]], role);
                assert_eq!(split, whole, "{path:?} split at byte {i}");
            }
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(text_events(&bytewise, role), whole, "{path:?} byte by byte");
        }
        n += 1;
    }
    assert_eq!(n, 23, "all reference fixtures are vendored");
}

const FRAGMENTS: &[&str] = &[
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|call|>",
    "<|return|>",
    "<|constrain|>",
    "<|endoftext|>",
    "<|reserved_200013|>",
    "<|reserved_201087|>",
    "<|",
    "|>",
    "<",
    "|",
    "<|chan",
    "<|notspecial|>",
    "<|reserved_201088|>",
    "<<|end|>",
    "assistant",
    "user",
    "functions.get_weather",
    " to=functions.lookup",
    "analysis",
    "commentary",
    "final",
    "json",
    " ",
    "\n",
    "Hello",
    " world",
    "日本語",
    "👋🏽",
    "é",
    "{\"a\": 1}",
    "x",
    "🤖",
    "\u{FFFD}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Any output (well-formed or not) split anywhere, and the token parser on its encoding,
    /// give the same events; a stream cut inside a UTF-8 character too.
    #[test]
    fn any_output_split_anywhere_gives_the_same_events(
        frags in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        trim in 0usize..3,
        role in prop::option::of(Just(Role::Assistant)),
    ) {
        let t = tok();
        let text = frags.concat();
        let mut bytes = text.as_bytes().to_vec();
        bytes.truncate(bytes.len().saturating_sub(trim));
        let whole = text_events(&[&bytes], role);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut last = 0;
        for p in points {
            pieces.push(&bytes[last..p]);
            last = p;
        }
        pieces.push(&bytes[last..]);
        prop_assert_eq!(&text_events(&pieces, role), &whole);
        if trim == 0 {
            let ids = t.encode_with_special_tokens(&text).expect("encode");
            prop_assert_eq!(&token_events(&t, &ids, role), &whole);
        }
    }
}

/// Text before the first header, no channel, unknown channels, stray special tokens: the
/// content is kept (as content without a channel, which maps to final content).
#[test]
fn malformed_output_degrades_to_content() {
    use harmony::parser::parse_text;
    let m = parse_text("Just an answer.", Some(Role::Assistant));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].content, "Just an answer.");
    assert_eq!(m[0].header.channel, None);

    let m = parse_text(
        "Preamble<|start|>assistant<|channel|>final<|message|>Hi<|return|>",
        None,
    );
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0].content, "Preamble");
    assert_eq!(m[1].content, "Hi");

    let m = parse_text(
        "<|channel|>weird<|message|>Hi<|end|>",
        Some(Role::Assistant),
    );
    assert_eq!(m[0].header.channel.as_deref(), Some("weird"));
    assert_eq!(m[0].content, "Hi");

    let m = parse_text(
        "<|channel|>final<|message|>A<|constrain|>B<|endoftext|>C<|reserved_200100|>D",
        Some(Role::Assistant),
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].content, "ABCD");

    // analysis then final without <|end|><|start|>assistant
    let m = parse_text(
        "<|channel|>analysis<|message|>think<|channel|>final<|message|>answer",
        Some(Role::Assistant),
    );
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].header.channel.as_deref(), Some("final"));
    assert_eq!(m[1].content, "answer");

    // a header that never ends is content, cut at the first newline
    let m = parse_text(
        "assistant I think the answer is 4.\nYes.",
        Some(Role::Assistant),
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].content, "I think the answer is 4.\nYes.");

    // cut off inside a header: nothing to place, no message
    assert!(parse_text("<|channel|>fin", Some(Role::Assistant)).len() <= 1);
}

// ---- The OpenAI answer: the same fields on every path, wherever the output is split ----

use harmony::openai::{
    apply_delta, CallIds, DeltaMapper, ParsedResponse, ResponseAccumulator, StopCause, ToolGate,
};

/// The non-streamed answer for `text`, as the server's accumulator builds it.
fn json_answer(text: &[u8], gate: &ToolGate, cause: StopCause) -> ParsedResponse {
    let mut acc = ResponseAccumulator::with_call_ids(gate.clone(), CallIds::sequential("call_"));
    let mut p = TextParser::new(Some(Role::Assistant));
    p.push(text, &mut |e| acc.on_event(e));
    p.finish(&mut |e| acc.on_event(e));
    acc.finish(cause)
}

/// The streamed answer for `pieces` fed one after another: the concatenation of the deltas,
/// field by field, and the finish reason the stream ends with.
fn streamed_answer(pieces: &[&[u8]], gate: &ToolGate, cause: StopCause) -> ParsedResponse {
    let mut mapper = DeltaMapper::with_call_ids(gate.clone(), CallIds::sequential("call_"));
    let mut deltas = Vec::new();
    let mut p = TextParser::new(Some(Role::Assistant));
    for piece in pieces {
        p.push(piece, &mut |e| mapper.on_event(e, &mut deltas));
    }
    p.finish(&mut |e| mapper.on_event(e, &mut deltas));
    let finish = mapper.finish(cause, None, &mut deltas).finish_reason;
    let mut out = ParsedResponse::default();
    for d in &deltas {
        assert_eq!(
            d.reasoning, d.reasoning_content,
            "`reasoning` mirrors `reasoning_content`"
        );
        for f in [&d.content, &d.reasoning_content, &d.commentary] {
            assert_ne!(f.as_deref(), Some(""), "no empty text deltas");
        }
        apply_delta(&mut out, d);
    }
    out.finish_reason = finish;
    out
}

/// The same through the token parser (the server's path).
fn token_answer(t: &Tokenizer, text: &str, gate: &ToolGate, cause: StopCause) -> ParsedResponse {
    let ids = t.encode_with_special_tokens(text).expect("encode");
    let mut acc = ResponseAccumulator::with_call_ids(gate.clone(), CallIds::sequential("call_"));
    let mut p = TokenParser::new(t, Some(Role::Assistant));
    for id in ids {
        p.push(id, &mut |e| acc.on_event(e));
    }
    p.finish(&mut |e| acc.on_event(e));
    acc.finish(cause)
}

/// The outputs of the placement cases (calls offered or not, headers closed early, junk in
/// headers, preambles, stray text, text after stop tokens).
const PLACEMENT_CASES: &[&str] = &[
    "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>",
    "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}<|call|>",
    "<|channel|>commentary to=functions.get_weather <|constrain|>json<|end|>",
    "<|channel|>commentary to=functions.<|end|>",
    "<|channel|>commentary to=functions.get_weather extra junk here <|constrain|>json<|message|>{\"a\":1}<|call|>",
    "<|channel|>commentary<|message|>Checking the weather now.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{}<|call|>",
    "<|channel|>analysis<|message|>think<|end|>stray text<|start|>assistant<|channel|>final<|message|>Answer<|return|>",
    "We need to answer.<|end|><|start|>assistant<|channel|>analysis<|message|>More.<|end|><|start|>assistant<|channel|>final<|message|>Paris.<|return|>",
    "<|channel|>final<|message|>Answer<|return|><|start|>assistant<|channel|>final<|message|>More",
    "Plain text, no header at all.",
    "<|channel|>analysis<|message|>think<|end|>An answer without a header.",
    "<|channel|>final<|message|>One.<|end|><|start|>assistant<|channel|>final<|message|>Two.<|return|>",
    "<|channel|>commentary to=functions.get_weather <|constrain|>json\n{\"a\": 1}<|call|>",
];

#[test]
fn every_split_point_of_the_placement_cases_gives_the_same_answer() {
    let t = tok();
    for gate in [ToolGate::none(), ToolGate::allow(["get_weather"])] {
        for text in PLACEMENT_CASES {
            let bytes = text.as_bytes();
            let whole = json_answer(bytes, &gate, StopCause::Stop);
            assert_eq!(
                token_answer(&t, text, &gate, StopCause::Stop),
                whole,
                "{text}: token parser"
            );
            for i in 0..=bytes.len() {
                assert_eq!(
                    streamed_answer(&[&bytes[..i], &bytes[i..]], &gate, StopCause::Stop),
                    whole,
                    "{text}: split at byte {i}"
                );
            }
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                streamed_answer(&bytewise, &gate, StopCause::Stop),
                whole,
                "{text}: byte by byte"
            );
        }
    }
}

/// Whole messages with random headers (some with junk words, recipients, content types, or
/// closed before `<|message|>`) for well-formed-looking outputs.
fn message() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::sample::select(vec![
            "analysis",
            "commentary",
            "final",
            "weird",
        ])),
        prop::option::of(prop::sample::select(vec![
            " to=functions.get_weather",
            " to=functions.get_time",
            " to=functions.",
            " to=browser.search",
        ])),
        prop::option::of(prop::sample::select(vec![
            " <|constrain|>json",
            " json",
            " junk words",
        ])),
        prop::bool::ANY,
        prop::sample::select(vec!["Hello", "{\"a\": 1}", "日本語 👋🏽", "", "x\ny"]),
        prop::sample::select(vec!["<|end|>", "<|call|>", "<|return|>", ""]),
        prop::bool::ANY,
    )
        .prop_map(|(channel, to, ct, has_message, body, end, start)| {
            let mut s = String::new();
            if start {
                s.push_str("<|start|>assistant");
            }
            if let Some(c) = channel {
                s.push_str("<|channel|>");
                s.push_str(c);
            }
            s.push_str(to.unwrap_or(""));
            s.push_str(ct.unwrap_or(""));
            if has_message {
                s.push_str("<|message|>");
            }
            s.push_str(body);
            s.push_str(end);
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// For random outputs, well-formed (whole messages) and malformed (fragments), the JSON
    /// answer equals the concatenation of the streamed deltas, field by field, at every split
    /// point, and the token parser's answer too.
    #[test]
    fn json_answer_equals_the_streamed_deltas_at_every_split_point(
        msgs in prop::collection::vec(message(), 0..4),
        frags in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..12),
        frags_first in prop::bool::ANY,
        offered in prop::bool::ANY,
        length in prop::bool::ANY,
    ) {
        let t = tok();
        let gate = if offered { ToolGate::allow(["get_weather"]) } else { ToolGate::none() };
        let cause = if length { StopCause::Length } else { StopCause::Stop };
        let (a, b) = (msgs.concat(), frags.concat());
        let text = if frags_first { b + &a } else { a + &b };
        let bytes = text.as_bytes();
        let whole = json_answer(bytes, &gate, cause);
        prop_assert_eq!(&token_answer(&t, &text, &gate, cause), &whole);
        for i in 0..=bytes.len() {
            let split = streamed_answer(&[&bytes[..i], &bytes[i..]], &gate, cause);
            prop_assert_eq!(&split, &whole, "split at byte {}", i);
        }
    }
}
