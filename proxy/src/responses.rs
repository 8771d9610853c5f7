//! The Responses API at the front door (`/v1/responses`), after OpenAI's API reference.
//!
//! The LB keeps its own conversation store ([`Conversations`]: the shared
//! [`responses_store`] SQLite database plus the responses whose row is still being written),
//! so that a conversation does not belong to a backend:
//!
//! - a request that continues a conversation (`previous_response_id`) or asks to be stored
//!   (`store`, default true) is sent to the backend stateless ([`prepare`]): its `input` is
//!   the stored conversation followed by the request's items (each with an id), with no
//!   `previous_response_id` and `store: false`. Any backend can then answer any turn, and
//!   one that is gone loses nothing.
//! - the answer ([`ResponsesRewriter`], JSON or SSE) gets back the client's `store` and
//!   `previous_response_id`, and a completed (or incomplete) response is kept with its input
//!   items and conversation;
//! - `GET /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` and
//!   `DELETE /v1/responses/{id}` are answered from the store ([`retrieve`], [`input_items`],
//!   [`delete`]).
//!
//! A request with `store: false` and no `previous_response_id` (Codex CLI's) passes through
//! as it is. Output of a `model_type: gpt-oss` backend that carries raw harmony text (a
//! `--raw-output` server) is rewritten into reasoning, message and function-call items at
//! the edge, as chat is (`rewrite`); parsed output passes untouched. A stream ends with its
//! terminal event (`response.completed`, `response.incomplete`, `response.failed`, `error`),
//! not `[DONE]`; one that breaks before it gets an `error` event.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use harmony::message::Role;
use harmony::openai::{DeltaMapper, StopCause, ToolGate};
use harmony::parser::TextParser;
use openai_types::response_output::OutputBuilder;
use openai_types::{ChatDelta, ErrorKind, Item, ResponseEvent};
use responses_store::{ResponseStore, Stored};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Reply};
use crate::rewrite::{self, BodyRewriter, EventScanner};

/// A stored response as the LB keeps it: JSON values, so that fields it does not know pass
/// through unchanged.
pub type StoredResponse = Stored<Value, Value>;

/// The LB's conversation store, opened on first use in the proxy's runtime.
pub struct Conversations {
    /// The SQLite file, or `:memory:` (or, for a store given whole, its description).
    path: PathBuf,
    store: tokio::sync::OnceCell<ResponseStore>,
    /// Responses whose row is still being written by a task (see [`Conversations::keep`]): a
    /// request that continues one at once finds it here. Entries leave when their write ends.
    pending: parking_lot::Mutex<HashMap<String, Arc<StoredResponse>>>,
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorKind::Server,
        format!("the response store failed: {e}"),
        None,
        Some("response_store_error"),
    )
}

/// A failed read or write of the store: 503 `response_store_unavailable` when its database
/// cannot be reached (a PostgreSQL state store that is down), else 500 `response_store_error`.
fn db_error(e: responses_store::StoreError) -> ApiError {
    if e.is_unavailable() {
        return ApiError::new(
            ErrorKind::Unavailable,
            format!("the response store is unavailable; try again later ({e})"),
            None,
            Some("response_store_unavailable"),
        );
    }
    store_error(e)
}

impl Conversations {
    /// Conversations kept in the SQLite file `path` (`:memory:`: for the life of the process).
    /// Nothing is opened yet.
    pub fn new(path: PathBuf) -> Conversations {
        Conversations {
            path,
            store: tokio::sync::OnceCell::new(),
            pending: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Conversations kept in `store` (the PostgreSQL state store that replicas share);
    /// `describe` names it in logs.
    pub fn in_store(store: ResponseStore, describe: String) -> Conversations {
        Conversations {
            path: PathBuf::from(describe),
            store: tokio::sync::OnceCell::new_with(Some(store)),
            pending: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The default file: `$XDG_DATA_HOME/gpt-oss-lb/responses.sqlite` (see
    /// [`ResponseStore::default_path`]).
    pub fn default_path() -> PathBuf {
        ResponseStore::default_path("gpt-oss-lb")
    }

    /// The file (or `:memory:`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Opens the store once; the binary calls [`ResponseStore::open`] at start-up too, so
    /// that a path it cannot use stops it at once.
    async fn store(&self) -> Result<&ResponseStore, ApiError> {
        self.store
            .get_or_try_init(|| ResponseStore::open(&self.path))
            .await
            .map_err(store_error)
    }

    /// The stored response `id`, or `None`.
    ///
    /// Errors: 500 `response_store_error` when the database cannot be read (503
    /// `response_store_unavailable` when it cannot be reached).
    pub async fn get(&self, id: &str) -> Result<Option<Arc<StoredResponse>>, ApiError> {
        if let Some(s) = self.pending.lock().get(id) {
            return Ok(Some(s.clone()));
        }
        let stored = self.store().await?.get(id).await.map_err(db_error)?;
        Ok(stored.map(Arc::new))
    }

    /// Keeps `stored` as response `id`. On a multi-threaded runtime (the proxy's) the row is
    /// written before this returns: the body filter that calls it passes the response's last
    /// bytes to the client only afterwards, so a crash right after cannot lose a response the
    /// client got (the worker thread is handed over to the runtime's other tasks while it
    /// waits, `tokio::task::block_in_place`). Elsewhere the row is written by a task, and the
    /// response is visible to [`Conversations::get`] at once from memory until then.
    pub fn keep(self: &Arc<Self>, id: String, created_at: u64, stored: StoredResponse) {
        let me = self.clone();
        let stored = Arc::new(stored);
        let write = {
            let (id, stored) = (id.clone(), stored.clone());
            async move {
                let res = match me.store().await {
                    Ok(store) => store.put(&id, created_at, &*stored).await.map_err(db_error),
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    tracing::error!(response = %id, error = %e.body.error.message, "a response could not be stored");
                }
                me.pending.lock().remove(&id);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(write));
            }
            Ok(h) => {
                self.pending.lock().insert(id, stored);
                h.spawn(write);
            }
            Err(_) => tracing::error!(response = %id, "no runtime to store a response in"),
        }
    }

    /// Removes the response `id`; false when there was none.
    ///
    /// Errors: 500 `response_store_error` when the database cannot be written (503
    /// `response_store_unavailable` when it cannot be reached).
    pub async fn delete(&self, id: &str) -> Result<bool, ApiError> {
        let was_pending = self.pending.lock().remove(id).is_some();
        let deleted = self.store().await?.delete(id).await.map_err(db_error)?;
        Ok(deleted || was_pending)
    }
}

/// What the LB keeps of a request that it answers statefully.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The client's `store` (default true).
    pub store: bool,
    /// The client's `previous_response_id`.
    pub previous_response_id: Option<String>,
    /// The request's input items, each with an id.
    pub input_items: Vec<Value>,
    /// The conversation sent to the backend: the previous one, then `input_items`.
    pub conversation: Vec<Value>,
}

impl Turn {
    /// The conversation's identity for routing: the id of its first item, the same on every
    /// turn that continues it (`previous_response_id`). `None` for an empty conversation.
    pub fn conversation_key(&self) -> Option<&str> {
        self.conversation.first()?.get("id")?.as_str()
    }
}

/// A `POST /v1/responses` on its way: what the answer's handling needs.
#[derive(Debug)]
pub struct Call {
    /// `None`: a stateless request (`store: false`, no `previous_response_id`), passed
    /// through.
    pub turn: Option<Turn>,
    /// The functions the model may call (for raw harmony output).
    gate: ToolGate,
    /// `namespace.name` of functions offered inside namespaces.
    namespaced: Vec<String>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message, param)
}

/// The id prefix OpenAI gives items of type `kind`.
fn id_prefix(kind: &str) -> &'static str {
    match kind {
        "function_call" => "fc",
        "function_call_output" => "fco",
        "reasoning" => "rs",
        _ => "msg",
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The request's `input` as items, each with an id: a string is one user message.
///
/// Errors: 400 naming `input` (not a string or a list) or `input[i]` (not an object).
fn input_items(input: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        None | Some(Value::Null) => return Err(invalid("input", "`input` is required")),
        Some(Value::String(s)) => vec![json!({
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": s}],
        })],
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(invalid(
                "input",
                "`input` must be a string or a list of items",
            ))
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let Some(obj) = item.as_object_mut() else {
                return Err(invalid(
                    &format!("input[{i}]"),
                    format!("`input[{i}]` must be an object (an item)"),
                ));
            };
            if !obj.get("id").is_some_and(Value::is_string) {
                let kind = obj.get("type").and_then(Value::as_str).unwrap_or("message");
                let id = new_id(id_prefix(kind));
                obj.insert("id".into(), Value::String(id));
            }
            Ok(item)
        })
        .collect()
}

/// An item of a stored conversation as it is sent again: a reasoning item that carries its
/// text drops `encrypted_content` (sealed by the backend that made it, which another backend
/// cannot open).
fn resendable(item: &Value) -> Value {
    let mut item = item.clone();
    if item.get("type").and_then(Value::as_str) == Some("reasoning") {
        let has_text = item
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter().any(|p| {
                    p.get("text")
                        .and_then(Value::as_str)
                        .is_some_and(|t| !t.is_empty())
                })
            });
        if has_text {
            if let Some(o) = item.as_object_mut() {
                o.remove("encrypted_content");
            }
        }
    }
    item
}

/// The functions a request offers, for raw harmony output: the gate (respecting
/// `tool_choice`) and the full names of namespaced ones.
fn tool_facts(req: &Map<String, Value>) -> (ToolGate, Vec<String>) {
    let mut names = Vec::new();
    let mut namespaced = Vec::new();
    for t in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                if let Some(n) = t.get("name").and_then(Value::as_str) {
                    names.push(n.to_string());
                }
            }
            Some("namespace") => {
                let ns = t.get("name").and_then(Value::as_str).unwrap_or_default();
                for f in t
                    .get("tools")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if f.get("type").and_then(Value::as_str) == Some("function") {
                        if let Some(n) = f.get("name").and_then(Value::as_str) {
                            let full = format!("{ns}.{n}");
                            names.push(full.clone());
                            namespaced.push(full);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let gate = match req.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => ToolGate::none(),
        Some(Value::Object(o)) => match o.get("name").and_then(Value::as_str) {
            Some(n) => ToolGate::allow([n.to_string()]),
            None => ToolGate::allow(names),
        },
        _ => ToolGate::allow(names),
    };
    (gate, namespaced)
}

/// Prepares a `POST /v1/responses` body (after routing) for its backend: the body to send,
/// and the call's facts. A stateful request (`store` true, or a `previous_response_id`) gets
/// the stateless body described in the module's documentation.
///
/// Errors: 400 for `store`, `previous_response_id` or `input` of the wrong type (naming the
/// field); 400 `previous_response_not_found` (param `previous_response_id`) for an id that is
/// not stored, as OpenAI and gpt-oss-server answer it; 500 when the store cannot be read.
pub async fn prepare(
    conversations: &Conversations,
    body: &Bytes,
) -> Result<(Bytes, Arc<Call>), ApiError> {
    let mut req: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("We could not parse the JSON body of your request: {e}"),
            None,
            Some("invalid_json"),
        )
    })?;
    let (gate, namespaced) = tool_facts(&req);
    let store = match req.get("store") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("store", "`store` must be a boolean")),
    };
    let previous = match req.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                "previous_response_id",
                "`previous_response_id` must be a non-empty string",
            ))
        }
    };
    if !store && previous.is_none() {
        let call = Call {
            turn: None,
            gate,
            namespaced,
        };
        return Ok((body.clone(), Arc::new(call)));
    }
    let items = input_items(req.get("input"))?;
    let mut conversation = match &previous {
        Some(id) => {
            let stored = conversations.get(id).await?.ok_or_else(|| {
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    responses_store::previous_not_found_message(id),
                    Some("previous_response_id"),
                    Some("previous_response_not_found"),
                )
            })?;
            stored.conversation.iter().map(resendable).collect()
        }
        None => Vec::new(),
    };
    conversation.extend(items.iter().cloned());
    req.insert("input".into(), Value::Array(conversation.clone()));
    req.remove("previous_response_id");
    req.insert("store".into(), Value::Bool(false));
    let body = serde_json::to_vec(&req).map_err(store_error)?;
    let call = Call {
        turn: Some(Turn {
            store,
            previous_response_id: previous,
            input_items: items,
            conversation,
        }),
        gate,
        namespaced,
    };
    Ok((Bytes::from(body), Arc::new(call)))
}

/// `GET /v1/responses/{id}`: the stored response.
///
/// Errors: 404 `not_found` for an id that is not stored.
pub async fn retrieve(conversations: &Conversations, id: &str) -> Result<Reply, ApiError> {
    let stored = conversations.get(id).await?.ok_or_else(|| not_found(id))?;
    Ok(Reply::json(200, &stored.response))
}

/// `DELETE /v1/responses/{id}`: `{"id", "object": "response", "deleted": true}`.
///
/// Errors: 404 `not_found` for an id that is not stored.
pub async fn delete(conversations: &Conversations, id: &str) -> Result<Reply, ApiError> {
    if !conversations.delete(id).await? {
        return Err(not_found(id));
    }
    Ok(Reply::json(
        200,
        &json!({"id": id, "object": "response", "deleted": true}),
    ))
}

/// `GET /v1/responses/{id}/input_items?limit=&order=&after=`: a page of the items the
/// response was given (OpenAI's list: `limit` 1 to 100, default 20, `order` `desc` by
/// default).
///
/// Errors: 404 for an id that is not stored; 400 naming `limit`, `order` or `after`.
pub async fn input_items_page(
    conversations: &Conversations,
    id: &str,
    query: Option<&str>,
) -> Result<Reply, ApiError> {
    let mut q = responses_store::ListQuery::default();
    for (k, v) in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
    {
        match k {
            "limit" => {
                q.limit = Some(v.parse().map_err(|_| {
                    invalid("limit", format!("`limit` must be an integer, got `{v}`"))
                })?)
            }
            "order" => q.order = Some(v.to_string()),
            "after" => q.after = Some(v.to_string()),
            _ => {}
        }
    }
    let stored = conversations.get(id).await?.ok_or_else(|| not_found(id))?;
    let page = responses_store::page(stored.input_items.clone(), &q, |i| {
        i.get("id").and_then(Value::as_str)
    })
    .map_err(|e| invalid(e.param, format!("`{}` {}", e.param, e.message)))?;
    Ok(Reply::json(
        200,
        &serde_json::to_value(page).unwrap_or_default(),
    ))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        responses_store::not_found_message(id),
        None,
        Some("not_found"),
    )
}

/// Raw harmony in a message's `output_text`, parsed into output items.
struct RawOutput {
    parser: TextParser,
    mapper: DeltaMapper,
    builder: OutputBuilder,
    /// The raw message's id: its own events are dropped.
    item_id: String,
}

impl RawOutput {
    fn new(call: &Call, item_id: String) -> RawOutput {
        RawOutput {
            parser: TextParser::new(Some(Role::Assistant)),
            mapper: DeltaMapper::new(call.gate.clone()),
            builder: OutputBuilder::new(None, call.namespaced.iter().cloned()),
            item_id,
        }
    }

    fn push(&mut self, text: &str, out: &mut Vec<ResponseEvent>) {
        let mut deltas: Vec<ChatDelta> = Vec::new();
        let RawOutput { parser, mapper, .. } = self;
        parser.push_str(text, &mut |e| mapper.on_event(e, &mut deltas));
        for d in &deltas {
            self.builder.push(d, out);
        }
    }

    /// The output items, `status` the response's (`incomplete` when it was cut).
    fn finish(mut self, status: &str, out: &mut Vec<ResponseEvent>) -> Vec<Item> {
        let mut deltas = Vec::new();
        let RawOutput { parser, mapper, .. } = &mut self;
        parser.finish(&mut |e| mapper.on_event(e, &mut deltas));
        let cause = if status == "incomplete" {
            StopCause::Length
        } else {
            StopCause::Stop
        };
        let RawOutput {
            mapper,
            mut builder,
            ..
        } = self;
        mapper.finish(cause, None, &mut deltas);
        for d in &deltas {
            builder.push(d, out);
        }
        builder.finish(
            if status == "incomplete" {
                "incomplete"
            } else {
                "completed"
            },
            out,
        )
    }
}

/// The text of a message item's `output_text` parts.
fn message_text(item: &Value) -> Option<String> {
    if item.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let parts = item.get("content")?.as_array()?;
    Some(
        parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
    )
}

/// Rewrites (or checks) a `/v1/responses` answer: see the module's documentation.
pub struct ResponsesRewriter {
    call: Arc<Call>,
    conversations: Arc<Conversations>,
    /// The backend may send raw harmony (`model_type: gpt-oss`).
    harmony: bool,
    sse: bool,
    buf: BytesMut,
    scanner: EventScanner,
    max_event_bytes: usize,
    /// The next `sequence_number` (events are numbered again: rewriting changes their count).
    seq: u64,
    terminal: bool,
    /// Events of a message item held until its first text shows whether it is raw harmony.
    held: Vec<Value>,
    held_item: Option<String>,
    raw: Option<RawOutput>,
    /// Raw items already parsed (their late events are dropped).
    raw_done: Vec<String>,
}

impl ResponsesRewriter {
    /// For a 2xx answer of `call` (SSE when `sse`), from a backend that may send raw
    /// harmony when `harmony`.
    pub fn new(
        call: Arc<Call>,
        conversations: Arc<Conversations>,
        harmony: bool,
        sse: bool,
        max_event_bytes: usize,
    ) -> Self {
        ResponsesRewriter {
            call,
            conversations,
            harmony,
            sse,
            buf: BytesMut::new(),
            scanner: EventScanner::new(),
            max_event_bytes,
            seq: 0,
            terminal: false,
            held: Vec::new(),
            held_item: None,
            raw: None,
            raw_done: Vec::new(),
        }
    }

    /// The client's `store` and `previous_response_id` in a response object.
    fn patch(&self, response: &mut Value) {
        let (Some(turn), Some(r)) = (&self.call.turn, response.as_object_mut()) else {
            return;
        };
        r.insert("store".into(), Value::Bool(turn.store));
        r.insert(
            "previous_response_id".into(),
            turn.previous_response_id
                .clone()
                .map_or(Value::Null, Value::String),
        );
    }

    /// Keeps a finished response when the client asked for it.
    fn keep(&self, response: &Value) {
        let Some(turn) = self.call.turn.as_ref().filter(|t| t.store) else {
            return;
        };
        let status = response.get("status").and_then(Value::as_str);
        if !matches!(status, Some("completed" | "incomplete")) {
            return;
        }
        let Some(id) = response.get("id").and_then(Value::as_str) else {
            return;
        };
        let created_at = response
            .get("created_at")
            .and_then(Value::as_u64)
            .unwrap_or_else(openai_types::unix_now);
        let mut conversation = turn.conversation.clone();
        if let Some(out) = response.get("output").and_then(Value::as_array) {
            conversation.extend(out.iter().cloned());
        }
        self.conversations.keep(
            id.to_string(),
            created_at,
            Stored {
                response: response.clone(),
                input_items: turn.input_items.clone(),
                conversation,
            },
        );
    }

    /// Raw harmony in a whole response's messages, parsed into items in their place.
    fn rewrite_whole(&self, response: &mut Value) {
        if !self.harmony {
            return;
        }
        let status = response
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("completed")
            .to_string();
        let Some(output) = response.get_mut("output").and_then(Value::as_array_mut) else {
            return;
        };
        let mut items = Vec::with_capacity(output.len());
        for item in output.drain(..) {
            match message_text(&item).filter(|t| t.contains("<|")) {
                Some(text) => {
                    let mut raw = RawOutput::new(&self.call, String::new());
                    let mut ignored = Vec::new();
                    raw.push(&text, &mut ignored);
                    for it in raw.finish(&status, &mut ignored) {
                        items.push(serde_json::to_value(it).unwrap_or(Value::Null));
                    }
                }
                None => items.push(item),
            }
        }
        *output = items;
    }

    /// One SSE event out: `event: <type>` and its data, numbered.
    fn emit(&mut self, mut v: Value, out: &mut BytesMut) {
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_string();
        if let Some(o) = v.as_object_mut() {
            o.insert("sequence_number".into(), json!(self.seq));
        }
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(ty.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }

    fn emit_events(&mut self, events: Vec<ResponseEvent>, out: &mut BytesMut) {
        for e in events {
            let name = e.name();
            let mut v = serde_json::to_value(openai_types::StreamEvent {
                event: e,
                sequence_number: 0,
            })
            .unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.entry("type").or_insert_with(|| json!(name));
            }
            self.emit(v, out);
        }
    }

    fn flush_held(&mut self, out: &mut BytesMut) {
        self.held_item = None;
        for v in std::mem::take(&mut self.held) {
            self.emit(v, out);
        }
    }

    /// One event of the backend's stream.
    fn event(&mut self, mut v: Value, out: &mut BytesMut) {
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let item_id = v
            .get("item_id")
            .or_else(|| v.get("item").and_then(|i| i.get("id")))
            .and_then(Value::as_str)
            .map(str::to_string);
        let is_raw = item_id.as_deref().is_some_and(|id| {
            self.raw.as_ref().is_some_and(|r| r.item_id == id)
                || self.raw_done.iter().any(|d| d == id)
        });
        if is_raw {
            // The raw message's own events: its text is parsed, the rest is dropped.
            if ty == "response.output_text.delta" {
                if let Some(d) = v.get("delta").and_then(Value::as_str).map(str::to_string) {
                    let mut evs = Vec::new();
                    if let Some(r) = self.raw.as_mut() {
                        r.push(&d, &mut evs);
                    }
                    self.emit_events(evs, out);
                }
            }
            return;
        }
        match ty.as_str() {
            "response.output_item.added"
                if self.harmony
                    && v.get("item")
                        .and_then(|i| i.get("type"))
                        .and_then(Value::as_str)
                        == Some("message") =>
            {
                self.flush_held(out);
                self.held_item = item_id;
                self.held.push(v);
                return;
            }
            "response.content_part.added"
                if self.held_item.is_some() && item_id == self.held_item =>
            {
                self.held.push(v);
                return;
            }
            "response.output_text.delta"
                if self.held_item.is_some() && item_id == self.held_item =>
            {
                let d = v.get("delta").and_then(Value::as_str).unwrap_or_default();
                if d.contains("<|") {
                    self.held.clear();
                    let id = self.held_item.take().unwrap_or_default();
                    let mut raw = RawOutput::new(&self.call, id);
                    let mut evs = Vec::new();
                    raw.push(d, &mut evs);
                    self.raw = Some(raw);
                    self.emit_events(evs, out);
                    return;
                }
                self.flush_held(out);
            }
            _ => self.flush_held(out),
        }
        if let Some(response) = v.get_mut("response") {
            self.patch(response);
        }
        if matches!(
            ty.as_str(),
            "response.completed" | "response.incomplete" | "response.failed" | "error"
        ) {
            self.terminal = true;
            if let Some(raw) = self.raw.take() {
                let status = v
                    .get("response")
                    .and_then(|r| r.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("completed")
                    .to_string();
                let raw_id = raw.item_id.clone();
                let mut evs = Vec::new();
                let items = raw.finish(&status, &mut evs);
                self.emit_events(evs, out);
                self.raw_done.push(raw_id.clone());
                if let Some(output) = v
                    .get_mut("response")
                    .and_then(|r| r.get_mut("output"))
                    .and_then(Value::as_array_mut)
                {
                    let at = output
                        .iter()
                        .position(|i| i.get("id").and_then(Value::as_str) == Some(raw_id.as_str()));
                    let new: Vec<Value> = items
                        .into_iter()
                        .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
                        .collect();
                    match at {
                        Some(at) => {
                            output.splice(at..=at, new);
                        }
                        None => output.extend(new),
                    }
                }
            } else if let Some(r) = v.get_mut("response") {
                self.rewrite_whole(r);
            }
            if matches!(ty.as_str(), "response.completed" | "response.incomplete") {
                if let Some(r) = v.get("response") {
                    self.keep(r);
                }
            }
        }
        self.emit(v, out);
    }
}

impl BodyRewriter for ResponsesRewriter {
    fn chunk(&mut self, data: &[u8]) -> Result<Bytes, ApiError> {
        self.buf.extend_from_slice(data);
        if !self.sse {
            if self.buf.len() > rewrite::MAX_JSON_ANSWER_BYTES {
                return Err(ApiError::new(
                    ErrorKind::BadGateway,
                    "the backend's answer is larger than the LB holds",
                    None,
                    Some("upstream_bad_response"),
                ));
            }
            return Ok(Bytes::new());
        }
        let mut out = BytesMut::new();
        while let Some(end) = self.scanner.next_end(&self.buf) {
            let raw = self.buf.split_to(end);
            match rewrite::sse_data(&raw).and_then(|d| rewrite::parse_lenient::<Value>(&d).ok()) {
                Some(v) if v.is_object() => self.event(v, &mut out),
                // Comments, keep-alives and anything that is not an event object pass as
                // they are.
                _ => {
                    self.flush_held(&mut out);
                    out.extend_from_slice(&raw);
                }
            }
        }
        if self.scanner.pending() > self.max_event_bytes {
            return Err(ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "the backend sent an event larger than {} bytes",
                    self.max_event_bytes
                ),
                None,
                Some("upstream_event_too_large"),
            ));
        }
        Ok(out.freeze())
    }

    fn finish(&mut self) -> Result<Bytes, ApiError> {
        if self.sse {
            let mut out = BytesMut::new();
            self.flush_held(&mut out);
            out.extend_from_slice(&std::mem::take(&mut self.buf));
            return Ok(out.freeze());
        }
        let body = std::mem::take(&mut self.buf);
        let mut v: Value = rewrite::parse_lenient(&body).map_err(|e| {
            ApiError::new(
                ErrorKind::BadGateway,
                format!("the backend's answer is not valid JSON: {e}"),
                None,
                Some("upstream_bad_response"),
            )
        })?;
        if v.get("object").and_then(Value::as_str) == Some("response") {
            self.rewrite_whole(&mut v);
            self.patch(&mut v);
            self.keep(&v);
        }
        Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
    }

    fn terminal_seen(&self) -> Option<bool> {
        Some(self.terminal)
    }

    fn termination_frames(&mut self, err: &ApiError) -> Bytes {
        let mut out = BytesMut::new();
        self.flush_held(&mut out);
        self.terminal = true;
        let e = &err.body.error;
        self.emit(
            json!({
                "type": "error",
                "code": e.code,
                "message": e.message,
                "param": e.param,
            }),
            &mut out,
        );
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversations() -> Arc<Conversations> {
        Arc::new(Conversations::new(PathBuf::from(":memory:")))
    }

    #[tokio::test]
    async fn a_stateless_request_passes_through_unchanged() {
        let c = conversations();
        let body = Bytes::from_static(br#"{"model":"m","input":"hi","store":false}"#);
        let (sent, call) = prepare(&c, &body).await.expect("prepared");
        assert_eq!(sent, body);
        assert!(call.turn.is_none());
    }

    // The proxy's runtime: the row is written before the answer's end is passed on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_continued_conversation_is_sent_whole_and_stateless() {
        let c = conversations();
        let first = Bytes::from_static(br#"{"model":"m","input":"hi"}"#);
        let (sent, call) = prepare(&c, &first).await.expect("prepared");
        let sent: Value = serde_json::from_slice(&sent).expect("json");
        assert_eq!(sent["store"], json!(false));
        // A task writes the row on a runtime of one thread; it is found meanwhile.
        tokio::task::spawn_blocking({
            let c = c.clone();
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let rt = rt.expect("runtime");
                rt.block_on(async {
                    c.keep(
                        "resp_0".into(),
                        1,
                        Stored {
                            response: json!({"id": "resp_0"}),
                            input_items: Vec::new(),
                            conversation: Vec::new(),
                        },
                    );
                    assert!(c.get("resp_0").await.expect("get").is_some());
                });
            }
        })
        .await
        .expect("joined");
        assert!(sent["input"][0]["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("msg_")));
        // The backend answers (stateless) with reasoning sealed by itself and an answer.
        let answer = json!({"id": "resp_1", "object": "response", "created_at": 1,
            "status": "completed", "store": false, "previous_response_id": null,
            "output": [
              {"type": "reasoning", "id": "rs_1", "summary": [],
               "content": [{"type": "reasoning_text", "text": "think"}],
               "encrypted_content": "sealed"},
              {"type": "message", "id": "msg_2", "role": "assistant",
               "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}]});
        let mut rw = ResponsesRewriter::new(call, c.clone(), true, false, 1 << 20);
        rw.chunk(&serde_json::to_vec(&answer).expect("json"))
            .expect("chunk");
        let got: Value = serde_json::from_slice(&rw.finish().expect("finish")).expect("json");
        assert_eq!(
            got["store"],
            json!(true),
            "the client's `store` is restored"
        );
        assert!(
            !c.pending.lock().contains_key("resp_1"),
            "written before the answer's end"
        );
        let stored = c.get("resp_1").await.expect("get").expect("kept");
        assert_eq!(stored.conversation.len(), 3);
        let next =
            Bytes::from_static(br#"{"model":"m","input":"and?","previous_response_id":"resp_1"}"#);
        let (sent, call) = prepare(&c, &next).await.expect("prepared");
        let sent: Value = serde_json::from_slice(&sent).expect("json");
        assert!(sent.get("previous_response_id").is_none());
        let input = sent["input"].as_array().expect("items");
        assert_eq!(input.len(), 4);
        assert_eq!(input[1]["type"], "reasoning");
        assert!(input[1].get("encrypted_content").is_none(), "{}", input[1]);
        assert_eq!(
            call.turn.as_ref().map(|t| t.previous_response_id.clone()),
            Some(Some("resp_1".to_string()))
        );
        let missing =
            Bytes::from_static(br#"{"model":"m","input":"x","previous_response_id":"resp_nope"}"#);
        let err = prepare(&c, &missing).await.expect_err("unknown id");
        assert_eq!(err.status, 400);
        assert_eq!(
            err.body.error.code.as_deref(),
            Some("previous_response_not_found")
        );
        assert_eq!(
            err.body.error.param.as_deref(),
            Some("previous_response_id")
        );
    }

    fn sse(events: &[Value]) -> Vec<u8> {
        let mut s = Vec::new();
        for e in events {
            s.extend_from_slice(
                format!(
                    "event: {}\ndata: {}\n\n",
                    e["type"].as_str().unwrap_or(""),
                    e
                )
                .as_bytes(),
            );
        }
        s
    }

    fn events_of(bytes: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(bytes)
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).expect("event json"))
            .collect()
    }

    #[tokio::test]
    async fn a_raw_harmony_stream_becomes_reasoning_and_a_call() {
        let c = conversations();
        let body = Bytes::from_static(
            br#"{"model":"m","input":"weather?","stream":true,"store":false,
                 "tools":[{"type":"function","name":"get_weather","parameters":{}}]}"#,
        );
        let (_, call) = prepare(&c, &body).await.expect("prepared");
        let resp =
            json!({"id": "resp_r", "object": "response", "status": "in_progress", "output": []});
        let msg = json!({"type": "message", "id": "msg_r", "role": "assistant", "content": []});
        let text = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>";
        let (a, b) = text.split_at(20);
        let mut done = resp.clone();
        done["status"] = json!("completed");
        done["output"] = json!([{"type": "message", "id": "msg_r", "role": "assistant",
            "content": [{"type": "output_text", "text": text}]}]);
        let stream = sse(&[
            json!({"type": "response.created", "response": resp, "sequence_number": 0}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": msg, "sequence_number": 1}),
            json!({"type": "response.content_part.added", "item_id": "msg_r", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": ""}, "sequence_number": 2}),
            json!({"type": "response.output_text.delta", "item_id": "msg_r", "output_index": 0, "content_index": 0, "delta": a, "sequence_number": 3}),
            json!({"type": "response.output_text.delta", "item_id": "msg_r", "output_index": 0, "content_index": 0, "delta": b, "sequence_number": 4}),
            json!({"type": "response.output_text.done", "item_id": "msg_r", "output_index": 0, "content_index": 0, "text": text, "sequence_number": 5}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": done["output"][0], "sequence_number": 6}),
            json!({"type": "response.completed", "response": done, "sequence_number": 7}),
        ]);
        let mut rw = ResponsesRewriter::new(call, c, true, true, 1 << 20);
        let mut out = Vec::new();
        for piece in stream.chunks(37) {
            out.extend_from_slice(&rw.chunk(piece).expect("chunk"));
        }
        out.extend_from_slice(&rw.finish().expect("finish"));
        assert_eq!(rw.terminal_seen(), Some(true));
        let evs = events_of(&out);
        let text_all = String::from_utf8_lossy(&out);
        assert!(
            !text_all.contains("<|"),
            "raw harmony reached the client: {text_all}"
        );
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e["sequence_number"], json!(i));
        }
        let last = evs.last().expect("events");
        assert_eq!(last["type"], "response.completed");
        let output = last["response"]["output"].as_array().expect("output");
        let kinds: Vec<_> = output
            .iter()
            .map(|i| i["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kinds, ["reasoning", "function_call"]);
        assert_eq!(output[1]["name"], "get_weather");
        assert_eq!(output[1]["arguments"], "{\"location\":\"Paris\"}");
        assert!(evs
            .iter()
            .any(|e| e["type"] == "response.function_call_arguments.done"));
        assert!(evs
            .iter()
            .any(|e| e["type"] == "response.reasoning_text.delta"));
    }

    #[tokio::test]
    async fn a_parsed_stream_passes_with_its_events_and_a_broken_one_ends_with_error() {
        let c = conversations();
        let body = Bytes::from_static(br#"{"model":"m","input":"hi","stream":true,"store":false}"#);
        let (_, call) = prepare(&c, &body).await.expect("prepared");
        let msg = json!({"type": "message", "id": "msg_p", "role": "assistant", "content": []});
        let stream = sse(&[
            json!({"type": "response.created", "response": {"id": "r"}, "sequence_number": 0}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": msg, "sequence_number": 1}),
            json!({"type": "response.output_text.delta", "item_id": "msg_p", "delta": "Hel", "sequence_number": 2}),
        ]);
        let mut rw = ResponsesRewriter::new(call, c, true, true, 1 << 20);
        let mut out = rw.chunk(&stream).expect("chunk").to_vec();
        assert_eq!(rw.terminal_seen(), Some(false));
        out.extend_from_slice(&rw.termination_frames(&ApiError::new(
            ErrorKind::BadGateway,
            "gone",
            None,
            Some("stream_truncated"),
        )));
        let evs = events_of(&out);
        let types: Vec<_> = evs
            .iter()
            .map(|e| e["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.output_item.added",
                "response.output_text.delta",
                "error"
            ]
        );
        assert_eq!(evs[3]["code"], "stream_truncated");
        assert_eq!(evs[2]["delta"], "Hel");
    }
}
