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

/// Stop strings matched on the answer inside a longer text: raw harmony output, whose
/// final-channel content (the `content` a parsed response would carry) is interleaved with
/// headers, special tokens and other channels.
///
/// Text goes in as pieces marked answer or not, in output order. Stop strings are looked for
/// in the answer pieces alone, joined (so a stop string may span tokens, and messages, as it
/// does on a parsed `content`); what comes out is the whole text up to the point where the
/// answer is known not to start a stop string, and on a match the text up to the start of
/// the stop string, which is not returned. A parser of the output then finds the same
/// `content` as a parsed response with the same stop strings.
#[derive(Debug, Clone, Default)]
pub struct AnswerStopMatcher {
    stops: Vec<String>,
    /// Pieces not yet returned, in order: (text, is answer).
    held: Vec<(String, bool)>,
    matched: bool,
}

impl AnswerStopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        debug_assert!(
            stops.iter().all(|s| !s.is_empty()),
            "validation rejects empty stop strings"
        );
        AnswerStopMatcher {
            stops,
            held: Vec::new(),
            matched: false,
        }
    }

    /// True once a stop string was seen in the answer; later input is ignored.
    pub fn matched(&self) -> bool {
        self.matched
    }

    /// Feeds a piece of the text (`answer`: it belongs to the answer); appends the part that
    /// is safe to emit now to `out`.
    pub fn push(&mut self, text: &str, answer: bool, out: &mut String) {
        if self.matched || text.is_empty() {
            return;
        }
        if self.stops.is_empty() || (!answer && self.held.is_empty()) {
            out.push_str(text);
            return;
        }
        self.held.push((text.to_string(), answer));
        let joined: String = self
            .held
            .iter()
            .filter(|(_, a)| *a)
            .map(|(t, _)| t.as_str())
            .collect();
        // The earliest complete match wins; without one, the longest suffix that is a proper
        // prefix of some stop string stays held.
        let first = self
            .stops
            .iter()
            .filter_map(|s| joined.find(s.as_str()))
            .min();
        let cut = match first {
            Some(at) => {
                self.matched = true;
                at
            }
            None => {
                let keep = self
                    .stops
                    .iter()
                    .map(|s| longest_suffix_prefix(&joined, s))
                    .max()
                    .unwrap_or(0);
                joined.len() - keep
            }
        };
        self.release(cut, out);
        if self.matched {
            self.held.clear();
        }
    }

    /// Appends to `out` every held piece up to answer offset `cut` (pieces that are not
    /// answer are released when no held answer byte comes before them) and keeps the rest.
    fn release(&mut self, cut: usize, out: &mut String) {
        let mut seen = 0;
        let mut taken = 0;
        for (text, answer) in &mut self.held {
            if *answer {
                let end = seen + text.len();
                if end > cut {
                    let split = cut - seen;
                    out.push_str(&text[..split]);
                    text.drain(..split);
                    break;
                }
                seen = end;
            }
            out.push_str(text);
            taken += 1;
        }
        self.held.drain(..taken);
    }

    /// The text still held back, when the generation ends without a match.
    pub fn finish(&mut self, out: &mut String) {
        if self.matched {
            return;
        }
        for (text, _) in self.held.drain(..) {
            out.push_str(&text);
        }
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

    /// Runs pieces through an [`AnswerStopMatcher`]: (output, matched).
    fn run_answer(stops: &[&str], pieces: &[(&str, bool)]) -> (String, bool) {
        let mut m = AnswerStopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for (p, answer) in pieces {
            m.push(p, *answer, &mut out);
        }
        m.finish(&mut out);
        (out, m.matched())
    }

    #[test]
    fn a_stop_string_in_the_reasoning_does_not_cut_raw_output() {
        let pieces = [
            ("<|channel|>analysis<|message|>", false),
            ("The capital of France is Paris.", false),
            (
                "<|end|><|start|>assistant<|channel|>final<|message|>",
                false,
            ),
            ("Pa", true),
            ("ris", true),
            ("<|return|>", false),
        ];
        assert_eq!(
            run_answer(&["ris"], &pieces),
            (
                "<|channel|>analysis<|message|>The capital of France is Paris.<|end|><|start|>assistant<|channel|>final<|message|>Pa"
                    .to_string(),
                true
            )
        );
    }

    #[test]
    fn raw_text_after_a_held_answer_prefix_waits_for_it_and_is_released_in_order() {
        // "ri" could start "ris": it is held, and so is the raw text after it, until the
        // next answer text shows it is not a match.
        let pieces = [
            ("A: ri", true),
            (
                "<|end|><|start|>assistant<|channel|>final<|message|>",
                false,
            ),
            ("ver", true),
        ];
        assert_eq!(
            run_answer(&["ris"], &pieces),
            (
                "A: ri<|end|><|start|>assistant<|channel|>final<|message|>ver".to_string(),
                false
            )
        );
        // Joined across the message boundary the answer does read "ris", as the parsed
        // `content` would: the raw text is cut before it.
        let pieces = [
            ("A: ri", true),
            (
                "<|end|><|start|>assistant<|channel|>final<|message|>",
                false,
            ),
            ("s", true),
        ];
        assert_eq!(run_answer(&["ris"], &pieces), ("A: ".to_string(), true));
    }

    #[test]
    fn answer_matching_equals_matching_on_the_answer_alone_at_every_split() {
        // Whatever the tokenization, the answer text that survives in the raw output is what
        // the plain matcher leaves of the answer alone.
        let raw = [
            ("<|channel|>analysis<|message|>", false),
            ("think STOP here", false),
            (
                "<|end|><|start|>assistant<|channel|>final<|message|>",
                false,
            ),
            ("hello STOP world", true),
        ];
        let answer = "hello STOP world";
        for i in 0..=answer.len() {
            let mut pieces: Vec<(&str, bool)> = raw[..3].to_vec();
            pieces.push((&answer[..i], true));
            pieces.push((&answer[i..], true));
            let (out, matched) = run_answer(&["STOP"], &pieces);
            assert!(matched, "split at {i}");
            let kept = out
                .strip_prefix(
                    "<|channel|>analysis<|message|>think STOP here<|end|><|start|>assistant<|channel|>final<|message|>",
                )
                .unwrap_or_else(|| panic!("the reasoning stays whole at split {i}: {out}"));
            assert_eq!(
                (kept.to_string(), true),
                run(&["STOP"], &[answer]),
                "split at {i}"
            );
        }
    }

    #[test]
    fn without_stop_strings_every_piece_passes_at_once() {
        let mut m = AnswerStopMatcher::new(Vec::new());
        let mut out = String::new();
        m.push("<|channel|>final<|message|>", false, &mut out);
        m.push("ris", true, &mut out);
        assert_eq!(out, "<|channel|>final<|message|>ris");
        assert!(!m.matched());
    }
}
