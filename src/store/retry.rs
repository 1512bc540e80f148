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

impl Store {
    /// Runs `op` until it succeeds or fails with an error that retrying cannot
    /// fix. Transient errors are logged and retried with backoff; a missing
    /// Functions library or group is repaired by [`Store::prepare`] first.
    /// Callers that must give up at some point race this against their deadline.
    pub async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Backoff::default();
        loop {
            let err = match op().await {
                Ok(value) => {
                    if backoff.failures() > 0 {
                        tracing::info!(what, failures = backoff.failures(), "Redis answers again");
                    }
                    return Ok(value);
                }
                Err(err) => err,
            };
            if err.needs_prepare() {
                tracing::warn!(what, error = %err, "Functions library or group missing; applying migrations");
                if let Err(prepare_err) = self.prepare().await {
                    tracing::warn!(what, error = %prepare_err, "could not apply migrations");
                }
            } else if !err.is_transient() {
                return Err(err);
            }
            let wait = backoff.next_wait();
            tracing::warn!(what, error = %err, retry_in_ms = wait.as_millis() as u64, "Redis call failed; retrying");
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
