//! Writing a request's valid messages: each to its queue and partition (by
//! its explicit partition, else its key, else its recipient: the producer's
//! routing), one `sms_ingest` call per (queue, partition, idempotency key),
//! several at once.
//!
//! Idempotency. An `Idempotency-Key` header covers the whole request: every
//! call carries a record of it ([`fingerprint`](super::fingerprint)), so a
//! repeat lands nothing and gets the ids of the first. Before any message is
//! written, the anchors take the record: partition 0 of the server's own
//! queue, then partition 0 of each other queue the request writes to (with
//! that partition's messages, or none). Every request with the key passes
//! the server's own anchor first, so a key reused with another request is
//! refused there (422) while nothing of the new request is written. Without
//! the header, a message's `request_id` is its own idempotency key, its
//! record taken first in the partition the id itself routes to, so the same
//! id sent with another partition or key is refused there (422).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::answer::{Accepted, Outcome, Refusal};
use super::fingerprint;
use super::queues::{Queue, QueueError};
use super::request::Incoming;
use super::{App, IDEMPOTENCY_HEADER};
use crate::message::{field, now_ms};
use crate::routing::partition_of_key;
use crate::store::{IdempotencyRecord, IdempotencyScope, Ingested, Ingester, StoreError};

/// Most writes of one request on the wire at once: a batch of messages each
/// with its own `request_id` is many small calls, and must not open as many
/// requests to Redis at the same moment.
const WRITES_AT_ONCE: usize = 16;

/// What a request's messages came to.
#[derive(Debug)]
pub(super) struct Written {
    /// One outcome per message of the request, in order.
    pub(super) outcomes: Vec<Outcome>,
    /// Whether every write found the request written before.
    pub(super) replayed: bool,
}

/// A valid message with the queue and partition it goes to.
struct Placed {
    index: usize,
    incoming: Incoming,
    queue: Arc<Queue>,
    partition: u32,
    partitions: u32,
}

/// Messages bound for one partition under one idempotency key.
#[derive(Debug)]
struct Unit {
    /// The queue it goes to.
    queue: Arc<Queue>,
    /// Whether the queue is the server's own: damage there stops the server.
    home: bool,
    ingester: Ingester,
    partition: u32,
    record: Option<IdempotencyRecord>,
    /// The request's message indexes it carries, in order.
    indexes: Vec<usize>,
    fields: Vec<Vec<(&'static str, String)>>,
    /// When it runs: 0 the server's own anchor, 1 another queue's anchor,
    /// 2 the rest, all at once.
    stage: u8,
}

/// Writes `messages` (valid or already refused) and says what became of
/// each. A header key reused with another request refuses it whole (422).
pub(super) async fn write(
    app: &App,
    header_key: Option<&str>,
    raw_body: &[u8],
    messages: Vec<Result<Incoming, Refusal>>,
) -> Result<Written, Refusal> {
    let (mut outcomes, placed) = place(app, messages).await;
    let units = group(app, header_key, raw_body, placed);
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

/// Finds each valid message's queue and partition; the outcome of every
/// message refused on the way is filled in, the others are left `None`.
async fn place(
    app: &App,
    messages: Vec<Result<Incoming, Refusal>>,
) -> (Vec<Option<Outcome>>, Vec<Placed>) {
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut placed = Vec::with_capacity(messages.len());
    let mut queues: HashMap<Option<String>, Result<Arc<Queue>, Refusal>> = HashMap::new();
    for (index, message) in messages.into_iter().enumerate() {
        let found = match message {
            Ok(incoming) => {
                let queue = match queues.get(&incoming.topic) {
                    Some(found) => found.clone(),
                    None => {
                        let found = queue_for(app, incoming.topic.as_deref()).await;
                        queues.insert(incoming.topic.clone(), found.clone());
                        found
                    }
                };
                queue.and_then(|queue| {
                    over_backlog(app, &queue)?;
                    let partitions = queue.ingester().partition_count();
                    let partition = partition_for(&incoming, partitions)?;
                    Ok(Placed {
                        index,
                        incoming,
                        queue,
                        partition,
                        partitions,
                    })
                })
            }
            Err(refusal) => Err(refusal),
        };
        match found {
            Ok(message) => {
                outcomes.push(None);
                placed.push(message);
            }
            Err(refusal) => outcomes.push(Some(Outcome::Refused(refusal))),
        }
    }
    (outcomes, placed)
}

/// Groups the placed messages into units, one per (queue, partition,
/// idempotency key), and adds the anchors of a header key.
fn group(app: &App, header_key: Option<&str>, raw_body: &[u8], placed: Vec<Placed>) -> Vec<Unit> {
    let routed = placed
        .iter()
        .map(|p| (p.queue.topic.clone(), p.partitions))
        .collect();
    let request_print = header_key.map(|_| fingerprint::of_request(raw_body, routed));
    let id_prints = fingerprint::of_request_ids(placed.iter().map(|p| (&p.incoming, p.partitions)));
    let record = |key: &str, scope, fingerprint: &str| IdempotencyRecord {
        key: key.to_owned(),
        scope,
        fingerprint: fingerprint.to_owned(),
        ttl: app.settings.idempotency_ttl,
    };
    let now_ms = now_ms();
    let mut units: Vec<Unit> = Vec::new();
    let mut unit_of: HashMap<(String, u32, Option<String>), usize> = HashMap::new();
    let mut unit_for = |units: &mut Vec<Unit>, queue: &Arc<Queue>, partition, record: Option<_>| {
        let slot = (
            queue.topic.clone(),
            partition,
            record.as_ref().map(|r: &IdempotencyRecord| r.key.clone()),
        );
        *unit_of.entry(slot).or_insert_with(|| {
            units.push(Unit {
                queue: queue.clone(),
                home: queue.topic == app.queues.home().topic,
                ingester: queue.ingester().partition(partition),
                partition,
                record,
                indexes: Vec::new(),
                fields: Vec::new(),
                stage: 2,
            });
            units.len() - 1
        })
    };
    // A request that writes nothing takes no record: its key stays free.
    if let (Some(key), Some(print), false) = (header_key, &request_print, placed.is_empty()) {
        let home = app.queues.home().clone();
        let anchor = unit_for(
            &mut units,
            &home,
            0,
            Some(record(key, IdempotencyScope::Request, print)),
        );
        units[anchor].stage = 0;
        for p in &placed {
            let anchor = unit_for(
                &mut units,
                &p.queue,
                0,
                Some(record(key, IdempotencyScope::Request, print)),
            );
            units[anchor].stage = units[anchor].stage.min(1);
        }
    }
    // A request_id's record is taken first in the partition its id routes
    // to, whichever partition its messages go to: the same id sent again
    // with another partition or key meets it there.
    if header_key.is_none() {
        for p in &placed {
            let Some(id) = &p.incoming.metadata.request_id else {
                continue;
            };
            if let Some(print) = id_prints.get(id) {
                let home = partition_of_key(id.as_bytes(), p.partitions);
                let record = Some(record(id, IdempotencyScope::Message, print));
                let anchor = unit_for(&mut units, &p.queue, home, record);
                units[anchor].stage = units[anchor].stage.min(1);
            }
        }
    }
    for p in placed {
        let record = match (header_key, &request_print, &p.incoming.metadata.request_id) {
            (Some(key), Some(print), _) => Some(record(key, IdempotencyScope::Request, print)),
            (None, _, Some(id)) => id_prints
                .get(id)
                .map(|print| record(id, IdempotencyScope::Message, print)),
            _ => None,
        };
        let unit = unit_for(&mut units, &p.queue, p.partition, record);
        units[unit].indexes.push(p.index);
        units[unit].fields.push(fields_of(&p.incoming, now_ms));
    }
    units
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
        QueueError::Store(err) => app.refusal(&err, false),
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
/// else by its recipient (phone number, else e-mail address), as `produce`
/// routes.
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
        (None, None) => {
            let address = incoming
                .recipient
                .as_deref()
                .or(incoming.metadata.email.as_deref())
                .unwrap_or_default();
            Ok(partition_of_key(address.as_bytes(), partitions))
        }
    }
}

/// The stream fields of a message: the producer's, then what travels with it.
fn fields_of(incoming: &Incoming, created_ms: u64) -> Vec<(&'static str, String)> {
    let mut fields = Vec::with_capacity(8);
    if let Some(recipient) = &incoming.recipient {
        fields.push((field::RECIPIENT, recipient.clone()));
    }
    fields.push((field::BODY, incoming.body.clone()));
    fields.push((field::CREATED_MS, created_ms.to_string()));
    if let Some(text) = &incoming.email_body {
        fields.push((field::EMAIL_BODY, text.clone()));
    }
    fields.extend(
        incoming
            .metadata
            .fields()
            .map(|(name, value)| (name, value.to_owned())),
    );
    fields
}

/// Runs the anchors one after another (the server's own first), then
/// every other unit, several at once, and fills in the outcomes of their
/// messages. True when every unit found its request written before. A
/// header key's anchor that fails refuses the whole request; a
/// `request_id`'s refuses the messages carrying it, and its other units
/// are not written.
async fn run_units(
    app: &App,
    units: Vec<Unit>,
    outcomes: &mut [Option<Outcome>],
) -> Result<bool, Refusal> {
    let (mut anchors, rest): (Vec<Unit>, Vec<Unit>) = units.into_iter().partition(|u| u.stage < 2);
    anchors.sort_by_key(|unit| unit.stage);
    let mut replayed = !anchors.is_empty() || !rest.is_empty();
    let mut blocked: HashMap<String, Refusal> = HashMap::new();
    for unit in anchors {
        let result = ingest(&unit, app.settings.request_timeout).await;
        let message_key = unit
            .record
            .as_ref()
            .filter(|record| record.scope == IdempotencyScope::Message)
            .map(|record| record.key.clone());
        match (&result, message_key) {
            (Ok(Ingested::Mismatch), None) => {
                let key = unit.record.map(|record| record.key).unwrap_or_default();
                return Err(Refusal::key_reused(IDEMPOTENCY_HEADER, &key));
            }
            // Unchecked, the key may belong to another request: write
            // nothing more; the client sends the request again.
            (Err(err), None) => return Err(write_refusal(app, &unit, err)),
            (Ok(Ingested::Mismatch), Some(key)) => {
                blocked.insert(key.clone(), Refusal::key_reused("request_id", &key));
            }
            (Err(err), Some(key)) => {
                blocked.insert(key, write_refusal(app, &unit, err));
            }
            (Ok(_), _) => {}
        }
        replayed &= matches!(result, Ok(Ingested::Replayed(_)));
        settle(app, &unit, result, outcomes);
    }
    let timeout = app.settings.request_timeout;
    let slots = Arc::new(Semaphore::new(WRITES_AT_ONCE));
    let mut running = JoinSet::new();
    for unit in rest {
        let refused = unit
            .record
            .as_ref()
            .and_then(|record| blocked.get(&record.key));
        if let Some(refusal) = refused {
            for &index in &unit.indexes {
                outcomes[index] = Some(Outcome::Refused(refusal.clone()));
            }
            replayed = false;
            continue;
        }
        let slots = slots.clone();
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
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
    let call = unit
        .queue
        .ingest(&unit.ingester, unit.record.as_ref(), &unit.fields);
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
            Ok(Ingested::Mismatch) => {
                let (field, key) = match &unit.record {
                    Some(record) if record.scope == IdempotencyScope::Request => {
                        (IDEMPOTENCY_HEADER, record.key.as_str())
                    }
                    Some(record) => ("request_id", record.key.as_str()),
                    None => ("", ""),
                };
                Outcome::Refused(Refusal::key_reused(field, key))
            }
            Err(err) => Outcome::Refused(write_refusal(app, unit, err)),
        }
    };
    for &index in &unit.indexes {
        outcomes[index] = Some(answer(index));
    }
}

/// The refusal for a write that failed.
fn write_refusal(app: &App, unit: &Unit, err: &WriteError) -> Refusal {
    match err {
        WriteError::Store(StoreError::NotReplicated { .. }) => Refusal::unavailable(
            "the write reached Redis but no replica confirmed it; send it again with an \
             idempotency key to be sure it lands once",
        ),
        WriteError::Store(err) => app.refusal(err, unit.home),
        WriteError::TimedOut(after) => Refusal::unavailable(format!(
            "Redis did not answer within {after:?}; the message may have been added: send it \
             again with an idempotency key to be sure it lands once"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Metadata;

    fn incoming(recipient: &str, key: Option<&str>, partition: Option<u32>) -> Incoming {
        Incoming {
            topic: None,
            recipient: Some(recipient.to_owned()),
            body: "hello".to_owned(),
            email_body: None,
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
}
