//! Choosing the next token from logits: penalties and `logit_bias` first ([`Sampler::adjust`]),
//! then greedy, or temperature, top-k, top-p and min-p with a seeded RNG.
//!
//! The same seed, parameters and logits give the same token on every run: each request owns a
//! [`Sampler`] whose RNG is seeded from the request's seed (or from the OS when it has none).

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::SamplingParams;

/// Candidates examined first when looking for the top-p nucleus; doubled until the nucleus fits.
const FIRST_NUCLEUS_GUESS: usize = 64;

/// Picks tokens for one request.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Reused between steps: (logit, token id) candidates.
    scratch: Vec<(f32, u32)>,
    /// How often each token was generated so far (presence and frequency penalties).
    generated: HashMap<u32, u32>,
    /// Tokens of the prompt (the repetition penalty counts them too, as vLLM does).
    prompt: HashSet<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            params,
            rng,
            scratch: Vec::new(),
            generated: HashMap::new(),
            prompt: HashSet::new(),
        }
    }

    /// A sampler for a sequence with this prompt (its tokens count for `repetition_penalty`).
    pub fn for_prompt(params: SamplingParams, prompt: &[u32]) -> Self {
        let mut s = Sampler::new(params);
        if s.params.repetition_penalty != 1.0 {
            s.prompt = prompt.iter().copied().collect();
        }
        s
    }

    /// Applies `logit_bias` and the presence, frequency and repetition penalties to `logits`,
    /// from the tokens [`Sampler::observe`]d so far (OpenAI's and vLLM's definitions).
    pub fn adjust(&self, logits: &mut [f32]) {
        let p = &self.params;
        if !p.adjusts_logits() {
            return;
        }
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            for &id in self.prompt.iter().chain(self.generated.keys()) {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / r } else { *l * r };
                }
            }
            // A token both in the prompt and generated was penalised twice above; undo once.
            for id in self.generated.keys().filter(|id| self.prompt.contains(id)) {
                if let Some(l) = logits.get_mut(*id as usize) {
                    *l = if *l > 0.0 { *l * r } else { *l / r };
                }
            }
        }
        for (&id, &count) in &self.generated {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= p.frequency_penalty * count as f32 + p.presence_penalty;
            }
        }
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
    }

    /// Records a generated token for the penalties.
    pub fn observe(&mut self, token: u32) {
        if self.params.adjusts_logits() {
            *self.generated.entry(token).or_insert(0) += 1;
        }
    }

    /// The next token for these logits (one row, one value per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.sample_excluding(logits, &[])
    }

    /// The next token for these logits, never one of `excluded` (unless every token is excluded).
    /// This is how `min_tokens` keeps stop tokens out: as if their logits were minus infinity.
    pub fn sample_excluding(&mut self, logits: &[f32], excluded: &[u32]) -> u32 {
        if self.params.is_greedy() || logits.len() <= 1 {
            return argmax_excluding(logits, excluded);
        }
        let temperature = self.params.temperature.max(1e-6);
        let top_k = match self.params.top_k {
            Some(k) if k > 0 => (k as usize).min(logits.len()),
            _ => logits.len(),
        };
        let top_p = if self.params.top_p > 0.0 && self.params.top_p < 1.0 {
            self.params.top_p
        } else {
            1.0
        };

        let max = logits[argmax_excluding(logits, excluded) as usize];
        // Softmax normaliser over the whole top-k set, computed without sorting it.
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.extend(
            logits
                .iter()
                .enumerate()
                // Masked tokens (minus infinity: a grammar, `min_tokens`) are never candidates.
                .filter(|(_, &l)| !l.is_nan() && l != f32::NEG_INFINITY)
                .map(|(i, &l)| (l, i as u32)),
        );
        if !excluded.is_empty() {
            scratch.retain(|(_, id)| !excluded.contains(id));
        }
        if scratch.is_empty() {
            return argmax_excluding(logits, excluded);
        }
        let top_k = top_k.min(scratch.len());
        if top_k < scratch.len() {
            scratch.select_nth_unstable_by(top_k - 1, |a, b| desc(a.0, b.0));
            scratch.truncate(top_k);
        }
        let weight = |l: f32| ((l - max) / temperature).exp();
        if self.params.min_p > 0.0 {
            // `weight` is each token's probability relative to the most likely one.
            let min_p = self.params.min_p.min(1.0);
            scratch.retain(|&(l, _)| weight(l) >= min_p);
            if scratch.is_empty() {
                return argmax_excluding(logits, excluded);
            }
        }
        let total: f64 = scratch.iter().map(|&(l, _)| weight(l) as f64).sum();

        // The nucleus: the fewest most likely tokens whose probability reaches top_p. Sort only a
        // prefix, growing it until it holds the nucleus.
        let mut n = if top_p < 1.0 {
            FIRST_NUCLEUS_GUESS.min(scratch.len())
        } else {
            scratch.len()
        };
        let kept = loop {
            if n < scratch.len() {
                scratch.select_nth_unstable_by(n - 1, |a, b| desc(a.0, b.0));
            }
            if top_p >= 1.0 {
                break n;
            }
            scratch[..n].sort_unstable_by(|a, b| desc(a.0, b.0).then(a.1.cmp(&b.1)));
            let mut cumulative = 0.0f64;
            let mut found = None;
            for (i, &(l, _)) in scratch[..n].iter().enumerate() {
                cumulative += weight(l) as f64 / total;
                if cumulative >= top_p as f64 {
                    found = Some(i + 1);
                    break;
                }
            }
            match found {
                Some(k) => break k,
                None if n == scratch.len() => break n,
                None => n = (n * 2).min(scratch.len()),
            }
        };

        // Draw in token-id order, not probability order: then a tiny change of the logits (another
        // batch composition, another kernel) moves each token's interval by a tiny amount instead of
        // swapping the order of two nearly equal tokens, so the same seed keeps its tokens.
        let kept = &mut scratch[..kept];
        kept.sort_unstable_by_key(|&(_, id)| id);
        let mass: f64 = kept.iter().map(|&(l, _)| weight(l) as f64).sum();
        let mut target = self.rng.random::<f64>() * mass;
        for &(l, id) in kept.iter() {
            target -= weight(l) as f64;
            if target <= 0.0 {
                return id;
            }
        }
        kept.last()
            .map_or_else(|| argmax_excluding(logits, excluded), |&(_, id)| id)
    }
}

/// The log-probability of `token` and of the `top` most likely tokens under `logits`
/// (log-softmax; NaN logits count as impossible).
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> crate::TokenLogprob {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| ((l - max) as f64).exp())
        .sum();
    let lse = max as f64 + sum.ln();
    let lp = |l: f32| {
        if l.is_nan() {
            f32::NEG_INFINITY
        } else {
            (l as f64 - lse) as f32
        }
    };
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut all: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (l, i as u32))
            .collect();
        let top = top.min(all.len());
        if top > 0 && top < all.len() {
            all.select_nth_unstable_by(top - 1, |a, b| desc(a.0, b.0));
        }
        all.truncate(top);
        all.sort_by(|a, b| desc(a.0, b.0).then(a.1.cmp(&b.1)));
        best = all.into_iter().map(|(l, id)| (id, lp(l))).collect();
    }
    crate::TokenLogprob {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best,
    }
}

/// Descending order for floats (NaNs were filtered out).
fn desc(a: f32, b: f32) -> std::cmp::Ordering {
    b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
}

/// The index of the largest logit; the first one on ties, as `torch.argmax` does. NaNs never win.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

/// [`argmax`] among the tokens not in `excluded`; plain [`argmax`] when that leaves none.
pub fn argmax_excluding(logits: &[f32], excluded: &[u32]) -> u32 {
    let best = argmax(logits);
    if !excluded.contains(&best) {
        return best;
    }
    let mut found = None;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        let id = i as u32;
        if (found.is_none() || v > best_value) && !v.is_nan() && !excluded.contains(&id) {
            found = Some(id);
            best_value = v;
        }
    }
    found.unwrap_or(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        temperature: f32,
        top_p: f32,
        top_k: Option<u32>,
        seed: Option<u64>,
    ) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
            ..SamplingParams::greedy()
        }
    }

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(s.sample(&[f32::NAN, -1.0, -2.0]), 1);
    }

    #[test]
    fn excluded_tokens_are_never_chosen() {
        // Token 0 holds almost all the mass; excluding it (and token 1) leaves token 2 the best.
        let mut l = vec![-5.0f32; 300];
        l[0] = 20.0;
        l[1] = 19.0;
        l[2] = 3.0;
        l[3] = 2.5;
        let mut g = Sampler::new(SamplingParams::greedy());
        assert_eq!(g.sample_excluding(&l, &[0, 1]), 2);
        assert_eq!(g.sample_excluding(&l, &[]), 0);
        assert_eq!(
            argmax_excluding(&[1.0, 2.0], &[0, 1]),
            1,
            "all excluded: plain argmax"
        );
        for (temperature, top_p, top_k) in [(1.0, 1.0, None), (1.0, 0.5, None), (2.0, 1.0, Some(2))]
        {
            let mut s = Sampler::new(params(temperature, top_p, top_k, Some(5)));
            let draws: Vec<u32> = (0..500).map(|_| s.sample_excluding(&l, &[0, 1])).collect();
            assert!(
                draws.iter().all(|&t| t >= 2),
                "excluded tokens were drawn at temperature {temperature}, top_p {top_p}, top_k {top_k:?}"
            );
            if top_k == Some(2) {
                assert!(
                    draws.iter().all(|&t| t == 2 || t == 3),
                    "top_k counts allowed tokens only"
                );
                assert!(draws.contains(&3));
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let l = logits();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0.9, None, Some(seed)));
            (0..50).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7), "a seed must reproduce its tokens");
        assert_ne!(run(7), run(8), "different seeds should differ on 50 draws");
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_limits_the_choice() {
        let l = logits();
        let best = argmax(&l);
        let mut s = Sampler::new(params(5.0, 1.0, Some(1), Some(1)));
        assert!((0..20).all(|_| s.sample(&l) == best));
        let mut top3: Vec<(f32, u32)> = l.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
        top3.sort_by(|a, b| desc(a.0, b.0));
        let allowed: Vec<u32> = top3[..3].iter().map(|x| x.1).collect();
        let mut s = Sampler::new(params(100.0, 1.0, Some(3), Some(2)));
        for _ in 0..200 {
            let t = s.sample(&l);
            assert!(
                allowed.contains(&t),
                "token {t} is outside the top 3 {allowed:?}"
            );
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Token 0 has ~88% of the mass, token 1 ~12%, the rest almost nothing.
        let mut l = vec![-30.0f32; 500];
        l[0] = 2.0;
        l[1] = 0.0;
        let mut s = Sampler::new(params(1.0, 0.5, None, Some(3)));
        assert!(
            (0..100).all(|_| s.sample(&l) == 0),
            "top_p 0.5 keeps only token 0"
        );
        let mut s = Sampler::new(params(1.0, 0.95, None, Some(3)));
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&l)).collect();
        assert!(
            draws.iter().all(|&t| t <= 1),
            "top_p 0.95 keeps tokens 0 and 1"
        );
        assert!(
            draws.contains(&1),
            "token 1 is in the nucleus and must be drawn sometimes"
        );
    }

    #[test]
    fn penalties_and_bias_follow_openai_and_vllm() {
        let mut p = SamplingParams::greedy();
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.25;
        p.logit_bias = vec![(3, -100.0), (9, 1.0)];
        let mut s = Sampler::for_prompt(p, &[1]);
        s.observe(0);
        s.observe(0);
        s.observe(2);
        let mut l = vec![1.0f32; 4];
        s.adjust(&mut l);
        assert_eq!(l, vec![1.0 - 0.5 - 0.5, 1.0, 1.0 - 0.5 - 0.25, -99.0]);

        let mut p = SamplingParams::greedy();
        p.repetition_penalty = 2.0;
        let mut s = Sampler::for_prompt(p, &[0, 1]);
        s.observe(1);
        s.observe(2);
        let mut l = vec![4.0f32, -4.0, 4.0, 4.0];
        s.adjust(&mut l);
        assert_eq!(
            l,
            vec![2.0, -8.0, 2.0, 4.0],
            "seen once: divided or multiplied once"
        );
        assert_eq!(s.sample(&l), 3, "the unseen token wins greedily");
    }

    #[test]
    fn logprobs_are_a_log_softmax() {
        let l = [0.0f32, (3.0f32).ln(), f32::NAN];
        let lp = logprobs(&l, 0, 5);
        assert!((lp.logprob - 0.25f32.ln()).abs() < 1e-6, "{lp:?}");
        assert_eq!(lp.top.len(), 2, "NaN is no candidate");
        assert_eq!(lp.top[0].0, 1);
        assert!((lp.top[0].1 - 0.75f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn min_p_drops_the_unlikely() {
        // Token 1 is e^-3 (about 5%) as likely as token 0.
        let l = [3.0f32, 0.0, 2.5];
        let mut p = params(1.0, 1.0, None, Some(4));
        p.min_p = 0.1;
        let mut s = Sampler::new(p);
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&l)).collect();
        assert!(!draws.contains(&1), "min_p 0.1 keeps tokens 0 and 2 only");
        assert!(draws.contains(&2));
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let l = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        let mut s = Sampler::new(params(2.0, 1.0, None, Some(9)));
        assert!((0..2000).map(|_| s.sample(&l)).all(|t| t == 1 || t == 3));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let l = [0.0f32, (3.0f32).ln()]; // probabilities 1/4 and 3/4
        let mut s = Sampler::new(params(1.0, 1.0, None, Some(11)));
        let ones = (0..4000).filter(|_| s.sample(&l) == 1).count();
        assert!(
            (2800..3200).contains(&ones),
            "expected about 3000 of 4000, got {ones}"
        );
    }
}
