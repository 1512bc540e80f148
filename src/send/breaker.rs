//! The circuit breaker of a sender's gateway: after enough failed sends in
//! a row it opens and the sender sends nothing through the gateway; after a
//! cool-down it lets a few probes through (half-open), and closes when they
//! pass. A probe that fails opens it again, for twice the cool-down (up to
//! a limit), so a gateway that stays down costs a few probes per cool-down,
//! not an attempt per message. Messages that wait meanwhile are never
//! attempted, so they spend no attempt, and a failed probe never uses up a
//! message's last attempt (`sms_settle`), so no message dies of an outage.
//!
//! Pure state: the gateway task feeds it results and asks it before each
//! send; the clock is passed in, so tests drive it.

use std::time::Duration;

use tokio::time::Instant;

use crate::settings::BreakerSettings;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BreakerState {
    /// Sending normally.
    Closed,
    /// Sending nothing until the cool-down ends.
    Open,
    /// Letting a few probes through.
    HalfOpen,
}

impl BreakerState {
    /// The state's name, as the monitor and the logs show it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The breaker of one gateway.
#[derive(Debug)]
pub(super) struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    /// Failed sends in a row while closed.
    failures: u32,
    /// When an open breaker goes half-open.
    open_until: Instant,
    /// The cool-down the next opening gets.
    cooldown: Duration,
    /// Probes started and not ended while half-open.
    probing: u32,
    /// Probes that passed while half-open.
    passed: u32,
    /// How many times it opened: a probe belongs to the half-open round
    /// that let it through, and its result counts only in that round.
    round: Round,
}

/// The number of a half-open round: the breaker's openings so far.
pub(super) type Round = u64;

/// What the breaker says about starting a send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Send it.
    Yes,
    /// Send it as a probe of the gateway in this half-open round.
    Probe(Round),
    /// Not before this moment (an open breaker's end), or `None` until a
    /// probe in progress ends.
    NotUntil(Option<Instant>),
}

impl Breaker {
    /// A closed breaker; `None` settings make one that never opens.
    pub(super) fn new(settings: BreakerSettings, now: Instant) -> Self {
        Self {
            cooldown: settings.cooldown,
            settings,
            state: BreakerState::Closed,
            failures: 0,
            open_until: now,
            probing: 0,
            passed: 0,
            round: 0,
        }
    }

    /// Its state at `now` (an open breaker whose cool-down is over is
    /// half-open).
    pub(super) fn state(&mut self, now: Instant) -> BreakerState {
        if self.state == BreakerState::Open && now >= self.open_until {
            self.state = BreakerState::HalfOpen;
            self.probing = 0;
            self.passed = 0;
        }
        self.state
    }

    /// When an open breaker half-opens; `None` when it is not open.
    pub(super) fn reopens_at(&self) -> Option<Instant> {
        (self.state == BreakerState::Open).then_some(self.open_until)
    }

    /// Whether a send may start at `now`; a send let through while
    /// half-open is a probe, counted until it ends.
    pub(super) fn admit(&mut self, now: Instant) -> Admit {
        match self.state(now) {
            BreakerState::Closed => Admit::Yes,
            BreakerState::Open => Admit::NotUntil(Some(self.open_until)),
            BreakerState::HalfOpen if self.probing + self.passed < self.settings.probes => {
                self.probing += 1;
                Admit::Probe(self.round)
            }
            BreakerState::HalfOpen => Admit::NotUntil(None),
        }
    }

    /// Takes the result of a send that started when `admit` said yes (or
    /// said probe, of round `probe`): returns the new state when this
    /// result changed it.
    pub(super) fn record(
        &mut self,
        failed: bool,
        probe: Option<Round>,
        now: Instant,
    ) -> Option<BreakerState> {
        match self.state(now) {
            BreakerState::Closed => {
                self.failures = if failed { self.failures + 1 } else { 0 };
                if self.failures >= self.settings.failures {
                    return Some(self.open(now));
                }
                None
            }
            // A send started before the breaker opened, or a probe of an
            // earlier round, ending while it probes: old news, which must
            // neither fail nor pass this round's probes.
            BreakerState::HalfOpen if probe != Some(self.round) => None,
            BreakerState::HalfOpen if failed => {
                self.cooldown = (self.cooldown * 2).min(self.settings.max_cooldown);
                Some(self.open(now))
            }
            BreakerState::HalfOpen => {
                self.probing = self.probing.saturating_sub(1);
                self.passed += 1;
                if self.passed >= self.settings.probes {
                    self.state = BreakerState::Closed;
                    self.failures = 0;
                    self.cooldown = self.settings.cooldown;
                    return Some(BreakerState::Closed);
                }
                None
            }
            // A send started before the breaker opened: its result is old news.
            BreakerState::Open => None,
        }
    }

    /// Takes back a probe of round `round` that ended telling nothing of
    /// the gateway's health (throttled): another message may probe in its
    /// place.
    pub(super) fn release_probe(&mut self, round: Round) {
        if self.state == BreakerState::HalfOpen && round == self.round {
            self.probing = self.probing.saturating_sub(1);
        }
    }

    fn open(&mut self, now: Instant) -> BreakerState {
        self.state = BreakerState::Open;
        self.round += 1;
        self.open_until = now + self.cooldown;
        self.failures = 0;
        BreakerState::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
            probes: 2,
        }
    }

    /// A breaker opened by failures, and the moment its cool-down ends.
    fn opened() -> (Breaker, Instant) {
        let t = Instant::now();
        let mut breaker = Breaker::new(settings(), t);
        for _ in 0..3 {
            breaker.record(true, None, t);
        }
        (breaker, t + Duration::from_secs(1))
    }

    /// Starts a probe at `now`, which the breaker must allow.
    fn probe(breaker: &mut Breaker, now: Instant) -> Option<Round> {
        match breaker.admit(now) {
            Admit::Probe(round) => Some(round),
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    #[test]
    fn opens_after_failures_in_a_row_only() {
        let t = Instant::now();
        let mut breaker = Breaker::new(settings(), t);
        for failed in [true, true, false, true, true] {
            assert_eq!(breaker.record(failed, None, t), None);
        }
        assert_eq!(breaker.record(true, None, t), Some(BreakerState::Open));
        assert_eq!(
            breaker.admit(t),
            Admit::NotUntil(Some(t + Duration::from_secs(1)))
        );
    }

    #[test]
    fn probes_after_the_cooldown_and_closes_when_they_pass() {
        let (mut breaker, later) = opened();
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        let (first, second) = (probe(&mut breaker, later), probe(&mut breaker, later));
        assert_eq!(
            breaker.admit(later),
            Admit::NotUntil(None),
            "two probes at most"
        );
        assert_eq!(breaker.record(false, first, later), None);
        assert_eq!(
            breaker.record(false, second, later),
            Some(BreakerState::Closed)
        );
        assert_eq!(breaker.admit(later), Admit::Yes);
    }

    #[test]
    fn a_send_from_before_the_breaker_opened_is_no_probe() {
        let (mut breaker, later) = opened();
        let first = probe(&mut breaker, later);
        // Sends started while it was closed end now, passed or failed.
        assert_eq!(breaker.record(false, None, later), None);
        assert_eq!(breaker.record(false, None, later), None);
        assert_eq!(breaker.record(true, None, later), None);
        assert_eq!(
            breaker.state(later),
            BreakerState::HalfOpen,
            "neither closed nor reopened"
        );
        let second = probe(&mut breaker, later);
        assert_eq!(breaker.admit(later), Admit::NotUntil(None));
        assert_eq!(breaker.record(false, first, later), None);
        assert_eq!(
            breaker.record(false, second, later),
            Some(BreakerState::Closed)
        );
    }

    #[test]
    fn a_probe_of_an_earlier_round_is_old_news() {
        let (mut breaker, later) = opened();
        let (slow, failing) = (probe(&mut breaker, later), probe(&mut breaker, later));
        assert_eq!(
            breaker.record(true, failing, later),
            Some(BreakerState::Open)
        );
        // The next round begins while the slow probe of the first still runs.
        let next = later + Duration::from_secs(2);
        let current = probe(&mut breaker, next);
        assert_ne!(slow, current);
        assert_eq!(breaker.record(true, slow, next), None, "not reopened");
        breaker.release_probe(slow.expect("a round"));
        assert_eq!(breaker.record(false, slow, next), None, "passes nothing");
        let other = probe(&mut breaker, next);
        assert_eq!(
            breaker.admit(next),
            Admit::NotUntil(None),
            "two probes, no more"
        );
        assert_eq!(breaker.record(false, current, next), None);
        assert_eq!(
            breaker.record(false, other, next),
            Some(BreakerState::Closed)
        );
    }

    #[test]
    fn a_probe_that_tells_nothing_lets_another_probe() {
        let (mut breaker, later) = opened();
        let first = probe(&mut breaker, later);
        probe(&mut breaker, later);
        assert_eq!(breaker.admit(later), Admit::NotUntil(None));
        breaker.release_probe(first.expect("a round"));
        assert!(
            matches!(breaker.admit(later), Admit::Probe(_)),
            "a throttled probe frees its place"
        );
    }

    #[test]
    fn a_failed_probe_opens_it_for_longer_up_to_the_limit() {
        let (mut breaker, _) = opened();
        let mut now = Instant::now();
        for expected in [2, 4, 4] {
            now += Duration::from_secs(10);
            let failing = probe(&mut breaker, now);
            assert_eq!(breaker.record(true, failing, now), Some(BreakerState::Open));
            assert_eq!(
                breaker.admit(now),
                Admit::NotUntil(Some(now + Duration::from_secs(expected)))
            );
        }
        // Closing brings the cool-down back to its start.
        now += Duration::from_secs(10);
        let (first, second) = (probe(&mut breaker, now), probe(&mut breaker, now));
        breaker.record(false, first, now);
        breaker.record(false, second, now);
        for _ in 0..3 {
            breaker.record(true, None, now);
        }
        assert_eq!(
            breaker.admit(now),
            Admit::NotUntil(Some(now + Duration::from_secs(1)))
        );
    }
}
