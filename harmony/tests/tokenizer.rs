//! The built-in tokenizer encodes exactly as tiktoken's o200k_harmony.

use harmony::Tokenizer;

fn corpus() -> Vec<String> {
    let mut c: Vec<String> = vec![
        "Hello, world!".into(),
        "What is the capital of the largest country in the world?".into(),
        "héllo wörld — naïve café, Ünïcödé façade; Straße".into(),
        "日本語のテキストと中文文本，한국어 텍스트".into(),
        "emoji 👋🏽 👨‍👩‍👧‍👦 🇺🇸 ❤️‍🔥 and 🤖🤖🤖".into(),
        "    indented\n\n\n\t\ttabs   \r\n  trailing   ".into(),
        " ".repeat(300),
        "\n".repeat(50),
        format!("a{}b", " ".repeat(97)),
        "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n".into(),
        "def f(x):\n\treturn {'a': [1, 2, 3], \"b\": None}  # comment\n".into(),
        "1234567890 3.14159265358979 1,000,000 0x1F 2025-06-28".into(),
        "don't I'LL we've THEY'RE she's it'd".into(),
        "<|start|>assistant<|channel|>final<|message|>Hi<|end|>".into(),
        "<|reserved_200013|><|endoftext|><|startoftext|><|return|><|call|><|constrain|>json".into(),
        "Ω≈ç√∫˜µ≤≥÷ åß∂ƒ©˙∆˚¬…æ œ∑´®†¥¨ˆøπ“‘".into(),
        "\u{0}\u{1}\u{7f} control \u{200b}zero\u{feff}width".into(),
        "ÅÅÅ e\u{301}\u{301} combining ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢".into(),
    ];
    // long mixed text
    let mut long = String::new();
    for i in 0..200 {
        long.push_str(&format!(
            "line {i}: κόσμε {} — {}\n",
            i * 7919,
            "x".repeat(i % 13)
        ));
    }
    c.push(long);
    c
}

#[test]
fn builtin_encoding_equals_tiktoken_o200k_harmony_on_corpus() {
    let ours = Tokenizer::o200k_harmony().expect("built-in tokenizer builds");
    let oracle = tiktoken_rs::o200k_harmony().expect("tiktoken-rs o200k_harmony");
    for text in corpus() {
        let want = oracle.encode_with_special_tokens(&text);
        let got = ours.encode_with_special_tokens(&text).expect("encode");
        assert_eq!(got, want, "with specials: {text:?}");
        let want = oracle.encode_ordinary(&text);
        let got = ours.encode_ordinary(&text).expect("encode");
        assert_eq!(got, want, "ordinary: {text:?}");
        assert_eq!(ours.decode(&got), text, "decode(encode(x)) == x");
    }
}

#[test]
fn builtin_vocabulary_has_every_special_token_at_its_id() {
    let ours = Tokenizer::o200k_harmony().expect("built-in tokenizer builds");
    assert_eq!(ours.vocab_size(), 201_088);
    for (id, text) in harmony::tokens::all_specials() {
        assert_eq!(ours.token_bytes(id), Some(text.as_bytes()), "id {id}");
        assert_eq!(
            ours.encode_with_special_tokens(&text).expect("encode"),
            vec![id]
        );
    }
}

#[test]
fn decoding_any_ids_never_panics() {
    let ours = Tokenizer::o200k_harmony().expect("built-in tokenizer builds");
    let ids: Vec<u32> = vec![
        0,
        1,
        199_997,
        199_998,
        201_087,
        201_088,
        u32::MAX,
        9_999_999,
    ];
    let text = ours.decode(&ids);
    assert!(text.starts_with("!\""), "{text}");
    let mut dec = ours.stream_decoder();
    let mut out = String::new();
    for id in ids {
        dec.push_into(id, &mut out);
    }
    dec.finish_into(&mut out);
    assert_eq!(out, text);
}

#[test]
fn stream_decoder_never_splits_a_character() {
    let ours = Tokenizer::o200k_harmony().expect("built-in tokenizer builds");
    let text = "emoji 👋🏽 👨‍👩‍👧‍👦 日本語 ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ❤️‍🔥";
    let ids = ours.encode_ordinary(text).expect("encode");
    // some tokens must be partial characters, or this test proves nothing
    assert!(ids
        .iter()
        .any(|&id| std::str::from_utf8(ours.token_bytes(id).unwrap_or(b"")).is_err()));
    let mut dec = ours.stream_decoder();
    let mut joined = String::new();
    for id in ids {
        let delta = dec.push(id);
        assert!(
            !delta.contains('\u{FFFD}'),
            "delta {delta:?} split a character"
        );
        joined.push_str(&delta);
    }
    joined.push_str(&dec.finish());
    assert_eq!(joined, text);
}

#[test]
fn tokenizer_json_round_trip_loads_from_a_folder() {
    let ours = Tokenizer::o200k_harmony().expect("built-in tokenizer builds");
    let dir = tempfile::tempdir().expect("tempdir");
    ours.hf()
        .save(dir.path().join("tokenizer.json"), false)
        .expect("save");
    let loaded = Tokenizer::from_dir(dir.path()).expect("load");
    for text in corpus() {
        assert_eq!(
            loaded.encode_with_special_tokens(&text).expect("encode"),
            ours.encode_with_special_tokens(&text).expect("encode"),
        );
        let ids = ours.encode_with_special_tokens(&text).expect("encode");
        assert_eq!(loaded.decode(&ids), ours.decode(&ids));
    }
    assert!(Tokenizer::from_dir(dir.path().join("missing")).is_err());
}
