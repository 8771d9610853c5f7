//! Tests of the HTTP layer over a scripted backend: a real [`InferenceBackend`]
//! implementation that "generates" a fixed token sequence at a set pace, so the
//! queue, cancellation and the JSON/SSE shapes can be checked exactly. The
//! end-to-end tests in `tests/` run the same scenarios on the real ONNX model.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use gpt_oss_runtimes::{
    BackendError, Capabilities, GenerateRequest, GenerationUsage, Health, InferenceBackend,
    StopReason, TokenEvent, TokenStream,
};
use harmony::Tokenizer;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::state::{AppState, LoadedModel, ModelState, ServerConfig};

struct Script {
    caps: Capabilities,
    tokens: Vec<u32>,
    pace: Duration,
    /// Fail with an engine error after this many tokens.
    fail_after: Option<usize>,
    /// Generations running right now.
    active: Arc<AtomicU32>,
}

#[async_trait]
impl InferenceBackend for Script {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    async fn health(&self) -> Health {
        Health::Ready
    }
    async fn generate(&self, req: GenerateRequest) -> Result<TokenStream, BackendError> {
        let tokens = self.tokens.clone();
        let pace = self.pace;
        let fail_after = self.fail_after;
        let active = Arc::clone(&self.active);
        active.fetch_add(1, Ordering::SeqCst);
        let prompt_tokens = req.prompt.len() as u32;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut n = 0;
            let mut reason = StopReason::Length;
            for (i, t) in tokens
                .into_iter()
                .take(req.max_new_tokens as usize)
                .enumerate()
            {
                if fail_after == Some(i) {
                    let _ = tx.send(TokenEvent::Error("device lost".into())).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                tokio::select! {
                    _ = req.cancel.cancelled() => { reason = StopReason::Cancelled; break; }
                    _ = tokio::time::sleep(pace) => {}
                }
                n += 1;
                if tx.send(TokenEvent::Token(t)).await.is_err() {
                    reason = StopReason::Cancelled;
                    break;
                }
                if req.stop_token_ids.contains(&t) {
                    reason = StopReason::StopToken(t);
                    break;
                }
            }
            let _ = tx
                .send(TokenEvent::Finish {
                    reason,
                    usage: GenerationUsage {
                        prompt_tokens,
                        completion_tokens: n,
                        cached_tokens: 0,
                    },
                })
                .await;
            active.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Box::pin(tokio_stream_from(rx)))
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<TokenEvent>,
) -> impl futures::Stream<Item = TokenEvent> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn tokenizer() -> Tokenizer {
    Tokenizer::o200k_harmony().expect("built-in tokenizer")
}

struct Setup {
    state: Arc<AppState>,
    active: Arc<AtomicU32>,
}

fn setup(
    output: &str,
    pace_ms: u64,
    max_concurrent: u32,
    max_queue: u32,
    api_key: Option<&str>,
) -> Setup {
    setup_failing(output, pace_ms, max_concurrent, max_queue, api_key, None)
}

fn setup_failing(
    output: &str,
    pace_ms: u64,
    max_concurrent: u32,
    max_queue: u32,
    api_key: Option<&str>,
    fail_after: Option<usize>,
) -> Setup {
    setup_with(
        output,
        pace_ms,
        max_concurrent,
        max_queue,
        api_key,
        fail_after,
        false,
    )
}

/// A server in `--raw-output` mode over the scripted backend.
fn setup_raw(output: &str) -> Setup {
    setup_with(output, 0, 2, 4, None, None, true)
}

fn setup_with(
    output: &str,
    pace_ms: u64,
    max_concurrent: u32,
    max_queue: u32,
    api_key: Option<&str>,
    fail_after: Option<usize>,
    raw_output: bool,
) -> Setup {
    let tok = tokenizer();
    let tokens = tok.encode_with_special_tokens(output).expect("encodes");
    let active = Arc::new(AtomicU32::new(0));
    let backend = Script {
        caps: Capabilities {
            model_name: "m".into(),
            context_length: 4096,
            device: "cpu".into(),
            eos_token_ids: vec![harmony::tokens::ENDOFTEXT],
            vocab_size: harmony::tokens::VOCAB_SIZE,
            max_concurrent_sequences: max_concurrent,
        },
        tokens,
        pace: Duration::from_millis(pace_ms),
        fail_after,
        active: Arc::clone(&active),
    };
    let state = AppState::new(
        ServerConfig {
            model_name: "m".into(),
            api_key: api_key.map(str::to_string),
            max_body_bytes: 64 * 1024,
            raw_output,
            default_max_tokens: 1000,
            retry_after_secs: 2,
            responses_store: None,
            reasoning_key_file: None,
        },
        max_concurrent,
        max_queue,
    );
    state.set_model(ModelState::Ready(Arc::new(LoadedModel {
        backend: Arc::new(backend),
        tokenizer: tok,
        grammars: Default::default(),
    })));
    Setup { state, active }
}

const ANSWER: &str = "<|channel|>analysis<|message|>User asks capital. Easy.<|end|><|start|>assistant<|channel|>final<|message|>Washington, D.C.<|return|>";

async fn call(
    state: &Arc<AppState>,
    method: &str,
    path: &str,
    body: Value,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .expect("request");
    let resp = crate::router(Arc::clone(state))
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v, headers)
}

fn sse_payloads(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

fn chat_body(extra: Value) -> Value {
    let mut b = json!({
        "messages": [
            {"role": "system", "content": "Always answer in just single word."},
            {"role": "user", "content": "What is the capital of the US?"}
        ],
        "max_tokens": 1000,
        "temperature": 0.7,
        "separate_thinking": true
    });
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

#[tokio::test]
async fn chat_response_separates_reasoning_and_carries_the_seed_fields() {
    let s = setup(ANSWER, 0, 2, 4, None);
    let (status, v, _) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], "Washington, D.C.");
    assert_eq!(msg["reasoning_content"], "User asks capital. Easy.");
    assert_eq!(msg["reasoning"], "User asks capital. Easy.");
    assert_eq!(msg["thinking"]["analysis"], "User asks capital. Easy.");
    assert_eq!(msg["parsed"]["final"], "Washington, D.C.");
    assert_eq!(
        msg["parsed"]["developer_instructions"],
        "Always answer in just single word."
    );
    assert_eq!(msg["parsed"]["history"][0]["role"], "user");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
    );
    assert!(u["thinking_tokens"].as_u64().unwrap_or(0) > 0, "{u}");
    assert_eq!(
        u["thinking_tokens"],
        u["completion_tokens_details"]["reasoning_tokens"]
    );
}

#[tokio::test]
async fn streaming_carries_the_same_message_as_json() {
    let s = setup(ANSWER, 0, 2, 4, None);
    let (_, whole, _) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({})),
    )
    .await;
    let (status, text, headers) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let payloads = sse_payloads(text.as_str().unwrap_or(""));
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut finish = Value::Null;
    for c in &chunks {
        if let Some(ch) = c["choices"].get(0) {
            content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            reasoning.push_str(ch["delta"]["reasoning_content"].as_str().unwrap_or(""));
            if !ch["finish_reason"].is_null() {
                finish = ch["finish_reason"].clone();
            }
        }
    }
    let msg = &whole["choices"][0]["message"];
    assert_eq!(content, msg["content"].as_str().unwrap_or("-"));
    assert_eq!(reasoning, msg["reasoning_content"].as_str().unwrap_or("-"));
    assert_eq!(finish, "stop");
    let last = chunks.last().expect("usage chunk");
    assert_eq!(last["choices"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        last["usage"]["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
}

#[tokio::test]
async fn stop_strings_end_the_answer_without_leaking() {
    let s = setup(ANSWER, 0, 2, 4, None);
    let (status, v, _) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({"stop": [", D"]})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Washington");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

/// The answer of [`FRANCE`] and its reasoning both contain "ris".
const FRANCE: &str = "<|channel|>analysis<|message|>The capital of France is Paris.<|end|><|start|>assistant<|channel|>final<|message|>Paris<|return|>";

#[tokio::test]
async fn raw_output_matches_stop_strings_on_the_answer_not_the_reasoning() {
    let raw = setup_raw(FRANCE);
    let parsed = setup(FRANCE, 0, 2, 4, None);
    let body = chat_body(json!({"stop": "ris", "separate_thinking": false}));
    let (status, p, _) = call(&parsed.state, "POST", "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["choices"][0]["message"]["content"], "Pa");
    let (status, r, _) = call(&raw.state, "POST", "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{r}");
    // The raw text stops where the parsed answer stops: the reasoning is whole, the answer
    // is cut before the stop string, and the usage counts the same tokens.
    assert_eq!(
        r["choices"][0]["message"]["content"],
        "<|channel|>analysis<|message|>The capital of France is Paris.<|end|><|start|>assistant<|channel|>final<|message|>Pa"
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert_eq!(r["usage"], p["usage"]);
    // Streamed: the same text, in deltas.
    let mut stream_body = body;
    stream_body["stream"] = json!(true);
    let (status, text, _) = call(&raw.state, "POST", "/v1/chat/completions", stream_body).await;
    assert_eq!(status, 200);
    let mut content = String::new();
    let mut finish = Value::Null;
    for payload in sse_payloads(text.as_str().unwrap_or("")) {
        let Ok(c) = serde_json::from_str::<Value>(&payload) else {
            continue;
        };
        content.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        if !c["choices"][0]["finish_reason"].is_null() {
            finish = c["choices"][0]["finish_reason"].clone();
        }
    }
    assert_eq!(
        content,
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("-")
    );
    assert_eq!(finish, "stop");
}

#[tokio::test]
async fn raw_output_leaves_stop_strings_to_after_min_tokens_as_parsed_output_does() {
    let body = chat_body(json!({"stop": "ris", "min_tokens": 900}));
    let parsed = setup(FRANCE, 0, 2, 4, None);
    let (status, p, _) = call(&parsed.state, "POST", "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["choices"][0]["message"]["content"], "Paris");
    let raw = setup_raw(FRANCE);
    let (status, r, _) = call(&raw.state, "POST", "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], FRANCE);
}

#[tokio::test]
async fn raw_output_without_a_stop_match_is_the_whole_text() {
    let raw = setup_raw(FRANCE);
    let body = chat_body(json!({"stop": ["Lyon", "ris!"]}));
    let (status, r, _) = call(&raw.state, "POST", "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], FRANCE);
}

#[tokio::test]
async fn named_tool_choice_forces_a_call_and_finishes_with_tool_calls() {
    let s = setup(r#"{"city":"Paris"}<|call|>"#, 0, 2, 4, None);
    let body = json!({
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
    });
    let (status, v, _) = call(&s.state, "POST", "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call0 = &choice["message"]["tool_calls"][0];
    assert_eq!(call0["function"]["name"], "get_weather");
    assert_eq!(call0["function"]["arguments"], r#"{"city":"Paris"}"#);
    assert!(call0["id"].as_str().unwrap_or("").starts_with("call_"));
    assert!(choice["message"]["content"].is_null());
}

#[tokio::test]
async fn error_statuses_are_openai_errors() {
    let s = setup(ANSWER, 0, 1, 0, Some("sekret"));
    let st = &s.state;
    // 401 without the key.
    let (status, v, _) = call(st, "POST", "/v1/chat/completions", chat_body(json!({}))).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["type"], "authentication_error");
    let open = setup(ANSWER, 0, 1, 0, None);
    let st = &open.state;
    let cases = [
        (
            "POST",
            "/v1/chat/completions",
            json!({"messages": "nope"}),
            400,
            Some("messages"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat_body(json!({"model": "gpt-5"})),
            404,
            Some("model"),
        ),
        ("GET", "/v1/models/gpt-5", Value::Null, 404, None),
        ("GET", "/v1/nothing-here", Value::Null, 404, None),
        ("GET", "/v1/chat/completions", Value::Null, 405, None),
        (
            "POST",
            "/v1/chat/completions",
            json!({"messages": [{"role":"user","content": "x".repeat(70_000)}]}),
            413,
            None,
        ),
    ];
    for (method, path, body, want, param) in cases {
        let (status, v, _) = call(st, method, path, body).await;
        assert_eq!(status.as_u16(), want, "{method} {path}: {v}");
        for k in ["message", "type", "param", "code"] {
            assert!(
                v["error"].get(k).is_some(),
                "{method} {path}: `{k}` missing in {v}"
            );
        }
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{v}");
        }
    }
}

#[tokio::test]
async fn model_not_loaded_is_503() {
    let s = setup(ANSWER, 0, 1, 0, None);
    s.state.set_model(ModelState::Failed("corrupt".into()));
    let (status, v, _) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({})),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    let (status, v, _) = call(&s.state, "GET", "/health", Value::Null).await;
    assert_eq!(status, 503);
    assert_eq!(v["status"], "failed");
}

#[tokio::test]
async fn full_queue_is_429_with_retry_after_and_the_slot_returns() {
    let s = setup(ANSWER, 50, 1, 0, None);
    let st = Arc::clone(&s.state);
    let busy = tokio::spawn(async move {
        call(&st, "POST", "/v1/chat/completions", chat_body(json!({}))).await
    });
    while s.state.admission.status().running == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, v, headers) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({})),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let (status, _, _) = busy.await.expect("join");
    assert_eq!(status, 200);
    assert_eq!(
        s.state.admission.status().running,
        0,
        "the permit must be released with the response"
    );
}

#[tokio::test]
async fn a_dropped_stream_cancels_generation_and_frees_the_slot() {
    let s = setup(&"word ".repeat(400), 20, 1, 0, None);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .body(Body::from(chat_body(json!({"stream": true})).to_string()))
        .expect("request");
    let resp = crate::router(Arc::clone(&s.state))
        .oneshot(req)
        .await
        .expect("infallible");
    let mut body = resp.into_body().into_data_stream();
    let first = body.next().await;
    assert!(first.is_some());
    assert_eq!(s.state.admission.status().running, 1);
    assert_eq!(s.active.load(Ordering::SeqCst), 1);
    drop(body);
    for _ in 0..100 {
        if s.active.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.state.admission.status().running,
        0,
        "dropping the stream frees the slot"
    );
    assert_eq!(
        s.active.load(Ordering::SeqCst),
        0,
        "dropping the stream stops the generation"
    );
}

#[tokio::test]
async fn completions_returns_raw_text_with_special_tokens_literal() {
    let s = setup(ANSWER, 0, 1, 0, None);
    let (status, v, _) = call(
        &s.state,
        "POST",
        "/v1/completions",
        json!({"prompt": "<|start|>user<|message|>hi<|end|><|start|>assistant", "max_tokens": 100}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], ANSWER);
    assert_eq!(v["object"], "text_completion");
}

#[tokio::test]
async fn health_reports_the_queue() {
    let s = setup(ANSWER, 0, 3, 7, None);
    let (status, v, _) = call(&s.state, "GET", "/health", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["queue"]["max_concurrent"], 3);
    assert_eq!(v["queue"]["running"], 0);
    assert_eq!(v["queue"]["waiting"], 0);
    let (_, m, _) = call(&s.state, "GET", "/v1/models", Value::Null).await;
    assert_eq!(m["data"][0]["id"], "m");
    let (status, text, _) = call(&s.state, "GET", "/metrics", Value::Null).await;
    assert_eq!(status, 200);
    assert!(text
        .as_str()
        .unwrap_or("")
        .contains("gpt_oss_queue_max_concurrent 3"));
}

#[tokio::test]
async fn an_engine_failure_mid_stream_is_an_error_event_then_done() {
    let s = setup_failing(ANSWER, 0, 1, 0, None, Some(5));
    let (status, text, _) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    let payloads = sse_payloads(text.as_str().unwrap_or(""));
    let n = payloads.len();
    assert!(n >= 3, "{payloads:?}");
    assert_eq!(payloads[n - 1], "[DONE]");
    let err: Value = serde_json::from_str(&payloads[n - 2]).expect("error JSON");
    assert_eq!(err["error"]["type"], "server_error", "{err}");
    assert_eq!(s.state.admission.status().running, 0);
    // Without streaming the same failure is a 500 OpenAI error.
    let (status, v, _) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({})),
    )
    .await;
    assert_eq!(status, 500, "{v}");
    assert_eq!(v["error"]["type"], "server_error");
}

#[tokio::test]
async fn malformed_model_output_is_never_an_error() {
    // Stray specials, no channel, a cut-off header: best-effort content, status 200.
    let s = setup(
        "<|message|>hello<|end|><|channel|><|start|>assistant<|channel|>fin",
        0,
        1,
        0,
        None,
    );
    let (status, v, _) = call(
        &s.state,
        "POST",
        "/v1/chat/completions",
        chat_body(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
}

#[tokio::test]
async fn required_tool_choice_lets_the_model_name_the_function() {
    let s = setup(
        r#"get_weather <|constrain|>json<|message|>{"city":"Oslo"}<|call|>"#,
        0,
        1,
        0,
        None,
    );
    let body = json!({
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
        "tool_choice": "required",
        "stream": true
    });
    let (status, text, _) = call(&s.state, "POST", "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    let payloads = sse_payloads(text.as_str().unwrap_or(""));
    let mut name = String::new();
    let mut args = String::new();
    let mut finish = Value::Null;
    for p in &payloads[..payloads.len() - 1] {
        let c: Value = serde_json::from_str(p).expect("chunk");
        for tc in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
            args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
        if !c["choices"][0]["finish_reason"].is_null() {
            finish = c["choices"][0]["finish_reason"].clone();
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(args, r#"{"city":"Oslo"}"#);
    assert_eq!(finish, "tool_calls");
}

const WEATHER_CALL: &str = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary<|message|>Checking the weather now.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>";

/// The JSON answer and the stream merged as a client merges it: (content, tool call names,
/// finish reason) of each.
async fn json_and_stream(s: &Setup, body: Value) -> [(String, Vec<String>, Value); 2] {
    let (status, v, _) = call(&s.state, "POST", "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    let names = |calls: &Value| -> Vec<String> {
        calls
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["function"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let json = (
        choice["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        names(&choice["message"]["tool_calls"]),
        choice["finish_reason"].clone(),
    );
    let mut body = body;
    body["stream"] = json!(true);
    let (status, text, _) = call(&s.state, "POST", "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    let mut streamed = (String::new(), Vec::new(), Value::Null);
    for p in sse_payloads(text.as_str().unwrap_or("")) {
        let Ok(c) = serde_json::from_str::<Value>(&p) else {
            continue;
        };
        let Some(ch) = c["choices"].get(0) else {
            continue;
        };
        streamed
            .0
            .push_str(ch["delta"]["content"].as_str().unwrap_or(""));
        streamed.1.extend(names(&ch["delta"]["tool_calls"]));
        if !ch["finish_reason"].is_null() {
            streamed.2 = ch["finish_reason"].clone();
        }
    }
    [json, streamed]
}

#[tokio::test]
async fn calls_to_functions_the_request_did_not_offer_are_not_tool_calls() {
    let s = setup(WEATHER_CALL, 0, 2, 4, None);
    let user = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let time = json!({"type": "function", "function": {"name": "get_time"}});
    let weather = json!({"type": "function", "function": {"name": "get_weather"}});
    for body in [
        json!({"messages": user}),
        json!({"messages": user, "tools": [weather], "tool_choice": "none"}),
        json!({"messages": user, "tools": [time]}),
    ] {
        for (content, names, finish) in json_and_stream(&s, body.clone()).await {
            assert!(names.is_empty(), "{body}: {names:?}");
            assert_eq!(finish, "stop", "{body}");
            assert_eq!(content, "Checking the weather now.", "{body}");
        }
    }
    let body = json!({"messages": user, "tools": [time, weather]});
    for (_, names, finish) in json_and_stream(&s, body).await {
        assert_eq!(names, ["get_weather"]);
        assert_eq!(finish, "tool_calls");
    }
}

#[tokio::test]
async fn preambles_are_content_next_to_the_call_in_json_and_sse() {
    let s = setup(WEATHER_CALL, 0, 2, 4, None);
    let body = json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}]
    });
    let [json, streamed] = json_and_stream(&s, body).await;
    assert_eq!(json.0, "Checking the weather now.");
    assert_eq!(json.1, ["get_weather"]);
    assert_eq!(json, streamed, "JSON and SSE agree");
}

/// `n` distinct short words (each a few tokens).
fn many_words(n: usize) -> String {
    (0..n).map(|i| format!("w{i} ")).collect()
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_context_length_exceeded_naming_the_field() {
    let s = setup(ANSWER, 0, 2, 4, None);
    let long = many_words(6000);
    let body = json!({"messages": [{"role": "user", "content": long}], "max_tokens": 5});
    let (status, v, _) = call(&s.state, "POST", "/v1/chat/completions", body).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(v["error"]["param"], "messages", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("maximum context length is 4096 tokens"),
        "{message}"
    );

    let body = json!({"model": "m", "prompt": long, "max_tokens": 5});
    let (status, v, _) = call(&s.state, "POST", "/v1/completions", body).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(v["error"]["param"], "prompt", "{v}");

    // A prompt that fits, close to the context, is served.
    let fits = many_words(1400);
    let body = json!({"messages": [{"role": "user", "content": fits}], "max_tokens": 5});
    let (status, v, _) = call(&s.state, "POST", "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{v}");
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    assert!(
        prompt_tokens > 3000,
        "the fitting prompt is long: {prompt_tokens}"
    );
}

// --- The Responses API over the scripted backend: stream event order and shapes ---

const TOOL_CALL: &str = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>";

/// The `(event name, data)` pairs of a Responses stream.
fn response_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = Some(n.to_string());
        } else if let Some(d) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(d).expect("event data is JSON");
            let n = name.take().expect("every data line follows an event line");
            assert_eq!(v["type"], n.as_str(), "the event name is the data's type");
            out.push((n, v));
        }
    }
    out
}

async fn responses_stream(s: &Setup, body: Value) -> Vec<(String, Value)> {
    let (status, v, headers) = call(&s.state, "POST", "/v1/responses", body).await;
    assert_eq!(status, 200, "{v}");
    assert!(headers["content-type"]
        .to_str()
        .is_ok_and(|c| c.starts_with("text/event-stream")));
    let events = response_events(v.as_str().expect("an SSE body"));
    let seq: Vec<u64> = events
        .iter()
        .map(|(_, v)| v["sequence_number"].as_u64().expect("sequence_number"))
        .collect();
    assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>());
    events
}

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather", "strict": false,
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}])
}

#[tokio::test]
async fn responses_stream_a_reasoning_item_then_a_function_call() {
    let s = setup(TOOL_CALL, 0, 2, 4, None);
    let events = responses_stream(
        &s,
        json!({"input": "Weather in Paris?", "stream": true, "tools": weather_tool()}),
    )
    .await;
    // Consecutive deltas of one kind counted once.
    let mut names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    names.dedup_by(|a, b| a == b && a.ends_with(".delta"));
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ][..],
        "{events:?}"
    );
    let find = |name: &str, nth: usize| {
        events
            .iter()
            .filter(|(n, _)| n == name)
            .nth(nth)
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null)
    };
    let added = find("response.output_item.added", 1);
    assert_eq!(added["item"]["type"], "function_call");
    assert_eq!(added["item"]["name"], "get_weather");
    assert_eq!(added["output_index"], 1);
    let args: String = events
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, v)| v["delta"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(args, "{\"location\":\"Paris\"}");
    let args_done = find("response.function_call_arguments.done", 0);
    assert_eq!(args_done["arguments"], args.as_str());
    let completed = find("response.completed", 0);
    let r = &completed["response"];
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"][0]["type"], "reasoning");
    assert_eq!(r["output"][0]["content"][0]["text"], "Need the weather.");
    assert_eq!(r["output"][1]["call_id"], added["item"]["call_id"]);
    assert_eq!(r["output"][1]["status"], "completed");
    assert!(r["usage"]["output_tokens_details"]["reasoning_tokens"].as_u64() > Some(0));
}

#[tokio::test]
async fn responses_stream_ends_failed_when_the_engine_fails() {
    let s = setup_failing(ANSWER, 0, 1, 0, None, Some(5));
    let events = responses_stream(&s, json!({"input": "Capital of the US?", "stream": true})).await;
    let (name, last) = events.last().expect("events");
    assert_eq!(name, "response.failed", "{events:?}");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
    assert!(last["response"]["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    // The item that was open when the engine failed is closed as incomplete.
    let done: Vec<_> = events
        .iter()
        .filter(|(n, _)| n == "response.output_item.done")
        .collect();
    assert_eq!(
        done.last().map(|(_, v)| v["item"]["status"].clone()),
        Some(json!("incomplete"))
    );
    // Nothing of a failed response is stored.
    let id = last["response"]["id"].as_str().expect("id");
    let (status, _, _) = call(&s.state, "GET", &format!("/v1/responses/{id}"), Value::Null).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn responses_whole_and_streamed_carry_the_same_output() {
    let s = setup(ANSWER, 0, 2, 4, None);
    let (status, whole, _) = call(
        &s.state,
        "POST",
        "/v1/responses",
        json!({"input": "Capital of the US?", "store": false}),
    )
    .await;
    assert_eq!(status, 200, "{whole}");
    let events = responses_stream(&s, json!({"input": "Capital of the US?", "stream": true})).await;
    let (_, completed) = events.last().expect("events");
    let strip = |v: &Value| {
        v["output"]
            .as_array()
            .expect("output")
            .iter()
            .map(|i| (i["type"].clone(), i["content"].clone(), i["status"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&whole), strip(&completed["response"]));
    assert_eq!(whole["output"][1]["content"][0]["text"], "Washington, D.C.");
    assert_eq!(whole["usage"], completed["response"]["usage"]);
}
