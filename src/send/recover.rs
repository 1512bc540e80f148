//! Taking over pending entries: at start, the sender first finishes the
//! messages left pending under its own name by an earlier process of that
//! name; then, between reads, it walks the group's pending list for entries
//! idle longer than the lease (a dead sender's, or failed ones due for
//! retry) and claims them, dead-lettering those out of attempts.

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dispatch::{Dispatcher, MAX_BLOCK};
use crate::store::{ClaimReply, StoreError};

/// Bounds on how often stale pending entries are looked for.
const MIN_RECLAIM_EVERY: Duration = Duration::from_millis(20);

/// Where the walk over the pending list stands, and when the next slice of
/// it is due.
#[derive(Debug)]
pub(super) struct Reclaim {
    /// The pause after a whole pass.
    every: Duration,
    next: Instant,
    /// Where the next slice starts.
    pub cursor: Option<String>,
}

impl Reclaim {
    /// A walk due now, pausing half the retry backoff between passes (within
    /// bounds), so failed messages are retried about when their backoff ends.
    pub(super) fn new(retry_backoff: Duration) -> Self {
        Self {
            every: (retry_backoff / 2).clamp(MIN_RECLAIM_EVERY, MAX_BLOCK),
            next: Instant::now(),
            cursor: None,
        }
    }

    /// Whether the next slice is due.
    pub(super) fn is_due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// How long a read may block: until the next slice is due, within bounds.
    pub(super) fn read_block(&self) -> Duration {
        self.next
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), MAX_BLOCK)
    }

    /// A pass over the pending list goes on a bounded slice per call;
    /// between slices that found nothing it pauses, so a long list is
    /// walked without hammering Redis.
    pub(super) fn advance(&mut self, reply: &ClaimReply) {
        if reply.cursor.is_none() {
            self.next = Instant::now() + self.every;
        } else if reply.claimed.is_empty() && reply.dead == 0 {
            self.next = Instant::now() + MIN_RECLAIM_EVERY;
        }
        self.cursor.clone_from(&reply.cursor);
    }
}

impl Dispatcher {
    /// Claims the next slice of stale entries of `lane`, as many as `hold`
    /// can take, and reads them ahead. One try: a failure pauses the lane
    /// (see [`Dispatcher::lane_failed`]) while the others go on.
    pub(super) async fn reclaim_stale(
        &mut self,
        lane: usize,
        mut hold: OwnedSemaphorePermit,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let wanted = hold.num_permits();
        let store = self.lanes[lane].store.clone();
        let cursor = self.lanes[lane].reclaim.cursor.clone();
        let claimed = self
            .until_stopped(
                stop,
                store.claim(
                    &self.settings.name,
                    self.settings.lease,
                    cursor.as_deref(),
                    wanted,
                    self.settings.max_attempts,
                    None,
                ),
            )
            .await;
        let reply = match claimed {
            Ok(Some(reply)) => reply,
            Ok(None) => return Ok(()),
            Err(err) => return self.lane_failed(lane, err, stop).await,
        };
        self.lanes[lane].reclaim.advance(&reply);
        self.totals.dead_on_claim += reply.dead;
        self.totals.reclaimed += reply.claimed.len() as u64;
        self.progress.dead_on_claim(reply.dead);
        self.progress.took(reply.claimed.len() as u64);
        if !reply.claimed.is_empty() {
            tracing::debug!(count = reply.claimed.len(), "reclaimed stale messages");
        }
        for claimed in reply.claimed {
            self.read_ahead(lane, claimed.entry, &mut hold);
        }
        Ok(())
    }

    /// Takes back the next page of the messages of `lane` left pending
    /// under this sender's name by an earlier process of the same name, as
    /// many as `hold` can take (the send slots free now, so they start at
    /// once), and reads them ahead; the lane is recovered after the last
    /// page. One try: a failure pauses the lane (see
    /// [`Dispatcher::lane_failed`]) while the others go on.
    pub(super) async fn recover_own(
        &mut self,
        lane: usize,
        mut hold: OwnedSemaphorePermit,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let wanted = hold.num_permits();
        let name = self.settings.name.clone();
        let store = self.lanes[lane].store.clone();
        let cursor = self.lanes[lane].recover_cursor.clone();
        let claimed = self
            .until_stopped(
                stop,
                store.claim(
                    &name,
                    Duration::ZERO,
                    cursor.as_deref(),
                    wanted,
                    self.settings.max_attempts,
                    Some(&name),
                ),
            )
            .await;
        let reply = match claimed {
            Ok(Some(reply)) => reply,
            Ok(None) => return Ok(()),
            Err(err) => return self.lane_failed(lane, err, stop).await,
        };
        self.totals.dead_on_claim += reply.dead;
        self.totals.recovered += reply.claimed.len() as u64;
        self.progress.dead_on_claim(reply.dead);
        self.progress.took(reply.claimed.len() as u64);
        if !reply.claimed.is_empty() {
            tracing::info!(
                count = reply.claimed.len(),
                partition = store.keys().partition(),
                "resuming messages left pending under this name"
            );
        }
        for claimed in reply.claimed {
            self.read_ahead(lane, claimed.entry, &mut hold);
        }
        let this = &mut self.lanes[lane];
        this.recover_retry.succeeded();
        this.recovered = reply.cursor.is_none();
        this.recover_cursor = reply.cursor;
        Ok(())
    }
}
