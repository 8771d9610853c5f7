//! Routing policies: given a group of backends and which of them may be used, pick one.
//!
//! `round_robin` and `consistent_hash` use pingora-load-balancing's selection algorithms
//! (weighted round robin and ketama). `least_outstanding` and `queue_aware` need live counters
//! that pingora's selection does not see, so they are implemented here.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{BackendIter, BackendSelection, RoundRobin};

use crate::backend::Backend;

/// A routing policy. `eligible(i)` says whether `group[i]` may take this request
/// (healthy and not yet tried). Returns the index of the chosen backend.
pub trait Policy: Send + Sync {
    fn pick(
        &self,
        group: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        key: Option<&[u8]>,
    ) -> Option<usize>;
}

/// Build the policy for a group.
pub fn build(policy: config::Policy, group: &[Arc<Backend>]) -> Box<dyn Policy> {
    match policy {
        config::Policy::RoundRobin => Box::new(PingoraSelection::<RoundRobin>::new(group)),
        config::Policy::ConsistentHash => Box::new(Hashed {
            ring: PingoraSelection::<KetamaHashing>::new(group),
            fallback: LeastOutstanding::default(),
        }),
        config::Policy::LeastOutstanding => Box::new(LeastOutstanding::default()),
        config::Policy::QueueAware => Box::new(QueueAware::default()),
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
        _key: Option<&[u8]>,
    ) -> Option<usize> {
        self.pick_with(eligible, b"")
    }
}

/// `consistent_hash`: ketama on the key; without a key, least outstanding.
struct Hashed {
    ring: PingoraSelection<KetamaHashing>,
    fallback: LeastOutstanding,
}

impl Policy for Hashed {
    fn pick(
        &self,
        g: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        key: Option<&[u8]>,
    ) -> Option<usize> {
        match key {
            Some(k) => self.ring.pick_with(eligible, k),
            None => self.fallback.pick(g, eligible, None),
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
        _key: Option<&[u8]>,
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
        _key: Option<&[u8]>,
    ) -> Option<usize> {
        lowest(g, eligible, &self.rotate, |b| {
            b.queue_depth().unwrap_or(0).saturating_add(b.inflight())
        })
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
            let idx = p.pick(g, &|_| true, k.as_deref()).expect("a pick");
            c[idx] += 1;
        }
        c
    }

    #[test]
    fn round_robin_follows_weights() {
        let g = vec![backend("a", 1), backend("b", 3)];
        let p = build(config::Policy::RoundRobin, &g);
        let c = counts(p.as_ref(), &g, 400, |_| None);
        assert_eq!(c, vec![100, 300], "weighted round robin must split 1:3");
    }

    #[test]
    fn consistent_hash_is_sticky_and_spreads() {
        let g = vec![backend("a", 1), backend("b", 1), backend("c", 1)];
        let p = build(config::Policy::ConsistentHash, &g);
        for u in ["alice", "bob", "carol"] {
            let first = p.pick(&g, &|_| true, Some(u.as_bytes()));
            for _ in 0..10 {
                assert_eq!(
                    p.pick(&g, &|_| true, Some(u.as_bytes())),
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
        ] {
            let p = build(pol, &g);
            for i in 0..20 {
                let k = format!("k{i}");
                assert_eq!(
                    p.pick(&g, &|i| i == 1, Some(k.as_bytes())),
                    Some(1),
                    "{pol:?}"
                );
            }
            assert_eq!(p.pick(&g, &|_| false, None), None, "{pol:?}");
        }
    }

    #[test]
    fn least_outstanding_prefers_idle_backends() {
        let g = vec![backend("a", 1), backend("b", 1)];
        let _busy = g[0].start_request();
        let p = build(config::Policy::LeastOutstanding, &g);
        for _ in 0..10 {
            assert_eq!(p.pick(&g, &|_| true, None), Some(1));
        }
    }

    #[test]
    fn queue_aware_prefers_short_queues() {
        let g = vec![backend("a", 1), backend("b", 1)];
        g[0].set_queue_depth(Some(5));
        g[1].set_queue_depth(Some(1));
        let p = build(config::Policy::QueueAware, &g);
        assert_eq!(p.pick(&g, &|_| true, None), Some(1));
    }
}
