//! A bounded pool for the CPU-heavy steps of a request (parsing and validating a large body,
//! rendering the harmony prompt, tokenizing, detokenizing an echoed prompt), so that they never
//! run on the async worker threads that answer `/health` and stream tokens.
//!
//! At most `workers` jobs run at once, each on tokio's blocking threads; up to `max_waiting`
//! more wait for a turn (FIFO, holding no thread); one more is refused with 429 and
//! `Retry-After`, as a full admission queue is.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::ApiError;

/// See the module documentation.
pub struct CpuPool {
    permits: Arc<Semaphore>,
    waiting: AtomicU32,
    max_waiting: u32,
    retry_after_secs: u64,
}

impl CpuPool {
    /// `workers` jobs at once (at least 1); `max_waiting` more may wait.
    pub fn new(workers: usize, max_waiting: u32, retry_after_secs: u64) -> CpuPool {
        CpuPool {
            permits: Arc::new(Semaphore::new(workers.max(1))),
            waiting: AtomicU32::new(0),
            max_waiting,
            retry_after_secs,
        }
    }

    /// One job per core the process may use but one (at least one), so that heavy requests
    /// leave a core to the async threads and the engine.
    pub fn workers_for_this_machine() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    }

    /// Runs `job` on a blocking thread once a worker is free, and returns its result.
    /// Errors: 429 `queue_full` when `max_waiting` jobs already wait; 500 if the job panicked.
    pub async fn run<T, F>(&self, job: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
                if waiting >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(ApiError::QueueFull {
                        waiting,
                        retry_after_secs: self.retry_after_secs,
                    });
                }
                let acquired = Arc::clone(&self.permits).acquire_owned().await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                acquired.map_err(|_| ApiError::ShuttingDown)?
            }
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("request preparation failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn jobs_beyond_the_workers_wait_and_beyond_the_waiting_line_get_429() {
        let pool = Arc::new(CpuPool::new(1, 1, 3));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(move || {
                    rx.recv_timeout(Duration::from_secs(10)).ok();
                    Ok(1)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(|| Ok(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        match pool.run(|| Ok(3)).await {
            Err(ApiError::QueueFull {
                waiting,
                retry_after_secs,
            }) => assert_eq!((waiting, retry_after_secs), (1, 3)),
            other => panic!("a third job with one worker and one waiting place: {other:?}"),
        }
        assert!(
            !second.is_finished(),
            "the second job must wait for the worker"
        );
        tx.send(()).expect("release the first job");
        assert_eq!(first.await.expect("join").expect("first"), 1);
        assert_eq!(second.await.expect("join").expect("second"), 2);
        assert_eq!(pool.run(|| Ok(4)).await.expect("after the line emptied"), 4);
    }
}
