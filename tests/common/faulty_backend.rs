//! A real HTTP/1.1 server on loopback that misbehaves on purpose, for faults that a real
//! `gpt-oss-server` cannot produce: invalid JSON, truncated SSE, a wrong content type, a 200
//! with an HTML body, a slow drip of bytes. `/health` always answers 200 so that only the
//! LB's passive checks can eject it. It also records request headers (hop-by-hop and
//! `X-Forwarded-For` checks) and can answer correctly (`Mode::Good`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A valid completion (JSON, or SSE ending with `[DONE]` when the request streams).
    Good,
    /// 200 `application/json` with a body that is not JSON.
    InvalidJson,
    /// 200 `text/event-stream`: one chunk, then the connection closes without `[DONE]`.
    TruncatedSse,
    /// 200 with `content-type: application/octet-stream` and a binary body.
    WrongContentType,
    /// 200 `text/html` with an HTML page.
    Html200,
    /// The status line arrives one byte every `drip`.
    SlowDrip,
    /// 503 after reading the whole request (a busy backend: the LB fails over).
    Busy503,
    /// 500 to every completion while `/health` stays 200 (a broken model behind a working
    /// HTTP server).
    Error500,
    /// 429 with `Retry-After: 30` to every completion.
    RateLimited429,
    /// A stream whose one `data:` line never ends: 64 KiB pieces of `x`, up to 64 MiB, as
    /// long as the reader takes them.
    EndlessEvent,
    /// Raw harmony SSE events whose lines end with a bare CR (allowed by the SSE
    /// specification); the connection then stays open 4 s before `[DONE]`.
    CrEvents,
    /// 431 with an empty body and no content type.
    Empty431,
    /// Raw harmony text (as a `--raw-output` server writes it) with an unpaired surrogate
    /// escape (`\ud83d`) in the JSON string, as JSON or SSE.
    RawSurrogate,
}

impl Mode {
    pub const GARBAGE: [Mode; 5] = [
        Mode::InvalidJson,
        Mode::TruncatedSse,
        Mode::WrongContentType,
        Mode::Html200,
        Mode::SlowDrip,
    ];
}

pub struct FaultyBackend {
    pub addr: SocketAddr,
    pub mode: Arc<Mutex<Mode>>,
    /// Header blocks of the completion requests received (lowercased names), each with a
    /// pseudo-header `:body-bytes` (the body's length as read) and `:body-json` (`true` when
    /// the body parsed as JSON).
    pub seen: Arc<Mutex<Vec<Vec<(String, String)>>>>,
    pub drip: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyBackend {
    pub async fn start(mode: Mode, drip: Duration) -> FaultyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(Mutex::new(mode));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (mode.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let (m, s) = (m.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, m, s, drip).await;
                });
            }
        });
        FaultyBackend {
            addr,
            mode,
            seen,
            drip,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().expect("mode") = m;
    }

    pub fn completions_seen(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }
}

async fn read_request(
    sock: &mut TcpStream,
) -> std::io::Result<Option<(String, Vec<(String, String)>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Ok(Some((request_line, headers, body)))
}

fn completion_json() -> String {
    serde_json::json!({
        "id": "chatcmpl-faulty",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
    .to_string()
}

fn chunk_json(content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-faulty",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    })
    .to_string()
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn serve(
    mut sock: TcpStream,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Vec<(String, String)>>>>,
    drip: Duration,
) -> std::io::Result<()> {
    while let Some((line, headers, body)) = read_request(&mut sock).await? {
        if line.starts_with("GET /health") {
            let b = r#"{"status":"ok","queue":{"waiting":0,"running":0}}"#;
            sock.write_all(response("200 OK", "application/json", b).as_bytes())
                .await?;
            continue;
        }
        let mut headers = headers;
        headers.push((":body-bytes".into(), body.len().to_string()));
        let json_ok = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
        headers.push((":body-json".into(), json_ok.to_string()));
        seen.lock().expect("seen").push(headers);
        let stream = serde_json::from_slice::<serde_json::Value>(&body)
            .map(|v| v["stream"].as_bool() == Some(true))
            .unwrap_or(false);
        let m = *mode.lock().expect("mode");
        match m {
            Mode::Good if stream => {
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: ",
                );
                let frames = format!(
                    "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
                    chunk_json("o"),
                    chunk_json("k")
                );
                out.push_str(&format!("{}\r\n\r\n{frames}", frames.len()));
                sock.write_all(out.as_bytes()).await?;
            }
            Mode::Good => {
                sock.write_all(
                    response("200 OK", "application/json", &completion_json()).as_bytes(),
                )
                .await?;
            }
            Mode::InvalidJson => {
                sock.write_all(
                    response(
                        "200 OK",
                        "application/json",
                        "{\"id\": \"x\", \"choices\": [ {oops",
                    )
                    .as_bytes(),
                )
                .await?;
            }
            Mode::TruncatedSse => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let frame = format!("data: {}\n\n", chunk_json("partial"));
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(format!("{:x}\r\n{frame}\r\n", frame.len()).as_bytes())
                    .await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Ok(()); // close without the last chunk or [DONE]
            }
            Mode::WrongContentType => {
                sock.write_all(
                    response(
                        "200 OK",
                        "application/octet-stream",
                        "\u{1}\u{2}binary\u{3}",
                    )
                    .as_bytes(),
                )
                .await?;
            }
            Mode::Html200 => {
                sock.write_all(
                    response(
                        "200 OK",
                        "text/html; charset=utf-8",
                        "<html><body><h1>Welcome to nginx!</h1></body></html>",
                    )
                    .as_bytes(),
                )
                .await?;
            }
            Mode::Busy503 => {
                let e = r#"{"error":{"message":"busy","type":"service_unavailable","param":null,"code":null}}"#;
                sock.write_all(
                    response("503 Service Unavailable", "application/json", e).as_bytes(),
                )
                .await?;
            }
            Mode::Error500 => {
                let e = r#"{"error":{"message":"model failed","type":"server_error","param":null,"code":null}}"#;
                sock.write_all(
                    response("500 Internal Server Error", "application/json", e).as_bytes(),
                )
                .await?;
            }
            Mode::RateLimited429 => {
                let e = r#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":null}}"#;
                let body = format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 30\r\ncontent-length: {}\r\n\r\n{e}",
                    e.len()
                );
                sock.write_all(body.as_bytes()).await?;
            }
            Mode::RawSurrogate if stream => {
                // Each piece is a JSON string literal as a raw-output server would escape it.
                let pieces = [
                    r#""<|channel|>analysis<|message|>Think \ud83d.""#,
                    r#""<|end|><|start|>assistant<|channel|>final<|message|>""#,
                    r#""Paris \ud83d""#,
                    r#""<|return|>""#,
                ];
                let mut frames = String::new();
                for p in pieces {
                    frames.push_str(&format!(
                        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{p}}},\"finish_reason\":null}}]}}\n\n"
                    ));
                }
                frames.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{frames}",
                    frames.len()
                );
                sock.write_all(out.as_bytes()).await?;
            }
            Mode::RawSurrogate => {
                let body = r#"{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"<|channel|>analysis<|message|>Think \ud83d.<|end|><|start|>assistant<|channel|>final<|message|>Paris \ud83d<|return|>"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
                sock.write_all(response("200 OK", "application/json", body).as_bytes())
                    .await?;
            }
            Mode::EndlessEvent => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"<|channel|>final<|message|>";
                sock.write_all(head.as_bytes()).await?;
                let piece = vec![b'x'; 64 * 1024];
                for _ in 0..1024 {
                    if sock.write_all(&piece).await.is_err() {
                        return Ok(());
                    }
                }
                return Ok(());
            }
            Mode::CrEvents => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
                sock.write_all(head.as_bytes()).await?;
                for piece in [
                    "<|channel|>analysis<|message|>Think.<|end|>",
                    "<|start|>assistant<|channel|>final<|message|>Paris<|return|>",
                ] {
                    let frame = format!("data: {}\r\r", chunk_json(piece));
                    sock.write_all(frame.as_bytes()).await?;
                }
                sock.flush().await?;
                tokio::time::sleep(Duration::from_secs(4)).await;
                sock.write_all(b"data: [DONE]\r\r").await?;
                return Ok(());
            }
            Mode::Empty431 => {
                sock.write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
                )
                .await?;
            }
            Mode::SlowDrip => {
                let all = response("200 OK", "application/json", &completion_json());
                for b in all.as_bytes() {
                    sock.write_all(&[*b]).await?;
                    sock.flush().await?;
                    tokio::time::sleep(drip).await;
                }
            }
        }
    }
    Ok(())
}
