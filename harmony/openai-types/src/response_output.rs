//! From chat deltas (a generation's, or raw harmony parsed at the edge) to Responses output
//! items and stream events. The same builder serves streamed and whole responses, and
//! `gpt-oss-server` and `gpt-oss-lb`, so all of them carry the same items.
//!
//! Item order follows the model's output: a `reasoning` item for the analysis channel, a
//! `message` for commentary preambles (`phase: commentary`) and for the final answer
//! (`phase: final_answer` when the turn also calls tools), and one `function_call` per call.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::{
    ChatDelta, FunctionCallItem, Item, ItemContent, MessageItem, ReasoningItem, ReasoningText,
    ResponseEvent,
};

/// Seals reasoning text into an opaque, integrity-protected `encrypted_content` value (the
/// server's key; see `gpt-oss-server`'s `responses::seal`).
pub trait SealReasoning: Send + Sync {
    /// The sealed value of `text`.
    fn seal(&self, text: &str) -> String;
}

/// An output item made of text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TextItem {
    Reasoning,
    /// A message of `content` (`commentary: false`) or of commentary.
    Message {
        commentary: bool,
    },
}

/// What the current (last) output item is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    Text(TextItem),
    /// A function call: the chat delta's tool-call index.
    Call(u32),
}

/// Builds output items from deltas, writing the stream events that describe them.
pub struct OutputBuilder {
    items: Vec<Item>,
    open: Option<Open>,
    /// Text of the open reasoning item or message, and arguments of the open call.
    text: String,
    /// Seals the reasoning into `encrypted_content` when the request included it.
    sealer: Option<Arc<dyn SealReasoning>>,
    /// `namespace.name` of namespaced functions -> (namespace, name).
    namespaced: HashMap<String, (String, String)>,
    any_call: bool,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

impl OutputBuilder {
    /// `namespaced`: the full names (`crm.lookup`) of functions offered inside namespaces.
    pub fn new(
        sealer: Option<Arc<dyn SealReasoning>>,
        namespaced: impl IntoIterator<Item = String>,
    ) -> Self {
        OutputBuilder {
            items: Vec::new(),
            open: None,
            text: String::new(),
            sealer,
            namespaced: namespaced
                .into_iter()
                .filter_map(|full| {
                    let (ns, name) = full.split_once('.')?;
                    Some((full.clone(), (ns.to_string(), name.to_string())))
                })
                .collect(),
            any_call: false,
        }
    }

    fn index(&self) -> u32 {
        u32::try_from(self.items.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    fn item_id(&self) -> String {
        self.items
            .last()
            .and_then(Item::id)
            .unwrap_or_default()
            .to_string()
    }

    /// Feeds one delta of the generation.
    pub fn push(&mut self, d: &ChatDelta, out: &mut Vec<ResponseEvent>) {
        if let Some(r) = d.reasoning_content.as_deref().or(d.reasoning.as_deref()) {
            if !r.is_empty() {
                self.ensure(TextItem::Reasoning, out);
                self.append(r, out);
            }
        }
        if let Some(c) = d.commentary.as_deref().filter(|c| !c.is_empty()) {
            self.ensure(TextItem::Message { commentary: true }, out);
            self.append(c, out);
        }
        if let Some(c) = d.content.as_deref().filter(|c| !c.is_empty()) {
            self.ensure(TextItem::Message { commentary: false }, out);
            self.append(c, out);
        }
        for call in d.tool_calls.iter().flatten() {
            if self.open != Some(Open::Call(call.index)) {
                self.close("completed", out);
                self.open_call(call.id.clone(), call.function.name.clone(), out);
                self.open = Some(Open::Call(call.index));
            }
            if let Some(args) = call.function.arguments.as_deref().filter(|a| !a.is_empty()) {
                self.append(args, out);
            }
        }
    }

    /// Closes the last item with `status` (`completed`, or `incomplete` when the output was
    /// cut) and returns the output items.
    pub fn finish(mut self, status: &str, out: &mut Vec<ResponseEvent>) -> Vec<Item> {
        self.close(status, out);
        self.items
    }

    /// True once the output has a function call.
    pub fn has_calls(&self) -> bool {
        self.any_call
    }

    fn ensure(&mut self, want: TextItem, out: &mut Vec<ResponseEvent>) {
        if self.open == Some(Open::Text(want)) {
            return;
        }
        self.close("completed", out);
        let output_index = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        let (item, part) = match want {
            TextItem::Reasoning => (
                Item::Reasoning(ReasoningItem {
                    id: Some(new_id("rs")),
                    summary: Vec::new(),
                    content: Some(Vec::new()),
                    encrypted_content: None,
                    status: Some("in_progress".to_string()),
                }),
                json!({"type": "reasoning_text", "text": ""}),
            ),
            TextItem::Message { commentary } => (
                Item::Message(MessageItem {
                    id: Some(new_id("msg")),
                    role: "assistant".to_string(),
                    content: Vec::new(),
                    status: Some("in_progress".to_string()),
                    phase: commentary.then(|| "commentary".to_string()),
                }),
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
            ),
        };
        let item_id = item.id().unwrap_or_default().to_string();
        out.push(ResponseEvent::OutputItemAdded {
            output_index,
            item: item.clone(),
        });
        out.push(ResponseEvent::ContentPartAdded {
            item_id,
            output_index,
            content_index: 0,
            part,
        });
        self.items.push(item);
        self.open = Some(Open::Text(want));
    }

    fn open_call(
        &mut self,
        call_id: Option<String>,
        name: Option<String>,
        out: &mut Vec<ResponseEvent>,
    ) {
        let full = name.unwrap_or_default();
        let (namespace, name) = match self.namespaced.get(&full) {
            Some((ns, n)) => (Some(ns.clone()), n.clone()),
            None => (None, full),
        };
        let item = Item::FunctionCall(FunctionCallItem {
            id: Some(new_id("fc")),
            call_id: call_id.unwrap_or_else(|| new_id("call")),
            name,
            arguments: String::new(),
            namespace,
            status: Some("in_progress".to_string()),
        });
        out.push(ResponseEvent::OutputItemAdded {
            output_index: u32::try_from(self.items.len()).unwrap_or(u32::MAX),
            item: item.clone(),
        });
        self.items.push(item);
        self.any_call = true;
    }

    fn append(&mut self, piece: &str, out: &mut Vec<ResponseEvent>) {
        self.text.push_str(piece);
        let item_id = self.item_id();
        let output_index = self.index();
        out.push(match self.open {
            Some(Open::Text(TextItem::Reasoning)) => ResponseEvent::ReasoningTextDelta {
                item_id,
                output_index,
                content_index: 0,
                delta: piece.to_string(),
            },
            Some(Open::Text(TextItem::Message { .. })) => ResponseEvent::OutputTextDelta {
                item_id,
                output_index,
                content_index: 0,
                delta: piece.to_string(),
                logprobs: Vec::new(),
            },
            Some(Open::Call(_)) | None => ResponseEvent::FunctionCallArgumentsDelta {
                item_id,
                output_index,
                delta: piece.to_string(),
            },
        });
    }

    fn close(&mut self, status: &str, out: &mut Vec<ResponseEvent>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let text = std::mem::take(&mut self.text);
        let item_id = self.item_id();
        let output_index = self.index();
        let any_call = self.any_call;
        let sealer = self.sealer.clone();
        let Some(item) = self.items.last_mut() else {
            return;
        };
        match (open, item) {
            (Open::Text(TextItem::Reasoning), Item::Reasoning(r)) => {
                out.push(ResponseEvent::ReasoningTextDone {
                    item_id: item_id.clone(),
                    output_index,
                    content_index: 0,
                    text: text.clone(),
                });
                out.push(ResponseEvent::ContentPartDone {
                    item_id,
                    output_index,
                    content_index: 0,
                    part: json!({"type": "reasoning_text", "text": text}),
                });
                r.encrypted_content = sealer.map(|s| s.seal(&text));
                r.content = Some(vec![ReasoningText::new(text)]);
                r.status = Some(status.to_string());
            }
            (Open::Text(TextItem::Message { commentary }), Item::Message(m)) => {
                out.push(ResponseEvent::OutputTextDone {
                    item_id: item_id.clone(),
                    output_index,
                    content_index: 0,
                    text: text.clone(),
                    logprobs: Vec::new(),
                });
                let part = ItemContent::output_text(text);
                out.push(ResponseEvent::ContentPartDone {
                    item_id,
                    output_index,
                    content_index: 0,
                    part: serde_json::to_value(&part).unwrap_or(Value::Null),
                });
                m.content = vec![part];
                m.status = Some(status.to_string());
                if !commentary && any_call {
                    m.phase = Some("final_answer".to_string());
                }
            }
            (Open::Call(_), Item::FunctionCall(c)) => {
                c.arguments = text;
                c.status = Some(status.to_string());
                out.push(ResponseEvent::FunctionCallArgumentsDone {
                    item_id,
                    output_index,
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                });
            }
            _ => {}
        }
        if let Some(item) = self.items.last() {
            out.push(ResponseEvent::OutputItemDone {
                output_index,
                item: item.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FunctionCallDelta, ToolCallDelta};

    struct Reverse;
    impl SealReasoning for Reverse {
        fn seal(&self, text: &str) -> String {
            text.chars().rev().collect()
        }
    }

    fn delta(reasoning: Option<&str>, content: Option<&str>) -> ChatDelta {
        ChatDelta {
            reasoning_content: reasoning.map(str::to_string),
            content: content.map(str::to_string),
            ..ChatDelta::default()
        }
    }

    #[test]
    fn reasoning_then_answer_make_two_items_with_ordered_events() {
        let mut b = OutputBuilder::new(Some(Arc::new(Reverse)), []);
        let mut ev = Vec::new();
        b.push(&delta(Some("think "), None), &mut ev);
        b.push(&delta(Some("more"), None), &mut ev);
        b.push(&delta(None, Some("Paris")), &mut ev);
        let items = b.finish("completed", &mut ev);
        let names: Vec<_> = ev.iter().map(ResponseEvent::name).collect();
        assert_eq!(
            names,
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
            ]
        );
        let Item::Reasoning(r) = &items[0] else {
            panic!("reasoning first: {items:?}")
        };
        assert_eq!(
            r.content.as_ref().map(|c| c[0].text.as_str()),
            Some("think more")
        );
        assert_eq!(r.encrypted_content.as_deref(), Some("erom kniht"));
        let Item::Message(m) = &items[1] else {
            panic!("message second")
        };
        assert_eq!(m.content[0].text(), "Paris");
        assert_eq!(m.phase, None);
    }

    #[test]
    fn tool_calls_become_function_call_items_with_namespaces() {
        let mut b = OutputBuilder::new(None, ["crm.lookup".to_string()]);
        let mut ev = Vec::new();
        let call = |index, id: Option<&str>, name: Option<&str>, args: &str| ChatDelta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                id: id.map(str::to_string),
                kind: id.map(|_| "function".to_string()),
                function: FunctionCallDelta {
                    name: name.map(str::to_string),
                    arguments: Some(args.to_string()),
                },
            }]),
            ..ChatDelta::default()
        };
        b.push(
            &call(0, Some("call_1"), Some("crm.lookup"), "{\"id\":"),
            &mut ev,
        );
        b.push(&call(0, None, None, "1}"), &mut ev);
        b.push(&call(1, Some("call_2"), Some("get_weather"), "{}"), &mut ev);
        let items = b.finish("completed", &mut ev);
        assert_eq!(items.len(), 2);
        let Item::FunctionCall(c) = &items[0] else {
            panic!("a call")
        };
        assert_eq!(
            (c.namespace.as_deref(), c.name.as_str()),
            (Some("crm"), "lookup")
        );
        assert_eq!(
            (c.call_id.as_str(), c.arguments.as_str()),
            ("call_1", "{\"id\":1}")
        );
        assert!(ev.iter().any(|e| matches!(e, ResponseEvent::FunctionCallArgumentsDone { arguments, .. } if arguments == "{\"id\":1}")));
    }
}
