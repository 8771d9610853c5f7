//! Automatic prefix caching: the KV of prompt prefixes that were prefilled recently, kept under a
//! memory budget and reused by later prompts that start with the same tokens.
//!
//! The cache is a tree of blocks, as vLLM's automatic prefix caching hashes blocks of a fixed
//! token count chained to their parent and SGLang's RadixAttention keeps a radix tree: a node is
//! one block of `block` prompt tokens at a block-aligned position, keyed by its parent and its
//! tokens, and holds what a later prompt needs to start after it (for the ONNX engine a
//! [`super::model::KvBlock`]: the block's keys and values on full-attention layers and the
//! sliding-window layers' buffers at the block's end). Prompts that share a system prompt share
//! its nodes; a conversation's next turn extends the path of the previous one.
//!
//! Reuse is whole blocks only, and the engine prefills in chunks that end at multiples of the block
//! size whether or not a request hits: a request that reuses `k` blocks computes the rest of its
//! prompt in exactly the runs a request that reuses none does, so its keys, values and logits are
//! bit for bit the same (greedy output with and without the cache is identical, token for token).
//!
//! Eviction is least recently used, among leaves (a node whose children are gone), so a kept node
//! always has its whole path. Lookups and inserts touch every node of their path.

use std::collections::HashMap;

pub use crate::backend::PrefixCacheStats;

/// What a node keeps: anything with a size.
pub trait Footprint {
    /// Bytes it holds (counted against the budget).
    fn bytes(&self) -> usize;
}

/// A node's id: never reused, so a stale id simply finds nothing.
pub type NodeId = u64;

struct Node<D> {
    parent: Option<NodeId>,
    tokens: Vec<u32>,
    children: usize,
    last_used: u64,
    data: D,
}

/// The block tree. `D` is what a block keeps.
pub struct PrefixCache<D> {
    block: usize,
    budget: usize,
    bytes: usize,
    clock: u64,
    next_id: NodeId,
    nodes: HashMap<NodeId, Node<D>>,
    /// (parent, block tokens) -> node.
    index: HashMap<(Option<NodeId>, Vec<u32>), NodeId>,
    stats: PrefixCacheStats,
}

impl<D: Footprint> PrefixCache<D> {
    /// An empty cache of blocks of `block` tokens (at least 1) holding at most `budget_bytes`.
    pub fn new(block: usize, budget_bytes: usize) -> Self {
        PrefixCache {
            block: block.max(1),
            budget: budget_bytes,
            bytes: 0,
            clock: 0,
            next_id: 1,
            nodes: HashMap::new(),
            index: HashMap::new(),
            stats: PrefixCacheStats {
                budget_bytes: budget_bytes as u64,
                ..PrefixCacheStats::default()
            },
        }
    }

    /// Tokens per block.
    pub fn block(&self) -> usize {
        self.block
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The longest run of cached blocks that `prompt` starts with, leaving at least one prompt
    /// token to compute (the engine needs the last position's logits): the path's node ids, root
    /// first. Counts the lookup in the statistics and marks the path as used.
    pub fn lookup(&mut self, prompt: &[u32]) -> Vec<NodeId> {
        let now = self.tick();
        let usable = prompt.len().saturating_sub(1) / self.block;
        let mut path = Vec::new();
        let mut parent = None;
        for k in 0..usable {
            let key = (
                parent,
                prompt[k * self.block..(k + 1) * self.block].to_vec(),
            );
            let Some(&id) = self.index.get(&key) else {
                break;
            };
            if let Some(node) = self.nodes.get_mut(&id) {
                node.last_used = now;
            }
            path.push(id);
            parent = Some(id);
        }
        self.stats.queries += 1;
        self.stats.query_tokens += prompt.len() as u64;
        if !path.is_empty() {
            self.stats.hits += 1;
            self.stats.cached_tokens += (path.len() * self.block) as u64;
        }
        path
    }

    /// The data of a node, if it is still cached.
    pub fn get(&self, id: NodeId) -> Option<&D> {
        self.nodes.get(&id).map(|n| &n.data)
    }

    /// The child of `parent` (`None`: the root) for the block `tokens`, if cached; marks it used.
    pub fn child(&mut self, parent: Option<NodeId>, tokens: &[u32]) -> Option<NodeId> {
        let id = *self.index.get(&(parent, tokens.to_vec()))?;
        let now = self.tick();
        if let Some(n) = self.nodes.get_mut(&id) {
            n.last_used = now;
        }
        Some(id)
    }

    /// Adds the block `tokens` under `parent` (`None`: the root) and returns its id, then evicts
    /// least recently used leaves until the budget holds (the new block included: a block larger
    /// than the whole budget is not kept). `None` when the parent is no longer cached or the
    /// block is not `block` tokens. An existing block is kept and its id returned.
    pub fn insert(&mut self, parent: Option<NodeId>, tokens: &[u32], data: D) -> Option<NodeId> {
        if tokens.len() != self.block || data.bytes() > self.budget {
            return None;
        }
        if let Some(p) = parent {
            if !self.nodes.contains_key(&p) {
                return None;
            }
        }
        if let Some(id) = self.child(parent, tokens) {
            return Some(id);
        }
        let id = self.next_id;
        self.next_id += 1;
        let now = self.tick();
        self.bytes += data.bytes();
        self.nodes.insert(
            id,
            Node {
                parent,
                tokens: tokens.to_vec(),
                children: 0,
                last_used: now,
                data,
            },
        );
        self.index.insert((parent, tokens.to_vec()), id);
        if let Some(p) = parent.and_then(|p| self.nodes.get_mut(&p)) {
            p.children += 1;
        }
        self.evict();
        self.nodes.contains_key(&id).then_some(id)
    }

    fn evict(&mut self) {
        while self.bytes > self.budget {
            let victim = self
                .nodes
                .iter()
                .filter(|(_, n)| n.children == 0)
                .min_by_key(|(_, n)| n.last_used)
                .map(|(&id, _)| id);
            let Some(id) = victim else {
                break;
            };
            self.remove(id);
            self.stats.evictions += 1;
        }
    }

    fn remove(&mut self, id: NodeId) {
        let Some(node) = self.nodes.remove(&id) else {
            return;
        };
        self.bytes -= node.data.bytes();
        self.index.remove(&(node.parent, node.tokens));
        if let Some(p) = node.parent.and_then(|p| self.nodes.get_mut(&p)) {
            p.children -= 1;
        }
    }

    /// The counters, with the current size.
    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            blocks: self.nodes.len() as u64,
            bytes: self.bytes as u64,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Blob(usize);
    impl Footprint for Blob {
        fn bytes(&self) -> usize {
            self.0
        }
    }

    fn fill(c: &mut PrefixCache<Blob>, prompt: &[u32], size: usize) -> Vec<NodeId> {
        let mut parent = None;
        let mut ids = Vec::new();
        for k in 0..prompt.len() / c.block() {
            let b = &prompt[k * c.block()..(k + 1) * c.block()];
            match c.insert(parent, b, Blob(size)) {
                Some(id) => {
                    ids.push(id);
                    parent = Some(id);
                }
                None => break,
            }
        }
        ids
    }

    #[test]
    fn a_prompt_reuses_its_longest_cached_run_of_whole_blocks_and_leaves_a_token_to_compute() {
        let mut c = PrefixCache::new(4, 1 << 20);
        let a: Vec<u32> = (0..12).collect();
        let ids = fill(&mut c, &a, 10);
        assert_eq!(ids.len(), 3);
        // same 12 tokens: only 2 blocks usable (one token must be computed)
        assert_eq!(c.lookup(&a), ids[..2]);
        // 13 tokens starting with them: all 3
        let mut b = a.clone();
        b.push(99);
        assert_eq!(c.lookup(&b), ids);
        // diverging inside block 2: blocks 0 and 1
        let mut d = a.clone();
        d[9] = 77;
        d.push(1);
        assert_eq!(c.lookup(&d), ids[..2]);
        // diverging at token 0: none
        assert!(c.lookup(&[5, 1, 2, 3, 4, 5]).is_empty());
        let s = c.stats();
        assert_eq!((s.queries, s.hits, s.cached_tokens), (4, 3, 8 + 12 + 8));
        assert_eq!((s.blocks, s.bytes), (3, 30));
    }

    #[test]
    fn prompts_that_share_a_system_prompt_share_its_blocks() {
        let mut c = PrefixCache::new(2, 1 << 20);
        fill(&mut c, &[1, 2, 3, 4, 5, 6], 1);
        fill(&mut c, &[1, 2, 3, 4, 7, 8], 1);
        assert_eq!(c.stats().blocks, 4, "the two shared blocks are stored once");
        assert_eq!(c.lookup(&[1, 2, 3, 4, 7, 8, 9]).len(), 3);
    }

    #[test]
    fn eviction_takes_least_recently_used_leaves_and_keeps_paths_whole() {
        let mut c = PrefixCache::new(1, 5);
        let a = fill(&mut c, &[1, 2, 3], 1); // 3 bytes
        let b = fill(&mut c, &[9, 8], 1); // 5 bytes
        assert_eq!(c.stats().bytes, 5);
        // use a's path so b is the least recently used
        assert_eq!(c.lookup(&[1, 2, 3, 0]).len(), 3);
        fill(&mut c, &[1, 2, 3, 4], 1); // a fourth block under a: b's leaf goes first
        assert!(c.get(b[1]).is_none() && c.get(b[0]).is_some());
        fill(&mut c, &[7], 1);
        assert!(c.get(b[0]).is_none(), "then b's root, a leaf by now");
        assert!(a.iter().all(|&id| c.get(id).is_some()));
        assert_eq!(c.stats().evictions, 2);
        // every kept node's parent is kept
        for &id in &a {
            assert!(c.get(id).is_some());
        }
    }

    #[test]
    fn an_insert_under_an_evicted_parent_is_refused_and_oversized_blocks_are_not_kept() {
        let mut c = PrefixCache::new(1, 2);
        let a = fill(&mut c, &[1, 2], 1);
        fill(&mut c, &[5, 6], 1); // evicts a's path (leaf first, then its root)
        assert!(c.get(a[0]).is_none());
        assert_eq!(c.insert(Some(a[1]), &[3], Blob(1)), None);
        assert_eq!(
            c.insert(None, &[4], Blob(3)),
            None,
            "bigger than the budget"
        );
        assert_eq!(c.stats().blocks, 2, "and nothing was evicted for it");
        assert_eq!(c.insert(None, &[4, 4], Blob(1)), None, "not a whole block");
    }
}
