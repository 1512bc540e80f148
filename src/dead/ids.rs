//! Which partition's dead stream holds each dead letter asked for: the one
//! named (`P/ID`), else the only one that holds the id. Every id is placed
//! before anything is requeued, so a request naming one badly is refused
//! whole.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::settings::DeadLetterId;
use crate::store::{Store, StoreError};

/// The ids asked for (`ID` or `P/ID`, each once), by partition, and those
/// no partition holds, as given.
pub(super) async fn place(
    store: &Store,
    given: &[String],
) -> Result<(BTreeMap<u32, Vec<String>>, Vec<String>), StoreError> {
    let count = store.partition_count();
    let mut placed: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for text in given.iter().filter(|text| seen.insert(text.as_str())) {
        // The command line checked the form; a library caller's bad id is
        // simply not there.
        let Ok(asked) = text.parse::<DeadLetterId>() else {
            missing.push(text.clone());
            continue;
        };
        let partition = match asked.partition {
            Some(partition) if partition >= count => {
                return Err(StoreError::Refused(format!(
                    "dead letter {text}: the queue has no partition {partition} (it has {count})"
                )));
            }
            Some(partition) => partition,
            // Nothing to look for: the requeue reports it missing if so.
            None if count == 1 => 0,
            None => match holders(store, &asked.id).await?.as_slice() {
                [] => {
                    missing.push(text.clone());
                    continue;
                }
                [only] => *only,
                several => {
                    let shown: Vec<String> = several.iter().map(u32::to_string).collect();
                    return Err(StoreError::Refused(format!(
                        "dead letter {text} is in partitions {}: name one, e.g. {}/{text}",
                        shown.join(", "),
                        several[0]
                    )));
                }
            },
        };
        placed.entry(partition).or_default().push(asked.id);
    }
    Ok((placed, missing))
}

/// The partitions whose dead stream holds `id`.
async fn holders(store: &Store, id: &str) -> Result<Vec<u32>, StoreError> {
    let id = id.to_owned();
    let found = store
        .each_partition(|partition| {
            let id = id.clone();
            async move {
                let inspector = partition.inspector();
                let conn = inspector.read_connection(Duration::ZERO).await?;
                let entry = inspector
                    .range_one(&conn, &partition.keys().dead(), &id)
                    .await?;
                Ok(entry.map(|_| partition.partition_id()))
            }
        })
        .await?;
    Ok(found.into_iter().flatten().collect())
}
