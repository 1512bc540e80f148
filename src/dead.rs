//! Dead letters: list them, move them back into the stream, purge old ones.
//!
//! Requeueing is atomic per dead letter (`sms_requeue`: the message goes
//! back into the stream and its dead letter is deleted in one call) and
//! counted as `requeued`, so the audit still balances: entries added =
//! produced + requeued, and dead = dead letters in the stream + trimmed +
//! purged + requeued. Only dead letters that still hold a valid message are
//! requeued; the others are reported and left.
//!
//! Each partition has its own dead stream; a dead letter goes back into its
//! own partition's stream. Ids of different partitions may be equal, so a
//! dead letter is named `P/ID` on a queue with several (`ids.rs`).

mod ids;

use std::time::Duration;

use serde::Serialize;

use crate::channel::ChannelKind;
use crate::message::{Addressed, RawFields};
use crate::store::{Store, StoreError, StreamEntry, id_order};

/// Dead letters read per round trip.
const PAGE: usize = 100;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead stream.
    pub id: String,
    /// The partition whose dead stream holds it.
    pub partition: u32,
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
    /// The e-mail address, if the message had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The body, if the message had one.
    pub body: Option<String>,
    /// The e-mail channel's own text, if the message had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_body: Option<String>,
    /// The client's transaction id, if the message came with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// The client's customer id, if the message came with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

impl DeadLetter {
    fn from_entry(entry: &StreamEntry, partition: u32) -> Self {
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
            partition,
            reason: field("dead_reason").unwrap_or_else(|| "unknown".to_owned()),
            attempts: field("dead_attempts").and_then(|n| n.parse().ok()),
            message_id: field("dead_message_id").unwrap_or_default(),
            consumer: field("dead_consumer").unwrap_or_default(),
            recipient: field(crate::message::field::RECIPIENT),
            email: field(crate::message::field::EMAIL),
            body: field(crate::message::field::BODY),
            email_body: field(crate::message::field::EMAIL_BODY),
            transaction_id: field(crate::message::field::TRANSACTION_ID),
            customer_id: field(crate::message::field::CUSTOMER_ID),
        }
    }

    /// The address a channel of `kind` sent it to.
    pub fn address(&self, kind: ChannelKind) -> Option<&str> {
        match kind {
            ChannelKind::Sms => self.recipient.as_deref(),
            ChannelKind::Email => self.email.as_deref(),
        }
    }

    /// The text a channel of `kind` sent: the e-mail channel's own text
    /// when the message has one, else the body.
    pub fn text(&self, kind: ChannelKind) -> Option<&str> {
        match kind {
            ChannelKind::Sms => self.body.as_deref(),
            ChannelKind::Email => self.email_body.as_deref().or(self.body.as_deref()),
        }
    }
}

fn shortened(text: &str) -> String {
    crate::message::cut_short(text, 40)
}

/// Up to `limit` dead letters of every partition, newest first, only those
/// with `reason` if given. Bodies are whole here; the table shortens them.
pub async fn list(
    store: &Store,
    reason: Option<&str>,
    limit: u64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let reason = reason.map(str::to_owned);
    let parts = store
        .each_partition(|partition| {
            let reason = reason.clone();
            async move { list_partition(&partition, reason.as_deref(), limit).await }
        })
        .await?;
    let mut all: Vec<DeadLetter> = parts.into_iter().flatten().collect();
    all.sort_by_key(|letter| std::cmp::Reverse(id_order(&letter.id)));
    all.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(all)
}

/// Up to `limit` dead letters of the handle's own partition, newest first.
async fn list_partition(
    store: &Store,
    reason: Option<&str>,
    limit: u64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let partition = store.partition_id();
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
            let letter = DeadLetter::from_entry(entry, partition);
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

/// The dead letters in a table, each with the address and text a channel
/// of `kind` sent; with `partitions` over 1, each id as
/// `P/ID`, the form `dead requeue --id` takes.
pub fn to_table(letters: &[DeadLetter], partitions: u32, kind: ChannelKind) -> String {
    let mut out = format!(
        "{:<20}  {:<12}  {:>8}  {:<20}  {:<16}  {}\n",
        "dead letter", "reason", "attempts", "message", "address", "text"
    );
    for l in letters {
        out.push_str(&format!(
            "{:<20}  {:<12}  {:>8}  {:<20}  {:<16}  {}\n",
            if partitions > 1 {
                format!("{}/{}", l.partition, l.id)
            } else {
                l.id.clone()
            },
            l.reason,
            l.attempts.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            l.message_id,
            l.address(kind).unwrap_or("-"),
            l.text(kind).map_or_else(|| "-".to_owned(), shortened)
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
/// stream of their partition, each atomically. Ids are placed first (see
/// `ids.rs`): one naming no partition of the queue, or plain and held by
/// several, is refused ([`StoreError::Refused`]) before anything moves.
pub async fn requeue(store: &Store, selection: &Selection) -> Result<RequeueReport, StoreError> {
    let mut report = RequeueReport::default();
    match selection {
        Selection::Ids(given) => {
            let (placed, missing) = ids::place(store, given).await?;
            report.missing = missing;
            for (partition, ids) in placed {
                requeue_ids(&store.partition(partition), &ids, &mut report).await?;
            }
        }
        Selection::Reason(reason) => {
            for partition in store.partitions() {
                requeue_reason(&partition, reason, &mut report).await?;
            }
        }
    }
    Ok(report)
}

/// How a dead letter of the handle's partition is named in a report: `P/ID`
/// on a queue with several partitions.
fn shown(store: &Store, id: &str) -> String {
    if store.partition_count() > 1 {
        format!("{}/{id}", store.partition_id())
    } else {
        id.to_owned()
    }
}

/// Requeues the dead letters `ids` of the handle's partition.
async fn requeue_ids(
    store: &Store,
    ids: &[String],
    report: &mut RequeueReport,
) -> Result<(), StoreError> {
    let inspector = store.inspector();
    let conn = inspector.read_connection(Duration::ZERO).await?;
    let mut chosen = Vec::new();
    for id in ids {
        match inspector.range_one(&conn, &store.keys().dead(), id).await? {
            Some(entry) => choose(store, &entry, &mut chosen, report),
            None => report.missing.push(shown(store, id)),
        }
    }
    move_back(store, &chosen, report).await
}

/// Requeues the dead letters with `reason` of the handle's partition.
async fn requeue_reason(
    store: &Store,
    reason: &str,
    report: &mut RequeueReport,
) -> Result<(), StoreError> {
    let inspector = store.inspector();
    let conn = inspector.read_connection(Duration::ZERO).await?;
    // Oldest first; requeued letters leave the stream, so a page starts
    // after the last id seen rather than at an offset.
    let mut after: Option<String> = None;
    loop {
        let page = inspector
            .range_page(&conn, &store.keys().dead(), after.as_deref(), PAGE)
            .await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.id.clone());
        let full = page.len() == PAGE;
        let mut chosen = Vec::new();
        for entry in &page {
            if DeadLetter::from_entry(entry, store.partition_id()).reason == reason {
                choose(store, entry, &mut chosen, report);
            }
        }
        move_back(store, &chosen, report).await?;
        if !full {
            return Ok(());
        }
    }
}

/// Adds `entry` to `chosen` if it holds a valid message, else to the report.
fn choose(
    store: &Store,
    entry: &StreamEntry,
    chosen: &mut Vec<String>,
    report: &mut RequeueReport,
) {
    let message: RawFields = entry
        .fields
        .iter()
        .filter(|(k, _)| !k.starts_with(b"dead_"))
        .cloned()
        .collect();
    if let Some(oversized) = &entry.oversized {
        report.skipped.push((
            shown(store, &entry.id),
            format!("not a valid message ({oversized})"),
        ));
        return;
    }
    // The channel's senders' own rule: an e-mail alone, or a long e-mail
    // text, is a valid message too.
    let channel = store.channel();
    match Addressed::from_fields(&message, &channel.name, channel.kind.address_field()) {
        Ok(_) => chosen.push(entry.id.clone()),
        Err(err) => report.skipped.push((
            shown(store, &entry.id),
            format!("not a valid message ({err})"),
        )),
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
    report
        .missing
        .extend(missing.iter().map(|id| shown(store, id)));
    Ok(())
}

/// Deletes the dead letters of every partition older than `older_than` (by
/// the clock of partition 0's Redis, so that every partition keeps the
/// same ones), a bounded slice per call. Returns how many.
pub async fn purge(store: &Store, older_than: Duration) -> Result<u64, StoreError> {
    let now_ms = store.partition(0).inspector().server_time_ms().await?;
    let min_id = format!("{}-0", now_ms.saturating_sub(older_than.as_millis() as u64));
    let mut purged = 0;
    for partition in store.partitions() {
        let operator = partition.operator();
        loop {
            let n = operator
                .retrying("purge dead letters", || operator.purge_dead(&min_id))
                .await?;
            if n == 0 {
                break;
            }
            purged += n;
        }
    }
    Ok(purged)
}
