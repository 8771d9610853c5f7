//! Admission control: at most `max_concurrent` requests generate at once, the rest
//! wait first in, first out, and at most `max_queue` of them may wait.
//!
//! A [`Permit`] is moved into the response (the JSON body future or the SSE stream),
//! so a slot is held exactly as long as the response lives: when the client goes
//! away the response is dropped, and so is the permit. A waiting request whose
//! client disconnects is dropped with its [`Admission::acquire`] future, which
//! takes it out of the semaphore's queue and the `waiting` count.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// `max_queue` requests are already waiting.
    QueueFull { waiting: u32 },
    /// The server is shutting down.
    Closed,
}

/// A snapshot of the queue, as `/health` and `/queue/status` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    pub running: u32,
    pub waiting: u32,
    pub max_concurrent: u32,
    pub max_queue: u32,
    pub available_slots: u32,
}

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    max_concurrent: u32,
    max_queue: u32,
    waiting: AtomicU32,
    running: AtomicU32,
}

/// A generation slot. Dropping it frees the slot for the next waiting request.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    admission: Arc<Admission>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a request as waiting for as long as it lives.
struct WaitingGuard<'a>(&'a AtomicU32);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max_concurrent: u32, max_queue: u32) -> Arc<Self> {
        assert!(
            max_concurrent >= 1,
            "at least one request must be able to run"
        );
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(max_concurrent as usize)),
            max_concurrent,
            max_queue,
            waiting: AtomicU32::new(0),
            running: AtomicU32::new(0),
        })
    }

    /// Waits for a slot, in arrival order. Fails at once when the waiting line is full.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, AdmitError> {
        // The fast path: tokio's semaphore is fair, so a free permit exists only when
        // nobody is waiting ahead of us.
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(self.running(slot));
        }
        let mut current = self.waiting.load(Ordering::Acquire);
        loop {
            if current >= self.max_queue {
                return Err(AdmitError::QueueFull { waiting: current });
            }
            match self.waiting.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        let _waiting = WaitingGuard(&self.waiting);
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(slot) => Ok(self.running(slot)),
            Err(_) => Err(AdmitError::Closed),
        }
    }

    fn running(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> Permit {
        self.running.fetch_add(1, Ordering::AcqRel);
        Permit {
            _slot: slot,
            admission: Arc::clone(self),
        }
    }

    /// Refuses every request that is waiting or arrives later.
    pub fn close(&self) {
        self.slots.close();
    }

    pub fn status(&self) -> QueueStatus {
        let running = self.running.load(Ordering::Acquire);
        QueueStatus {
            running,
            waiting: self.waiting.load(Ordering::Acquire),
            max_concurrent: self.max_concurrent,
            max_queue: self.max_queue,
            available_slots: self.max_concurrent.saturating_sub(running),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiting_line_is_bounded_and_fifo() {
        let adm = Admission::new(1, 2);
        let first = adm.acquire().await.expect("a free slot is granted at once");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..2 {
            let adm2 = Arc::clone(&adm);
            let tx = tx.clone();
            tokio::spawn(async move {
                let p = adm2.acquire().await;
                tx.send((i, p.is_ok())).ok();
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(p);
            });
            // Make the arrival order deterministic.
            while adm.status().waiting < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(adm.status().waiting, 2);
        assert_eq!(
            adm.acquire().await.err(),
            Some(AdmitError::QueueFull { waiting: 2 }),
            "a third waiter must be refused, not queued"
        );
        drop(first);
        assert_eq!(rx.recv().await, Some((0, true)), "first waiter goes first");
        assert_eq!(rx.recv().await, Some((1, true)));
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_line() {
        let adm = Admission::new(1, 1);
        let held = adm.acquire().await.expect("free slot");
        let waiter = {
            let adm = Arc::clone(&adm);
            tokio::spawn(async move { adm.acquire().await.map(|_| ()) })
        };
        while adm.status().waiting == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(
            adm.status().waiting,
            0,
            "an abandoned waiter must not keep its place"
        );
        drop(held);
        assert_eq!(adm.status().running, 0);
        let again = adm.acquire().await;
        assert!(again.is_ok());
    }
}
