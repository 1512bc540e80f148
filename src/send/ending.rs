//! When the running sends end: the dispatcher reads ahead only for sends that
//! end within [`HORIZON`], so a message waits in the gateway's ready queue
//! for about that long at most, and a slow sender never hoards messages that
//! other senders could start now.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How far ahead reads are made for sends about to end: longer than a read's
/// round trip under load (a few milliseconds, more while Redis rewrites its
/// AOF), short next to a slow send. At 10 ms, 20 ms sends at full load still
/// found the ready queue empty now and then (simulation 1.12 of ideal against
/// 1.08 at 20 ms, four runs each).
pub(super) const HORIZON: Duration = Duration::from_millis(20);

/// The planned end times of the sends in progress.
#[derive(Debug, Default)]
pub(super) struct Ending {
    /// Ends beyond the horizon, with how many sends end then.
    later: BTreeMap<Instant, u32>,
    /// Ends within the horizon, oldest first.
    soon: VecDeque<(Instant, u32)>,
    /// Sends in `soon`.
    soon_count: usize,
}

impl Ending {
    /// Records a send that ends at `end`.
    pub(super) fn add(&mut self, end: Instant) {
        *self.later.entry(end).or_default() += 1;
    }

    /// Sends that end within the horizon from `now` and have not reached
    /// their end yet.
    pub(super) fn soon(&mut self, now: Instant) -> usize {
        while let Some(entry) = self.later.first_entry() {
            if *entry.key() > now + HORIZON {
                break;
            }
            let (end, count) = entry.remove_entry();
            self.soon.push_back((end, count));
            self.soon_count += count as usize;
        }
        while let Some(&(end, count)) = self.soon.front() {
            if end > now {
                break;
            }
            self.soon.pop_front();
            self.soon_count -= count as usize;
        }
        self.soon_count
    }

    /// When the next send beyond the horizon comes within it.
    pub(super) fn next_change(&self) -> Option<Instant> {
        self.later.keys().next().map(|end| *end - HORIZON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_sends_ending_within_the_horizon() {
        let now = Instant::now();
        let mut ending = Ending::default();
        ending.add(now + Duration::from_millis(5));
        ending.add(now + Duration::from_millis(5));
        ending.add(now + Duration::from_millis(8));
        ending.add(now + Duration::from_secs(60));
        assert_eq!(ending.soon(now), 3);
        assert_eq!(
            ending.next_change(),
            Some(now + Duration::from_secs(60) - HORIZON)
        );
        // Ended sends no longer count; the slow one comes within reach.
        assert_eq!(ending.soon(now + Duration::from_millis(6)), 1);
        assert_eq!(ending.soon(now + Duration::from_secs(60) - HORIZON), 1);
        assert_eq!(ending.next_change(), None);
        assert_eq!(ending.soon(now + Duration::from_secs(61)), 0);
    }
}
