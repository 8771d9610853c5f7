//! The engine thread: a FIFO queue of requests, at most N sequences in flight, one decode step
//! per sequence per round.
//!
//! # Scheduling
//! Requests wait in arrival order. Whenever fewer than `max_concurrent` sequences are active, the
//! oldest waiting request is admitted: its KV cache is allocated and its prompt is fed in chunks
//! of `prefill_chunk` tokens, one chunk per round (a chunk's logits are `[chunk, vocab]`, so
//! chunking bounds that memory too). Each round runs one step (the prefill, or one decode token) for every active sequence in
//! admission order, so a long generation never starves a later one. A sequence leaves the round
//! when it samples a stop token, reaches its length limit, its request is cancelled, or its stream
//! receiver is dropped; its KV cache is freed at once and the slot goes to the next waiting request.
//!
//! # Continuous batching (CPU, `max_concurrent > 1`)
//! Prefill runs per sequence into the sequence's own KV buffers (one chunk per round). When its
//! prompt is done the sequence samples its first token, its cache is copied once into a free row
//! of the [`DecodePool`], and from then on all decoding sequences advance together: one run per
//! round decodes one token for every row. Sequences join and leave the batch between any two
//! rounds; a finished or cancelled sequence frees its row at once.
//!
//! Without batching (`max_concurrent == 1`, or the CUDA device, whose KV pool would need device
//! copies) every sequence decodes in its own buffers, one run per sequence per round.
//!
//! # Prefix caching
//! With a budget (CPU only), prompts are prefilled in chunks that end at multiples of
//! `prefill_chunk` (whatever the request), and each completed chunk of a prompt is kept in the
//! [`PrefixCache`] as a block (its KV on full-attention layers, the sliding-window buffers at its
//! end). A request is admitted with the longest run of cached blocks its prompt starts with
//! loaded into its own buffers and prefills only the rest, in the same chunks as without the
//! cache, so its output is the same bit for bit; it reports the reused tokens as `cached_tokens`.
//!
//! # Groups (OpenAI's `n`)
//! A group is `n` requests with one prompt. With batching, its first request (the leader) is
//! admitted like any other and prefills the prompt once; when the prefill is done, the prefilled
//! cache is parked with the last position's logits, and the leader and then each sibling copy it
//! into their own pool row and sample their first token from those logits with their own sampler
//! and grammar. A sibling takes a slot as soon as one is free, before any request that waits
//! behind it, so a group never holds slots while it waits for more (no deadlock, and `n` may
//! exceed `max_concurrent`); the parked cache is freed when its last sibling has joined. If the
//! leader leaves before its prefill is done, the siblings go back to the front of the queue as a
//! group. Without batching the `n` requests are queued one by one and each prefills the prompt.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::model::{DecodePool, KvBlock, OnnxModel, SequenceCache};
use super::prefix_cache::{NodeId, PrefixCache, PrefixCacheStats};
use super::ModelError;
use crate::sampling::Sampler;
use crate::{GenerateRequest, GenerationUsage, StopReason, TokenEvent};

/// A request on its way to the engine.
pub(crate) struct Job {
    pub request: GenerateRequest,
    pub events: UnboundedSender<TokenEvent>,
}

pub(crate) enum Command {
    /// One request, or a group: `n` requests with the same prompt, prefilled once when the
    /// engine batches.
    Submit(Vec<Job>),
}

/// Counters the engine publishes after every round.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
    /// Prompt tokens run through the model (prefill), all requests together.
    pub prefill_tokens: AtomicU64,
    /// The prefix cache's counters as of the latest round (`None`: no cache).
    pub prefix_cache: std::sync::Mutex<Option<PrefixCacheStats>>,
}

/// A group's prefilled prompt, waiting for its siblings to take slots.
struct Parked {
    cache: Box<SequenceCache>,
    /// The last prompt position's logits, as the prefill left them (before any sampling).
    logits: Vec<f32>,
    /// Prompt tokens the leader loaded from the prefix cache (the siblings report them too).
    cached: usize,
    siblings: VecDeque<Job>,
}

/// Where a sequence's KV cache lives.
enum Cache {
    /// Its own buffers (prefill, and decode without batching).
    Own(Box<SequenceCache>),
    /// A row of the decode pool.
    Row(usize),
}

/// A sequence in flight.
struct Active {
    job: Job,
    cache: Cache,
    sampler: Sampler,
    generated: u32,
    /// Prompt tokens already fed.
    prefilled: usize,
    /// The token sampled last and not yet fed.
    pending: Option<u32>,
    /// Total tokens the sequence may reach (prompt plus completion).
    limit: usize,
    started: Instant,
    /// The other requests of its group, until its prefill is done and they are parked.
    siblings: Vec<Job>,
    /// Prompt tokens loaded from the prefix cache.
    cached: usize,
    /// The prefix-cache block its prefill has reached (`None`: the root), while it still adds
    /// its blocks to the cache.
    block_parent: Option<NodeId>,
    caching: bool,
}

impl Active {
    fn usage(&self) -> GenerationUsage {
        GenerationUsage {
            prompt_tokens: self.job.request.prompt.len() as u32,
            completion_tokens: self.generated,
            cached_tokens: self.cached as u32,
        }
    }

    fn abandoned(&self) -> bool {
        self.job.request.cancel.is_cancelled() || self.job.events.is_closed()
    }

    fn finish(&self, reason: StopReason) {
        tracing::debug!(
            request_id = %self.job.request.request_id,
            ?reason,
            generated = self.generated,
            ms = self.started.elapsed().as_millis() as u64,
            "finished"
        );
        // The receiver may be gone; then nobody is listening and that is fine.
        self.job
            .events
            .send(TokenEvent::Finish {
                reason,
                usage: self.usage(),
            })
            .ok();
    }

    fn fail(&self, error: &ModelError) {
        tracing::error!(request_id = %self.job.request.request_id, error = %error, "generation failed");
        self.job
            .events
            .send(TokenEvent::Error(error.to_string()))
            .ok();
    }

    /// Masks `logits` by the request's grammar, samples, streams the token and decides whether
    /// the sequence is done.
    fn accept(&mut self, logits: &mut [f32]) -> bool {
        // Log-probabilities are the model's: taken before penalties and masks change the logits.
        let raw = self.job.request.sampling.logprobs.map(|_| logits.to_vec());
        self.sampler.adjust(logits);
        let request = &mut self.job.request;
        let mut keep_stops_out = self.generated < request.sampling.min_tokens;
        if let Some(c) = request.constraint.as_mut() {
            if let Err(e) = c.mask(logits) {
                self.fail(&ModelError::Runtime(e.to_string()));
                return true;
            }
            // The grammar wins over `min_tokens` when a stop token is all it allows.
            keep_stops_out = keep_stops_out && c.allows_other_than(&request.stop_token_ids);
        }
        let request = &self.job.request;
        let token = if keep_stops_out {
            self.sampler
                .sample_excluding(logits, &request.stop_token_ids)
        } else {
            self.sampler.sample(logits)
        };
        self.sampler.observe(token);
        if let (Some(raw), Some(top)) = (raw, self.job.request.sampling.logprobs) {
            let lp = crate::sampling::logprobs(&raw, token, top as usize);
            self.job.events.send(TokenEvent::Logprob(lp)).ok();
        }
        if let Some(c) = self.job.request.constraint.as_mut() {
            if let Err(e) = c.commit(token) {
                self.fail(&ModelError::Runtime(e.to_string()));
                return true;
            }
        }
        self.generated += 1;
        self.pending = Some(token);
        if self.job.events.send(TokenEvent::Token(token)).is_err() {
            tracing::debug!(request_id = %self.job.request.request_id, "stream dropped");
            return true;
        }
        let total = self.job.request.prompt.len() + self.generated as usize;
        let reason = if self.job.request.stop_token_ids.contains(&token) {
            Some(StopReason::StopToken(token))
        } else if self.generated >= self.job.request.max_new_tokens || total >= self.limit {
            Some(StopReason::Length)
        } else {
            None
        };
        match reason {
            Some(r) => {
                self.finish(r);
                true
            }
            None => false,
        }
    }
}

/// Runs the engine until every sender is gone and all work is done.
pub(crate) fn run(
    mut model: OnnxModel,
    commands: Receiver<Command>,
    max_concurrent: usize,
    prefill_chunk: usize,
    prefix_cache_bytes: usize,
    alive: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let max_concurrent = max_concurrent.max(1);
    let prefill_chunk = prefill_chunk.max(1);
    let mut prefix_cache = if prefix_cache_bytes == 0 {
        None
    } else if model.device != crate::Device::Cpu {
        tracing::warn!(device = %model.device, "prefix caching needs the KV cache in host memory; off on this device");
        None
    } else {
        Some(PrefixCache::<KvBlock>::new(
            prefill_chunk,
            prefix_cache_bytes,
        ))
    };
    // published at once, so that /metrics shows the cache (empty) before the first request
    if let (Some(pc), Ok(mut stats)) = (&prefix_cache, counters.prefix_cache.lock()) {
        *stats = Some(pc.stats());
    }
    let mut pool = if max_concurrent > 1 && model.supports_batching() {
        match model.new_pool(max_concurrent, model.spec.context_length) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "no decode batch; sequences decode one by one");
                None
            }
        }
    } else {
        None
    };
    let batched = pool.is_some();
    let mut waiting: VecDeque<Vec<Job>> = VecDeque::new();
    let mut parked: VecDeque<Parked> = VecDeque::new();
    let mut active: Vec<Active> = Vec::with_capacity(max_concurrent);
    let mut senders_gone = false;
    let mut logits = Vec::new();
    tracing::info!(
        max_concurrent,
        batched = pool.is_some(),
        device = %model.device,
        prefix_cache_bytes = prefix_cache.as_ref().map_or(0, |_| prefix_cache_bytes),
        block = prefill_chunk,
        "engine started"
    );

    loop {
        // Take new requests; block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() && parked.is_empty() {
            if senders_gone {
                break;
            }
            match commands.recv() {
                Ok(command) => enqueue(&mut waiting, command, batched),
                Err(_) => break,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(command) => enqueue(&mut waiting, command, batched),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    senders_gone = true;
                    break;
                }
            }
        }

        // Siblings of prefilled groups first (they arrived before anything still waiting), then
        // waiting requests, in arrival order.
        if let Some(p) = pool.as_mut() {
            while active.len() < max_concurrent {
                let Some(group) = parked.front_mut() else {
                    break;
                };
                if let Some(job) = group.siblings.pop_front() {
                    if let Some(a) = join(&model, p, job, group) {
                        active.push(a);
                    }
                }
                if group.siblings.is_empty() {
                    // The shared prefill is freed here.
                    parked.pop_front();
                }
            }
        }
        while active.len() < max_concurrent {
            let Some(mut group) = waiting.pop_front() else {
                break;
            };
            if group.is_empty() {
                continue;
            }
            let job = group.remove(0);
            if let Some(a) = admit(
                &model,
                job,
                group,
                batched,
                &mut waiting,
                prefix_cache.as_mut(),
            ) {
                active.push(a);
            }
        }
        counters.active.store(active.len(), Ordering::SeqCst);
        let queued = waiting.iter().map(Vec::len).sum::<usize>()
            + parked.iter().map(|g| g.siblings.len()).sum::<usize>();
        counters.waiting.store(queued, Ordering::SeqCst);

        // Sequences in their own buffers: a prefill chunk, or (unbatched) a decode token.
        active.retain_mut(|a| {
            let done = a.abandoned()
                || own_step(
                    &mut model,
                    pool.as_mut(),
                    a,
                    prefill_chunk,
                    &counters,
                    &mut parked,
                    prefix_cache.as_mut(),
                );
            if done {
                if a.abandoned() {
                    a.finish(StopReason::Cancelled);
                }
                if let (Cache::Row(row), Some(p)) = (&a.cache, pool.as_mut()) {
                    p.release(*row);
                }
                if !a.siblings.is_empty() {
                    // The leader left before its prefill was done: the next sibling leads.
                    waiting.push_front(std::mem::take(&mut a.siblings));
                }
            }
            !done
        });

        // The decode batch: one run for every sequence in the pool.
        if let Some(p) = pool.as_mut() {
            let mut tokens = vec![0u32; p.slots()];
            let mut any = false;
            for a in &active {
                if let (Cache::Row(row), Some(t)) = (&a.cache, a.pending) {
                    tokens[*row] = t;
                    any = true;
                }
            }
            if any {
                let result = model.decode_pool(p, &tokens);
                let vocab = model.spec.vocab_size;
                active.retain_mut(|a| {
                    let Cache::Row(row) = a.cache else {
                        return true;
                    };
                    let done = match &result {
                        Err(e) => {
                            a.fail(e);
                            true
                        }
                        Ok(()) => match p.row_logits(row, vocab, &mut logits) {
                            Ok(()) => a.accept(&mut logits),
                            Err(e) => {
                                a.fail(&e);
                                true
                            }
                        },
                    };
                    if done {
                        p.release(row);
                    }
                    !done
                });
            }
        }
        counters.active.store(active.len(), Ordering::SeqCst);
        if let (Some(pc), Ok(mut stats)) = (&prefix_cache, counters.prefix_cache.lock()) {
            *stats = Some(pc.stats());
        }
    }
    alive.store(false, Ordering::SeqCst);
    tracing::info!("engine stopped");
}

/// Queues a command's requests: a group as one entry when the engine batches (prefilled once),
/// else one entry per request.
fn enqueue(waiting: &mut VecDeque<Vec<Job>>, command: Command, batched: bool) {
    let Command::Submit(jobs) = command;
    if batched {
        waiting.push_back(jobs);
    } else {
        waiting.extend(jobs.into_iter().map(|j| vec![j]));
    }
}

/// Allocates a sequence for a waiting request (the leader of `siblings`, if any), or finishes
/// the request at once; then its siblings go back to the front of the queue as a group.
fn admit(
    model: &OnnxModel,
    job: Job,
    siblings: Vec<Job>,
    batched: bool,
    waiting: &mut VecDeque<Vec<Job>>,
    prefix_cache: Option<&mut PrefixCache<KvBlock>>,
) -> Option<Active> {
    let admitted = admit_one(model, job, batched, prefix_cache);
    match admitted {
        Some(mut a) => {
            a.siblings = siblings;
            Some(a)
        }
        None => {
            if !siblings.is_empty() {
                waiting.push_front(siblings);
            }
            None
        }
    }
}

/// A parked group's next sibling joins the pool: the shared prefill is copied into a free row
/// and the first token is sampled from the shared logits. `None` when it finished at once.
fn join(model: &OnnxModel, pool: &mut DecodePool, job: Job, group: &Parked) -> Option<Active> {
    let usage = GenerationUsage {
        prompt_tokens: job.request.prompt.len() as u32,
        ..GenerationUsage::default()
    };
    if job.request.cancel.is_cancelled() || job.events.is_closed() {
        tracing::debug!(request_id = %job.request.request_id, "cancelled while waiting");
        job.events
            .send(TokenEvent::Finish {
                reason: StopReason::Cancelled,
                usage,
            })
            .ok();
        return None;
    }
    if job.request.max_new_tokens == 0 {
        job.events
            .send(TokenEvent::Finish {
                reason: StopReason::Length,
                usage,
            })
            .ok();
        return None;
    }
    let prompt_len = job.request.prompt.len();
    let limit = prompt_len
        .saturating_add(job.request.max_new_tokens as usize)
        .min(model.spec.context_length);
    let sampler = Sampler::for_prompt(job.request.sampling.clone(), &job.request.prompt);
    let mut a = Active {
        job,
        cache: Cache::Row(usize::MAX),
        sampler,
        generated: 0,
        prefilled: prompt_len,
        pending: None,
        limit,
        started: Instant::now(),
        siblings: Vec::new(),
        cached: group.cached,
        block_parent: None,
        caching: false,
    };
    let Some(row) = pool.free_row() else {
        a.fail(&ModelError::Runtime(
            "no free row in the decode pool".into(),
        ));
        return None;
    };
    if let Err(e) = model.load_row(pool, row, &group.cache) {
        a.fail(&e);
        return None;
    }
    a.cache = Cache::Row(row);
    tracing::debug!(request_id = %a.job.request.request_id, row, "joined its group's prefill");
    let mut logits = group.logits.clone();
    if a.accept(&mut logits) {
        pool.release(row);
        return None;
    }
    Some(a)
}

/// Allocates a sequence for a waiting request, with the longest run of cached blocks its prompt
/// starts with already loaded, or finishes the request at once.
fn admit_one(
    model: &OnnxModel,
    job: Job,
    batched: bool,
    prefix_cache: Option<&mut PrefixCache<KvBlock>>,
) -> Option<Active> {
    let usage = GenerationUsage {
        prompt_tokens: job.request.prompt.len() as u32,
        ..GenerationUsage::default()
    };
    let finish_now = |reason| {
        job.events.send(TokenEvent::Finish { reason, usage }).ok();
    };
    if job.request.cancel.is_cancelled() || job.events.is_closed() {
        tracing::debug!(request_id = %job.request.request_id, "cancelled while waiting");
        finish_now(StopReason::Cancelled);
        return None;
    }
    if job.request.max_new_tokens == 0 {
        finish_now(StopReason::Length);
        return None;
    }
    let prompt_len = job.request.prompt.len();
    let limit = prompt_len
        .saturating_add(job.request.max_new_tokens as usize)
        .min(model.spec.context_length);
    // With batching the own buffers only hold the prompt; decoding happens in the pool.
    let capacity = if batched {
        model.capacity_for(prompt_len, 0)
    } else {
        model.capacity_for(prompt_len, job.request.max_new_tokens as usize)
    };
    match model.new_sequence(capacity) {
        Ok(mut cache) => {
            let caching = prefix_cache.is_some();
            let (cached, block_parent) = match prefix_cache {
                Some(pc) => reuse_prefix(model, pc, &mut cache, &job.request),
                None => (0, None),
            };
            tracing::debug!(request_id = %job.request.request_id, capacity, cached, "admitted");
            let sampler = Sampler::for_prompt(job.request.sampling.clone(), &job.request.prompt);
            Some(Active {
                job,
                cache: Cache::Own(Box::new(cache)),
                sampler,
                generated: 0,
                prefilled: cached,
                pending: None,
                limit,
                started: Instant::now(),
                siblings: Vec::new(),
                cached,
                block_parent,
                caching,
            })
        }
        Err(e) => {
            tracing::error!(request_id = %job.request.request_id, error = %e, "could not start a sequence");
            job.events.send(TokenEvent::Error(e.to_string())).ok();
            None
        }
    }
}

/// Loads the longest run of cached blocks the request's prompt starts with into `cache`: the
/// prompt tokens it holds then, and the last block's node. (0, None) when nothing is cached or
/// the blocks do not load (then the prompt is computed from the start).
fn reuse_prefix(
    model: &OnnxModel,
    pc: &mut PrefixCache<KvBlock>,
    cache: &mut SequenceCache,
    request: &GenerateRequest,
) -> (usize, Option<NodeId>) {
    let path = pc.lookup(&request.prompt);
    let blocks: Vec<&KvBlock> = path.iter().filter_map(|&id| pc.get(id)).collect();
    if blocks.is_empty() || blocks.len() != path.len() {
        return (0, None);
    }
    match model.import_blocks(cache, &blocks) {
        Ok(()) => (cache.len(), path.last().copied()),
        Err(e) => {
            tracing::warn!(request_id = %request.request_id, error = %e, "cached prefix not loaded; computing the prompt");
            (0, None)
        }
    }
}

/// After a prefill chunk that ended on a block boundary: adds the block to the prefix cache (or
/// finds it there) and moves the sequence's place in the tree to it.
fn cache_block(model: &OnnxModel, pc: &mut PrefixCache<KvBlock>, a: &mut Active, end: usize) {
    let block = pc.block();
    let Cache::Own(cache) = &a.cache else {
        return;
    };
    let tokens = &a.job.request.prompt[end - block..end];
    let id = match pc.child(a.block_parent, tokens) {
        Some(id) => Some(id),
        None => match model.export_block(cache, end - block) {
            Ok(kv) => pc.insert(a.block_parent, tokens, kv),
            Err(e) => {
                tracing::warn!(request_id = %a.job.request.request_id, error = %e, "block not cached");
                None
            }
        },
    };
    match id {
        Some(id) => a.block_parent = Some(id),
        // The parent was evicted meanwhile (or the block does not fit): nothing more to add.
        None => a.caching = false,
    }
}

/// Runs one step of a sequence that is in its own buffers (one prefill chunk, or one decode
/// token without batching); true when it is finished. A sequence whose prefill completes moves
/// into the pool when there is one.
fn own_step(
    model: &mut OnnxModel,
    pool: Option<&mut DecodePool>,
    a: &mut Active,
    prefill_chunk: usize,
    counters: &Counters,
    parked: &mut VecDeque<Parked>,
    prefix_cache: Option<&mut PrefixCache<KvBlock>>,
) -> bool {
    let Cache::Own(cache) = &mut a.cache else {
        return false;
    };
    let prompt = &a.job.request.prompt;
    let result = match a.pending {
        None => {
            // Chunks end at multiples of the chunk size, wherever the prefill started (see the
            // module documentation on prefix caching).
            let end = prompt
                .len()
                .min((a.prefilled / prefill_chunk + 1) * prefill_chunk);
            let r = model.forward(cache, &prompt[a.prefilled..end]);
            counters
                .prefill_tokens
                .fetch_add((end - a.prefilled) as u64, Ordering::Relaxed);
            a.prefilled = end;
            r
        }
        Some(token) => model.forward(cache, &[token]),
    };
    if let Err(e) = result {
        a.fail(&e);
        return true;
    }
    if let Some(pc) = prefix_cache {
        let end = a.prefilled;
        if a.pending.is_none() && a.caching && end % pc.block() == 0 {
            cache_block(model, pc, a, end);
        }
    }
    if a.prefilled < a.job.request.prompt.len() {
        // More prompt chunks to go; other sequences step in between.
        return false;
    }
    let first_token = a.pending.is_none();
    let mut pool = pool;
    if first_token && !a.siblings.is_empty() {
        if let Some(p) = pool.as_deref_mut() {
            return lead_group(model, p, a, parked);
        }
    }
    let Cache::Own(cache) = &mut a.cache else {
        return false;
    };
    let mut logits = std::mem::take(cache.logits_mut());
    let done = a.accept(&mut logits);
    if let Cache::Own(cache) = &mut a.cache {
        *cache.logits_mut() = logits;
    }
    if done || !first_token {
        return done;
    }
    if let Some(pool) = pool {
        let Some(row) = pool.free_row() else {
            a.fail(&ModelError::Runtime(
                "no free row in the decode pool".into(),
            ));
            return true;
        };
        let Cache::Own(cache) = &a.cache else {
            return false;
        };
        if let Err(e) = model.load_row(pool, row, cache) {
            a.fail(&e);
            return true;
        }
        // The own buffers are freed here.
        a.cache = Cache::Row(row);
    }
    false
}

/// A group's leader whose prefill is done: it takes a pool row from its own prefilled cache,
/// then parks that cache and the last position's logits for its siblings (see [`join`]), and
/// samples its first token; true when it is finished.
fn lead_group(
    model: &mut OnnxModel,
    pool: &mut DecodePool,
    a: &mut Active,
    parked: &mut VecDeque<Parked>,
) -> bool {
    let Some(row) = pool.free_row() else {
        a.fail(&ModelError::Runtime(
            "no free row in the decode pool".into(),
        ));
        return true;
    };
    if let Cache::Own(cache) = &a.cache {
        if let Err(e) = model.load_row(pool, row, cache) {
            a.fail(&e);
            return true;
        }
    }
    let Cache::Own(cache) = std::mem::replace(&mut a.cache, Cache::Row(row)) else {
        return false;
    };
    let logits = cache.logits().to_vec();
    let mut first = logits.clone();
    parked.push_back(Parked {
        cache,
        logits,
        cached: a.cached,
        siblings: std::mem::take(&mut a.siblings).into(),
    });
    a.accept(&mut first)
}
