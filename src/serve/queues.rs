//! The queues the API writes to: the server's own (`--prefix`) and any other
//! a request names in `topic_name` (of `--topics`, when given), opened on
//! first use over the same connections. Each is followed in the background: its partition count
//! (so messages route over partitions `migrate` adds while the server runs)
//! and, with `--max-lag`, its backlog, which requests read without a round
//! trip of their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::stats::Snapshot;
use crate::store::{
    IdempotencyRecord, IngestConnection, Ingested, Ingester, Store, StoreError,
    TransactionConnection,
};

/// How often a queue's partition count and backlog are read again.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Most queues one server keeps open: names beyond are refused, so that
/// requests naming ever new queues cannot make the server hold ever more.
const MAX_QUEUES: usize = 256;
/// Fewest messages of a key-less write that go as a transaction: below,
/// the Function's dearer `XADD`s cost Redis less than the transaction's
/// second round trip costs the request (about 2 µs a message against some
/// 50 µs).
const TRANSACTION_FROM: usize = 32;
/// The backlog before it was first read: never over a limit.
const UNKNOWN: u64 = 0;

/// One open queue.
#[derive(Debug)]
pub(super) struct Queue {
    /// Its name (the key prefix).
    pub(super) topic: String,
    /// Its handle, replaced when the queue grows.
    store: RwLock<Store>,
    /// Messages added and not settled, as last read.
    backlog: AtomicU64,
    /// Each partition's connection for keyed writes, once opened.
    connections: Mutex<HashMap<u32, IngestConnection>>,
    /// Each partition's idle connections for key-less writes.
    transactions: Mutex<HashMap<u32, Vec<TransactionConnection>>>,
}

impl Queue {
    /// The handle writes go through.
    pub(super) fn ingester(&self) -> Ingester {
        self.store().ingester()
    }

    /// The opened queue.
    pub(super) fn store(&self) -> Store {
        self.store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Adds `messages` to partition `ingester` as [`Ingester::ingest`]
    /// does. On a Redis without replicas a write goes over the partition's
    /// own pipelined connection, shared by every request; a large write
    /// without a key is a transaction on an idle connection of the
    /// partition's instead (half the Redis time of the Function). A failed
    /// connection is dropped, and a call Redis refused unrun is tried again
    /// the pooled way.
    pub(super) async fn ingest(
        &self,
        ingester: &Ingester,
        record: Option<&IdempotencyRecord>,
        messages: &[Vec<(&'static str, String)>],
    ) -> Result<Ingested, StoreError> {
        if ingester.is_cluster() {
            return ingester.ingest(record, messages).await;
        }
        if record.is_none() && messages.len() >= TRANSACTION_FROM {
            return self.transact(ingester, messages).await;
        }
        let partition = ingester.partition_id();
        let cached = self.lock_connections().get(&partition).cloned();
        let conn = match cached {
            Some(conn) => conn,
            None => {
                let opened = ingester.ingest_connection().await?;
                self.lock_connections().insert(partition, opened.clone());
                opened
            }
        };
        match conn.send(ingester, record, messages).await {
            Err(err) if !err.is_queue_state() => {
                self.lock_connections().remove(&partition);
                if err.needs_library() || err.was_not_run() {
                    return ingester.ingest(record, messages).await;
                }
                Err(err)
            }
            result => result,
        }
    }

    /// A key-less write as one transaction on an idle connection of the
    /// partition's, opened if none is idle and kept for the next write
    /// unless it failed.
    async fn transact(
        &self,
        ingester: &Ingester,
        messages: &[Vec<(&'static str, String)>],
    ) -> Result<Ingested, StoreError> {
        let partition = ingester.partition_id();
        let idle = self
            .lock_transactions()
            .get_mut(&partition)
            .and_then(Vec::pop);
        let mut conn = match idle {
            Some(conn) => conn,
            None => ingester.transaction_connection().await?,
        };
        let ids = conn.write(ingester, messages).await?;
        self.lock_transactions()
            .entry(partition)
            .or_default()
            .push(conn);
        Ok(Ingested::Written(ids))
    }

    fn lock_transactions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u32, Vec<TransactionConnection>>> {
        self.transactions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<u32, IngestConnection>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Messages added and not yet settled, as last read.
    pub(super) fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Reads the partition count and, when it is watched, the backlog.
    async fn refresh(&self, watch_backlog: bool) -> Result<(), StoreError> {
        let grown = self.store().reopen_grown().await?;
        if watch_backlog {
            let parts = grown
                .each_partition(
                    |partition| async move { Snapshot::read_partition(&partition).await },
                )
                .await?;
            let backlog = parts
                .iter()
                .map(|part| part.produced.saturating_sub(part.settled()))
                .sum();
            self.backlog.store(backlog, Ordering::Relaxed);
        }
        *self
            .store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = grown;
        Ok(())
    }
}

/// Why a queue cannot take a request's messages.
#[derive(Debug)]
pub(super) enum QueueError {
    /// Redis holds no queue by that name.
    Missing,
    /// The server holds as many queues as it will.
    TooMany,
    /// Redis failed, or the queue's state is lost or damaged.
    Store(StoreError),
}

/// The queues open in this server.
#[derive(Debug)]
pub(super) struct Queues {
    home: Arc<Queue>,
    others: Mutex<HashMap<String, Arc<Queue>>>,
    /// The only other queues requests may name; `None`: any.
    allowed: Option<Vec<String>>,
    max_lag: Option<u64>,
    shutdown: CancellationToken,
    /// The followers of the open queues.
    followers: TaskTracker,
}

impl Queues {
    /// The registry around the server's own queue, `home` (opened); other
    /// queues only of `allowed`, when given.
    pub(super) fn new(
        home: Store,
        allowed: Option<Vec<String>>,
        max_lag: Option<u64>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let followers = TaskTracker::new();
        Arc::new(Self {
            home: Self::follow(home, max_lag, &shutdown, &followers),
            others: Mutex::new(HashMap::new()),
            allowed,
            max_lag,
            shutdown,
            followers,
        })
    }

    /// Waits for the followers, which end at shutdown.
    pub(super) async fn stop(&self) {
        self.shutdown.cancel();
        self.followers.close();
        self.followers.wait().await;
    }

    /// The server's own queue.
    pub(super) fn home(&self) -> &Arc<Queue> {
        &self.home
    }

    /// The backlog limit, if any.
    pub(super) fn max_lag(&self) -> Option<u64> {
        self.max_lag
    }

    /// The queue named `topic` (the home queue for `None` or its own
    /// name), opened on first use. One not allowed is as one missing: a
    /// client learns nothing of the queues it may not write to.
    pub(super) async fn get(&self, topic: Option<&str>) -> Result<Arc<Queue>, QueueError> {
        let topic = match topic {
            None => return Ok(self.home.clone()),
            Some(topic) if topic == self.home.topic => return Ok(self.home.clone()),
            Some(topic) => topic,
        };
        if self
            .allowed
            .as_ref()
            .is_some_and(|allowed| !allowed.iter().any(|name| name == topic))
        {
            return Err(QueueError::Missing);
        }
        if let Some(queue) = self.lock_others().get(topic) {
            return Ok(queue.clone());
        }
        let store = self.home.store().other_queue(topic);
        if !store.queue_exists().await.map_err(QueueError::Store)? {
            return Err(QueueError::Missing);
        }
        let opened = store.open().await.map_err(QueueError::Store)?;
        let mut others = self.lock_others();
        if let Some(queue) = others.get(topic) {
            return Ok(queue.clone());
        }
        if others.len() >= MAX_QUEUES {
            return Err(QueueError::TooMany);
        }
        let queue = Self::follow(opened, self.max_lag, &self.shutdown, &self.followers);
        others.insert(topic.to_owned(), queue.clone());
        Ok(queue)
    }

    fn lock_others(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Queue>>> {
        self.others
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wraps an opened queue and follows it until shutdown.
    fn follow(
        store: Store,
        max_lag: Option<u64>,
        shutdown: &CancellationToken,
        followers: &TaskTracker,
    ) -> Arc<Queue> {
        let queue = Arc::new(Queue {
            topic: store.prefix().to_owned(),
            store: RwLock::new(store),
            backlog: AtomicU64::new(UNKNOWN),
            connections: Mutex::new(HashMap::new()),
            transactions: Mutex::new(HashMap::new()),
        });
        let followed = queue.clone();
        let shutdown = shutdown.clone();
        followers.spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                // A failed read keeps the last figures: the writes meet the
                // same failure and answer for it.
                if let Err(err) = followed.refresh(max_lag.is_some()).await {
                    tracing::debug!(queue = %followed.topic, error = %err, "cannot refresh queue figures");
                }
            }
        });
        queue
    }
}
