//! The queue's schema, in version steps.
//!
//! The schema is the Functions library in `migrations/functions.lua`: code,
//! not state, which `FUNCTION LOAD REPLACE` replaces whole. Each change to it
//! is one [`Migration`], one version step, recorded by name in the queue's
//! migrations hash once Redis holds it. The binary carries only the newest
//! library, which is complete: one load brings a Redis from any older version
//! to the newest, so [`Store::ensure_library`] loads it once and then records
//! every step that load brought, and records nothing when the load fails.
//!
//! Every process loads the library when Redis lacks it or holds an older one
//! (the library reports its version, `sms_version`); a binary never replaces
//! a newer library with an older one. Loading is idempotent, so concurrent
//! starts are safe without a lock: ten processes loading the same library
//! leave the same library behind, and `HSETNX` keeps the first record of each
//! step. Creating the queue (its identity) is `migrate`'s alone
//! ([`Store::migrate`]).

use super::topology::Node;
use super::{QueueIdentity, QueueOptions, Store, StoreError};

/// What a schema step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Load (or replace) the Functions library with this source.
    FunctionLibrary(&'static str),
}

/// One version step of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The version this step brings Redis to, one above the step before.
    pub version: u32,
    /// What the step brought, as recorded in the migrations hash.
    pub name: &'static str,
    /// What it does.
    pub step: Step,
}

/// The Functions library as this binary knows it (the newest version).
const LIBRARY: &str = include_str!("../../migrations/functions.lua");

/// The library version this binary brings: that of the last migration, and
/// the `LIBRARY_VERSION` the library's source declares.
pub(super) const LIBRARY_VERSION: u32 = 14;

/// Every migration, oldest first, one version step each. The names are
/// recorded in queues' migrations hashes, so a step keeps its name.
pub const MIGRATIONS: &[Migration] = &[
    // The library: report, claim, renew, snapshot.
    Migration {
        version: 1,
        name: "0001_functions",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // `sms_prune`: remove a consumer only if that loses nothing.
    Migration {
        version: 2,
        name: "0002_sender_prune",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // The send-time histogram, counted by `sms_report`.
    Migration {
        version: 3,
        name: "0003_latency_histogram",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // Histogram buckets passed to `sms_report` by name.
    Migration {
        version: 4,
        name: "0004_report_bucket_names",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // `sms_report` acknowledges ids grouped by outcome, in bulk.
    Migration {
        version: 5,
        name: "0005_report_bulk_ack",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // A producer Function, dropped again by the next step.
    Migration {
        version: 6,
        name: "0006_produce_function",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // The queue's identity, retention, producer runs and leases.
    Migration {
        version: 7,
        name: "0007_queue_identity",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // `sms_partitions`: a queue of several partitions.
    Migration {
        version: 8,
        name: "0008_partitions",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // `sms_run_start` records the partitions a run routes over, and how.
    Migration {
        version: 9,
        name: "0009_run_routing",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // `sms_snapshot`: a group holds back from the oldest entry it needs.
    Migration {
        version: 10,
        name: "0010_held_back_floor",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // `sms_ingest`: the HTTP API's writes, at most once per idempotency key.
    Migration {
        version: 11,
        name: "0011_ingest",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // Channels: `sms_channel`, `sms_channels`, `sms_settle` (skipped,
    // deferred and expired results), `sms_requeue_to`.
    Migration {
        version: 12,
        name: "0012_channels",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // `sms_claim` leaves the pending list's idle rows to XPENDING's filter.
    Migration {
        version: 13,
        name: "0013_idle_claims",
        step: Step::FunctionLibrary(LIBRARY),
    },
    // `sms_settle` keeps each sender's send-time histogram in its hash.
    Migration {
        version: 14,
        name: "0014_sender_latency",
        step: Step::FunctionLibrary(LIBRARY),
    },
];

/// What [`Store::ensure_library`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations this call applied.
    pub applied: Vec<&'static str>,
    /// The library version Redis holds now.
    pub library_version: u32,
}

impl Store {
    /// `migrate`: loads the library if needed, then creates the queue, gives
    /// an identity to a queue from before identities, or checks an existing
    /// one, and sets its retention (see [`Store::create_queue`]). Returns a
    /// handle opened on the queue.
    pub async fn migrate(
        &self,
        options: &QueueOptions,
    ) -> Result<(Store, MigrationReport, QueueIdentity), StoreError> {
        let report = self.partition(0).ensure_library().await?;
        let identity = self.create_queue(options).await?;
        let opened = Store {
            partitions: identity.partitions.1,
            ..self
                .partition(0)
                .with_epoch(identity.epoch.clone())
                .on_channel(identity.channels.clone())?
        };
        for partition in opened.partitions().iter().skip(1) {
            partition.ensure_library().await?;
        }
        Ok((opened, report, identity))
    }

    /// Applies the migrations Redis is missing: loads the library once,
    /// then records each step it brought in this partition's migrations
    /// hash. A failed load (e.g. an ACL without `FUNCTION`) records nothing.
    /// On a cluster every primary gets the library too, so whichever node
    /// lacked it (one added, flushed, or restarted without its data) has it
    /// after any process found it missing, whatever partition it was on.
    pub async fn ensure_library(&self) -> Result<MigrationReport, StoreError> {
        let report = self.ensure_library_here().await?;
        if self.topology.is_cluster() {
            for node in self.topology.primaries().await? {
                load_library_on(&node).await?;
            }
        }
        Ok(report)
    }

    /// [`Store::ensure_library`] on this partition's server only.
    async fn ensure_library_here(&self) -> Result<MigrationReport, StoreError> {
        let loaded = self.library_version().await?;
        let mut report = MigrationReport {
            applied: Vec::new(),
            library_version: u32::try_from(loaded).unwrap_or(0),
        };
        if loaded > i64::from(LIBRARY_VERSION) {
            return Err(StoreError::NewerLibrary {
                found: loaded,
                ours: LIBRARY_VERSION,
            });
        }
        let pending = pending_after(loaded);
        let Some(newest) = pending.last() else {
            return Ok(report);
        };
        let mut conn = self.conn().await?;
        match newest.step {
            Step::FunctionLibrary(source) => {
                redis::cmd("FUNCTION")
                    .arg("LOAD")
                    .arg("REPLACE")
                    .arg(source)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(StoreError::redis("FUNCTION LOAD"))?;
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut record = redis::pipe();
        record.atomic();
        for migration in pending {
            record
                .cmd("HSETNX")
                .arg(self.keys.migrations())
                .arg(migration.name)
                .arg(now_ms)
                .ignore();
        }
        record
            .query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::redis("HSETNX"))?;
        for migration in pending {
            tracing::info!(migration = migration.name, "applied migration");
            report.applied.push(migration.name);
        }
        report.library_version = newest.version;
        Ok(report)
    }

    /// The version of the Functions library Redis holds; 0 when none is loaded.
    pub async fn library_version(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn().await?;
        let version = redis::cmd("FCALL_RO")
            .arg("sms_version")
            .arg(0)
            .query_async::<i64>(&mut conn)
            .await;
        match version {
            Ok(version) => Ok(version),
            Err(err)
                if err
                    .detail()
                    .is_some_and(|d| d.contains("Function not found")) =>
            {
                Ok(0)
            }
            Err(err) => Err(StoreError::redis("FCALL_RO sms_version")(err)),
        }
    }
}

/// Loads the library on one cluster primary unless it holds this version or
/// a newer one: every primary gets it, so a partition whose slot moves there
/// finds it (a primary added later gets it when a call finds it missing).
async fn load_library_on(node: &Node) -> Result<(), StoreError> {
    let mut conn = node.pooled().await?;
    let version = redis::cmd("FCALL_RO")
        .arg("sms_version")
        .arg(0)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap_or(0);
    if version >= i64::from(LIBRARY_VERSION) {
        return Ok(());
    }
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async::<()>(&mut conn)
        .await
        .map_err(StoreError::redis("FUNCTION LOAD"))
}

/// The migrations above version `loaded`, oldest first.
fn pending_after(loaded: i64) -> &'static [Migration] {
    let first = MIGRATIONS
        .iter()
        .position(|m| i64::from(m.version) > loaded)
        .unwrap_or(MIGRATIONS.len());
    &MIGRATIONS[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_migration_is_one_version_step_named_for_it() {
        for (migration, version) in MIGRATIONS.iter().zip(1..) {
            assert_eq!(migration.version, version, "{migration:?}");
            let prefix = format!("{version:04}_");
            let what = migration.name.strip_prefix(&prefix).unwrap_or_default();
            assert!(
                !what.is_empty()
                    && what
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "expected `{prefix}` and a snake_case name, got {}",
                migration.name
            );
            assert_eq!(migration.step, Step::FunctionLibrary(LIBRARY));
        }
        let newest = MIGRATIONS.last().expect("migrations");
        assert_eq!(newest.version, LIBRARY_VERSION);
        let declared = format!("local LIBRARY_VERSION = {LIBRARY_VERSION}\n");
        assert!(
            LIBRARY.contains(&declared),
            "the library must declare {declared}"
        );
    }

    #[test]
    fn pending_steps_are_those_above_the_loaded_version() {
        let names = |loaded| {
            pending_after(loaded)
                .iter()
                .map(|m| m.version)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), (1..=LIBRARY_VERSION).collect::<Vec<_>>());
        assert_eq!(names(5), (6..=LIBRARY_VERSION).collect::<Vec<_>>());
        assert!(names(i64::from(LIBRARY_VERSION)).is_empty());
    }
}
