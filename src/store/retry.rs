//! Transient Redis failures are retried here and nowhere else: capped
//! exponential backoff with jitter, logged, until Redis answers again.

use std::future::Future;
use std::time::Duration;

use rand::RngExt;

use super::{Store, StoreError};

/// First wait after a failure.
const FIRST_WAIT: Duration = Duration::from_millis(50);
/// Longest wait between two tries, so work resumes soon after Redis is back.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Capped exponential backoff with ±20% jitter, so many processes do not retry
/// in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST_WAIT,
            failures: 0,
        }
    }
}

impl Backoff {
    /// How long to wait after one more failure.
    pub fn next_wait(&mut self) -> Duration {
        self.failures += 1;
        let base = self.next;
        self.next = (self.next * 2).min(MAX_WAIT);
        base.mul_f64(rand::rng().random_range(0.8..=1.2))
            .min(MAX_WAIT)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// While failures go on, at most one line per this long: a Redis that is
/// away or full for minutes must not bury the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a run of failures of one operation: the first as a warning, then at
/// most one error per 10 seconds naming how many tries failed since.
#[derive(Debug, Default)]
pub struct FailureLog {
    last: Option<tokio::time::Instant>,
    since_last: u32,
}

impl FailureLog {
    /// Records one failure of `what`, logging it if it is time to.
    pub fn failed(&mut self, what: &str, err: &StoreError, retry_in: Duration) {
        self.since_last += 1;
        let now = tokio::time::Instant::now();
        match self.last {
            None => {
                tracing::warn!(what, error = %err, retry_in_ms = retry_in.as_millis() as u64, "Redis call failed; retrying");
            }
            Some(at) if now.duration_since(at) >= LOG_EVERY => {
                tracing::error!(what, error = %err, failures = self.since_last, "Redis call still failing; retrying");
            }
            Some(_) => return,
        }
        self.last = Some(now);
        self.since_last = 0;
    }

    /// Records a success; logs the recovery if failures were logged.
    pub fn succeeded(&mut self, what: &str) {
        if self.last.take().is_some() {
            tracing::info!(what, "Redis answers again");
        }
        self.since_last = 0;
    }
}

impl Store {
    /// Runs `op` until it succeeds or fails with an error that retrying cannot
    /// fix. Transient errors (Redis away, loading, out of memory) are retried
    /// with backoff and logged sparingly ([`FailureLog`]). A missing
    /// Functions library is loaded again once the queue is known to be
    /// intact; a missing stream or group is diagnosed ([`Store::diagnose`])
    /// and ends the retries as lost or damaged state, never re-created.
    /// Callers that must give up at some point race this against their deadline.
    pub async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Backoff::default();
        let mut log = FailureLog::default();
        loop {
            let err = match op().await {
                Ok(value) => {
                    log.succeeded(what);
                    return Ok(value);
                }
                Err(err) => err,
            };
            if err.needs_library() || err.is_no_group() {
                match self.diagnose().await {
                    Err(found) if !found.is_transient() => return Err(found),
                    Err(_) => {}
                    Ok(()) if err.needs_library() => {
                        if let Err(load_err) = self.ensure_library().await {
                            tracing::warn!(what, error = %load_err, "could not load the Functions library");
                        }
                    }
                    Ok(()) => {}
                }
            } else if !err.is_transient() {
                return Err(err);
            }
            let wait = backoff.next_wait();
            log.failed(what, &err, wait);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        let mut backoff = Backoff::default();
        let waits: Vec<_> = (0..10).map(|_| backoff.next_wait()).collect();
        assert!(waits[0] <= FIRST_WAIT.mul_f64(1.2));
        assert!(waits[3] > waits[0]);
        assert!(waits.iter().all(|w| *w <= MAX_WAIT), "{waits:?}");
        assert!(waits[9] >= MAX_WAIT.mul_f64(0.8));
        assert_eq!(backoff.failures(), 10);
    }
}
