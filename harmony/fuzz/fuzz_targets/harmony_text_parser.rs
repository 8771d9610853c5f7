//! The harmony text parser (model output as text with literal special tokens) on arbitrary
//! bytes, fed in arbitrary chunks. Properties: it never panics, every content delta is
//! non-empty UTF-8, and the events do not depend on how the input was chunked.
#![no_main]

use harmony::parser::{coalesce, collect, TextParser};
use harmony::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte picks the chunk size; the rest is the model's output.
    let step = (data[0] as usize % 17) + 1;
    let text = &data[1..];

    let whole = collect(|sink| {
        let mut p = TextParser::new(Some(Role::Assistant));
        p.push(text, sink);
        p.finish(sink);
    });
    let chunked = collect(|sink| {
        let mut p = TextParser::new(Some(Role::Assistant));
        for chunk in text.chunks(step) {
            p.push(chunk, sink);
        }
        p.finish(sink);
    });
    for e in &chunked {
        if let harmony::parser::OwnedEvent::ContentDelta { text } = e {
            assert!(!text.is_empty(), "empty content delta");
        }
    }
    assert_eq!(
        coalesce(whole),
        coalesce(chunked),
        "the events depend on the chunking (step {step})"
    );
    // The whole-output helper on the same text.
    let _ = harmony::parser::parse_text(&String::from_utf8_lossy(text), Some(Role::Assistant));
});
