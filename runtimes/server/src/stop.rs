//! Stop strings, matched on decoded text as it streams.
//!
//! Text that could be the start of a stop string is held back until it is known
//! not to be one, so a stop string never leaks into the output, even when it is
//! split across tokens.

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    matched: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        debug_assert!(
            stops.iter().all(|s| !s.is_empty()),
            "validation rejects empty stop strings"
        );
        StopMatcher {
            stops,
            held: String::new(),
            matched: false,
        }
    }

    pub fn is_active(&self) -> bool {
        !self.stops.is_empty()
    }

    /// True once a stop string was seen; later input is ignored.
    pub fn matched(&self) -> bool {
        self.matched
    }

    /// Feeds text; returns the part that is safe to emit now.
    pub fn push(&mut self, text: &str) -> String {
        if self.matched {
            return String::new();
        }
        if self.stops.is_empty() {
            return text.to_string();
        }
        self.held.push_str(text);
        // The earliest complete match wins.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.matched = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// The text still held back, when the generation ends without a match.
    pub fn finish(&mut self) -> String {
        if self.matched {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`,
/// always at a character boundary of `text`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            out.push_str(&m.push(p));
        }
        out.push_str(&m.finish());
        (out, m.matched())
    }

    #[test]
    fn a_stop_string_split_across_tokens_does_not_leak() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "D more"]),
            ("abc ".to_string(), true)
        );
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(
            run(&["END"], &["EN", "x", "y"]),
            ("ENxy".to_string(), false)
        );
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &["a b zz"]), ("a ".to_string(), true));
    }

    #[test]
    fn multibyte_text_is_never_cut_inside_a_character() {
        assert_eq!(
            run(&["é!"], &["café", " ok"]),
            ("café ok".to_string(), false)
        );
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".to_string(), true));
    }

    #[test]
    fn any_split_gives_the_same_output() {
        let text = "hello STOP world";
        for i in 0..=text.len() {
            if !text.is_char_boundary(i) {
                continue;
            }
            assert_eq!(
                run(&["STOP"], &[&text[..i], &text[i..]]),
                ("hello ".to_string(), true),
                "split at {i}"
            );
        }
    }
}
