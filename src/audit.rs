//! The audit: an independent reconciliation of what the counters say against
//! what Redis holds, entry by entry.
//!
//! The stream and the group's pending list are both ordered by id, so one
//! merge walk over pages of each classifies every stream entry as
//! acknowledged, pending or never delivered, and finds pending entries whose
//! stream entry is gone. Only counters are kept in memory, so ten million
//! entries cost the same memory as ten. Run it on a quiet queue (e.g. after
//! `monitor --until-done`): entries moving between the reads of a live run can
//! show up as differences. Entries trimmed by retention while it walks are
//! told apart: the walk is repeated when the trim counters moved under it.
//!
//! With retention, settled entries leave the stream, so the books are:
//! entries added = settled + pending + queued; entries in the stream
//! acknowledged + trimmed + deleted while pending = settled, where settled
//! = sent + dead + abandoned + skipped + uncounted (+ those before a
//! channel began); dead letters in the dead stream + trimmed + purged +
//! requeued = dead. A queue whose identity is gone (flushed, restarted empty) is
//! inconsistent whatever its figures say.
//!
//! Each partition has its own stream, pending list, dead stream and
//! counters, so each is reconciled on its own (all at once); the report
//! gives the totals, and names the partitions that do not reconcile.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::stats::{QueueState, Snapshot};
use crate::store::{Inspector, PendingRow, Store, StoreError, id_order};

/// Default entries read per round trip.
pub const DEFAULT_PAGE: usize = crate::settings::DEFAULT_AUDIT_PAGE;

/// What the audit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Entries ever added to the stream.
    pub produced: u64,
    /// Entries in the stream now.
    pub stream_length: u64,
    /// Stream entries delivered and no longer pending.
    pub acknowledged: u64,
    /// Stream entries in the pending list.
    pub pending: u64,
    /// Stream entries never delivered yet (not a problem while a run goes on).
    pub queued: u64,
    /// Pending entries whose stream entry no longer exists.
    pub dangling_pending: u64,
    /// Entries in the dead stream.
    pub dead_length: u64,
    /// Dead-stream entries by `dead_reason`.
    pub dead_by_reason: BTreeMap<String, u64>,
    /// The counters, as read before the walk.
    pub counters: Snapshot,
    /// Every inconsistency found, one sentence each (naming its partition
    /// when the queue has several); empty when consistent.
    pub problems: Vec<String>,
    /// Each partition's own report, in partition order, when the queue has
    /// more than one; the figures above are their totals.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<AuditReport>,
    /// The channel reconciled above.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// Every channel's own report, by name, when the queue has more than
    /// one; the problems above include theirs, each naming its channel.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, AuditReport>,
}

impl AuditReport {
    /// Whether everything reconciles.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }

    /// The partitions that do not reconcile (none for a queue with one).
    pub fn inconsistent_partitions(&self) -> Vec<u32> {
        (0..)
            .zip(&self.partitions)
            .filter(|(_, part)| !part.is_consistent())
            .map(|(partition, _)| partition)
            .collect()
    }

    /// A report of no entries, with `counters` and `problems`.
    fn empty(counters: Snapshot, problems: Vec<String>) -> AuditReport {
        AuditReport {
            produced: 0,
            stream_length: 0,
            acknowledged: 0,
            pending: 0,
            queued: 0,
            dangling_pending: 0,
            dead_length: 0,
            dead_by_reason: BTreeMap::new(),
            counters,
            problems,
            partitions: Vec::new(),
            channel: String::new(),
            channels: BTreeMap::new(),
        }
    }

    /// The queue's report from its partitions' (in partition order): the
    /// figures summed, each problem prefixed with its partition. A queue
    /// with one partition has that partition's report as it is.
    fn total(mut parts: Vec<AuditReport>) -> AuditReport {
        if parts.len() == 1 {
            return parts.remove(0);
        }
        let mut counters = Snapshot::total(parts.iter().map(|p| p.counters.clone()).collect());
        counters.partitions.clear();
        let mut total = AuditReport::empty(counters, Vec::new());
        for (partition, part) in (0..).zip(&parts) {
            total.produced += part.produced;
            total.stream_length += part.stream_length;
            total.acknowledged += part.acknowledged;
            total.pending += part.pending;
            total.queued += part.queued;
            total.dangling_pending += part.dangling_pending;
            total.dead_length += part.dead_length;
            for (reason, n) in &part.dead_by_reason {
                *total.dead_by_reason.entry(reason.clone()).or_insert(0) += n;
            }
            let named = part
                .problems
                .iter()
                .map(|p| format!("partition {partition}: {p}"));
            total.problems.extend(named);
        }
        total.partitions = parts;
        total
    }

    /// The line that says the books balance.
    fn balanced_line(&self) -> String {
        let c = &self.counters;
        let skipped = settled_terms(c);
        let unseen = if c.unseen > 0 {
            format!(" - before the channel {}", c.unseen)
        } else {
            String::new()
        };
        format!(
            "consistent: sent {} + dead {} + abandoned {}{skipped} + pending {} + queued {} = \
             produced {}{unseen}",
            c.sent, c.dead, c.abandoned, self.pending, self.queued, self.produced
        )
    }

    /// A readable multi-line report.
    pub fn to_text(&self) -> String {
        let c = &self.counters;
        let reasons = self
            .dead_by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = format!(
            "produced (entries added)  {}\n\
             in the stream             {}\n\
             acknowledged              {} (counted: sent {} + dead {})\n\
             trimmed by retention      {}\n\
             pending                   {}\n\
             queued, never delivered   {}\n\
             dead stream               {}{} (trimmed {}, purged {}, requeued {})\n\
             failed attempts           {}\n\
             duplicate deliveries      {}\n",
            self.produced,
            self.stream_length,
            self.acknowledged,
            c.sent,
            c.dead,
            c.trimmed,
            self.pending,
            self.queued,
            self.dead_length,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({reasons})")
            },
            c.dead_trimmed,
            c.dead_purged,
            c.requeued,
            c.failed,
            c.duplicates,
        );
        if c.abandoned > 0 {
            out.push_str(&format!("abandoned by a repair      {}\n", c.abandoned));
        }
        if c.uncounted > 0 {
            out.push_str(&format!("uncounted, before a repair {}\n", c.uncounted));
        }
        for (partition, part) in (0..).zip(&self.partitions) {
            let verdict = if part.is_consistent() {
                part.balanced_line()
            } else {
                "INCONSISTENT".to_owned()
            };
            out.push_str(&format!("partition {partition}: {verdict}\n"));
        }
        for (name, channel) in &self.channels {
            let verdict = if channel.is_consistent() {
                channel.balanced_line()
            } else {
                "INCONSISTENT".to_owned()
            };
            out.push_str(&format!("channel {name}: {verdict}\n"));
        }
        if self.is_consistent() {
            out.push_str(&format!("{}\n", self.balanced_line()));
        } else {
            match self.inconsistent_partitions().as_slice() {
                [] => out.push_str("INCONSISTENT:\n"),
                bad => {
                    let bad: Vec<String> = bad.iter().map(u32::to_string).collect();
                    out.push_str(&format!("INCONSISTENT in partition {}:\n", bad.join(", ")));
                }
            }
            for problem in &self.problems {
                out.push_str(&format!("  - {problem}\n"));
            }
        }
        out
    }
}

/// Walks the pending list page by page, in id order.
struct PendingCursor<'a> {
    store: &'a Inspector,
    page_size: usize,
    page: std::vec::IntoIter<PendingRow>,
    head: Option<PendingRow>,
    after: Option<String>,
    exhausted: bool,
}

impl<'a> PendingCursor<'a> {
    fn new(store: &'a Inspector, page_size: usize) -> Self {
        Self {
            store,
            page_size,
            page: Vec::new().into_iter(),
            head: None,
            after: None,
            exhausted: false,
        }
    }

    /// The next row not yet consumed, fetching a page when needed.
    async fn peek(&mut self) -> Result<Option<&PendingRow>, StoreError> {
        if self.head.is_none() {
            self.head = self.page.next();
            if self.head.is_none() && !self.exhausted {
                let rows = self
                    .store
                    .pending_page(self.after.as_deref(), self.page_size)
                    .await?;
                self.exhausted = rows.len() < self.page_size;
                self.after = rows.last().map(|row| row.id.clone()).or(self.after.take());
                self.page = rows.into_iter();
                self.head = self.page.next();
            }
        }
        Ok(self.head.as_ref())
    }

    fn advance(&mut self) {
        self.head = None;
    }
}

/// The counters; or, when Redis lacks the Functions library because the
/// queue's state is gone with it (a Redis restarted without its data), the
/// report of that loss.
async fn counters(store: &Store) -> Result<Result<Snapshot, AuditReport>, StoreError> {
    let err = match Snapshot::read_partition(store).await {
        Ok(counters) => return Ok(Ok(counters)),
        Err(err) if err.needs_library() => err,
        Err(err) => return Err(err),
    };
    match store.diagnose().await {
        Err(lost) if lost.is_queue_state() => Ok(Err(AuditReport::empty(
            Snapshot::default(),
            vec![lost.to_string()],
        ))),
        Err(other) => Err(other),
        // Only the library is gone (FUNCTION FLUSH): code, loaded again.
        Ok(()) => {
            tracing::warn!(error = %err, "loading the Functions library again");
            store.ensure_library().await?;
            Ok(Ok(Snapshot::read_partition(store).await?))
        }
    }
}

/// Walks tried before the audit reports what it found although retention
/// trimmed under it each time.
const WALKS: usize = 3;

/// Audits the queue, every partition Redis holds of it at once, reading
/// `page` entries per round trip.
pub async fn run(store: &Store, page: usize) -> Result<AuditReport, StoreError> {
    let store = store.found_partitions().await?.found_channels().await?;
    let foreign = store.foreign_partitions().await?;
    let unlisted = store.unlisted_channels().await?;
    let mut report = audit_channels(&store, page).await?;
    // Another queue's partition reconciles on its own, so only its epoch
    // shows it is not this queue's; a channel the list lost is not audited
    // at all, so only its leftover keys show it.
    let foreign = foreign.iter().map(ToString::to_string);
    let listed = crate::channel::encode(store.channels());
    let unlisted = unlisted.iter().map(|name| {
        format!(
            "channel {name}: partition 0 holds its consumer group and counters, but the \
             queue's channel list ({listed}) does not name it, so nothing sends or audits it: \
             `sms-alerts migrate --channels` with it records it again"
        )
    });
    report.problems.splice(0..0, foreign.chain(unlisted));
    Ok(report)
}

/// Audits every channel of the queue.
async fn audit_channels(store: &Store, page: usize) -> Result<AuditReport, StoreError> {
    if store.channels().len() == 1 {
        return audit_channel(store, page).await;
    }
    let mut channels = BTreeMap::new();
    for channel in store.every_channel() {
        channels.insert(
            channel.group().to_owned(),
            audit_channel(&channel, page).await?,
        );
    }
    let mut report = channels
        .get(store.group())
        .cloned()
        .unwrap_or_else(|| AuditReport::empty(Snapshot::default(), Vec::new()));
    report.problems = channels
        .iter()
        .flat_map(|(name, channel)| {
            channel
                .problems
                .iter()
                .map(move |p| format!("channel {name}: {p}"))
        })
        .collect();
    report.channels = channels;
    Ok(report)
}

/// Audits one channel: every partition at once.
async fn audit_channel(store: &Store, page: usize) -> Result<AuditReport, StoreError> {
    let parts = store
        .each_partition(|partition| async move { audit_partition(&partition, page).await })
        .await?;
    let mut report = AuditReport::total(parts);
    report.channel = store.group().to_owned();
    Ok(report)
}

/// How many of this partition's dead letters of the handle's channel were
/// requeued. The first channel's are the totals' `requeued` less the other
/// channels' own: `requeued` counted them alone before queues had channels.
async fn dead_requeued(store: &Store, counters: &Snapshot) -> Result<u64, StoreError> {
    let first = store.channels().first().map(|c| c.name.as_str());
    if first != Some(store.group()) {
        return Ok(counters.dead_requeued);
    }
    let mut others = 0;
    for channel in store.every_channel().iter().skip(1) {
        others += Snapshot::read_partition(channel).await?.dead_requeued;
    }
    Ok(counters.requeued.saturating_sub(others))
}

/// Audits the handle's own partition.
async fn audit_partition(store: &Store, page: usize) -> Result<AuditReport, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let report = walk(store, page.max(1)).await?;
        let after = match Snapshot::read_partition(store).await {
            Ok(after) => after,
            // The walk found the queue's state gone with the library.
            Err(err) if err.needs_library() => return Ok(report),
            Err(err) => return Err(err),
        };
        let moved = (after.trimmed, after.dead_trimmed)
            != (report.counters.trimmed, report.counters.dead_trimmed);
        if !moved || tries == WALKS {
            return Ok(report);
        }
    }
}

/// One walk over the stream, the pending list and the dead stream.
async fn walk(store: &Store, page: usize) -> Result<AuditReport, StoreError> {
    let counters = match counters(store).await? {
        Ok(counters) => counters,
        Err(lost) => return Ok(lost),
    };
    let inspector = store.inspector();
    let group = inspector.group_info().await?;
    let info = inspector.stream_info(&store.keys().messages()).await?;
    let last_delivered = id_order(if group.exists {
        &group.last_delivered_id
    } else {
        "0-0"
    });

    let (mut acknowledged, mut pending, mut queued, mut dangling) = (0u64, 0u64, 0u64, 0u64);
    let mut cursor = PendingCursor::new(&inspector, page);
    // Without a group there is no pending list to walk.
    cursor.exhausted = !group.exists;
    let ids = store.read_connection(Duration::ZERO).await?;
    let mut after: Option<String> = None;
    loop {
        let entries = inspector
            .range_ids(&ids, &store.keys().messages(), after.as_deref(), page)
            .await?;
        let Some(last) = entries.last() else { break };
        after = Some(last.clone());
        let full_page = entries.len() == page;
        for entry in entries {
            let id = id_order(&entry);
            let mut is_pending = false;
            while let Some(row) = cursor.peek().await? {
                let row_id = id_order(&row.id);
                if row_id < id {
                    dangling += 1;
                    cursor.advance();
                } else {
                    is_pending = row_id == id;
                    if is_pending {
                        cursor.advance();
                    }
                    break;
                }
            }
            if is_pending {
                pending += 1;
            } else if id > last_delivered {
                queued += 1;
            } else {
                acknowledged += 1;
            }
        }
        if !full_page {
            break;
        }
    }
    while cursor.peek().await?.is_some() {
        dangling += 1;
        cursor.advance();
    }

    let dead_key = store.keys().dead();
    let dead_kind = store.operator().key_type(&dead_key).await?;
    let dead_damage = (!matches!(dead_kind.as_str(), "stream" | "none")).then(|| {
        format!(
            "queue state damaged: {dead_key} is a {dead_kind}, not a stream of dead letters: \
             see `sms-alerts repair`"
        )
    });
    let (dead_length, dead_by_reason) = match dead_damage {
        Some(_) => (0, BTreeMap::new()),
        None => inspector.dead_reasons(&ids, page).await?,
    };
    let requeued = dead_requeued(store, &counters).await?;

    let mut report = AuditReport {
        produced: info.entries_added,
        stream_length: info.length,
        acknowledged,
        pending,
        queued,
        dangling_pending: dangling,
        dead_length,
        dead_by_reason,
        counters,
        problems: Vec::new(),
        partitions: Vec::new(),
        channel: String::new(),
        channels: BTreeMap::new(),
    };
    report.problems = problems(&report, group.pending, requeued);
    report.problems.extend(dead_damage);
    Ok(report)
}

/// Every way the figures fail to reconcile.
fn problems(r: &AuditReport, pending_summary: u64, dead_requeued: u64) -> Vec<String> {
    let c = &r.counters;
    let mut problems = Vec::new();
    match c.state {
        QueueState::Sound => {}
        state if state.is_lost() => {
            problems.push(format!("queue state lost: {}", c.state_detail));
        }
        _ => problems.push(format!("queue state damaged: {}", c.state_detail)),
    }
    if r.dangling_pending > 0 {
        problems.push(format!(
            "{} pending entries point at stream entries that no longer exist",
            r.dangling_pending
        ));
    }
    if r.pending + r.dangling_pending != pending_summary {
        problems.push(format!(
            "the pending list had {pending_summary} entries but the walk found {} (was a sender running?)",
            r.pending + r.dangling_pending
        ));
    }
    let dead_left = c.dead_trimmed + c.dead_purged + dead_requeued;
    if r.dead_length + dead_left != c.dead {
        problems.push(format!(
            "the dead stream holds {} entries, and {} left it (trimmed {}, purged {}, requeued \
             {}), but the dead counter says {}",
            r.dead_length, dead_left, c.dead_trimmed, c.dead_purged, dead_requeued, c.dead
        ));
    }
    // Entries that left the dead stream are counted in all, not by reason.
    if dead_left == 0 {
        for (reason, counted) in [
            ("max_attempts", c.dead_max_attempts),
            ("malformed", c.dead_malformed),
            ("deleted", c.dead_deleted),
            ("expired", c.dead_expired),
        ] {
            let found = r.dead_by_reason.get(reason).copied().unwrap_or(0);
            if found != counted {
                problems.push(format!(
                    "the dead stream holds {found} entries with reason {reason} but the counter says {counted}"
                ));
            }
        }
    }
    let settled = c.settled();
    let accounted = settled + r.pending + r.queued;
    let own = r.produced.saturating_sub(c.unseen);
    if accounted != own {
        let before = if c.unseen > 0 {
            format!(" ({} before the channel began)", c.unseen)
        } else {
            String::new()
        };
        let skipped = settled_terms(c);
        problems.push(format!(
            "sent {} + dead {} + abandoned {}{skipped} + pending {} + queued {} = {accounted}, \
             but {own} entries were produced{before}",
            c.sent, c.dead, c.abandoned, r.pending, r.queued
        ));
    }
    // An entry leaves the stream only by retention, or deleted while
    // pending (then dead-lettered): any other deletion (an XDEL by hand) is
    // a message that may never be sent, and makes the check below moot.
    let left = r.stream_length + c.trimmed + c.dead_deleted;
    if left != r.produced {
        problems.push(format!(
            "{} entries were produced but the stream holds {} and {} were trimmed and {} \
             deleted while pending: {} left the stream some other way (XDEL?)",
            r.produced,
            r.stream_length,
            c.trimmed,
            c.dead_deleted,
            r.produced as i64 - left as i64
        ));
    } else if r.acknowledged + c.trimmed + c.dead_deleted != settled + c.unseen {
        // Entries from before a channel began count as acknowledged by it:
        // it never reads them.
        problems.push(format!(
            "{} entries were acknowledged (in the stream {}, trimmed {}, deleted while pending \
             {}) but sent {} + dead {} + abandoned {}{} = {} were counted",
            r.acknowledged + c.trimmed + c.dead_deleted,
            r.acknowledged,
            c.trimmed,
            c.dead_deleted,
            c.sent,
            c.dead,
            c.abandoned,
            channel_terms(c),
            settled + c.unseen
        ));
    }
    if c.produced_by_producers > r.produced {
        problems.push(format!(
            "producers recorded {} messages but the stream received only {}",
            c.produced_by_producers, r.produced
        ));
    }
    problems
}

/// The settled terms beyond sent, dead and abandoned, as ` + skipped 3 +
/// uncounted 7` (those that are not zero).
fn settled_terms(c: &Snapshot) -> String {
    let mut terms = String::new();
    if c.skipped > 0 {
        terms.push_str(&format!(" + skipped {}", c.skipped));
    }
    if c.uncounted > 0 {
        terms.push_str(&format!(" + uncounted {}", c.uncounted));
    }
    terms
}

/// The terms only a channel has, and those of a repair, as ` + skipped 3 +
/// before the channel 5` (those that are not zero).
fn channel_terms(c: &Snapshot) -> String {
    let mut terms = settled_terms(c);
    if c.unseen > 0 {
        terms.push_str(&format!(" + before the channel {}", c.unseen));
    }
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_numerically() {
        assert!(id_order("1700000000000-10") > id_order("1700000000000-9"));
        assert!(id_order("1700000000001-0") > id_order("1700000000000-99"));
        assert_eq!(id_order("0-0"), (0, 0));
    }

    #[test]
    fn a_lost_message_is_a_problem() {
        let report = AuditReport {
            produced: 10,
            stream_length: 10,
            acknowledged: 9,
            pending: 0,
            queued: 0,
            dangling_pending: 0,
            dead_length: 0,
            dead_by_reason: BTreeMap::new(),
            counters: Snapshot {
                sent: 9,
                ..Snapshot::default()
            },
            problems: Vec::new(),
            partitions: Vec::new(),
            channel: String::new(),
            channels: BTreeMap::new(),
        };
        let found = problems(&report, 0, report.counters.requeued);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("= 9, but 10 entries were produced"),
            "{found:?}"
        );
    }

    /// A queue of 10 messages, 6 sent, 2 dead (one per reason, one of them
    /// trimmed from the stream), 1 pending and 1 never delivered, whose
    /// figures all reconcile.
    fn balanced() -> AuditReport {
        AuditReport {
            produced: 10,
            stream_length: 9,
            acknowledged: 7,
            pending: 1,
            queued: 1,
            dangling_pending: 0,
            dead_length: 2,
            dead_by_reason: BTreeMap::from([
                ("max_attempts".to_owned(), 1),
                ("malformed".to_owned(), 1),
            ]),
            counters: Snapshot {
                sent: 6,
                dead: 2,
                dead_max_attempts: 1,
                dead_malformed: 1,
                trimmed: 1,
                produced_by_producers: 10,
                ..Snapshot::default()
            },
            problems: Vec::new(),
            partitions: Vec::new(),
            channel: String::new(),
            channels: BTreeMap::new(),
        }
    }

    /// A problem expected, the damage that causes it, and the pending list's
    /// length as Redis summarises it.
    type Case = (&'static str, fn(&mut AuditReport), u64);

    #[test]
    fn each_mismatch_is_named_with_its_figures() {
        assert_eq!(
            problems(&balanced(), 1, balanced().counters.requeued),
            Vec::<String>::new()
        );
        let cases: [Case; 8] = [
            (
                "queue state lost: flushed",
                |r| {
                    r.counters.state = QueueState::Lost;
                    r.counters.state_detail = "flushed".to_owned();
                },
                1,
            ),
            (
                "queue state damaged: counter x",
                |r| {
                    r.counters.state = QueueState::Damaged;
                    r.counters.state_detail = "counter x".to_owned();
                },
                1,
            ),
            (
                "1 pending entries point at stream entries that no longer exist",
                |r| r.dangling_pending = 1,
                2,
            ),
            (
                "the pending list had 3 entries but the walk found 1",
                |_| {},
                3,
            ),
            (
                "the dead stream holds 3 entries, and 0 left it",
                |r| r.dead_length = 3,
                1,
            ),
            (
                "the dead stream holds 0 entries with reason malformed but the counter says 1",
                |r| {
                    r.dead_by_reason.remove("malformed");
                    r.dead_by_reason.insert("unknown".to_owned(), 1);
                },
                1,
            ),
            (
                "1 left the stream some other way (XDEL?)",
                |r| r.stream_length = 8,
                1,
            ),
            (
                "producers recorded 11 messages but the stream received only 10",
                |r| r.counters.produced_by_producers = 11,
                1,
            ),
        ];
        for (expected, damage, pending_summary) in cases {
            let mut report = balanced();
            damage(&mut report);
            let found = problems(&report, pending_summary, report.counters.requeued);
            assert!(
                found.len() == 1 && found[0].contains(expected),
                "expected only '{expected}', found {found:?}"
            );
        }
    }

    #[test]
    fn acknowledged_entries_must_match_what_was_settled() {
        let mut report = balanced();
        report.acknowledged = 6;
        let found = problems(&report, 1, report.counters.requeued);
        assert_eq!(
            found,
            ["7 entries were acknowledged (in the stream 6, trimmed 1, deleted while pending 0) \
              but sent 6 + dead 2 + abandoned 0 = 8 were counted"
                .to_owned()]
        );
    }
}
