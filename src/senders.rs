//! Consumer hygiene: list the group's senders, and prune the ones that are
//! gone for good without losing anything.
//!
//! `XGROUP DELCONSUMER` drops the consumer's pending entries, which then can
//! never be claimed again: "ghost" work. So a consumer is pruned only when no
//! live process holds its name and it holds nothing: its pending entries must
//! first have been reclaimed by live senders (which happens after the lease).
//! The check and the removal are one atomic Function call.

use std::time::Duration;

use serde::Serialize;

use crate::store::{PruneOutcome, Store, StoreError};

/// One sender as the group sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SenderRow {
    /// The sender name.
    pub name: String,
    /// Messages it holds.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
    /// Whether a live process holds the name.
    pub live: bool,
}

/// The group's senders, by name.
pub async fn list(store: &Store) -> Result<Vec<SenderRow>, StoreError> {
    let inspector = store.inspector();
    let consumers = inspector.consumers().await?;
    let names: Vec<String> = consumers.iter().map(|c| c.name.clone()).collect();
    let live = inspector.live_names(&names).await?;
    let mut rows: Vec<SenderRow> = consumers
        .into_iter()
        .zip(live)
        .map(|(c, live)| SenderRow {
            name: c.name,
            pending: c.pending,
            idle_ms: c.idle_ms,
            live,
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// The rows as an aligned table.
pub fn to_table(rows: &[SenderRow]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "{:<width$}  {:>8}  {:>10}  LIVE\n",
        "NAME", "PENDING", "IDLE"
    );
    for row in rows {
        let idle = humantime::format_duration(Duration::from_secs(row.idle_ms / 1000)).to_string();
        out.push_str(&format!(
            "{:<width$}  {:>8}  {:>10}  {}\n",
            row.name,
            row.pending,
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
    /// Removed from the group.
    pub pruned: Vec<String>,
    /// Kept because a live process holds the name.
    pub live: Vec<String>,
    /// Kept because they still hold messages (reclaimed after the lease; prune again later).
    pub holding_messages: Vec<String>,
    /// Kept because they were active more recently than the threshold.
    pub recent: Vec<String>,
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
        out
    }
}

/// Removes every sender that is not live, holds nothing and was idle for at
/// least `min_idle`.
pub async fn prune(store: &Store, min_idle: Duration) -> Result<PruneReport, StoreError> {
    let mut report = PruneReport::default();
    for consumer in store.inspector().consumers().await? {
        let name = consumer.name;
        match store.operator().prune(&name, min_idle).await? {
            PruneOutcome::Pruned => report.pruned.push(name),
            PruneOutcome::Live => report.live.push(name),
            PruneOutcome::Pending => report.holding_messages.push(name),
            PruneOutcome::Recent => report.recent.push(name),
            PruneOutcome::Missing => {}
        }
    }
    Ok(report)
}
