//! The filter chain of every proxied request, and the proxy-wasm plugins in it.
//!
//! A request's chain is, in order: the built-in `harmony` filter (the edge rewriting of raw
//! harmony into OpenAI output, `stream::ResponseState`, run first so that user filters only
//! ever see OpenAI-shaped bodies), then the `global` plugins in the order the YAML declares
//! them, then the plugins its route lists (`routes[i].plugins`). Pingora's phases drive it
//! ([`Stream`]): `request_filter` runs the request headers and body callbacks (the body is
//! read whole before proxying, so every filter sees it whole, `end_of_stream` true),
//! `upstream_response_filter` the response headers, `response_body_filter` each response
//! body chunk (SSE events as they pass; the last call has `end_of_stream` true), `logging`
//! the log callbacks.
//!
//! A filter may change headers and bodies, answer locally (`proxy_send_local_response`), pause
//! a response body to see it whole (Envoy's `StopIterationAndBuffer`), and pause the response
//! header until a later body callback continues (the header is then held back, so a filter
//! can add headers computed from the body, such as token counts). A filter that fails fails
//! its request with a 500 `plugin_failed` error (a stream already started ends with an error
//! event), unless it is `fail_open`.

pub mod abi;
pub mod wasm;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use openai_types::ErrorKind;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::error::{ApiError, Reply};
use abi::Pairs;
use wasm::{Handle, HttpData, PluginFailure, WasmPlugin};

/// The plugins of one configuration: loaded modules, and the chain of each route.
#[derive(Default)]
pub struct Plugins {
    /// Every plugin, in declaration order.
    pub all: Vec<Arc<WasmPlugin>>,
    global: Arc<[Arc<WasmPlugin>]>,
    /// Route model names and aliases → the global plugins then the route's own.
    by_route: HashMap<String, Arc<[Arc<WasmPlugin>]>>,
}

impl Plugins {
    /// Load the plugins `cfg` declares, with `vms` instances each; a plugin whose
    /// configuration and module file did not change since `previous` was loaded is kept
    /// (with its VMs, state and metrics). Errors name the plugin's field path.
    pub fn load(cfg: &config::Config, previous: &Plugins, vms: usize) -> Result<Plugins, String> {
        let mut all = Vec::with_capacity(cfg.plugins.len());
        for (i, p) in cfg.plugins.iter().enumerate() {
            let kept = previous.all.iter().find(|old| old.same_as(p));
            let plugin = match kept {
                Some(old) => old.clone(),
                None => WasmPlugin::load(p, vms)
                    .map_err(|e| format!("plugins[{i}] ({}): {e}", p.name))?,
            };
            all.push(plugin);
        }
        let global: Arc<[Arc<WasmPlugin>]> =
            all.iter().filter(|p| p.config.global).cloned().collect();
        let mut by_route = HashMap::new();
        for r in &cfg.routes {
            if r.plugins.is_empty() {
                continue;
            }
            let chain: Arc<[Arc<WasmPlugin>]> = global
                .iter()
                .cloned()
                .chain(
                    r.plugins
                        .iter()
                        .filter_map(|n| all.iter().find(|p| &p.config.name == n).cloned()),
                )
                .collect();
            for name in std::iter::once(&r.model).chain(&r.aliases) {
                by_route.insert(name.clone(), chain.clone());
            }
        }
        Ok(Plugins {
            all,
            global,
            by_route,
        })
    }

    /// The plugins a request to the route of `model` runs, `None` when there are none.
    pub fn chain(&self, route_model: &str) -> Option<Arc<[Arc<WasmPlugin>]>> {
        let chain = self.by_route.get(route_model).unwrap_or(&self.global);
        (!chain.is_empty()).then(|| chain.clone())
    }

    /// The chain for `/status`: the built-in filter, then each plugin.
    pub fn status(&self) -> serde_json::Value {
        let mut out = vec![serde_json::json!({
            "name": "harmony",
            "kind": "builtin",
            "description": "the edge rewriting of raw harmony output into OpenAI responses; runs first",
        })];
        for p in &self.all {
            out.push(serde_json::json!({
                "name": p.config.name,
                "kind": "proxy-wasm",
                "path": p.config.path.display().to_string(),
                "vm_id": p.config.vm_id,
                "global": p.config.global,
                "fail_open": p.config.fail_open,
                "call_timeout_ms": p.config.call_timeout.as_millis() as u64,
                "max_memory_mib": p.config.max_memory_mib,
                "vms": p.vms(),
                "failures": p.failures.load(Ordering::Relaxed),
            }));
        }
        serde_json::Value::Array(out)
    }

    /// Prometheus lines: each plugin's failures, and the metrics plugins defined
    /// (`proxy_define_metric`), under their own names (sanitized to `[a-zA-Z0-9_:]`) with a
    /// `plugin` label; a histogram is exported as a summary without quantiles (`_sum`,
    /// `_count`).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        if self.all.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP gpt_oss_lb_plugin_failures_total Plugin callbacks that trapped, ran past their time or memory limit."
        );
        let _ = writeln!(out, "# TYPE gpt_oss_lb_plugin_failures_total counter");
        for p in &self.all {
            let _ = writeln!(
                out,
                "gpt_oss_lb_plugin_failures_total{{plugin=\"{}\"}} {}",
                p.config.name,
                p.failures.load(Ordering::Relaxed)
            );
        }
        let mut by_name: std::collections::BTreeMap<String, Vec<(String, wasm::MetricValue)>> =
            Default::default();
        for p in &self.all {
            for m in p.shared.metrics() {
                by_name
                    .entry(metric_name(&m.name))
                    .or_default()
                    .push((p.config.name.clone(), m));
            }
        }
        for (name, values) in by_name {
            let kind = match values[0].1.kind {
                abi::metric::COUNTER => "counter",
                abi::metric::GAUGE => "gauge",
                _ => "summary",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (plugin, m) in values {
                if m.kind == abi::metric::HISTOGRAM {
                    let _ = writeln!(out, "{name}_sum{{plugin=\"{plugin}\"}} {}", m.sum);
                    let _ = writeln!(out, "{name}_count{{plugin=\"{plugin}\"}} {}", m.count);
                } else {
                    let _ = writeln!(out, "{name}{{plugin=\"{plugin}\"}} {}", m.value);
                }
            }
        }
    }
}

/// A metric name as Prometheus accepts it.
fn metric_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// A filter's local response (`proxy_send_local_response`).
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub body: Bytes,
    pub headers: Pairs,
}

impl LocalResponse {
    /// What `proxy_close_stream` without a local response answers.
    pub fn closed() -> LocalResponse {
        let err = ApiError::new(
            ErrorKind::Permission,
            "the request was closed by a plugin",
            None,
            Some("plugin_closed_stream"),
        );
        LocalResponse {
            status: 403,
            details: "closed by plugin".into(),
            body: err.json(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
        }
    }

    fn reply(self) -> Reply {
        let mut reply = Reply {
            status: self.status,
            content_type: "text/plain; charset=utf-8",
            body: self.body,
            headers: Vec::new(),
        };
        for (k, v) in self.headers {
            if k.starts_with(':') || k == "content-length" || k == "transfer-encoding" {
                continue;
            }
            reply
                .headers
                .push((k.into(), String::from_utf8_lossy(&v).into_owned()));
        }
        reply
    }
}

/// Token counts of the answer, read from its `usage` (chat and completions:
/// `prompt_tokens`, `completion_tokens`; Responses: `input_tokens`, `output_tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

/// What a filter can read of a request with `proxy_get_property`, besides its headers.
#[derive(Debug, Clone, Default)]
pub struct StreamInfo {
    pub version: http::Version,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub started: Option<Instant>,
    pub start_unix_ns: u64,
    pub request_size: u64,
    pub endpoint: &'static str,
    /// The route: the canonical model name the request was routed by.
    pub route: String,
    /// The model the client asked for.
    pub model: String,
    pub stream: bool,
    pub backend: Option<String>,
    pub upstream: Option<SocketAddr>,
    pub response_code: Option<u16>,
    pub response_size: u64,
    /// The LB's number for this request (`request.id` when the client sent no
    /// `x-request-id`).
    pub seq: u64,
}

fn int(v: u64) -> Vec<u8> {
    (v as i64).to_le_bytes().to_vec()
}

/// A property's value: Envoy's attribute names and encodings (strings as bytes, integers as
/// 8-byte little-endian, booleans as one byte), plus ours under `gpt_oss.`: `route`, `model`,
/// `backend`, `endpoint`, `stream`, and once the response has ended
/// `usage.{prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens}`
/// (read from the answer's `usage` when first asked for). Source: Envoy's "Attributes"
/// reference (envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes).
pub fn property(http: &mut HttpData, path: &str) -> Option<Vec<u8>> {
    if let Some(field) = path.strip_prefix("gpt_oss.usage.") {
        let u = http.usage()?;
        return match field {
            "prompt_tokens" => Some(int(u.prompt_tokens)),
            "completion_tokens" => Some(int(u.completion_tokens)),
            "total_tokens" => Some(int(u.total_tokens)),
            "cached_tokens" => u.cached_tokens.map(int),
            "reasoning_tokens" => u.reasoning_tokens.map(int),
            _ => None,
        };
    }
    let header = |name: &str| {
        http.request_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let info = &http.info;
    let s = |v: &str| Some(v.as_bytes().to_vec());
    let path_of = || header(":path").unwrap_or_default();
    match path {
        "request.path" => Some(path_of()),
        "request.url_path" => {
            let p = path_of();
            Some(p.split(|b| *b == b'?').next().unwrap_or(&[]).to_vec())
        }
        "request.query" => {
            let p = path_of();
            Some(p.splitn(2, |b| *b == b'?').nth(1).unwrap_or(&[]).to_vec())
        }
        "request.host" => header(":authority"),
        "request.scheme" => s("http"),
        "request.method" => header(":method"),
        "request.protocol" => s(match info.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        }),
        "request.id" => header("x-request-id")
            .or_else(|| Some(format!("gpt-oss-lb-{:x}", info.seq).into_bytes())),
        "request.referer" => header("referer"),
        "request.useragent" => header("user-agent"),
        "request.time" => Some(int(info.start_unix_ns)),
        "request.duration" => info.started.map(|t| int(t.elapsed().as_nanos() as u64)),
        "request.size" | "request.total_size" => Some(int(info.request_size)),
        "response.code" => info.response_code.map(|c| int(c.into())),
        "response.size" | "response.total_size" => Some(int(info.response_size)),
        "source.address" => info.source.map(|a| a.to_string().into_bytes()),
        "source.port" => info.source.map(|a| int(a.port().into())),
        "destination.address" => info.destination.map(|a| a.to_string().into_bytes()),
        "destination.port" => info.destination.map(|a| int(a.port().into())),
        "upstream.address" => info.upstream.map(|a| a.to_string().into_bytes()),
        "upstream.port" => info.upstream.map(|a| int(a.port().into())),
        "route_name" | "gpt_oss.route" => s(&info.route),
        "cluster_name" | "gpt_oss.backend" => info.backend.as_deref().and_then(s),
        "gpt_oss.model" => s(&info.model),
        "gpt_oss.endpoint" => s(info.endpoint),
        "gpt_oss.stream" => Some(vec![u8::from(info.stream)]),
        _ => None,
    }
}

/// Keeps what is needed to read the answer's `usage` when a filter asks: the chunks of a JSON
/// answer (references, not copies; up to 32 MiB), or the last MiB of a stream (the usage is in
/// its last events: the final chunk of chat, `response.completed` of Responses).
#[derive(Default)]
pub struct UsageTracker {
    sse: bool,
    chunks: std::collections::VecDeque<Bytes>,
    bytes: usize,
    /// The JSON answer was larger than kept: no usage.
    truncated: bool,
}

/// The most of a JSON answer kept to read its usage.
const MAX_USAGE_BODY: usize = 32 << 20;
/// The tail of a stream kept to read its usage.
const MAX_USAGE_TAIL: usize = 1 << 20;

impl UsageTracker {
    fn feed(&mut self, chunk: &Bytes) {
        if chunk.is_empty() || self.truncated {
            return;
        }
        self.bytes += chunk.len();
        self.chunks.push_back(chunk.clone());
        if self.sse {
            while self.chunks.len() > 1
                && self.bytes - self.chunks.front().map_or(0, Bytes::len) >= MAX_USAGE_TAIL
            {
                if let Some(c) = self.chunks.pop_front() {
                    self.bytes -= c.len();
                }
            }
        } else if self.bytes > MAX_USAGE_BODY {
            self.truncated = true;
            self.chunks.clear();
        }
    }

    fn usage(&self) -> Option<Usage> {
        if self.truncated {
            return None;
        }
        let mut body = Vec::with_capacity(self.bytes);
        for c in &self.chunks {
            body.extend_from_slice(c);
        }
        if !self.sse {
            return usage_of(&body);
        }
        // the last `data:` line that carries a usage
        body.split(|b| *b == b'\n').rev().find_map(|line| {
            let data = line.strip_prefix(b"data:")?;
            memchr::memmem::find(data, b"\"usage\"")?;
            usage_of(data)
        })
    }
}

/// The `usage` of a chat, completions or Responses answer (or of a Responses stream event,
/// under `response`).
fn usage_of(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Details {
        cached_tokens: Option<u64>,
        reasoning_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct U {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        total_tokens: Option<u64>,
        prompt_tokens_details: Option<Details>,
        completion_tokens_details: Option<Details>,
        input_tokens_details: Option<Details>,
        output_tokens_details: Option<Details>,
    }
    #[derive(serde::Deserialize)]
    struct Doc {
        usage: Option<U>,
        response: Option<Box<Doc>>,
    }
    let doc: Doc = serde_json::from_slice(body).ok()?;
    let u = match doc.usage {
        Some(u) => u,
        None => doc.response?.usage?,
    };
    let prompt = u.prompt_tokens.or(u.input_tokens)?;
    let completion = u.completion_tokens.or(u.output_tokens)?;
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: u.total_tokens.unwrap_or(prompt + completion),
        cached_tokens: u
            .prompt_tokens_details
            .or(u.input_tokens_details)
            .and_then(|d| d.cached_tokens),
        reasoning_tokens: u
            .completion_tokens_details
            .or(u.output_tokens_details)
            .and_then(|d| d.reasoning_tokens),
    })
}

/// A request header as filters see it: `:method`, `:path`, `:authority`, `:scheme` first,
/// then each header with its lower-case name.
fn request_pairs(req: &RequestHeader) -> Pairs {
    let mut pairs = Vec::with_capacity(req.headers.len() + 4);
    pairs.push((":method".into(), req.method.as_str().as_bytes().to_vec()));
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    pairs.push((":path".into(), path.as_bytes().to_vec()));
    let authority = req
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes().to_vec()))
        .unwrap_or_default();
    pairs.push((":authority".into(), authority));
    pairs.push((":scheme".into(), b"http".to_vec()));
    for (k, v) in &req.headers {
        pairs.push((k.as_str().to_string(), v.as_bytes().to_vec()));
    }
    pairs
}

fn response_pairs(resp: &ResponseHeader) -> Pairs {
    let mut pairs = Vec::with_capacity(resp.headers.len() + 1);
    pairs.push((":status".into(), resp.status.as_str().as_bytes().to_vec()));
    for (k, v) in &resp.headers {
        pairs.push((k.as_str().to_string(), v.as_bytes().to_vec()));
    }
    pairs
}

/// The headers of `pairs` as HTTP names and values (pseudo-headers skipped); a name or value
/// that is not valid HTTP is dropped, with a warning.
fn valid_pairs(pairs: &Pairs) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        if k.starts_with(':') {
            continue;
        }
        match (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            (Ok(name), Ok(value)) => out.push((name, value)),
            _ => tracing::warn!(header = %k, "a plugin set an invalid header; dropped"),
        }
    }
    out
}

/// Replace the request's headers with `pairs` (its pseudo-headers are not applied: the
/// method and path stay those the LB validated and routed).
fn apply_request(req: &mut RequestHeader, pairs: &Pairs) {
    let new = valid_pairs(pairs);
    let names: Vec<http::HeaderName> = req.headers.keys().cloned().collect();
    for n in names {
        req.remove_header(&n);
    }
    for (n, v) in new {
        if let Err(e) = req.append_header(n, v) {
            tracing::warn!(error = %e, "a plugin's request header was not set");
        }
    }
}

/// Replace the response's headers with `pairs`, and its status with `:status`.
fn apply_response(resp: &mut ResponseHeader, pairs: &Pairs) {
    if let Some(code) = pairs
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
    {
        if code != resp.status.as_u16() {
            if let Err(e) = resp.set_status(code) {
                tracing::warn!(error = %e, "a plugin's :status was not set");
            }
        }
    }
    let new = valid_pairs(pairs);
    let names: Vec<http::HeaderName> = resp.headers.keys().cloned().collect();
    for n in names {
        resp.remove_header(&n);
    }
    for (n, v) in new {
        if let Err(e) = resp.append_header(n, v) {
            tracing::warn!(error = %e, "a plugin's response header was not set");
        }
    }
}

/// The 500 a failed plugin gives its request.
pub fn failure_error(f: &PluginFailure) -> ApiError {
    ApiError::new(
        ErrorKind::Server,
        format!("plugin '{}' failed: {}", f.plugin, f.reason),
        None,
        Some("plugin_failed"),
    )
}

/// What stops a request in the chain.
pub enum Stop {
    /// A filter answered locally.
    Local(Reply),
    /// A filter failed (and is not `fail_open`).
    Failed(ApiError),
}

impl Stop {
    /// The answer the client gets.
    pub fn reply(self) -> Reply {
        match self {
            Stop::Local(r) => r,
            Stop::Failed(e) => Reply::error(&e),
        }
    }
}

/// One request's run through the plugin chain.
pub struct Stream {
    chain: Arc<[Arc<WasmPlugin>]>,
    handles: Vec<Handle>,
    /// `false` for a `fail_open` plugin that failed on this request: skipped from then on.
    active: Vec<bool>,
    data: Box<HttpData>,
    /// Response body each filter is holding (it paused), not passed on yet.
    pending: Vec<BytesMut>,
    /// A filter paused the response header: it is held back until a body callback continues.
    holding: bool,
    held: Option<Box<ResponseHeader>>,
    /// The response header carries a `content-length`.
    has_length: bool,
    /// A filter changed the length of the response body.
    length_changed: bool,
    logged: bool,
}

impl Stream {
    /// A request's stream through `chain`.
    pub fn new(chain: Arc<[Arc<WasmPlugin>]>, info: StreamInfo) -> Stream {
        let n = chain.len();
        let handles = chain.iter().map(|p| p.handle()).collect();
        Stream {
            chain,
            handles,
            active: vec![true; n],
            data: Box::new(HttpData {
                info,
                ..HttpData::default()
            }),
            pending: (0..n).map(|_| BytesMut::new()).collect(),
            holding: false,
            held: None,
            has_length: false,
            length_changed: false,
            logged: false,
        }
    }

    /// The request's properties (set the chosen backend with [`Stream::info_mut`]).
    pub fn info_mut(&mut self) -> &mut StreamInfo {
        &mut self.data.info
    }

    /// A callback's outcome: its local response, or its failure (unless fail-open).
    fn settle(&mut self, i: usize, r: Result<bool, PluginFailure>) -> Result<bool, Stop> {
        if let Some(local) = self.data.local.take() {
            tracing::info!(plugin = %self.chain[i].config.name, status = local.status, details = %local.details, "plugin answered locally");
            return Err(Stop::Local(local.reply()));
        }
        match r {
            Ok(cont) => Ok(cont),
            Err(f) if self.chain[i].config.fail_open => {
                tracing::warn!(plugin = %f.plugin, "plugin failed; request continues without it (fail_open)");
                self.active[i] = false;
                Ok(true)
            }
            Err(f) => {
                self.active[i] = false;
                Err(Stop::Failed(failure_error(&f)))
            }
        }
    }

    /// The request callbacks: every filter's request headers, then every filter's request
    /// body (whole). Header changes are applied to `req`, body changes to `body`.
    pub fn on_request(&mut self, req: &mut RequestHeader, body: &mut Bytes) -> Result<(), Stop> {
        self.data.request_headers = request_pairs(req);
        self.data.request_body = body.clone();
        for i in 0..self.chain.len() {
            let p = self.chain[i].clone();
            if self.active[i] && p.exports.request_headers {
                let r = p.on_request_headers(&mut self.handles[i], &mut self.data);
                self.settle(i, r)?;
            }
        }
        for i in 0..self.chain.len() {
            let p = self.chain[i].clone();
            if self.active[i] && p.exports.request_body {
                let r = p.on_request_body(&mut self.handles[i], &mut self.data);
                self.settle(i, r)?;
            }
        }
        if self.data.request_headers_changed {
            apply_request(req, &self.data.request_headers);
            self.data.request_headers_changed = false;
        }
        if self.data.request_body_changed {
            *body = self.data.request_body.clone();
            self.data.request_body_changed = false;
        }
        Ok(())
    }

    /// The response header callbacks; changes are applied to `resp`. Afterwards
    /// [`Stream::holding`] tells whether a filter paused it (hold it back).
    pub fn on_response_headers(
        &mut self,
        resp: &mut ResponseHeader,
        end: bool,
    ) -> Result<(), Stop> {
        self.data.usage_tracker.sse =
            resp.headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| {
                    v.as_bytes()
                        .get(..17)
                        .is_some_and(|c| c.eq_ignore_ascii_case(b"text/event-stream"))
                });
        self.data.info.response_code = Some(resp.status.as_u16());
        self.data.response_headers = response_pairs(resp);
        let mut hold = false;
        for i in 0..self.chain.len() {
            let p = self.chain[i].clone();
            if self.active[i] && p.exports.response_headers {
                let r = p.on_response_headers(&mut self.handles[i], &mut self.data, end);
                hold |= !self.settle(i, r)?;
            }
        }
        if self.data.response_headers_changed {
            apply_response(resp, &self.data.response_headers);
            self.data.response_headers_changed = false;
        }
        // A filter that changes the body removes `content-length` here, as Envoy requires
        // (the proxy-wasm SDKs' body examples do); a held header is fixed when released.
        self.has_length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
        self.holding = hold && !end;
        Ok(())
    }

    /// Whether the response header is to be held back.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Keep the response header until a body callback releases it.
    pub fn hold(&mut self, header: Box<ResponseHeader>) {
        self.held = Some(header);
    }

    /// After a body chunk: `None` when no header is held; `Some(None)` while it stays held;
    /// `Some(Some(header))` (with the filters' latest changes) when it goes out now.
    pub fn release(&mut self) -> Option<Option<Box<ResponseHeader>>> {
        self.held.as_ref()?;
        if self.holding {
            return Some(None);
        }
        let mut header = self.held.take()?;
        // Pingora framed the header (`transfer-encoding: chunked` where it has no length)
        // after the filters first saw it: their view lacks that, which is not a removal.
        let te = header.headers.get(http::header::TRANSFER_ENCODING).cloned();
        if self.data.response_headers_changed {
            apply_response(&mut header, &self.data.response_headers);
            self.data.response_headers_changed = false;
        }
        if self.length_changed {
            header.remove_header(&http::header::CONTENT_LENGTH);
        }
        let framed = |h: &ResponseHeader| {
            h.headers.contains_key(http::header::CONTENT_LENGTH)
                || h.headers.contains_key(http::header::TRANSFER_ENCODING)
        };
        if !framed(&header) {
            let te = te.unwrap_or_else(|| http::HeaderValue::from_static("chunked"));
            if let Err(e) = header.insert_header(http::header::TRANSFER_ENCODING, te) {
                tracing::warn!(error = %e, "could not frame a held response header");
            }
        }
        Some(Some(header))
    }

    /// A response body chunk through the filters. A filter that pauses keeps what it has
    /// (later filters see nothing until it continues, then all of it at once); at the end
    /// every filter continues. The answer's usage can be read from the last callbacks on.
    pub fn on_response_body(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), Stop> {
        let chunk = body.take().unwrap_or_default();
        self.data.usage_tracker.feed(&chunk);
        self.data.info.response_size += chunk.len() as u64;
        self.data.response_complete = end;
        let mut cur = Some(chunk);
        for i in 0..self.chain.len() {
            let p = self.chain[i].clone();
            if !self.active[i] || !p.exports.response_body {
                continue;
            }
            let Some(c) = cur.take() else { break };
            let buf = if self.pending[i].is_empty() {
                c
            } else {
                self.pending[i].extend_from_slice(&c);
                self.pending[i].split().freeze()
            };
            if buf.is_empty() && !end {
                cur = Some(buf);
                continue;
            }
            let before = buf.len();
            self.data.response_body = buf;
            let r = p.on_response_body(&mut self.handles[i], &mut self.data, end);
            let out = std::mem::take(&mut self.data.response_body);
            if out.len() != before && !self.length_changed {
                self.length_changed = true;
                if self.has_length && self.held.is_none() && !self.holding {
                    tracing::warn!(plugin = %p.config.name, "a plugin changed the length of a response body whose content-length was already sent; it must remove content-length in proxy_on_response_headers");
                }
            }
            let cont = self.settle(i, r)?;
            if cont || end {
                cur = Some(out);
            } else {
                self.pending[i] = BytesMut::from(&out[..]);
            }
        }
        if end || cur.as_ref().is_some_and(|c| !c.is_empty()) {
            self.holding = false;
        }
        *body = cur.filter(|c| !c.is_empty() || end);
        Ok(())
    }

    /// The log callbacks (`proxy_on_done`, `proxy_on_log`, `proxy_on_delete`), once, with the
    /// final status.
    pub fn on_log(&mut self, status: u16) {
        if self.logged {
            return;
        }
        self.logged = true;
        if status != 0 {
            self.data.info.response_code = Some(status);
        }
        for i in 0..self.chain.len() {
            if !self.active[i] {
                continue;
            }
            let p = self.chain[i].clone();
            let _ = p.on_log(&mut self.handles[i], &mut self.data);
        }
    }
}

/// The properties of a request as it arrives.
pub fn stream_info(
    req: &RequestHeader,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    endpoint: &'static str,
    body_len: usize,
) -> StreamInfo {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    StreamInfo {
        version: req.version,
        source,
        destination,
        started: Some(Instant::now()),
        start_unix_ns,
        request_size: body_len as u64,
        endpoint,
        seq: SEQ.fetch_add(1, Ordering::Relaxed),
        ..StreamInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_chat_responses_and_streams() {
        let chat = br#"{"id":"x","usage":{"prompt_tokens":17,"completion_tokens":5,"total_tokens":22,"prompt_tokens_details":{"cached_tokens":16}}}"#;
        let u = usage_of(chat).unwrap_or_default();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (17, 5, 22)
        );
        assert_eq!(u.cached_tokens, Some(16));
        let resp = br#"{"type":"response.completed","response":{"usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7,"output_tokens_details":{"reasoning_tokens":2}}}}"#;
        let u = usage_of(resp).unwrap_or_default();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens),
            (3, 4, Some(2))
        );

        // a stream: the last event with a usage wins, however it was cut into chunks
        let stream = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut t = UsageTracker {
                sse: true,
                ..UsageTracker::default()
            };
            t.feed(&Bytes::copy_from_slice(&stream[..cut]));
            t.feed(&Bytes::copy_from_slice(&stream[cut..]));
            assert_eq!(t.usage().map(|u| u.total_tokens), Some(10), "cut at {cut}");
        }
        let mut t = UsageTracker::default();
        t.feed(&Bytes::from_static(b"{\"usage\":{\"prompt_"));
        t.feed(&Bytes::from_static(b"tokens\":1,\"completion_tokens\":2}}"));
        assert_eq!(t.usage().map(|u| u.total_tokens), Some(3));
    }

    #[test]
    fn metric_names_are_sanitized() {
        assert_eq!(metric_name("tokens.total-x"), "tokens_total_x");
        assert_eq!(metric_name("9lives"), "_9lives");
    }
}
