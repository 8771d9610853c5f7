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
//! # Room for continuous batching
//! A round already has the shape of a continuous-batching step: the set of active sequences
//! changes between rounds, and each sequence carries its own position (`SequenceCache::len`).
//! Batching the decode steps of a round into one `[k, 1]` run needs a KV pool of `[slots, heads,
//! capacity, head_size]` per layer whose first k rows are the active sequences (GroupQueryAttention
//! takes per-row `seqlens_k` from a right-padded attention mask), so that a round becomes one run
//! instead of k. The scheduler and the sampler would not change; only `OnnxModel::forward` would
//! take a slice of sequences. It is not built yet because ONNX Runtime runs are serialised per
//! session and the per-sequence step is what the tests prove token for token.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::model::{OnnxModel, SequenceCache};
use crate::sampling::Sampler;
use crate::{GenerateRequest, GenerationUsage, StopReason, TokenEvent};

/// A request on its way to the engine.
pub(crate) struct Job {
    pub request: GenerateRequest,
    pub events: UnboundedSender<TokenEvent>,
}

pub(crate) enum Command {
    Submit(Job),
}

/// Counters the engine publishes after every round.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
}

/// A sequence in flight.
struct Active {
    job: Job,
    cache: SequenceCache,
    sampler: Sampler,
    generated: u32,
    /// Prompt tokens already fed.
    prefilled: usize,
    /// The token sampled last and not yet fed.
    pending: Option<u32>,
    started: Instant,
}

impl Active {
    fn usage(&self) -> GenerationUsage {
        GenerationUsage {
            prompt_tokens: self.job.request.prompt.len() as u32,
            completion_tokens: self.generated,
        }
    }

    fn abandoned(&self) -> bool {
        self.job.request.cancel.is_cancelled() || self.job.events.is_closed()
    }
}

/// Runs the engine until every sender is gone and all work is done.
pub(crate) fn run(
    mut model: OnnxModel,
    commands: Receiver<Command>,
    max_concurrent: usize,
    prefill_chunk: usize,
    alive: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let max_concurrent = max_concurrent.max(1);
    let prefill_chunk = prefill_chunk.max(1);
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Active> = Vec::with_capacity(max_concurrent);
    let mut senders_gone = false;
    tracing::info!(max_concurrent, device = %model.device, "engine started");

    loop {
        // Take new requests; block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            if senders_gone {
                break;
            }
            match commands.recv() {
                Ok(Command::Submit(job)) => waiting.push_back(job),
                Err(_) => break,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(Command::Submit(job)) => waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    senders_gone = true;
                    break;
                }
            }
        }

        // Admit in arrival order.
        while active.len() < max_concurrent {
            let Some(job) = waiting.pop_front() else {
                break;
            };
            if let Some(a) = admit(&model, job) {
                active.push(a);
            }
        }

        counters.active.store(active.len(), Ordering::SeqCst);
        counters.waiting.store(waiting.len(), Ordering::SeqCst);

        // One step for every active sequence, in admission order.
        active.retain_mut(|a| !step(&mut model, a, prefill_chunk));
        counters.active.store(active.len(), Ordering::SeqCst);
    }
    alive.store(false, Ordering::SeqCst);
    tracing::info!("engine stopped");
}

/// Allocates a sequence for a waiting request, or finishes the request at once.
fn admit(model: &OnnxModel, job: Job) -> Option<Active> {
    let usage = GenerationUsage {
        prompt_tokens: job.request.prompt.len() as u32,
        completion_tokens: 0,
    };
    if job.request.cancel.is_cancelled() || job.events.is_closed() {
        tracing::debug!(request_id = %job.request.request_id, "cancelled while waiting");
        // The receiver may be gone; then nobody is listening and that is fine.
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
    let capacity = model.capacity_for(
        job.request.prompt.len(),
        job.request.max_new_tokens as usize,
    );
    match model.new_sequence(capacity) {
        Ok(cache) => {
            tracing::debug!(request_id = %job.request.request_id, capacity, "admitted");
            let sampler = Sampler::new(job.request.sampling.clone());
            Some(Active {
                job,
                cache,
                sampler,
                generated: 0,
                prefilled: 0,
                pending: None,
                started: Instant::now(),
            })
        }
        Err(e) => {
            tracing::error!(request_id = %job.request.request_id, error = %e, "could not start a sequence");
            job.events.send(TokenEvent::Error(e.to_string())).ok();
            None
        }
    }
}

/// Runs one step of `a` (one prefill chunk, or one decode token); true when the sequence is
/// finished and leaves the round.
fn step(model: &mut OnnxModel, a: &mut Active, prefill_chunk: usize) -> bool {
    if a.abandoned() {
        tracing::debug!(request_id = %a.job.request.request_id, generated = a.generated, "cancelled");
        a.job
            .events
            .send(TokenEvent::Finish {
                reason: StopReason::Cancelled,
                usage: a.usage(),
            })
            .ok();
        return true;
    }
    let prompt = &a.job.request.prompt;
    let result = match a.pending {
        None => {
            let end = prompt.len().min(a.prefilled + prefill_chunk);
            let r = model.forward(&mut a.cache, &prompt[a.prefilled..end]);
            a.prefilled = end;
            r
        }
        Some(token) => model.forward(&mut a.cache, &[token]),
    };
    if let Err(e) = result {
        tracing::error!(request_id = %a.job.request.request_id, error = %e, "generation failed");
        a.job.events.send(TokenEvent::Error(e.to_string())).ok();
        return true;
    }
    if a.prefilled < prompt.len() {
        // More prompt chunks to go; other sequences step in between.
        return false;
    }
    let token = a.sampler.sample(a.cache.logits());
    a.generated += 1;
    a.pending = Some(token);
    if a.job.events.send(TokenEvent::Token(token)).is_err() {
        tracing::debug!(request_id = %a.job.request.request_id, "stream dropped");
        return true;
    }
    let reason = if a.job.request.stop_token_ids.contains(&token) {
        Some(StopReason::StopToken(token))
    } else if a.generated >= a.job.request.max_new_tokens
        || a.cache.len() + 1 > a.cache.capacity()
        || a.cache.len() + 1 >= model.spec.context_length
    {
        Some(StopReason::Length)
    } else {
        None
    };
    match reason {
        Some(reason) => {
            let elapsed = a.started.elapsed();
            tracing::debug!(
                request_id = %a.job.request.request_id,
                ?reason,
                generated = a.generated,
                ms = elapsed.as_millis() as u64,
                "finished"
            );
            a.job
                .events
                .send(TokenEvent::Finish {
                    reason,
                    usage: a.usage(),
                })
                .ok();
            true
        }
        None => false,
    }
}
