//! Routing policies: given a group of backends and which of them may be used, pick one.
//!
//! `round_robin` and `consistent_hash` use pingora-load-balancing's selection algorithms
//! (weighted round robin and ketama). `least_outstanding` and `queue_aware` need live counters
//! that pingora's selection does not see, so they are implemented here, and so is
//! `cache_aware` (SGLang's cache-aware policy, with ketama for affinity keys).

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{BackendIter, BackendSelection, RoundRobin};

use crate::backend::Backend;

/// What a request offers a policy besides its route.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints<'a> {
    /// The affinity key: `consistent_hash` hashes it, `cache_aware` sticks by it.
    pub key: Option<&'a [u8]>,
    /// The prompt's leading blocks as chained hashes, each with the bytes up to and including
    /// it ([`super::prompt_blocks`]; empty unless the route's policy is `cache_aware`).
    pub prefix: &'a [(u64, usize)],
    /// The prompt's size in bytes, as [`super::prompt_blocks`] counts it.
    pub prompt_bytes: usize,
}

impl<'a> Hints<'a> {
    /// Hints with only an affinity key.
    pub fn key(key: Option<&'a [u8]>) -> Self {
        Hints {
            key,
            ..Hints::default()
        }
    }
}

/// A routing policy. `eligible(i)` says whether `group[i]` may take this request
/// (healthy and not yet tried). Returns the index of the chosen backend.
pub trait Policy: Send + Sync {
    fn pick(
        &self,
        group: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        hints: &Hints<'_>,
    ) -> Option<usize>;
}

/// Build the policy for a group.
pub fn build(
    policy: config::Policy,
    group: &[Arc<Backend>],
    cache_aware: &config::CacheAwareConfig,
) -> Box<dyn Policy> {
    match policy {
        config::Policy::RoundRobin => Box::new(PingoraSelection::<RoundRobin>::new(group)),
        config::Policy::ConsistentHash => Box::new(Hashed {
            ring: Ring::default(),
            fallback: LeastOutstanding::default(),
        }),
        config::Policy::LeastOutstanding => Box::new(LeastOutstanding::default()),
        config::Policy::QueueAware => Box::new(QueueAware::default()),
        config::Policy::CacheAware => Box::new(CacheAware {
            ring: Ring::default(),
            settings: *cache_aware,
            rotate: AtomicUsize::new(0),
        }),
    }
}

/// A ketama ring over the route's group, built at its first keyed pick. A snapshot is
/// rebuilt at every registration, and a ring costs ~160 points per member to build and sort
/// (milliseconds for a group of hundreds): built lazily, a burst of registrations builds
/// each ring once, when a request first needs it, not once per registration.
#[derive(Default)]
struct Ring(std::sync::OnceLock<PingoraSelection<KetamaHashing>>);

impl Ring {
    /// `group` must be the group the policy was built for (`Route::group`; a route's policy
    /// and group are built together and never change).
    fn pick_with(
        &self,
        group: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        key: &[u8],
    ) -> Option<usize> {
        self.0
            .get_or_init(|| PingoraSelection::new(group))
            .pick_with(eligible, key)
    }
}

/// pingora's `Backend` is identified by its socket address, but ours are identified by name
/// (two names may share an address). The selection key is therefore an address derived from
/// the name, which also keeps the ketama ring stable when other members change.
fn selection_key(name: &str) -> SocketAddr {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let a = h.finish();
    let mut h2 = std::collections::hash_map::DefaultHasher::new();
    (name, 0x9e37_79b9_u32).hash(&mut h2);
    let b = h2.finish();
    let ip = Ipv6Addr::from((u128::from(a) << 64) | u128::from(b));
    SocketAddr::new(IpAddr::V6(ip), 1)
}

/// A pingora-load-balancing selection over the group, mapping its picks back to indexes.
struct PingoraSelection<S: BackendSelection> {
    sel: Arc<S>,
    index: std::collections::HashMap<SocketAddr, usize>,
    len: usize,
}

impl<S: BackendSelection> PingoraSelection<S> {
    fn new(group: &[Arc<Backend>]) -> Self {
        let mut set = BTreeSet::new();
        let mut index = std::collections::HashMap::new();
        for (i, b) in group.iter().enumerate() {
            let addr = selection_key(b.name());
            index.insert(addr, i);
            set.insert(pingora::lb::Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: b.def.weight as usize,
                ext: Default::default(),
            });
        }
        PingoraSelection {
            sel: Arc::new(S::build(&set)),
            index,
            len: group.len(),
        }
    }

    fn pick_with(&self, eligible: &dyn Fn(usize) -> bool, key: &[u8]) -> Option<usize>
    where
        S::Iter: BackendIter,
    {
        let mut it = self.sel.iter(key);
        // Bounded like pingora's LoadBalancer::select_with: weighted iterators may repeat.
        for _ in 0..(self.len * 4 + 16) {
            let b = it.next()?;
            let pingora::protocols::l4::socket::SocketAddr::Inet(addr) = b.addr else {
                continue;
            };
            if let Some(&i) = self.index.get(&addr) {
                if eligible(i) {
                    return Some(i);
                }
            }
        }
        None
    }
}

impl Policy for PingoraSelection<RoundRobin> {
    fn pick(
        &self,
        _g: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _hints: &Hints<'_>,
    ) -> Option<usize> {
        self.pick_with(eligible, b"")
    }
}

/// `consistent_hash`: ketama on the key; without a key, least outstanding.
struct Hashed {
    ring: Ring,
    fallback: LeastOutstanding,
}

impl Policy for Hashed {
    fn pick(
        &self,
        g: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        hints: &Hints<'_>,
    ) -> Option<usize> {
        match hints.key {
            Some(k) => self.ring.pick_with(g, eligible, k),
            None => self.fallback.pick(g, eligible, hints),
        }
    }
}

/// Pick the eligible backend with the lowest `cost / weight`; ties rotate so that equal
/// backends share the load.
fn lowest(
    group: &[Arc<Backend>],
    eligible: &dyn Fn(usize) -> bool,
    rotate: &AtomicUsize,
    cost: impl Fn(&Backend) -> u64,
) -> Option<usize> {
    let n = group.len();
    if n == 0 {
        return None;
    }
    let start = rotate.fetch_add(1, Ordering::Relaxed) % n;
    let mut best: Option<(usize, u128)> = None;
    for off in 0..n {
        let i = (start + off) % n;
        if !eligible(i) {
            continue;
        }
        let b = &group[i];
        // Compare cost_i / w_i by cross-multiplying with a common scale.
        let score = u128::from(cost(b)) * 1_000_000 / u128::from(b.def.weight.max(1));
        if best.is_none_or(|(_, s)| score < s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// `least_outstanding`: fewest requests in flight through this LB, per unit of weight.
#[derive(Default)]
pub struct LeastOutstanding {
    rotate: AtomicUsize,
}

impl Policy for LeastOutstanding {
    fn pick(
        &self,
        g: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _hints: &Hints<'_>,
    ) -> Option<usize> {
        lowest(g, eligible, &self.rotate, |b| b.inflight())
    }
}

/// `queue_aware`: the queue depth the backend reports on its health endpoint, plus what this
/// LB has in flight there (the report is up to one health interval old).
#[derive(Default)]
pub struct QueueAware {
    rotate: AtomicUsize,
}

impl Policy for QueueAware {
    fn pick(
        &self,
        g: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _hints: &Hints<'_>,
    ) -> Option<usize> {
        lowest(g, eligible, &self.rotate, load)
    }
}

/// Requests waiting at or going to a backend: what it reports queued on its health endpoint
/// (up to one health interval old) plus what this LB has in flight there.
fn load(b: &Backend) -> u64 {
    b.queue_depth().unwrap_or(0).saturating_add(b.inflight())
}

/// `cache_aware`: SGLang's cache-aware policy (see [`config::CacheAwareConfig`]): balance
/// first when the load is skewed past both thresholds, then affinity (a key's backend on the
/// ketama ring, consistent when backends come and go), then the longest recorded prefix when
/// it covers `cache_threshold` of the prompt, else the backend with the smallest record. Every
/// pick records the prompt's blocks on the chosen backend.
pub struct CacheAware {
    ring: Ring,
    settings: config::CacheAwareConfig,
    rotate: AtomicUsize,
}

impl CacheAware {
    fn choose(
        &self,
        g: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        hints: &Hints<'_>,
    ) -> Option<usize> {
        let loads: Vec<(usize, u64)> = (0..g.len())
            .filter(|&i| eligible(i))
            .map(|i| (i, load(&g[i])))
            .collect();
        let min = loads.iter().map(|&(_, l)| l).min()?;
        let max = loads.iter().map(|&(_, l)| l).max().unwrap_or(min);
        let s = &self.settings;
        if max - min > s.balance_abs_threshold && max as f64 > min as f64 * s.balance_rel_threshold
        {
            return lowest(g, eligible, &self.rotate, load);
        }
        if let Some(k) = hints.key {
            return self.ring.pick_with(g, eligible, k);
        }
        if hints.prompt_bytes > 0 {
            // the longest match; ties go to the less loaded
            let best = loads
                .iter()
                .map(|&(i, l)| (i, g[i].prefix_record.lock().matched(hints.prefix), l))
                .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)));
            if let Some((i, matched, _)) = best {
                if matched > 0 && matched as f64 >= s.cache_threshold * hints.prompt_bytes as f64 {
                    return Some(i);
                }
            }
        }
        // the most room: the smallest record, ties to the less loaded, then rotating
        lowest(g, eligible, &self.rotate, |b| {
            (b.prefix_record.lock().len() as u64) << 20 | load(b).min((1 << 20) - 1)
        })
    }
}

impl Policy for CacheAware {
    fn pick(
        &self,
        g: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        hints: &Hints<'_>,
    ) -> Option<usize> {
        let i = self.choose(g, eligible, hints)?;
        if !hints.prefix.is_empty() {
            g[i].prefix_record
                .lock()
                .record(hints.prefix, self.settings.max_blocks_per_backend);
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Source;
    use config::BackendConfig;

    fn backend(name: &str, weight: u32) -> Arc<Backend> {
        let def = BackendConfig {
            name: name.into(),
            url: "http://127.0.0.1:1".into(),
            model_type: config::ModelType::OpenAi,
            models: vec!["m".into()],
            weight,
            api_key: None,
        };
        let url = config::check::backend_url(&def.url).expect("url");
        Arc::new(Backend::new(
            def,
            Source::Config,
            url,
            "127.0.0.1:1".parse().expect("addr"),
        ))
    }

    fn counts(
        p: &dyn Policy,
        g: &[Arc<Backend>],
        n: usize,
        key: impl Fn(usize) -> Option<Vec<u8>>,
    ) -> Vec<usize> {
        let mut c = vec![0; g.len()];
        for i in 0..n {
            let k = key(i);
            let idx = p
                .pick(g, &|_| true, &Hints::key(k.as_deref()))
                .expect("a pick");
            c[idx] += 1;
        }
        c
    }

    #[test]
    fn round_robin_follows_weights() {
        let g = vec![backend("a", 1), backend("b", 3)];
        let p = build(config::Policy::RoundRobin, &g, &Default::default());
        let c = counts(p.as_ref(), &g, 400, |_| None);
        assert_eq!(c, vec![100, 300], "weighted round robin must split 1:3");
    }

    #[test]
    fn consistent_hash_is_sticky_and_spreads() {
        let g = vec![backend("a", 1), backend("b", 1), backend("c", 1)];
        let p = build(config::Policy::ConsistentHash, &g, &Default::default());
        for u in ["alice", "bob", "carol"] {
            let first = p.pick(&g, &|_| true, &Hints::key(Some(u.as_bytes())));
            for _ in 0..10 {
                assert_eq!(
                    p.pick(&g, &|_| true, &Hints::key(Some(u.as_bytes()))),
                    first,
                    "{u} must stick"
                );
            }
        }
        let c = counts(p.as_ref(), &g, 300, |i| {
            Some(format!("user-{i}").into_bytes())
        });
        assert!(
            c.iter().all(|&n| n > 30),
            "keys must spread over all members: {c:?}"
        );
    }

    #[test]
    fn ineligible_backends_are_skipped() {
        let g = vec![backend("a", 1), backend("b", 1)];
        for pol in [
            config::Policy::RoundRobin,
            config::Policy::ConsistentHash,
            config::Policy::LeastOutstanding,
            config::Policy::QueueAware,
            config::Policy::CacheAware,
        ] {
            let p = build(pol, &g, &Default::default());
            for i in 0..20 {
                let k = format!("k{i}");
                assert_eq!(
                    p.pick(&g, &|i| i == 1, &Hints::key(Some(k.as_bytes()))),
                    Some(1),
                    "{pol:?}"
                );
            }
            assert_eq!(p.pick(&g, &|_| false, &Hints::default()), None, "{pol:?}");
        }
    }

    #[test]
    fn least_outstanding_prefers_idle_backends() {
        let g = vec![backend("a", 1), backend("b", 1)];
        let _busy = g[0].start_request();
        let p = build(config::Policy::LeastOutstanding, &g, &Default::default());
        for _ in 0..10 {
            assert_eq!(p.pick(&g, &|_| true, &Hints::default()), Some(1));
        }
    }

    #[test]
    fn queue_aware_prefers_short_queues() {
        let g = vec![backend("a", 1), backend("b", 1)];
        g[0].set_queue_depth(Some(5));
        g[1].set_queue_depth(Some(1));
        let p = build(config::Policy::QueueAware, &g, &Default::default());
        assert_eq!(p.pick(&g, &|_| true, &Hints::default()), Some(1));
    }

    fn blocks(units: &[&str]) -> (Vec<(u64, usize)>, usize) {
        let mut h = 0u64;
        let mut bytes = 0;
        let mut out = Vec::new();
        for u in units {
            let mut s = std::collections::hash_map::DefaultHasher::new();
            (h, u).hash(&mut s);
            h = s.finish();
            bytes += u.len();
            out.push((h, bytes));
        }
        (out, bytes)
    }

    fn pick_prompt(p: &dyn Policy, g: &[Arc<Backend>], units: &[&str]) -> usize {
        let (prefix, prompt_bytes) = blocks(units);
        let hints = Hints {
            key: None,
            prefix: &prefix,
            prompt_bytes,
        };
        p.pick(g, &|_| true, &hints).expect("a pick")
    }

    #[test]
    fn cache_aware_sends_a_shared_prefix_where_it_went_and_new_ones_where_there_is_room() {
        let g = vec![backend("a", 1), backend("b", 1), backend("c", 1)];
        let p = build(config::Policy::CacheAware, &g, &Default::default());
        let sys = "a long system prompt ".repeat(50);
        let first = pick_prompt(p.as_ref(), &g, &[&sys, "turn 1"]);
        // the conversation goes on, and another one shares the system prompt: same backend
        assert_eq!(
            pick_prompt(p.as_ref(), &g, &[&sys, "turn 1", "answer", "turn 2"]),
            first
        );
        assert_eq!(
            pick_prompt(p.as_ref(), &g, &[&sys, "other question"]),
            first
        );
        // unrelated prompts go to the backends with the smallest records
        let x = pick_prompt(p.as_ref(), &g, &["unrelated", "prompt"]);
        let y = pick_prompt(p.as_ref(), &g, &["yet another", "one"]);
        assert!(x != first && y != first && x != y, "{first} {x} {y}");
        // y's conversation goes on (its record grows past x's)
        assert_eq!(
            pick_prompt(p.as_ref(), &g, &["yet another", "one", "two", "three"]),
            y
        );
        // a short shared part below the threshold does not attract: the smallest record (x) wins
        let tail = "long tail ".repeat(100);
        assert_eq!(
            pick_prompt(p.as_ref(), &g, &["yet another", &tail]),
            x,
            "11 of ~1,000 bytes is under 0.3"
        );
    }

    #[test]
    fn cache_aware_balances_when_the_load_is_skewed_past_both_thresholds() {
        let g = vec![backend("a", 1), backend("b", 1)];
        let settings = config::CacheAwareConfig {
            balance_abs_threshold: 2,
            ..Default::default()
        };
        let p = build(config::Policy::CacheAware, &g, &settings);
        let sys = "shared ".repeat(100);
        let home = pick_prompt(p.as_ref(), &g, &[&sys, "q0"]);
        let _busy: Vec<_> = (0..3).map(|_| g[home].start_request()).collect();
        // 3 in flight against 0: past 2 and past 1.5x, so the idle backend takes it
        assert_ne!(pick_prompt(p.as_ref(), &g, &[&sys, "q1"]), home);
        // and an affinity key also yields to the balance
        let k = Hints::key(Some(b"session-1"));
        assert_ne!(p.pick(&g, &|_| true, &k), Some(home));
    }

    #[test]
    fn cache_aware_affinity_keys_stick_and_only_a_dead_backends_keys_move() {
        let g = vec![backend("a", 1), backend("b", 1), backend("c", 1)];
        let p = build(config::Policy::CacheAware, &g, &Default::default());
        let keys: Vec<String> = (0..60).map(|i| format!("conversation-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| {
                p.pick(&g, &|_| true, &Hints::key(Some(k.as_bytes())))
                    .expect("pick")
            })
            .collect();
        assert!(
            (0..3).all(|b| before.contains(&b)),
            "keys spread: {before:?}"
        );
        // backend 1 dies: its keys move, every other key stays
        let after: Vec<usize> = keys
            .iter()
            .map(|k| {
                p.pick(&g, &|i| i != 1, &Hints::key(Some(k.as_bytes())))
                    .expect("pick")
            })
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b == 1 {
                assert_ne!(*a, 1);
            } else {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn a_prefix_record_forgets_the_least_recently_sent_beyond_its_bound() {
        let mut r = crate::backend::PrefixRecord::default();
        let (old, _) = blocks(&["old", "prompt"]);
        r.record(&old, 10);
        for i in 0..10 {
            let (p, _) = blocks(&["new", &i.to_string()]);
            r.record(&p, 10);
        }
        assert!(r.len() <= 10, "{}", r.len());
        assert_eq!(r.matched(&old), 0, "the oldest went first");
        let (recent, bytes) = blocks(&["new", "9"]);
        assert_eq!(r.matched(&recent), bytes);
    }
}
