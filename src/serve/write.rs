//! Writing a request's valid messages: each to its queue and partition (by
//! its explicit partition, else its key, else its recipient: the producer's
//! routing), one `sms_ingest` call per (queue, partition, idempotency key),
//! all at once.
//!
//! Idempotency. An `Idempotency-Key` header covers the whole request: every
//! call carries a record of it, fingerprinted by the request's bytes, so a
//! repeat lands nothing and gets the ids of the first. Before any message is
//! written, partition 0 of each queue the request names takes the record
//! (with partition 0's messages, or none): a key reused with another request
//! is refused there (422) while nothing of the new request is written,
//! whichever partitions either request touches. Without the header, a
//! message's `request_id` is its own idempotency key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::answer::{Accepted, Outcome, Refusal};
use super::queues::{Queue, QueueError};
use super::request::Incoming;
use super::{App, IDEMPOTENCY_HEADER};
use crate::message::Message;
use crate::routing::partition_of_key;
use crate::store::{IdempotencyRecord, Ingested, Ingester, StoreError};

/// What a request's messages came to.
#[derive(Debug)]
pub(super) struct Written {
    /// One outcome per message of the request, in order.
    pub(super) outcomes: Vec<Outcome>,
    /// Whether every write found the request written before.
    pub(super) replayed: bool,
}

/// Messages bound for one partition under one idempotency key.
#[derive(Debug)]
struct Unit {
    /// The queue's name.
    topic: String,
    ingester: Ingester,
    partition: u32,
    record: Option<IdempotencyRecord>,
    /// The request's message indexes it carries, in order.
    indexes: Vec<usize>,
    fields: Vec<Vec<(&'static str, String)>>,
    /// Whether this unit is a queue's partition-0 anchor of a header key.
    anchor: bool,
}

/// Writes `messages` (valid or already refused) and says what became of
/// each. A header key reused with another request refuses it whole (422).
pub(super) async fn write(
    app: &App,
    header_key: Option<&str>,
    raw_body: &[u8],
    messages: Vec<Result<Incoming, Refusal>>,
) -> Result<Written, Refusal> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(messages.len());
    let mut units: Vec<Unit> = Vec::new();
    let mut unit_of: HashMap<(String, u32, Option<String>), usize> = HashMap::new();
    let mut queues: HashMap<Option<String>, Result<Arc<Queue>, Refusal>> = HashMap::new();
    let body_fingerprint = header_key.map(|_| fingerprint(&[raw_body]));
    let id_fingerprints = request_id_fingerprints(&messages);
    let now_ms = now_ms();
    for (index, message) in messages.into_iter().enumerate() {
        let incoming = match message {
            Ok(incoming) => incoming,
            Err(refusal) => {
                outcomes.push(Some(Outcome::Refused(refusal)));
                continue;
            }
        };
        let queue = match queues.get(&incoming.topic) {
            Some(found) => found.clone(),
            None => {
                let found = queue_for(app, incoming.topic.as_deref()).await;
                queues.insert(incoming.topic.clone(), found.clone());
                found
            }
        };
        let placed = queue.and_then(|queue| {
            over_backlog(app, &queue)?;
            let ingester = queue.ingester();
            let partition = partition_for(&incoming, ingester.partition_count())?;
            Ok((queue, ingester, partition))
        });
        let (queue, ingester, partition) = match placed {
            Ok(placed) => placed,
            Err(refusal) => {
                outcomes.push(Some(Outcome::Refused(refusal)));
                continue;
            }
        };
        let (key, fingerprint) = match (header_key, &incoming.metadata.request_id) {
            (Some(key), _) => (Some(key.to_owned()), body_fingerprint.clone()),
            (None, Some(id)) => (Some(id.clone()), id_fingerprints.get(id).cloned()),
            (None, None) => (None, None),
        };
        let slot = (queue.topic.clone(), partition, key.clone());
        let unit = *unit_of.entry(slot).or_insert_with(|| {
            units.push(Unit {
                topic: queue.topic.clone(),
                ingester: ingester.partition(partition),
                partition,
                record: key.map(|key| IdempotencyRecord {
                    key,
                    fingerprint: fingerprint.unwrap_or_default(),
                    ttl: app.settings.idempotency_ttl,
                }),
                indexes: Vec::new(),
                fields: Vec::new(),
                anchor: false,
            });
            units.len() - 1
        });
        units[unit].indexes.push(index);
        units[unit].fields.push(fields_of(&incoming, now_ms));
        outcomes.push(None);
    }
    if let (Some(key), Some(fingerprint)) = (header_key, body_fingerprint) {
        add_anchors(app, key, &fingerprint, &mut units, &mut unit_of);
    }
    let replayed = run_units(app, units, &mut outcomes).await?;
    Ok(Written {
        outcomes: outcomes
            .into_iter()
            .map(|outcome| {
                outcome
                    .unwrap_or_else(|| Outcome::Refused(Refusal::internal("message not written")))
            })
            .collect(),
        replayed,
    })
}

/// The queue `topic` names, or why a message for it is refused.
async fn queue_for(app: &App, topic: Option<&str>) -> Result<Arc<Queue>, Refusal> {
    app.queues.get(topic).await.map_err(|err| match err {
        QueueError::Missing => Refusal::no_such_queue(topic.unwrap_or_default()),
        QueueError::TooMany => Refusal::bad_request(
            "topic_name",
            topic.unwrap_or_default(),
            "this server holds as many queues as it will; send to one it already serves",
        ),
        QueueError::Store(err) => app.refusal(&err),
    })
}

/// 429 when the queue's backlog is over `--max-lag`.
fn over_backlog(app: &App, queue: &Queue) -> Result<(), Refusal> {
    match app.queues.max_lag() {
        Some(limit) if queue.backlog() > limit => {
            Err(Refusal::backlog(&queue.topic, queue.backlog(), limit))
        }
        _ => Ok(()),
    }
}

/// The partition a message goes to: its explicit one, else by its key,
/// else by its recipient, as `produce` routes.
fn partition_for(incoming: &Incoming, partitions: u32) -> Result<u32, Refusal> {
    match (incoming.partition, &incoming.key) {
        (Some(partition), _) if partition >= partitions => Err(Refusal::bad_request(
            "partition",
            &partition.to_string(),
            format!(
                "the queue has {partitions} partition(s), numbered from 0 to {}",
                partitions - 1
            ),
        )),
        (Some(partition), _) => Ok(partition),
        (None, Some(key)) => Ok(partition_of_key(key.as_bytes(), partitions)),
        (None, None) => Ok(partition_of_key(incoming.recipient.as_bytes(), partitions)),
    }
}

/// The stream fields of a message: the producer's, then what travels with it.
fn fields_of(incoming: &Incoming, created_ms: u64) -> Vec<(&'static str, String)> {
    let message = Message {
        recipient: incoming.recipient.clone(),
        body: incoming.body.clone(),
        created_ms,
    };
    let mut fields = Vec::from(message.to_fields());
    fields.extend(
        incoming
            .metadata
            .fields()
            .map(|(name, value)| (name, value.to_owned())),
    );
    fields
}

/// Gives each queue the request writes to a partition-0 unit carrying the
/// header key's record, marked to run first. A queue none of whose
/// messages is written (all refused) gets none: a record there would
/// answer a later repeat with fewer ids than it then writes.
fn add_anchors(
    app: &App,
    key: &str,
    fingerprint: &str,
    units: &mut Vec<Unit>,
    unit_of: &mut HashMap<(String, u32, Option<String>), usize>,
) {
    let mut queues: Vec<(String, Ingester)> = units
        .iter()
        .map(|unit| (unit.topic.clone(), unit.ingester.partition(0)))
        .collect();
    queues.sort_by(|a, b| a.0.cmp(&b.0));
    queues.dedup_by(|a, b| a.0 == b.0);
    for (topic, home) in queues {
        let slot = (topic.clone(), 0, Some(key.to_owned()));
        let unit = *unit_of.entry(slot).or_insert_with(|| {
            units.push(Unit {
                topic,
                ingester: home,
                partition: 0,
                record: Some(IdempotencyRecord {
                    key: key.to_owned(),
                    fingerprint: fingerprint.to_owned(),
                    ttl: app.settings.idempotency_ttl,
                }),
                indexes: Vec::new(),
                fields: Vec::new(),
                anchor: false,
            });
            units.len() - 1
        });
        units[unit].anchor = true;
    }
}

/// Runs the anchors one after another, then every other unit at once, and
/// fills in the outcomes of their messages. True when every unit found its
/// request written before.
async fn run_units(
    app: &App,
    units: Vec<Unit>,
    outcomes: &mut [Option<Outcome>],
) -> Result<bool, Refusal> {
    let (anchors, rest): (Vec<Unit>, Vec<Unit>) = units.into_iter().partition(|u| u.anchor);
    let mut replayed = !anchors.is_empty() || !rest.is_empty();
    for unit in anchors {
        let result = ingest(&unit, app.settings.request_timeout).await;
        match &result {
            Ok(Ingested::Mismatch) => {
                let key = unit.record.map(|record| record.key).unwrap_or_default();
                return Err(Refusal::key_reused(IDEMPOTENCY_HEADER, &key));
            }
            // Unchecked, the key may belong to another request: write
            // nothing more; the client sends the request again.
            Err(err) => return Err(write_refusal(app, err)),
            Ok(_) => {}
        }
        replayed &= matches!(result, Ok(Ingested::Replayed(_)));
        settle(app, &unit, result, outcomes);
    }
    let timeout = app.settings.request_timeout;
    let mut running = JoinSet::new();
    for unit in rest {
        running.spawn(async move {
            let result = ingest(&unit, timeout).await;
            (unit, result)
        });
    }
    while let Some(joined) = running.join_next().await {
        let (unit, result) =
            joined.map_err(|err| Refusal::internal(format!("a write task failed: {err}")))?;
        replayed &= matches!(result, Ok(Ingested::Replayed(_)));
        settle(app, &unit, result, outcomes);
    }
    Ok(replayed)
}

/// Why a write did not happen.
#[derive(Debug)]
enum WriteError {
    /// Redis refused or failed.
    Store(StoreError),
    /// Redis did not answer in time (the write may land later).
    TimedOut(Duration),
}

async fn ingest(unit: &Unit, timeout: Duration) -> Result<Ingested, WriteError> {
    let call = unit.ingester.ingest(unit.record.as_ref(), &unit.fields);
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(WriteError::Store),
        Err(_) => Err(WriteError::TimedOut(timeout)),
    }
}

/// Records the outcome of each message of `unit`.
fn settle(
    app: &App,
    unit: &Unit,
    result: Result<Ingested, WriteError>,
    outcomes: &mut [Option<Outcome>],
) {
    let answer = |index: usize| -> Outcome {
        match &result {
            Ok(Ingested::Written(ids) | Ingested::Replayed(ids)) => {
                match unit
                    .indexes
                    .iter()
                    .position(|&i| i == index)
                    .and_then(|at| ids.get(at))
                {
                    Some(id) => Outcome::Accepted(Accepted {
                        id: id.clone(),
                        partition: unit.partition,
                    }),
                    None => Outcome::Refused(Refusal::internal(format!(
                        "the idempotency record holds {} ids for {} messages",
                        ids.len(),
                        unit.indexes.len()
                    ))),
                }
            }
            Ok(Ingested::Mismatch) => Outcome::Refused(Refusal::key_reused(
                "request_id",
                unit.record
                    .as_ref()
                    .map_or("", |record| record.key.as_str()),
            )),
            Err(err) => Outcome::Refused(write_refusal(app, err)),
        }
    };
    for &index in &unit.indexes {
        outcomes[index] = Some(answer(index));
    }
}

/// The refusal for a write that failed.
fn write_refusal(app: &App, err: &WriteError) -> Refusal {
    match err {
        WriteError::Store(StoreError::NotReplicated { .. }) => Refusal::unavailable(
            "the write reached Redis but no replica confirmed it; send it again with an \
             idempotency key to be sure it lands once",
        ),
        WriteError::Store(err) => app.refusal(err),
        WriteError::TimedOut(after) => Refusal::unavailable(format!(
            "Redis did not answer within {after:?}; the message may have been added: send it \
             again with an idempotency key to be sure it lands once"
        )),
    }
}

/// Each `request_id`'s fingerprint: over every message carrying it.
fn request_id_fingerprints(messages: &[Result<Incoming, Refusal>]) -> HashMap<String, String> {
    let mut canon: HashMap<String, Vec<u8>> = HashMap::new();
    for incoming in messages.iter().flatten() {
        if let Some(id) = &incoming.metadata.request_id {
            canonical(incoming, canon.entry(id.clone()).or_default());
        }
    }
    canon
        .into_iter()
        .map(|(id, bytes)| (id, fingerprint(&[&bytes])))
        .collect()
}

/// Appends an unambiguous encoding of what `incoming` asks for.
fn canonical(incoming: &Incoming, out: &mut Vec<u8>) {
    let partition = incoming.partition.map(|p| p.to_string());
    let parts = [
        incoming.topic.as_deref(),
        Some(incoming.recipient.as_str()),
        Some(incoming.body.as_str()),
        incoming.key.as_deref(),
        partition.as_deref(),
    ];
    for part in parts {
        let text = part.unwrap_or("");
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.push(u8::from(part.is_some()));
    }
    for (name, value) in incoming.metadata.fields() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.push(0x1e);
}

/// SHA-256 of `parts`, as hex.
fn fingerprint(parts: &[&[u8]]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Metadata;

    fn incoming(recipient: &str, key: Option<&str>, partition: Option<u32>) -> Incoming {
        Incoming {
            topic: None,
            recipient: recipient.to_owned(),
            body: "hello".to_owned(),
            key: key.map(str::to_owned),
            partition,
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn messages_route_as_the_producer_routes_them() {
        let by_recipient = incoming("+4915112345678", None, None);
        assert_eq!(
            partition_for(&by_recipient, 6).expect("routed"),
            partition_of_key(b"+4915112345678", 6)
        );
        let by_key = incoming("+4915112345678", Some("district-4"), None);
        assert_eq!(
            partition_for(&by_key, 6).expect("routed"),
            partition_of_key(b"district-4", 6)
        );
        let explicit = incoming("+4915112345678", Some("district-4"), Some(5));
        assert_eq!(partition_for(&explicit, 6).expect("routed"), 5);
        let beyond = incoming("+4915112345678", None, Some(6));
        let refusal = partition_for(&beyond, 6).expect_err("no partition 6");
        assert_eq!(
            (refusal.field.as_str(), refusal.value.as_str()),
            ("partition", "6")
        );
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let one = incoming("+4915112345678", None, None);
        let mut other = one.clone();
        other.body = "hellO".to_owned();
        let print = |m: &Incoming| {
            let mut bytes = Vec::new();
            canonical(m, &mut bytes);
            fingerprint(&[&bytes])
        };
        assert_eq!(print(&one), print(&one.clone()));
        assert_ne!(print(&one), print(&other));
        let mut keyed = one.clone();
        keyed.key = Some(String::new());
        assert_ne!(print(&one), print(&keyed), "an empty key is not no key");
        assert_eq!(fingerprint(&[b"abc"]).len(), 64);
    }
}
