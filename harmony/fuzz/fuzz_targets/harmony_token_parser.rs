//! The harmony token parser and its OpenAI mapping on arbitrary token ids (ordinary tokens,
//! special tokens and ids outside the vocabulary). Properties: no panic; the streaming
//! mapping (`DeltaMapper`) and the whole-response mapping (`ResponseAccumulator`) agree on
//! the final message; token counts add up.
#![no_main]

use std::sync::OnceLock;

use harmony::openai::{
    apply_delta, CallIds, DeltaMapper, ParsedResponse, ResponseAccumulator, StopCause, ToolGate,
};
use harmony::parser::TokenParser;
use harmony::{Role, Tokenizer};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::o200k_harmony().expect("built-in o200k_harmony"))
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    // Three bytes per id, biased towards the special tokens (200000..201088) half the time.
    let ids: Vec<u32> = data
        .chunks_exact(3)
        .map(|c| {
            let raw = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
            if c[0] & 1 == 0 {
                200_000 + raw % 1_100
            } else {
                raw % 202_000
            }
        })
        .collect();

    let mut parser = TokenParser::new(tok, Some(Role::Assistant));
    let gate = ToolGate::allow(["get_weather"]);
    let mut acc = ResponseAccumulator::with_call_ids(gate.clone(), CallIds::sequential("call_"));
    let mut mapper = DeltaMapper::with_call_ids(gate, CallIds::sequential("call_"));
    let mut deltas = Vec::new();
    for &id in &ids {
        parser.push(id, &mut |e| {
            acc.on_event(e);
            mapper.on_event(e, &mut deltas);
        });
    }
    parser.finish(&mut |e| {
        acc.on_event(e);
        mapper.on_event(e, &mut deltas);
    });
    let counts = parser.counts();
    assert!(counts.analysis <= counts.total, "analysis tokens exceed the total");
    let whole = acc.finish(StopCause::Stop);
    let streamed = mapper.finish(StopCause::Stop, None, &mut deltas);
    // Rebuilding the message from the deltas gives what the accumulator built.
    let mut rebuilt = ParsedResponse::default();
    for d in &deltas {
        apply_delta(&mut rebuilt, d);
    }
    let a = whole.to_message(None);
    let b = streamed.to_message(None);
    assert_eq!(a.content, b.content, "streamed and whole content differ");
    assert_eq!(
        a.reasoning_content, b.reasoning_content,
        "streamed and whole reasoning differ"
    );
    assert_eq!(
        rebuilt.to_message(None).content,
        a.content,
        "content rebuilt from the deltas differs"
    );
    let _ = serde_json::to_string(&a);
    let _ = tok.decode(&ids);
});
