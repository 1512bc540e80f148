//! Dead letters: list them, move them back into the stream, purge old ones.
//!
//! Requeueing is atomic per dead letter (`sms_requeue`: the message goes
//! back into the stream and its dead letter is deleted in one call) and
//! counted as `requeued`, so the audit still balances: entries added =
//! produced + requeued, and dead = dead letters in the stream + trimmed +
//! purged + requeued. Only dead letters that still hold a valid message are
//! requeued; the others are reported and left.

use std::time::Duration;

use serde::Serialize;

use crate::message::{Message, RawFields};
use crate::store::{Store, StoreError, StreamEntry};

/// Dead letters read per round trip.
const PAGE: usize = 100;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead stream.
    pub id: String,
    /// Why it died: max_attempts, malformed or deleted.
    pub reason: String,
    /// Deliveries it had (`None` when not recorded).
    pub attempts: Option<u64>,
    /// The id the message had in the stream.
    pub message_id: String,
    /// The sender that dead-lettered it.
    pub consumer: String,
    /// The recipient, if the message had one.
    pub recipient: Option<String>,
    /// The body, if the message had one.
    pub body: Option<String>,
}

impl DeadLetter {
    fn from_entry(entry: &StreamEntry) -> Self {
        let field = |name: &str| {
            entry
                .fields
                .iter()
                .rev()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        Self {
            id: entry.id.clone(),
            reason: field("dead_reason").unwrap_or_else(|| "unknown".to_owned()),
            attempts: field("dead_attempts").and_then(|n| n.parse().ok()),
            message_id: field("dead_message_id").unwrap_or_default(),
            consumer: field("dead_consumer").unwrap_or_default(),
            recipient: field(crate::message::field::RECIPIENT),
            body: field(crate::message::field::BODY),
        }
    }
}

fn shortened(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Up to `limit` dead letters, newest first, only those with `reason` if given.
/// Bodies are whole here; the table shortens them.
pub async fn list(
    store: &Store,
    reason: Option<&str>,
    limit: u64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let inspector = store.inspector();
    let conn = inspector.read_connection(Duration::ZERO).await?;
    let mut found = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = inspector
            .range_page_rev(&conn, &store.keys().dead(), before.as_deref(), PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        let full = page.len() == PAGE;
        for entry in &page {
            let letter = DeadLetter::from_entry(entry);
            if reason.is_none_or(|reason| letter.reason == reason) {
                found.push(letter);
                if found.len() as u64 >= limit {
                    return Ok(found);
                }
            }
        }
        if !full {
            break;
        }
    }
    Ok(found)
}

/// The dead letters in a table.
pub fn to_table(letters: &[DeadLetter]) -> String {
    let mut out = format!(
        "{:<20}  {:<12}  {:>8}  {:<20}  {:<16}  {}\n",
        "dead letter", "reason", "attempts", "message", "recipient", "body"
    );
    for l in letters {
        out.push_str(&format!(
            "{:<20}  {:<12}  {:>8}  {:<20}  {:<16}  {}\n",
            l.id,
            l.reason,
            l.attempts.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            l.message_id,
            l.recipient.as_deref().unwrap_or("-"),
            l.body.as_deref().map_or_else(|| "-".to_owned(), shortened)
        ));
    }
    out
}

/// Which dead letters to requeue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every dead letter with this reason.
    Reason(String),
    /// These dead letters.
    Ids(Vec<String>),
}

/// What a requeue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequeueReport {
    /// Dead letters moved back into the stream.
    pub requeued: u64,
    /// Dead letters left because they hold no valid message, with why.
    pub skipped: Vec<(String, String)>,
    /// Ids asked for that are not in the dead stream.
    pub missing: Vec<String>,
}

impl RequeueReport {
    /// A readable report.
    pub fn to_text(&self) -> String {
        let mut out = format!("requeued {} dead letters\n", self.requeued);
        for (id, why) in &self.skipped {
            out.push_str(&format!("left {id}: {why}\n"));
        }
        for id in &self.missing {
            out.push_str(&format!("not found: {id}\n"));
        }
        out
    }
}

/// Moves the selected dead letters that hold a valid message back into the
/// stream, each atomically.
pub async fn requeue(store: &Store, selection: &Selection) -> Result<RequeueReport, StoreError> {
    let inspector = store.inspector();
    let conn = inspector.read_connection(Duration::ZERO).await?;
    let mut report = RequeueReport::default();
    match selection {
        Selection::Ids(ids) => {
            let mut chosen = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
                match inspector.range_one(&conn, &store.keys().dead(), id).await? {
                    Some(entry) => choose(&entry, &mut chosen, &mut report),
                    None => report.missing.push(id.clone()),
                }
            }
            move_back(store, &chosen, &mut report).await?;
        }
        Selection::Reason(reason) => {
            // Oldest first; requeued letters leave the stream, so a page
            // starts after the last id seen rather than at an offset.
            let mut after: Option<String> = None;
            loop {
                let page = inspector
                    .range_page(&conn, &store.keys().dead(), after.as_deref(), PAGE)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let full = page.len() == PAGE;
                let mut chosen = Vec::new();
                for entry in &page {
                    if DeadLetter::from_entry(entry).reason == *reason {
                        choose(entry, &mut chosen, &mut report);
                    }
                }
                move_back(store, &chosen, &mut report).await?;
                if !full {
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// Adds `entry` to `chosen` if it holds a valid message, else to the report.
fn choose(entry: &StreamEntry, chosen: &mut Vec<String>, report: &mut RequeueReport) {
    let message: RawFields = entry
        .fields
        .iter()
        .filter(|(k, _)| !k.starts_with(b"dead_"))
        .cloned()
        .collect();
    if let Some(oversized) = &entry.oversized {
        report.skipped.push((
            entry.id.clone(),
            format!("not a valid message ({oversized})"),
        ));
        return;
    }
    match Message::from_fields(&message) {
        Ok(_) => chosen.push(entry.id.clone()),
        Err(err) => report
            .skipped
            .push((entry.id.clone(), format!("not a valid message ({err})"))),
    }
}

async fn move_back(
    store: &Store,
    ids: &[String],
    report: &mut RequeueReport,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let operator = store.operator();
    let (requeued, missing) = operator
        .retrying("requeue dead letters", || operator.requeue(ids))
        .await?;
    report.requeued += requeued;
    report.missing.extend(missing);
    Ok(())
}

/// Deletes dead letters older than `older_than` (by Redis's clock), a
/// bounded slice per call. Returns how many.
pub async fn purge(store: &Store, older_than: Duration) -> Result<u64, StoreError> {
    let now_ms = store.inspector().server_time_ms().await?;
    let min_id = format!("{}-0", now_ms.saturating_sub(older_than.as_millis() as u64));
    let operator = store.operator();
    let mut purged = 0;
    loop {
        let n = operator
            .retrying("purge dead letters", || operator.purge_dead(&min_id))
            .await?;
        if n == 0 {
            return Ok(purged);
        }
        purged += n;
    }
}
