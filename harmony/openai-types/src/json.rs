//! JSON rules both binaries apply to request bodies before reading them.
//!
//! Duplicate object keys: RFC 8259 section 4 leaves their meaning to the parser ("the names
//! within an object SHOULD be unique"); parsers disagree (`serde_json`'s `Value` keeps the
//! last, a derived struct refuses), so a body with them could mean one thing to gpt-oss-lb and
//! another to gpt-oss-server. Both refuse such a body with a 400 naming the key.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The path of the first duplicate object key in `text` (`messages[0].content`, or `model` at
/// the top level); `None` when there is none or `text` is not valid JSON (the caller's parser
/// reports that).
pub fn find_duplicate_key(text: &[u8]) -> Option<String> {
    scan(text, &[]).ok()?.duplicate
}

/// What [`scan`] finds in one pass over a JSON text.
#[derive(Debug)]
pub struct Scan<'a> {
    /// The path of the first duplicate object key, as [`find_duplicate_key`] gives it.
    pub duplicate: Option<String>,
    /// For each name asked for, the raw text of the top-level object's member of that name
    /// (the first one when the key is duplicated); `None` when the member is absent or the
    /// text is not an object.
    pub members: Vec<Option<&'a RawValue>>,
}

/// One pass over JSON `text`: the first duplicate key at any depth, and the top-level
/// members named in `names` as raw text (to be parsed by the caller), so that a router reads
/// the fields it needs and checks the keys without parsing the body twice.
///
/// Errors: `text` is not valid JSON (serde_json's error, with line and column).
pub fn scan<'a>(text: &'a [u8], names: &[&str]) -> Result<Scan<'a>, serde_json::Error> {
    let mut found = None;
    let mut top = Top {
        names,
        members: vec![None; names.len()],
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    Walker {
        at: None,
        found: &mut found,
        top: Some(&mut top),
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(Scan {
        duplicate: found,
        members: top.members,
    })
}

/// The top-level members [`scan`] keeps.
struct Top<'n, 'a> {
    names: &'n [&'n str],
    members: Vec<Option<&'a RawValue>>,
}

/// Where a value sits, as a chain of frames on the walker's stack (no allocation unless a
/// duplicate is found).
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct PathNode<'p> {
    parent: Option<&'p PathNode<'p>>,
    seg: Seg<'p>,
}

fn path_string(node: &PathNode<'_>) -> String {
    let mut segs = Vec::new();
    let mut n = Some(node);
    while let Some(x) = n {
        segs.push(&x.seg);
        n = x.parent;
    }
    let mut out = String::new();
    for seg in segs.into_iter().rev() {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

struct Walker<'p, 'f, 't, 'n, 'de> {
    at: Option<&'p PathNode<'p>>,
    found: &'f mut Option<String>,
    /// Set on the root only: its members to keep, when it is an object.
    top: Option<&'t mut Top<'n, 'de>>,
}

impl<'de> DeserializeSeed<'de> for Walker<'_, '_, '_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walker<'_, '_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            if self.found.is_some() {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(());
            }
            let node = PathNode {
                parent: self.at,
                seg: Seg::Index(i),
            };
            let seed = Walker {
                at: Some(&node),
                found: &mut *self.found,
                top: None,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        // Small objects (the usual case) compare in a Vec; large ones use a set.
        let mut small: Vec<Cow<'de, str>> = Vec::new();
        let mut large: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let dup = match &mut large {
                Some(set) => set.contains(&key),
                None => small.contains(&key),
            };
            let wanted = match (&dup, &self.top) {
                (false, Some(top)) => top.names.iter().position(|n| *n == key),
                _ => None,
            };
            if let (Some(i), Some(top)) = (wanted, self.top.as_deref_mut()) {
                // Kept raw, then walked for duplicates inside it.
                let raw: &'de RawValue = map.next_value()?;
                top.members[i] = Some(raw);
                if self.found.is_none() {
                    let node = PathNode {
                        parent: None,
                        seg: Seg::Key(&key),
                    };
                    let mut inner = serde_json::Deserializer::from_str(raw.get());
                    Walker {
                        at: Some(&node),
                        found: &mut *self.found,
                        top: None,
                    }
                    .deserialize(&mut inner)
                    .map_err(serde::de::Error::custom)?;
                }
            } else if self.found.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            } else {
                let node = PathNode {
                    parent: self.at,
                    seg: Seg::Key(&key),
                };
                if dup {
                    *self.found = Some(path_string(&node));
                    map.next_value::<IgnoredAny>()?;
                } else {
                    map.next_value_seed(Walker {
                        at: Some(&node),
                        found: &mut *self.found,
                        top: None,
                    })?;
                }
            }
            match &mut large {
                Some(set) => {
                    set.insert(key);
                }
                None => {
                    small.push(key);
                    if small.len() > 16 {
                        large = Some(small.drain(..).collect());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_keeps_top_level_members_and_finds_duplicates_in_one_pass() {
        let names = ["model", "stream", "user"];
        let s = scan(
            br#"{"messages":[{"model":"inner"}],"model":"m","stream":true}"#,
            &names,
        )
        .expect("valid");
        assert_eq!(s.duplicate, None);
        let got: Vec<Option<&str>> = s.members.iter().map(|m| m.map(|r| r.get())).collect();
        assert_eq!(got, [Some(r#""m""#), Some("true"), None]);
        // A duplicate inside a kept member, and a kept member given twice.
        let s = scan(br#"{"user":{"a":1,"a":2}}"#, &names).expect("valid");
        assert_eq!(s.duplicate.as_deref(), Some("user.a"));
        let s = scan(br#"{"model":"a","stream":false,"model":"b"}"#, &names).expect("valid");
        assert_eq!(s.duplicate.as_deref(), Some("model"));
        assert_eq!(s.members[0].map(|r| r.get()), Some(r#""a""#));
        // Not JSON, or JSON followed by more text: errors.
        assert!(scan(br#"{"model":"a""#, &names).is_err());
        assert!(scan(br#"{"model":"a"} x"#, &names).is_err());
        // Not an object: nothing kept.
        let s = scan(br#"[{"model":"a"}]"#, &names).expect("valid");
        assert!(s.members.iter().all(Option::is_none));
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        assert_eq!(find_duplicate_key(br#"{"a":1,"b":2}"#), None);
        assert_eq!(
            find_duplicate_key(br#"{"model":"a","model":"b"}"#).as_deref(),
            Some("model")
        );
        assert_eq!(
            find_duplicate_key(
                br#"{"messages":[{"role":"user"},{"role":"user","role":"system"}]}"#
            )
            .as_deref(),
            Some("messages[1].role")
        );
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        assert_eq!(
            find_duplicate_key(format!("{{{many}\"k3\":0}}").as_bytes()).as_deref(),
            Some("k3"),
            "large objects too"
        );
        assert_eq!(
            find_duplicate_key(br#"{"a\u0062":1,"ab":2}"#).as_deref(),
            Some("ab"),
            "escaped spellings of the same key are the same key"
        );
        assert_eq!(
            find_duplicate_key(b"{oops"),
            None,
            "invalid JSON is the parser's to report"
        );
    }
}
