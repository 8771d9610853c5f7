//! Proxy-Wasm ABI 0.2.1: the numbers and the wire format shared by host and filters.
//!
//! Source: github.com/proxy-wasm/spec `abi-versions/v0.2.1/README.md` ("Types",
//! "Serialization"), cross-checked with the Rust SDK's `src/types.rs`.

/// `proxy_status_t`, returned by every host function.
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const SERIALIZATION_FAILURE: i32 = 3;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// `proxy_action_t`, returned by the HTTP callbacks: 0 continues, anything else pauses
/// (proxy-wasm-cpp-host maps every value above 1 to "stop", as we do).
pub const ACTION_CONTINUE: i32 = 0;

/// `proxy_buffer_type_t`.
pub mod buffer {
    pub const HTTP_REQUEST_BODY: i32 = 0;
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// `proxy_map_type_t`.
pub mod map {
    pub const HTTP_REQUEST_HEADERS: i32 = 0;
    pub const HTTP_REQUEST_TRAILERS: i32 = 1;
    pub const HTTP_RESPONSE_HEADERS: i32 = 2;
    pub const HTTP_RESPONSE_TRAILERS: i32 = 3;
}

/// `proxy_metric_type_t`.
pub mod metric {
    pub const COUNTER: i32 = 0;
    pub const GAUGE: i32 = 1;
    pub const HISTOGRAM: i32 = 2;
}

/// `proxy_log_level_t`: TRACE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CRITICAL 5.
pub const LOG_CRITICAL: i32 = 5;

/// WASI `errno` values the host returns.
pub mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOTSUP: i32 = 58;
}

/// A header map as the ABI carries it: lower-case names (HTTP/2 pseudo-headers such as
/// `:path` and `:status` included), raw values.
pub type Pairs = Vec<(String, Vec<u8>)>;

/// Serialize a header map: `u32 count`, then `count` × (`u32 key_len`, `u32 value_len`), then
/// each key and value followed by a NUL byte; all little-endian (spec "Serialization").
/// `{a: 1, b: 22}` is `02000000 01000000 01000000 01000000 02000000 6100 3100 6200 323200`.
pub fn serialize_pairs(pairs: &Pairs) -> Vec<u8> {
    let data: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parse a header map a filter sent, with every length checked; an empty buffer (or a single
/// 0 byte, which the spec also allows) is the empty map. Names are lower-cased; a name that
/// is not UTF-8, or bytes that do not add up, are `None`.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Pairs> {
    if bytes.len() <= 1 {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0)?;
    // every pair takes at least 10 bytes: two lengths and two NULs
    if n > bytes.len() / 10 {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (kl, vl) in sizes {
        let key = bytes.get(at..at.checked_add(kl)?)?;
        at = at.checked_add(kl)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(vl)?)?;
        at = at.checked_add(vl)?.checked_add(1)?;
        let key = std::str::from_utf8(key).ok()?.to_ascii_lowercase();
        out.push((key, value.to_vec()));
    }
    (at <= bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_serialization_matches_the_spec_example() {
        let pairs = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".into(), b"22".to_vec()),
        ];
        let bytes = serialize_pairs(&pairs);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0200000001000000010000000100000002000000610031006200323200"
        );
        assert_eq!(deserialize_pairs(&bytes), Some(pairs));
    }

    #[test]
    fn malformed_maps_are_refused_not_trusted() {
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[0]), Some(vec![]));
        // a count far beyond the bytes
        assert_eq!(deserialize_pairs(&[255, 255, 255, 255, 0, 0]), None);
        // lengths past the end
        let mut b = serialize_pairs(&vec![("k".into(), b"v".to_vec())]);
        b[4] = 200;
        assert_eq!(deserialize_pairs(&b), None);
        b.truncate(6);
        assert_eq!(deserialize_pairs(&b), None);
    }
}
