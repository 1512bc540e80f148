//! Transient Redis failures are retried by one policy, [`Retry`]: which
//! errors are worth another try, capped exponential backoff with jitter, and
//! sparse logging, until Redis answers again. Every loop that retries uses it.

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
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_WAIT }
    }
}

impl Backoff {
    /// How long to wait after one more failure.
    fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_WAIT);
        base.mul_f64(rand::rng().random_range(0.8..=1.2))
            .min(MAX_WAIT)
    }
}

/// While failures go on, at most one line per this long: a Redis that is
/// away or full for minutes must not bury the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a run of failures of one operation: the first as a warning, then at
/// most one error per 10 seconds naming how many tries failed since.
#[derive(Debug, Default)]
struct FailureLog {
    last: Option<tokio::time::Instant>,
    since_last: u32,
}

impl FailureLog {
    /// Records one failure of `what`; true if it was logged.
    fn failed(&mut self, what: &str, err: &StoreError, retry_in: Duration) -> bool {
        self.since_last += 1;
        let now = tokio::time::Instant::now();
        match self.last {
            None => {
                tracing::warn!(what, error = %err, retry_in_ms = retry_in.as_millis() as u64, "Redis call failed; retrying");
            }
            Some(at) if now.duration_since(at) >= LOG_EVERY => {
                tracing::error!(what, error = %err, failures = self.since_last, "Redis call still failing; retrying");
            }
            Some(_) => return false,
        }
        self.last = Some(now);
        self.since_last = 0;
        true
    }

    /// Records a success; logs the recovery if failures were logged.
    fn succeeded(&mut self, what: &str) {
        if self.last.take().is_some() {
            tracing::info!(what, "Redis answers again");
        }
        self.since_last = 0;
    }
}

/// Which failures a [`Retry`] tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Those retrying may fix: transient errors, and a missing Functions
    /// library, stream or group once the queue is diagnosed intact.
    Transient,
    /// Every failure except lost or damaged queue state.
    UntilDone,
}

/// The retry policy for one operation: decides whether a failure is worth
/// another try, how long to wait before it, and logs the failures sparingly
/// (the first as a warning, then at most one line per 10 seconds).
#[derive(Debug)]
pub struct Retry<'a> {
    what: &'a str,
    scope: Scope,
    /// A fixed wait instead of the backoff, for work that runs on a schedule.
    every: Option<Duration>,
    backoff: Backoff,
    log: FailureLog,
    failures: u32,
}

impl<'a> Retry<'a> {
    /// A policy for `what` (named in the log) that retries what retrying may
    /// fix, with capped exponential backoff.
    pub fn new(what: &'a str) -> Self {
        Self {
            what,
            scope: Scope::Transient,
            every: None,
            backoff: Backoff::default(),
            log: FailureLog::default(),
            failures: 0,
        }
    }

    /// Retries every failure except lost or damaged queue state: for work
    /// that must not be dropped (results already sent) and for upkeep that
    /// tries again on its schedule whatever went wrong.
    pub fn until_done(mut self) -> Self {
        self.scope = Scope::UntilDone;
        self
    }

    /// Waits `period` between tries instead of backing off: for work that
    /// runs on a schedule and tries again at its next tick.
    pub fn every(mut self, period: Duration) -> Self {
        self.every = Some(period);
        self
    }

    /// Whether `err` is worth another try under this policy.
    pub fn retries(&self, err: &StoreError) -> bool {
        match self.scope {
            Scope::Transient => err.is_transient() || err.needs_library() || err.is_no_group(),
            Scope::UntilDone => !err.is_queue_state(),
        }
    }

    /// Records a failure: gives `err` back if retrying cannot fix it, else
    /// logs it (sparingly) and returns how long to wait before the next try.
    pub fn failed(&mut self, err: StoreError) -> Result<Duration, StoreError> {
        if !self.retries(&err) {
            return Err(err);
        }
        self.failures += 1;
        let wait = match self.every {
            Some(period) => period,
            None => self.backoff.next_wait(),
        };
        self.log.failed(self.what, &err, wait);
        Ok(wait)
    }

    /// Handles a failure of a call on `store` and waits before the next try.
    /// A missing Functions library, stream or group is diagnosed first
    /// ([`Store::diagnose`]): lost or damaged state ends the retries, never
    /// re-created; a missing library is loaded again once the queue is known
    /// to be intact. Gives back the errors retrying cannot fix.
    /// Callers that must give up at some point race this against their deadline.
    pub async fn wait(&mut self, store: &Store, err: StoreError) -> Result<(), StoreError> {
        if err.needs_library() || err.is_no_group() {
            match store.diagnose().await {
                Err(found) if !found.is_transient() => return Err(found),
                Err(_) => {}
                Ok(()) if err.needs_library() => {
                    if let Err(load_err) = store.ensure_library().await {
                        tracing::warn!(what = self.what, error = %load_err, "could not load the Functions library");
                    }
                }
                Ok(()) => {}
            }
        }
        let wait = self.failed(err)?;
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Records a success: the next failure starts the backoff and the log
    /// afresh, and the recovery is logged if failures were.
    pub fn succeeded(&mut self) {
        self.log.succeeded(self.what);
        self.backoff = Backoff::default();
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

impl Store {
    /// Runs `op` until it succeeds or fails with an error that retrying cannot
    /// fix, under one [`Retry`] policy for `what` (see [`Retry::wait`]).
    /// Callers that must give up at some point race this against their deadline.
    pub async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut retry = Retry::new(what);
        loop {
            match op().await {
                Ok(value) => {
                    retry.succeeded();
                    return Ok(value);
                }
                Err(err) => retry.wait(self, err).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn away() -> StoreError {
        StoreError::Pool("connection refused".into())
    }

    fn denied() -> StoreError {
        StoreError::Denied {
            command: "FCALL sms_report",
            detail: "no permission".into(),
        }
    }

    fn lost() -> StoreError {
        StoreError::Lost("identity missing".into())
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_then_caps_in_paused_time() {
        let mut retry = Retry::new("test");
        let start = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..10 {
            let wait = retry.failed(away()).expect("transient");
            tokio::time::sleep(wait).await;
            waits.push(wait);
        }
        assert!(waits[0] <= FIRST_WAIT.mul_f64(1.2), "{waits:?}");
        assert!(waits[3] > waits[0], "{waits:?}");
        assert!(waits.iter().all(|w| *w <= MAX_WAIT), "{waits:?}");
        assert!(waits[9] >= MAX_WAIT.mul_f64(0.8), "{waits:?}");
        assert_eq!(retry.failures(), 10);
        // 50+100+200+400+800 ms, then 1 s five times, each ±20%.
        let elapsed = start.elapsed();
        let nominal = Duration::from_millis(6_550);
        assert!(
            elapsed >= nominal.mul_f64(0.8) && elapsed <= nominal.mul_f64(1.2),
            "expected about {nominal:?} of waits, slept {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_starts_the_backoff_afresh() {
        let mut retry = Retry::new("test");
        for _ in 0..6 {
            let wait = retry.failed(away()).expect("transient");
            tokio::time::sleep(wait).await;
        }
        retry.succeeded();
        assert_eq!(retry.failures(), 0);
        let wait = retry.failed(away()).expect("transient");
        assert!(
            wait <= FIRST_WAIT.mul_f64(1.2),
            "first wait again, got {wait:?}"
        );
    }

    #[test]
    fn only_what_retrying_may_fix_is_retried() {
        let mut retry = Retry::new("test");
        assert!(retry.retries(&away()));
        assert!(matches!(
            retry.failed(denied()),
            Err(StoreError::Denied { .. })
        ));
        assert!(matches!(retry.failed(lost()), Err(StoreError::Lost(_))));
        assert_eq!(
            retry.failures(),
            0,
            "errors given back are not failures to retry"
        );

        let mut until_done = Retry::new("test").until_done();
        assert!(until_done.failed(denied()).is_ok());
        assert!(until_done.failed(away()).is_ok());
        assert!(matches!(
            until_done.failed(lost()),
            Err(StoreError::Lost(_))
        ));
        assert_eq!(until_done.failures(), 2);
    }

    #[test]
    fn work_on_a_schedule_waits_for_its_next_tick() {
        let period = Duration::from_millis(200);
        let mut retry = Retry::new("test").until_done().every(period);
        let waits: Vec<_> = (0..5)
            .map(|_| retry.failed(away()).expect("retried"))
            .collect();
        assert_eq!(waits, vec![period; 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_outage_logs_once_per_ten_seconds() {
        let mut log = FailureLog::default();
        let mut logged_at = Vec::new();
        let start = Instant::now();
        // One failure a second for 35 seconds.
        for second in 0..35 {
            if log.failed("test", &away(), MAX_WAIT) {
                logged_at.push(second);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(logged_at, [0, 10, 20, 30], "after {:?}", start.elapsed());
        log.succeeded("test");
        assert!(
            log.failed("test", &away(), MAX_WAIT),
            "a new outage logs at once"
        );
    }
}
