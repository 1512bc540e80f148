//! Whether the gateway task may start a send now: the channel is not
//! paused, the gateway's breaker lets it through, and a token of the
//! gateway's throughput cap is at hand. A message that may not start waits
//! where it is, never attempted, so waiting spends no attempt. Also what
//! the simulated gateway does at the moment a send starts: it fails while
//! an outage lasts, and a message past its age limit is not sent at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::breaker::{Admit, Breaker, BreakerState, Round};
use crate::settings::Outage;
use crate::store::Outcome;

/// How often a paused gateway looks again (the pause flag is polled too).
pub(super) const PAUSE_POLL: Duration = Duration::from_millis(100);

/// Why no send may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blocked {
    /// Until a token of the throughput cap comes.
    Tokens,
    /// Until this moment (an open breaker's cool-down ends).
    Until(Instant),
    /// Until a send in progress ends (a half-open breaker's probes).
    SendsEnd,
    /// While the channel is paused.
    Paused,
}

/// When the simulated gateway is down, on the wall clock (ms since the
/// Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    /// For `down` ms at the start of every `every` ms.
    Every { every: u64, down: u64 },
    /// From one moment to another.
    Between(u64, u64),
}

impl Down {
    /// The outage as the wall clock sees it, for a sender started at
    /// `started_ms`.
    fn of(outage: Outage, started_ms: u64) -> Self {
        match outage {
            Outage::Every(schedule) => Self::Every {
                every: schedule.every.as_millis().max(1) as u64,
                down: schedule.down.as_millis() as u64,
            },
            Outage::Once { after, down } => {
                let from = started_ms + after.as_millis() as u64;
                Self::Between(from, from + down.as_millis() as u64)
            }
        }
    }

    fn at(self, unix_ms: u64) -> bool {
        match self {
            Self::Every { every, down } => unix_ms % every < down,
            Self::Between(from, until) => (from..until).contains(&unix_ms),
        }
    }
}

/// What the gateway's rules say about the next send.
#[derive(Debug, Default)]
pub(super) struct Admission {
    breaker: Option<Breaker>,
    /// The local pool of the throughput cap's tokens; `None` for no cap.
    tokens: Option<Arc<Semaphore>>,
    /// Tokens taken from the pool and not spent yet.
    prepaid: usize,
    paused: Arc<AtomicBool>,
    outage: Option<Down>,
    expire_after: Option<Duration>,
    /// Where breaker changes go, to be logged and published.
    changes: Option<mpsc::UnboundedSender<BreakerState>>,
}

impl Admission {
    /// Rules from a sender's settings.
    pub(super) fn new(
        breaker: Option<Breaker>,
        tokens: Option<Arc<Semaphore>>,
        paused: Arc<AtomicBool>,
        outage: Option<Outage>,
        expire_after: Option<Duration>,
        changes: mpsc::UnboundedSender<BreakerState>,
    ) -> Self {
        let started_ms = crate::message::now_ms();
        Self {
            breaker,
            tokens,
            prepaid: 0,
            paused,
            outage: outage.map(|outage| Down::of(outage, started_ms)),
            expire_after,
            changes: Some(changes),
        }
    }

    /// Whether every send may start as soon as a slot is free, whatever
    /// the time: then a send that takes no time needs no gateway at all.
    pub(super) fn is_open(&self) -> bool {
        self.breaker.is_none()
            && self.tokens.is_none()
            && self.outage.is_none()
            && self.expire_after.is_none()
    }

    /// The pool of the throughput cap, to wait on.
    pub(super) fn tokens(&self) -> Option<Arc<Semaphore>> {
        self.tokens.clone()
    }

    /// Keeps a token taken from the pool while waiting for one.
    pub(super) fn keep_token(&mut self) {
        self.prepaid += 1;
    }

    /// Whether a send may start at `now`, and whether it is a probe of a
    /// half-open breaker (of which round); when it may, it is counted (a
    /// token spent, a probe started).
    pub(super) fn admit(&mut self, now: Instant) -> Result<Option<Round>, Blocked> {
        if self.paused.load(Ordering::Relaxed) {
            return Err(Blocked::Paused);
        }
        if let Some(pool) = &self.tokens
            && self.prepaid == 0
        {
            let token = pool.try_acquire().map_err(|_| Blocked::Tokens)?;
            token.forget();
            self.prepaid = 1;
        }
        let probe = match self.breaker.as_mut().map(|breaker| breaker.admit(now)) {
            None | Some(Admit::Yes) => None,
            Some(Admit::Probe(round)) => Some(round),
            Some(Admit::NotUntil(Some(at))) => return Err(Blocked::Until(at)),
            Some(Admit::NotUntil(None)) => return Err(Blocked::SendsEnd),
        };
        if self.tokens.is_some() {
            self.prepaid -= 1;
        }
        Ok(probe)
    }

    /// Whether the breaker is open at `now`: nothing may be sent through
    /// the gateway until it half-opens.
    pub(super) fn breaker_open(&mut self, now: Instant) -> bool {
        self.breaker
            .as_mut()
            .is_some_and(|breaker| breaker.state(now) == BreakerState::Open)
    }

    /// When an open breaker half-opens (to wake for it).
    pub(super) fn breaker_reopens_at(&self) -> Option<Instant> {
        self.breaker.as_ref().and_then(Breaker::reopens_at)
    }

    /// What becomes of a message created at `created_ms` whose send would
    /// start now: `Some(Expired)` past its age limit, `Some(Failed)` while
    /// the gateway is down, `None` to send it as drawn.
    pub(super) fn at_start(&self, created_ms: u64, now_ms: u64) -> Option<Outcome> {
        if let Some(limit) = self.expire_after
            && now_ms.saturating_sub(created_ms) > limit.as_millis() as u64
        {
            return Some(Outcome::Expired);
        }
        self.outage
            .is_some_and(|down| down.at(now_ms))
            .then_some(Outcome::Failed)
    }

    /// Takes the outcome of a send that was admitted (`probe`: as a probe
    /// of a half-open breaker): failures and successes move the breaker;
    /// anything else (throttled) is no news about the gateway's health,
    /// and a probe that ends so leaves its place to another.
    pub(super) fn record(&mut self, outcome: Outcome, probe: Option<Round>, now: Instant) {
        let failed = match outcome {
            Outcome::Failed | Outcome::ProbeFailed => true,
            Outcome::Sent => false,
            _ => {
                if let (Some(round), Some(breaker)) = (probe, &mut self.breaker) {
                    breaker.release_probe(round);
                }
                return;
            }
        };
        if let Some(breaker) = &mut self.breaker
            && let Some(state) = breaker.record(failed, probe, now)
            && let Some(changes) = &self.changes
        {
            let _ = changes.send(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::BreakerSettings;

    #[test]
    fn tokens_pace_sends_and_a_pause_stops_them() {
        let pool = Arc::new(Semaphore::new(2));
        let paused = Arc::new(AtomicBool::new(false));
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut rules = Admission::new(
            None,
            Some(Arc::clone(&pool)),
            Arc::clone(&paused),
            None,
            None,
            tx,
        );
        let now = Instant::now();
        assert_eq!(rules.admit(now), Ok(None));
        assert_eq!(rules.admit(now), Ok(None));
        assert_eq!(rules.admit(now), Err(Blocked::Tokens));
        pool.add_permits(1);
        paused.store(true, Ordering::Relaxed);
        assert_eq!(rules.admit(now), Err(Blocked::Paused));
        paused.store(false, Ordering::Relaxed);
        assert_eq!(rules.admit(now), Ok(None));
    }

    #[test]
    fn an_open_breaker_keeps_the_token_it_took() {
        let pool = Arc::new(Semaphore::new(1));
        let breaker = Breaker::new(
            BreakerSettings {
                failures: 1,
                cooldown: Duration::from_secs(1),
                max_cooldown: Duration::from_secs(1),
                probes: 1,
            },
            Instant::now(),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut rules = Admission::new(
            Some(breaker),
            Some(Arc::clone(&pool)),
            Arc::default(),
            None,
            None,
            tx,
        );
        let now = Instant::now();
        rules.record(Outcome::Failed, None, now);
        assert_eq!(rx.try_recv(), Ok(BreakerState::Open));
        assert!(matches!(rules.admit(now), Err(Blocked::Until(_))));
        assert_eq!(pool.available_permits(), 0, "the token is kept for later");
        let later = now + Duration::from_secs(1);
        assert_eq!(
            rules.admit(later),
            Ok(Some(1)),
            "the probe uses the kept token"
        );
        rules.record(Outcome::Sent, Some(1), later);
        assert_eq!(rx.try_recv(), Ok(BreakerState::Closed));
    }

    #[test]
    fn outages_fail_sends_and_old_messages_expire() {
        let outage = Outage::Every(crate::settings::OutageSchedule {
            every: Duration::from_secs(60),
            down: Duration::from_secs(10),
        });
        let (tx, _rx) = mpsc::unbounded_channel();
        let rules = Admission::new(
            None,
            None,
            Arc::default(),
            Some(outage),
            Some(Duration::from_secs(5)),
            tx,
        );
        assert_eq!(rules.at_start(120_000, 125_000), Some(Outcome::Failed));
        assert_eq!(rules.at_start(130_000, 131_000), None);
        assert_eq!(rules.at_start(130_000, 135_001), Some(Outcome::Expired));
        assert!(!rules.is_open());
        assert!(Admission::default().is_open());
        let once = Down::of(
            Outage::Once {
                after: Duration::from_secs(20),
                down: Duration::from_secs(10),
            },
            1_000_000,
        );
        assert!(!once.at(1_019_999) && once.at(1_020_000) && once.at(1_029_999));
        assert!(!once.at(1_030_000) && !once.at(1_090_000), "only once");
    }
}
