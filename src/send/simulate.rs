//! The simulated send: a delay drawn around the mean, then success or failure.
//!
//! Draws happen in the dispatcher, one per message in the order messages
//! arrive, from one seeded generator, so a seed makes a run reproducible.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution as _, Exp, Normal, Uniform};

use crate::settings::{DelayModel, Distribution};
use crate::store::Outcome;

/// What one simulated attempt will do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attempt {
    /// How long the send takes.
    pub delay: Duration,
    /// Whether it fails.
    pub fails: bool,
    /// Whether the gateway answers "throttled": never processed, to be
    /// tried again without spending an attempt.
    pub throttled: bool,
}

impl Attempt {
    /// How the attempt ends: sent, failed, or throttled (deferred).
    pub fn outcome(self) -> Outcome {
        if self.fails {
            Outcome::Failed
        } else if self.throttled {
            Outcome::Deferred
        } else {
            Outcome::Sent
        }
    }
}

/// Draws attempts from a delay model and a failure rate.
#[derive(Debug)]
pub struct Simulator {
    rng: StdRng,
    delay: Sampler,
    failure_rate: f64,
    throttle_rate: f64,
}

#[derive(Debug)]
enum Sampler {
    Zero,
    Constant(f64),
    Normal(Normal<f64>),
    Exponential(Exp<f64>),
    Uniform(Uniform<f64>),
}

impl Simulator {
    /// A simulator for `model` failing with probability `failure_rate` and
    /// answering "throttled" with probability `throttle_rate`; `seed` fixes
    /// the sequence of attempts (`None`: seeded from the OS). Outages are
    /// the gateway's business, at the moment a send starts.
    pub fn new(
        model: DelayModel,
        failure_rate: f64,
        throttle_rate: f64,
        seed: Option<u64>,
    ) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng::<StdRng>(),
        };
        let mean = model.mean.as_secs_f64();
        let stddev = model.stddev.as_secs_f64();
        // Parameters are finite and non-negative here, so the constructors
        // cannot fail; fall back to the constant mean rather than panic anyway.
        let delay = if model.mean.is_zero() {
            Sampler::Zero
        } else {
            match model.distribution {
                Distribution::Constant => Some(Sampler::Constant(mean)),
                Distribution::Normal => Normal::new(mean, stddev).ok().map(Sampler::Normal),
                Distribution::Exponential => Exp::new(1.0 / mean).ok().map(Sampler::Exponential),
                Distribution::Uniform => {
                    let half_width = stddev * 3f64.sqrt();
                    Uniform::new_inclusive(mean - half_width, mean + half_width)
                        .ok()
                        .map(Sampler::Uniform)
                }
            }
            .unwrap_or(Sampler::Constant(mean))
        };
        Self {
            rng,
            delay,
            failure_rate,
            throttle_rate,
        }
    }

    /// The next attempt.
    pub fn next_attempt(&mut self) -> Attempt {
        let seconds = match &self.delay {
            Sampler::Zero => 0.0,
            Sampler::Constant(mean) => *mean,
            Sampler::Normal(d) => d.sample(&mut self.rng),
            Sampler::Exponential(d) => d.sample(&mut self.rng),
            Sampler::Uniform(d) => d.sample(&mut self.rng),
        };
        let fails = self.failure_rate > 0.0 && self.rng.random_bool(self.failure_rate);
        let throttled = self.throttle_rate > 0.0 && self.rng.random_bool(self.throttle_rate);
        Attempt {
            // Truncated at zero: a send cannot take negative time.
            delay: Duration::from_secs_f64(seconds.max(0.0)),
            fails,
            throttled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(distribution: Distribution, mean_ms: u64, stddev_ms: u64) -> DelayModel {
        DelayModel {
            distribution,
            mean: Duration::from_millis(mean_ms),
            stddev: Duration::from_millis(stddev_ms),
        }
    }

    #[test]
    fn every_distribution_centres_on_the_mean() {
        for distribution in [
            Distribution::Normal,
            Distribution::Exponential,
            Distribution::Uniform,
            Distribution::Constant,
        ] {
            let mut sim = Simulator::new(model(distribution, 200, 50), 0.0, 0.0, Some(42));
            let n = 20_000;
            let total: f64 = (0..n).map(|_| sim.next_attempt().delay.as_secs_f64()).sum();
            let mean_ms = total / f64::from(n) * 1000.0;
            assert!(
                (mean_ms - 200.0).abs() < 200.0 * 0.03,
                "{distribution:?}: mean {mean_ms} ms"
            );
        }
    }

    #[test]
    fn failure_rate_and_seed() {
        let mut a = Simulator::new(model(Distribution::Normal, 10, 5), 0.25, 0.0, Some(9));
        let mut b = Simulator::new(model(Distribution::Normal, 10, 5), 0.25, 0.0, Some(9));
        let draws: Vec<_> = (0..10_000).map(|_| a.next_attempt()).collect();
        assert!(
            draws
                .iter()
                .zip((0..).map(|_| b.next_attempt()))
                .all(|(x, y)| *x == y)
        );
        let failures = draws.iter().filter(|d| d.fails).count();
        assert!(
            (2_300..=2_700).contains(&failures),
            "{failures} failures of 10000"
        );
        assert!(draws.iter().all(|d| d.delay >= Duration::ZERO));
    }

    #[test]
    fn throttled_answers_come_at_their_rate_and_cost_no_failure() {
        let mut sim = Simulator::new(model(Distribution::Constant, 1, 0), 0.0, 0.2, Some(3));
        let draws: Vec<Attempt> = (0..10_000).map(|_| sim.next_attempt()).collect();
        let throttled = draws.iter().filter(|d| d.throttled).count();
        assert!((1_800..=2_200).contains(&throttled), "{throttled} of 10000");
        assert!(draws.iter().all(|d| !d.fails));
        let deferred = draws
            .iter()
            .filter(|d| d.outcome() == Outcome::Deferred)
            .count();
        assert_eq!(deferred, throttled);
    }

    #[test]
    fn an_outage_schedule_is_on_the_wall_clock() {
        let minute = crate::settings::OutageSchedule {
            every: Duration::from_secs(60),
            down: Duration::from_secs(10),
        };
        assert!(minute.is_down_at(120_000) && minute.is_down_at(129_999));
        assert!(!minute.is_down_at(130_000) && !minute.is_down_at(179_999));
    }

    #[test]
    fn zero_mean_means_no_delay_and_rate_bounds_hold() {
        let mut sim = Simulator::new(model(Distribution::Normal, 0, 0), 1.0, 0.0, Some(1));
        let attempt = sim.next_attempt();
        assert_eq!(attempt.delay, Duration::ZERO);
        assert!(attempt.fails);
        let mut never = Simulator::new(model(Distribution::Constant, 5, 0), 0.0, 0.0, Some(1));
        assert!((0..1000).all(|_| !never.next_attempt().fails));
    }
}
