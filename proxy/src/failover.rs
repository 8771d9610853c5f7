//! Failover: what one attempt at a backend came to, and what happens next.
//!
//! Every proxied request, streamed or not, runs Pingora's attempt loop: `upstream_peer` picks
//! a backend, the phases report how the attempt went, and a retryable error sends the request
//! back to `upstream_peer` for another backend (Pingora's `examples/backoff_retry.rs`). This
//! module holds the decisions of that loop as pure functions with table tests: the [`verdict`]
//! for an upstream [`Outcome`], whether it counts against the backend (outlier detection),
//! the backoff before the next attempt, and the error the client gets when no attempt is left.

use std::time::Duration;

use openai_types::ErrorKind;

use crate::error::ApiError;

/// How one attempt at a backend ended, as far as failover is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The TCP or TLS connection could not be made (refused, no route, timed out).
    ConnectFailed,
    /// The connection failed after the request was written, before any response byte (a
    /// reset or close). The backend may have started working on it.
    ResetAfterDelivery,
    /// No response (or no next stream chunk) within the timeout.
    TimedOut,
    /// A response header with this status arrived.
    Status {
        status: u16,
        /// The backend's `Retry-After`, for a 429 or 503.
        retry_after: Option<Duration>,
    },
    /// A 2xx whose content type is not the one the request expects (`application/json`, or
    /// `text/event-stream` for a stream): an HTML page, a binary body.
    BadContentType,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the backend's answer to the client.
    Deliver,
    /// Try another backend.
    Retry,
    /// Stop: the client gets the error of this attempt (or the backend's own answer, for a
    /// status).
    Fail,
}

/// The facts of the request that a verdict depends on.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// `retries.max_attempts`.
    pub max_attempts: u32,
    /// A healthy backend of the route that was not tried yet exists.
    pub another_backend: bool,
    /// A response byte already reached the client (a non-informational header).
    pub response_started: bool,
    /// `retries.replay_after_reset`: resend a request whose connection failed after it was
    /// written.
    pub replay_after_reset: bool,
}

impl Facts {
    fn may_retry(&self) -> bool {
        !self.response_started && self.another_backend && self.attempts < self.max_attempts
    }
}

/// The verdict for an attempt's outcome. Statuses below 500 other than 429 are the backend's
/// answer to this request (delivered as they are); 429 and 5xx are retried on another backend
/// while one is left, else the backend's answer goes to the client; failures without an
/// answer are retried, else they fail.
pub fn verdict(outcome: &Outcome, facts: &Facts) -> Verdict {
    let retry_or = |otherwise| {
        if facts.may_retry() {
            Verdict::Retry
        } else {
            otherwise
        }
    };
    match outcome {
        Outcome::Status { status, .. } if *status == 429 || *status >= 500 => {
            retry_or(Verdict::Deliver)
        }
        Outcome::Status { .. } => Verdict::Deliver,
        Outcome::ResetAfterDelivery if !facts.replay_after_reset => Verdict::Fail,
        Outcome::ConnectFailed
        | Outcome::ResetAfterDelivery
        | Outcome::TimedOut
        | Outcome::BadContentType => retry_or(Verdict::Fail),
    }
}

/// Whether the outcome counts against the backend in outlier detection (Envoy's
/// `consecutive_5xx` counts 5xx and connection failures alike). A 429 does not: the backend is
/// working, only busy; it is kept off new requests for its `Retry-After` instead.
pub fn counts_against_backend(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Status { status, .. } => *status >= 500,
        Outcome::ConnectFailed
        | Outcome::ResetAfterDelivery
        | Outcome::TimedOut
        | Outcome::BadContentType => true,
    }
}

/// The wait before attempt `attempt + 1` (attempt counts from 1): `backoff`, doubled for each
/// further attempt, at most `max_backoff`.
pub fn backoff(cfg: &config::RetryConfig, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    cfg.backoff.saturating_mul(factor).min(cfg.max_backoff)
}

/// The error for a request that no backend could answer: the last attempt's failure (its
/// message saying how many attempts failed), or 503 `no_healthy_backend` when no attempt was
/// made.
pub fn final_failure(last: Option<ApiError>, attempts: u32, model: &str) -> ApiError {
    match last {
        Some(mut last) if attempts > 0 => {
            last.body.error.message = format!(
                "all {attempts} attempt(s) failed; last error: {}",
                last.body.error.message
            );
            last
        }
        _ => ApiError::new(
            ErrorKind::Unavailable,
            format!("no healthy backend for model `{model}`"),
            Some("model"),
            Some("no_healthy_backend"),
        ),
    }
}

/// A `Retry-After` value: delay-seconds (RFC 9110 section 10.2.3), at most one hour. The
/// HTTP-date form is not read (servers of this kind send seconds).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(attempts: u32, another: bool, started: bool) -> Facts {
        Facts {
            attempts,
            max_attempts: 3,
            another_backend: another,
            response_started: started,
            replay_after_reset: true,
        }
    }

    fn status(s: u16) -> Outcome {
        Outcome::Status {
            status: s,
            retry_after: None,
        }
    }

    #[test]
    fn verdict_table() {
        use Verdict::*;
        let rows: &[(Outcome, Facts, Verdict, &str)] = &[
            (
                status(200),
                facts(1, true, false),
                Deliver,
                "a success is delivered",
            ),
            (
                status(400),
                facts(1, true, false),
                Deliver,
                "a client error is the answer",
            ),
            (
                status(404),
                facts(1, true, false),
                Deliver,
                "a 404 is the answer",
            ),
            (
                status(500),
                facts(1, true, false),
                Retry,
                "a 500 goes to another backend",
            ),
            (
                status(500),
                facts(1, false, false),
                Deliver,
                "a 500 with no other backend reaches the client",
            ),
            (
                status(503),
                facts(3, true, false),
                Deliver,
                "no attempt left: the 503 is the answer",
            ),
            (
                status(429),
                facts(1, true, false),
                Retry,
                "a 429 goes to another backend",
            ),
            (
                status(429),
                facts(1, false, false),
                Deliver,
                "the 429 reaches the client when nobody else can take it",
            ),
            (
                Outcome::ConnectFailed,
                facts(1, true, false),
                Retry,
                "connect failures are retried",
            ),
            (
                Outcome::ConnectFailed,
                facts(1, false, false),
                Fail,
                "no other backend: fail",
            ),
            (
                Outcome::TimedOut,
                facts(2, true, false),
                Retry,
                "a timeout is retried",
            ),
            (
                Outcome::TimedOut,
                facts(1, true, true),
                Fail,
                "nothing is retried once the response started",
            ),
            (
                Outcome::BadContentType,
                facts(1, true, false),
                Retry,
                "an HTML 200 is retried",
            ),
            (
                Outcome::BadContentType,
                facts(1, false, false),
                Fail,
                "an HTML 200 alone is a 502",
            ),
            (
                Outcome::ResetAfterDelivery,
                facts(1, true, false),
                Retry,
                "a reset after delivery is replayed",
            ),
        ];
        for (outcome, f, want, why) in rows {
            assert_eq!(verdict(outcome, f), *want, "{why}: {outcome:?}");
        }
        let no_replay = Facts {
            replay_after_reset: false,
            ..facts(1, true, false)
        };
        assert_eq!(
            verdict(&Outcome::ResetAfterDelivery, &no_replay),
            Verdict::Fail,
            "replay_after_reset: false never resends a request a backend may have started"
        );
    }

    #[test]
    fn what_counts_against_a_backend() {
        assert!(counts_against_backend(&status(500)));
        assert!(counts_against_backend(&status(502)));
        assert!(counts_against_backend(&Outcome::ConnectFailed));
        assert!(counts_against_backend(&Outcome::BadContentType));
        assert!(
            !counts_against_backend(&status(429)),
            "a busy backend is not broken"
        );
        assert!(!counts_against_backend(&status(400)));
        assert!(!counts_against_backend(&status(200)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = config::RetryConfig {
            max_attempts: 5,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(150),
            replay_after_reset: true,
        };
        assert_eq!(backoff(&cfg, 1), Duration::from_millis(50));
        assert_eq!(backoff(&cfg, 2), Duration::from_millis(100));
        assert_eq!(backoff(&cfg, 3), Duration::from_millis(150));
        assert_eq!(backoff(&cfg, 40), Duration::from_millis(150));
    }

    #[test]
    fn final_failure_names_the_attempts_or_the_model() {
        let e = final_failure(None, 0, "m");
        assert_eq!(e.status, 503);
        assert_eq!(e.body.error.param.as_deref(), Some("model"));
        let last = ApiError::new(ErrorKind::BadGateway, "boom", None, Some("upstream_error"));
        let e = final_failure(Some(last), 2, "m");
        assert_eq!(e.status, 502);
        assert!(e.body.error.message.starts_with("all 2 attempt(s) failed"));
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after(Some("30")), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(Some(" 2 ")), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(Some("999999")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }
}
