//! End-to-end tests of `gpt-oss-server`: the real binary on the committed tiny
//! gpt-oss fixture (random weights, real architecture and vocabulary), over HTTP.
//! Build the binaries first: `cargo build --release --bins` (scripts/test does).

#[path = "common/server_proc.rs"]
mod server_proc;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use server_proc::ServerProc;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// The seed README's curl example, verbatim.
fn seed_example() -> Value {
    json!({
        "messages": [
            {"role": "system", "content": "Always answer in just single word."},
            {"role": "user", "content": "What is the capital of the US?"}
        ],
        "max_tokens": 1000,
        "temperature": 0.7,
        "separate_thinking": true
    })
}

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"]
            }
        }
    })
}

async fn post(url: &str, path: &str, body: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = client()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v, headers)
}

async fn get(url: &str, path: &str) -> (u16, Value) {
    let resp = client()
        .get(format!("{url}{path}"))
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_string())
        .collect()
}

/// Posts a streaming request and returns its chunks (without the final `[DONE]`,
/// which is asserted).
async fn stream_chunks(url: &str, path: &str, body: &Value) -> Vec<Value> {
    let resp = client()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    let text = resp.text().await.expect("body");
    let mut data = sse_data(&text);
    assert_eq!(
        data.pop().as_deref(),
        Some("[DONE]"),
        "a stream ends with data: [DONE]"
    );
    data.iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d}: {e}")))
        .collect()
}

/// What a stream says, merged as a client would merge it.
#[derive(Debug, Default, PartialEq)]
struct Merged {
    content: String,
    reasoning: String,
    tool_calls: Vec<(String, String)>,
    finish_reason: Value,
    usage: Value,
}

fn merge(chunks: &[Value]) -> Merged {
    let mut m = Merged::default();
    for c in chunks {
        if !c["usage"].is_null() {
            m.usage = c["usage"].clone();
        }
        let Some(ch) = c["choices"].get(0) else {
            continue;
        };
        let d = &ch["delta"];
        m.content.push_str(d["content"].as_str().unwrap_or(""));
        m.reasoning
            .push_str(d["reasoning_content"].as_str().unwrap_or(""));
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap_or(0) as usize;
            if m.tool_calls.len() <= i {
                m.tool_calls.push(Default::default());
            }
            m.tool_calls[i]
                .0
                .push_str(tc["function"]["name"].as_str().unwrap_or(""));
            m.tool_calls[i]
                .1
                .push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
        if !ch["finish_reason"].is_null() {
            m.finish_reason = ch["finish_reason"].clone();
        }
    }
    m
}

fn merged_from_message(v: &Value) -> Merged {
    let ch = &v["choices"][0];
    let msg = &ch["message"];
    Merged {
        content: msg["content"].as_str().unwrap_or("").to_string(),
        reasoning: msg["reasoning_content"].as_str().unwrap_or("").to_string(),
        tool_calls: msg["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|tc| {
                (
                    tc["function"]["name"].as_str().unwrap_or("").to_string(),
                    tc["function"]["arguments"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect(),
        finish_reason: ch["finish_reason"].clone(),
        usage: v["usage"].clone(),
    }
}

fn assert_usage(u: &Value) {
    let p = u["prompt_tokens"].as_u64().expect("prompt_tokens");
    let c = u["completion_tokens"].as_u64().expect("completion_tokens");
    assert!(p > 0 && c > 0, "{u}");
    assert_eq!(u["total_tokens"].as_u64(), Some(p + c), "{u}");
    let t = u["thinking_tokens"]
        .as_u64()
        .expect("the seed's thinking_tokens");
    assert_eq!(
        u["completion_tokens_details"]["reasoning_tokens"].as_u64(),
        Some(t),
        "{u}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_streaming_tools_completions_and_models() {
    let server = ServerProc::start(&["--default-max-tokens", "24"], true);
    let url = server.url.as_str();

    // The seed's curl example (max_tokens lowered so the random fixture finishes fast).
    let mut body = seed_example();
    body["max_tokens"] = json!(20);
    let (status, v, _) = post(url, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-oss-20b");
    assert!(v["id"].as_str().unwrap_or("").starts_with("chatcmpl-"));
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert!(msg["content"].is_string(), "{msg}");
    assert!(
        msg["thinking"].is_object(),
        "separate_thinking adds `thinking`: {msg}"
    );
    let parsed = &msg["parsed"];
    assert_eq!(
        parsed["developer_instructions"],
        "Always answer in just single word."
    );
    assert_eq!(
        parsed["history"],
        json!([{"role": "user", "content": "What is the capital of the US?"}])
    );
    assert_eq!(parsed["final"], msg["content"]);
    let fr = v["choices"][0]["finish_reason"].as_str().unwrap_or("");
    assert!(["stop", "length"].contains(&fr), "{fr}");
    assert_usage(&v["usage"]);

    // Streaming and non-streaming give the same text under a fixed seed.
    let body = json!({
        "messages": [{"role": "user", "content": "Tell me about Paris."}],
        "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 1234
    });
    let (status, whole, _) = post(url, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{whole}");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = stream_chunks(url, "/v1/chat/completions", &sbody).await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let last = chunks.last().expect("usage chunk");
    assert_eq!(last["choices"], json!([]), "the usage chunk has no choices");
    let streamed = merge(&chunks);
    let expected = merged_from_message(&whole);
    assert_eq!(streamed, expected, "stream and JSON differ under seed 1234");
    assert!(
        !expected.content.is_empty() || !expected.reasoning.is_empty(),
        "the fixture produced no text at all"
    );

    // Full tool-call round trip: a forced call, then the tool's result.
    let body = json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 12, "temperature": 0.0
    });
    let (status, v, _) = post(url, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let call_id = calls[0]["id"].as_str().expect("id").to_string();
    assert!(call_id.starts_with("call_"), "{call_id}");
    let fr = choice["finish_reason"].as_str().unwrap_or("");
    assert!(["tool_calls", "length"].contains(&fr), "{fr}");
    let follow = json!({
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "{\"temperature_c\": 21}"}
        ],
        "tools": [weather_tool()],
        "max_tokens": 12
    });
    let (status, v, _) = post(url, "/v1/chat/completions", &follow).await;
    assert_eq!(status, 200, "the tool result turn must be accepted: {v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    // The forced call streams as tool_call deltas too.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let streamed = merge(&stream_chunks(url, "/v1/chat/completions", &sbody).await);
    assert_eq!(
        streamed.tool_calls.first().map(|c| c.0.as_str()),
        Some("get_weather")
    );

    // Raw completions, JSON and SSE.
    let body = json!({"prompt": "<|start|>user<|message|>Hi<|end|><|start|>assistant", "max_tokens": 8, "seed": 7, "temperature": 0.5});
    let (status, v, _) = post(url, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().expect("text").to_string();
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let chunks = stream_chunks(url, "/v1/completions", &sbody).await;
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);

    // Models, health, queue, metrics.
    let (status, v) = get(url, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "gpt-oss-20b");
    let (status, v) = get(url, "/v1/models/gpt-oss-20b").await;
    assert_eq!((status, v["id"].clone()), (200, json!("gpt-oss-20b")));
    let (status, v) = get(url, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["queue"]["max_concurrent"], 2);
    let (status, v) = get(url, "/queue/status").await;
    assert_eq!(status, 200);
    assert_eq!(v["running"], 0);
    let (status, v) = get(url, "/metrics").await;
    assert_eq!(status, 200);
    let text = v.as_str().unwrap_or("");
    for needle in [
        "gpt_oss_requests_total{endpoint=\"chat_completions\",status=\"200\"}",
        "gpt_oss_queue_waiting 0",
        "gpt_oss_time_to_first_token_seconds_count",
        "gpt_oss_tokens_per_second_bucket",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_is_an_openai_error() {
    let server = ServerProc::start(
        &[
            "--api-key",
            "sk-test",
            "--max-body-bytes",
            "4096",
            "--model-name",
            "tiny",
        ],
        true,
    );
    let url = server.url.as_str();
    let c = client();
    let send = |method: reqwest::Method, path: &str, key: Option<&str>, body: Option<String>| {
        let mut rb = c.request(method, format!("{url}{path}"));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b);
        }
        rb.send()
    };
    let ok_body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string();
    let cases: Vec<(&str, reqwest::Method, &str, Option<&str>, Option<String>, u16, Option<&str>)> = vec![
        ("no key", reqwest::Method::POST, "/v1/chat/completions", None, Some(ok_body.clone()), 401, None),
        ("wrong key", reqwest::Method::POST, "/v1/chat/completions", Some("sk-wrong"), Some(ok_body.clone()), 401, None),
        ("invalid JSON", reqwest::Method::POST, "/v1/chat/completions", Some("sk-test"), Some("{\"messages\": [".into()), 400, None),
        ("wrong type", reqwest::Method::POST, "/v1/chat/completions", Some("sk-test"),
            Some(json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "warm"}).to_string()), 400, Some("temperature")),
        ("nested field", reqwest::Method::POST, "/v1/chat/completions", Some("sk-test"),
            Some(json!({"messages": [{"role": "user", "content": "hi"}, {"role": "alien", "content": "x"}]}).to_string()), 400, Some("messages[1].role")),
        ("out of range", reqwest::Method::POST, "/v1/chat/completions", Some("sk-test"),
            Some(json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}).to_string()), 400, Some("max_tokens")),
        ("n above 128", reqwest::Method::POST, "/v1/chat/completions", Some("sk-test"),
            Some(json!({"messages": [{"role": "user", "content": "hi"}], "n": 129}).to_string()), 400, Some("n")),
        ("unknown field", reqwest::Method::POST, "/v1/chat/completions", Some("sk-test"),
            Some(json!({"messages": [{"role": "user", "content": "hi"}], "frobnicate": true}).to_string()), 400, Some("frobnicate")),
        ("unknown model", reqwest::Method::POST, "/v1/chat/completions", Some("sk-test"),
            Some(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string()), 404, Some("model")),
        ("unknown model id", reqwest::Method::GET, "/v1/models/gpt-4o", Some("sk-test"), None, 404, None),
        ("unknown route", reqwest::Method::GET, "/v2/everything", Some("sk-test"), None, 404, None),
        ("wrong method", reqwest::Method::GET, "/v1/chat/completions", Some("sk-test"), None, 405, None),
        ("body too large", reqwest::Method::POST, "/v1/chat/completions", Some("sk-test"),
            Some(json!({"messages": [{"role": "user", "content": "x".repeat(10_000)}]}).to_string()), 413, None),
    ];
    for (name, method, path, key, body, want, param) in cases {
        let resp = send(method, path, key, body).await.expect("sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        assert_eq!(status, want, "{name}: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {text}"));
        for k in ["message", "type", "param", "code"] {
            assert!(v["error"].get(k).is_some(), "{name}: `{k}` missing: {v}");
        }
        assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty());
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{name}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("`{p}`"))
                    || p == "model",
                "{name}: the message names the field: {v}"
            );
        }
    }
    // With the key, it works; /health stays open without it.
    let resp = send(
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some("sk-test"),
        Some(ok_body),
    )
    .await
    .expect("sent");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(get(url, "/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_load_gives_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("genai_config.json"), "{ not json").expect("write");
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").expect("write");
    let server = ServerProc::start_with_model(dir.path(), &[], false);
    // 503 while loading, then 503 with `failed` once the load gave up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = get(&server.url, "/health").await;
        assert_eq!(status, 503, "{v}");
        if v["status"] == "failed" {
            assert!(
                !v["detail"].as_str().unwrap_or("").is_empty(),
                "the reason is reported: {v}"
            );
            break;
        }
        assert_eq!(v["status"], "loading");
        assert!(Instant::now() < deadline, "never failed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, v, _) = post(
        &server.url,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["type"], "service_unavailable");
    assert_eq!(v["error"]["code"], "model_not_loaded");
}

async fn queue(url: &str) -> Value {
    get(url, "/queue/status").await.1
}

async fn wait_queue(url: &str, what: &str, want: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let q = queue(url).await;
        if q[what].as_u64() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {what} never reached {want}: {q}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A generation that stays in flight for the whole test: `min_tokens` keeps the stop tokens
/// out (the tiny model stops this greedy story after about 330 tokens without it), and the
/// unread stream fills the socket buffers long before 4,000 tokens, so the engine waits.
fn long_stream() -> Value {
    json!({
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 4000, "min_tokens": 4000, "temperature": 0.0, "stream": true
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_and_disconnects_free_their_place() {
    let server = ServerProc::start(
        &[
            "--max-concurrent",
            "1",
            "--max-queue",
            "1",
            "--retry-after-secs",
            "3",
        ],
        true,
    );
    let url = server.url.clone();
    let c = client();

    // A streams and holds the only slot.
    let a = c
        .post(format!("{url}/v1/chat/completions"))
        .json(&long_stream())
        .send()
        .await
        .expect("A sent");
    assert_eq!(a.status().as_u16(), 200);
    let mut a_body = a.bytes_stream();
    let first = a_body
        .next()
        .await
        .expect("A's first chunk")
        .expect("A bytes");
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    wait_queue(&url, "running", 1, Duration::from_secs(10)).await;

    // B waits in the only waiting place, then gives up (client timeout): its place frees.
    let small = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let b = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .expect("client");
    let b_url = url.clone();
    let b_body = small.clone();
    let b_task = tokio::spawn(async move {
        b.post(format!("{b_url}/v1/chat/completions"))
            .json(&b_body)
            .send()
            .await
    });
    wait_queue(&url, "waiting", 1, Duration::from_secs(10)).await;

    // C finds the line full: 429 with Retry-After, as an OpenAI rate-limit error.
    let (status, v, headers) = post(&url, "/v1/chat/completions", &small).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(
        headers.get("retry-after").and_then(|h| h.to_str().ok()),
        Some("3")
    );
    assert_eq!(v["error"]["type"], "rate_limit_error");

    let b_result = b_task.await.expect("join");
    assert!(b_result.is_err(), "B should have timed out while waiting");
    wait_queue(&url, "waiting", 0, Duration::from_secs(10)).await;
    assert_eq!(queue(&url).await["running"], 1, "A still runs");

    // A disconnects mid-stream: its slot frees and its generation stops.
    drop(a_body);
    wait_queue(&url, "running", 0, Duration::from_secs(10)).await;
    let (status, v, _) = post(&url, "/v1/chat/completions", &small).await;
    assert_eq!(status, 200, "the freed slot serves the next request: {v}");
    let metrics = get(&url, "/metrics").await.1;
    let text = metrics.as_str().unwrap_or("");
    let cancelled: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("gpt_oss_cancelled_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        cancelled >= 1,
        "the disconnect is counted as a cancellation:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut server = ServerProc::start(&["--shutdown-timeout-secs", "60"], true);
    let url = server.url.clone();
    let body = json!({"messages": [{"role": "user", "content": "Count."}], "max_tokens": 30, "temperature": 0.0});
    let in_flight = tokio::spawn({
        let url = url.clone();
        async move { post(&url, "/v1/chat/completions", &body).await }
    });
    wait_queue(&url, "running", 1, Duration::from_secs(20)).await;
    server.signal("TERM");
    let (status, v, _) = in_flight.await.expect("join");
    assert_eq!(status, 200, "the in-flight request finishes: {v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0);
    let exit = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits after SIGTERM");
    assert!(exit.success(), "clean exit: {exit:?}\n{}", server.log());
    assert!(
        server_proc::blocking_get(&url, "/health").is_none(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_output_returns_unparsed_harmony_text() {
    let server = ServerProc::start(&["--raw-output"], true);
    let body = json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 6, "temperature": 0.0
    });
    let (status, v, _) = post(&server.url, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(
        content.starts_with(
            "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        ),
        "raw harmony with special tokens as text: {content:?}"
    );
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
}
