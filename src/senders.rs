//! Consumer hygiene: list the group's senders, and prune the ones that are
//! gone for good without losing anything.
//!
//! `XGROUP DELCONSUMER` drops the consumer's pending entries, which then can
//! never be claimed again: "ghost" work. So a consumer is pruned only when no
//! live process holds its name and it holds nothing: its pending entries must
//! first have been reclaimed by live senders (which happens after the lease).
//! The check and the removal are one atomic Function call, per partition: a
//! sender is a consumer of the group of each partition it read, and is
//! listed once, with what it holds in each.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::stats::SenderSnapshot;
use crate::store::{PruneOutcome, Store, StoreError};

/// One sender as the group sees it, over every partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SenderRow {
    /// The sender name.
    pub name: String,
    /// Messages it holds.
    pub pending: u64,
    /// Messages it holds in each partition, in partition order.
    pub pending_by_partition: Vec<u64>,
    /// Milliseconds since it last read or claimed, in any partition.
    pub idle_ms: u64,
    /// Whether a live process holds the name.
    pub live: bool,
}

/// The group's senders, by name, each once.
pub async fn list(store: &Store) -> Result<Vec<SenderRow>, StoreError> {
    Ok(SenderSnapshot::read_all(store)
        .await?
        .into_iter()
        .map(|s| SenderRow {
            name: s.name,
            pending: s.pending,
            pending_by_partition: s.pending_by_partition,
            idle_ms: s.idle_ms,
            live: s.live,
        })
        .collect())
}

/// The rows as an aligned table; with several partitions, a column of
/// pending messages per partition (`P0`, `P1`, …) after the total.
pub fn to_table(rows: &[SenderRow]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let partitions = rows
        .iter()
        .map(|r| r.pending_by_partition.len())
        .max()
        .unwrap_or(0);
    let columns = |cells: Vec<String>| {
        if partitions < 2 {
            return String::new();
        }
        cells.iter().map(|cell| format!("  {cell:>6}")).collect()
    };
    let mut out = format!(
        "{:<width$}  {:>8}{}  {:>10}  LIVE\n",
        "NAME",
        "PENDING",
        columns((0..partitions).map(|p| format!("P{p}")).collect()),
        "IDLE"
    );
    for row in rows {
        let idle = humantime::format_duration(Duration::from_secs(row.idle_ms / 1000)).to_string();
        out.push_str(&format!(
            "{:<width$}  {:>8}{}  {:>10}  {}\n",
            row.name,
            row.pending,
            columns(
                row.pending_by_partition
                    .iter()
                    .map(u64::to_string)
                    .collect()
            ),
            if row.idle_ms < 1000 {
                format!("{}ms", row.idle_ms)
            } else {
                idle
            },
            if row.live { "yes" } else { "no" }
        ));
    }
    out
}

/// What a prune did, per sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Removed from the group of every partition it was in.
    pub pruned: Vec<String>,
    /// Kept because a live process holds the name.
    pub live: Vec<String>,
    /// Kept because they still hold messages (reclaimed after the lease; prune again later).
    pub holding_messages: Vec<String>,
    /// Kept because they were active more recently than the threshold.
    pub recent: Vec<String>,
    /// Senders kept in some partitions and removed from these others.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pruned_in: BTreeMap<String, Vec<u32>>,
}

impl PruneReport {
    /// A readable summary.
    pub fn to_text(&self) -> String {
        let line = |what: &str, names: &[String]| {
            if names.is_empty() {
                String::new()
            } else {
                format!("{what}: {}\n", names.join(", "))
            }
        };
        let mut out = format!("pruned {} sender(s)\n", self.pruned.len());
        out.push_str(&line("pruned", &self.pruned));
        out.push_str(&line("kept, live", &self.live));
        out.push_str(&line(
            "kept, still holding messages (live senders reclaim them after the lease; prune again then)",
            &self.holding_messages,
        ));
        out.push_str(&line("kept, active recently", &self.recent));
        for (name, partitions) in &self.pruned_in {
            let partitions: Vec<String> = partitions.iter().map(u32::to_string).collect();
            out.push_str(&format!(
                "removed {name} from partition(s) {} only\n",
                partitions.join(", ")
            ));
        }
        out
    }
}

/// Removes every sender that is not live in any partition, from the group
/// of each partition where it holds nothing and was idle for at least
/// `min_idle`: it is listed as pruned once it is gone from all of them.
pub async fn prune(store: &Store, min_idle: Duration) -> Result<PruneReport, StoreError> {
    let mut report = PruneReport::default();
    for sender in SenderSnapshot::read_all(store).await? {
        let name = sender.name;
        // The lease may be held in one partition only: a live sender is
        // kept in every one.
        if sender.live {
            report.live.push(name);
            continue;
        }
        let mut outcomes = Vec::new();
        for partition in store.partitions() {
            let outcome = partition.operator().prune(&name, min_idle).await?;
            if outcome != PruneOutcome::Missing {
                outcomes.push((partition.partition_id(), outcome));
            }
        }
        let had = |wanted: PruneOutcome| outcomes.iter().any(|(_, o)| *o == wanted);
        let pruned: Vec<u32> = outcomes
            .iter()
            .filter(|(_, o)| *o == PruneOutcome::Pruned)
            .map(|(p, _)| *p)
            .collect();
        if had(PruneOutcome::Live) {
            report.live.push(name.clone());
        } else if had(PruneOutcome::Pending) {
            report.holding_messages.push(name.clone());
        } else if had(PruneOutcome::Recent) {
            report.recent.push(name.clone());
        } else if !pruned.is_empty() {
            report.pruned.push(name);
            continue;
        } else {
            continue;
        }
        if !pruned.is_empty() {
            report.pruned_in.insert(name, pruned);
        }
    }
    Ok(report)
}
