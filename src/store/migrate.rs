//! Versioned schema steps from `migrations/`.
//!
//! Loading the Functions library is code, not state: every process loads it
//! when Redis lacks it or holds an older one ([`Store::ensure_library`]).
//! Every step is idempotent, so concurrent starts are safe without a lock:
//! ten processes loading the same library with `FUNCTION LOAD REPLACE` leave
//! the same library behind. The library reports its own version
//! (`sms_version`), so a step is applied only when Redis holds an older one,
//! and a binary never replaces a newer library with an older one.
//! Creating the queue (step 7, its identity) is `migrate`'s alone
//! ([`Store::migrate`]).

use super::{QueueIdentity, QueueOptions, Store, StoreError};

/// One schema step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Load (or replace) the Functions library with this source.
    FunctionLibrary(&'static str),
}

/// A versioned schema step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Ordered version; a library's source declares the same `LIBRARY_VERSION`.
    pub version: u32,
    /// The file's name, recorded in the migrations hash.
    pub name: &'static str,
    /// What it does.
    pub step: Step,
}

/// The Functions library as this binary knows it (the newest version).
const LIBRARY: &str = include_str!("../../migrations/functions.lua");

/// Every migration, oldest first. A library step names the version it brings;
/// loading the current library brings all of them at once.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_functions",
        step: Step::FunctionLibrary(LIBRARY),
    },
    Migration {
        version: 2,
        name: "0002_sender_prune",
        step: Step::FunctionLibrary(LIBRARY),
    },
    Migration {
        version: 3,
        name: "0003_latency_histogram",
        step: Step::FunctionLibrary(LIBRARY),
    },
    Migration {
        version: 4,
        name: "0004_report_bucket_names",
        step: Step::FunctionLibrary(LIBRARY),
    },
    Migration {
        version: 5,
        name: "0005_report_bulk_ack",
        step: Step::FunctionLibrary(LIBRARY),
    },
    Migration {
        version: 6,
        name: "0006_produce_function",
        step: Step::FunctionLibrary(LIBRARY),
    },
    Migration {
        version: 7,
        name: "0007_queue_identity",
        step: Step::FunctionLibrary(LIBRARY),
    },
];

/// The library version this binary brings.
pub(super) const LIBRARY_VERSION: u32 = 7;

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
        let report = self.ensure_library().await?;
        let identity = self.create_queue(options).await?;
        Ok((self.with_epoch(identity.epoch.clone()), report, identity))
    }

    /// Applies the library migrations Redis is missing and records them in
    /// the migrations hash.
    pub async fn ensure_library(&self) -> Result<MigrationReport, StoreError> {
        let loaded = self.library_version().await?;
        let mut report = MigrationReport {
            applied: Vec::new(),
            library_version: u32::try_from(loaded).unwrap_or(0),
        };
        let latest = MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0);
        if loaded > i64::from(latest) {
            return Err(StoreError::NewerLibrary {
                found: loaded,
                ours: latest,
            });
        }
        let mut conn = self.conn().await?;
        let pending = MIGRATIONS
            .iter()
            .filter(|migration| i64::from(migration.version) > loaded);
        // Only the newest library matters: each one is complete. It is loaded
        // before any step is recorded, so a load that fails (e.g. denied by
        // an ACL) leaves no step recorded as applied.
        if let Some(Step::FunctionLibrary(source)) = pending.clone().next_back().map(|m| m.step) {
            redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(source)
                .query_async::<()>(&mut conn)
                .await
                .map_err(StoreError::redis("FUNCTION LOAD"))?;
        }
        for migration in pending {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            redis::cmd("HSETNX")
                .arg(self.keys.migrations())
                .arg(migration.name)
                .arg(now_ms)
                .query_async::<()>(&mut conn)
                .await
                .map_err(StoreError::redis("HSETNX"))?;
            report.applied.push(migration.name);
            report.library_version = migration.version;
            tracing::info!(migration = migration.name, "applied migration");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ordered_and_libraries_declare_theirs() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "{pair:?}");
        }
        for migration in MIGRATIONS {
            assert!(
                migration
                    .name
                    .starts_with(&format!("{:04}_", migration.version))
            );
            assert_eq!(migration.step, Step::FunctionLibrary(LIBRARY));
            assert!(
                LIBRARY.contains(migration.name),
                "the library's changelog names {}",
                migration.name
            );
        }
        let latest = MIGRATIONS
            .iter()
            .map(|m| m.version)
            .max()
            .expect("migrations");
        assert_eq!(latest, LIBRARY_VERSION);
        let declared = format!("local LIBRARY_VERSION = {latest}\n");
        assert!(
            LIBRARY.contains(&declared),
            "the library must declare {declared}"
        );
    }
}
