//! What each part of the program may do with the queue: a narrow handle per
//! role over one [`Store`], so each caller sees only the commands its job
//! needs. A producer writes batches and runs; the HTTP API adds the
//! messages of its requests; a sender reads, claims,
//! reports and trims; an inspector only reads (monitor, audit, senders,
//! metrics); an operator repairs, requeues and prunes. Each handle is cheap to
//! clone, shares the store's connections, and retries under the store's one
//! policy ([`Store::retrying`]).

use std::future::Future;
use std::time::Duration;

use super::{ReadConnection, Retry, Store, StoreError};
use crate::channel::Channel;
use crate::keys::Keys;

/// Declares a role handle: a newtype over [`Store`] with the key names and
/// the retry policy every role shares.
macro_rules! role {
    ($(#[$doc:meta])* $name:ident, $make:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            pub(super) store: Store,
        }

        impl Store {
            #[doc = concat!("This queue's [`", stringify!($name), "`] handle.")]
            pub fn $make(&self) -> $name {
                $name { store: self.clone() }
            }
        }

        impl $name {
            /// The key names of this queue.
            pub fn keys(&self) -> &Keys {
                self.store.keys()
            }

            /// The channel this handle works on.
            pub fn channel(&self) -> &Channel {
                self.store.channel()
            }

            /// The queue's channels, first one first.
            pub fn channels(&self) -> &[Channel] {
                self.store.channels()
            }

            /// Runs `op` under the store's retry policy ([`Store::retrying`]).
            pub async fn retrying<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
            where
                F: FnMut() -> Fut,
                Fut: Future<Output = Result<T, StoreError>>,
            {
                self.store.retrying(what, op).await
            }
        }
    };
}

role!(
    /// What a producer may do: record, hold and end its runs, and write its
    /// batches exactly once.
    Producer,
    producer
);
role!(
    /// What the HTTP API may do: add the messages of a request, once per
    /// idempotency key.
    Ingester,
    ingester
);
role!(
    /// What a sender may do: read new messages, claim stale ones, renew its
    /// leases, report results, hold its name, and trim what retention allows.
    Sender,
    sender
);
role!(
    /// What an observer may do: read counters, streams, the group, the
    /// senders and the runs. It writes nothing.
    Inspector,
    inspector
);
role!(
    /// What an operator may do beyond reading: requeue and purge dead
    /// letters, prune departed senders, rewrite damaged keys, load the
    /// Functions library.
    Operator,
    operator
);

impl Sender {
    /// The handle of partition `partition` of the same queue.
    pub fn partition(&self, partition: u32) -> Sender {
        Sender {
            store: self.store.partition(partition),
        }
    }

    /// How many partitions the queue had when this handle opened it.
    pub fn partition_count(&self) -> u32 {
        self.store.partition_count()
    }

    /// A handle that knows the partitions `migrate` added since this one
    /// was opened ([`Store::reopen_grown`]).
    pub async fn reopen_grown(&self) -> Result<Sender, StoreError> {
        Ok(Sender {
            store: self.store.reopen_grown().await?,
        })
    }

    /// Waits as `retry` decides after `err` ([`Retry::wait`]), or returns
    /// the error when retrying cannot fix it.
    pub async fn wait_to_retry(
        &self,
        retry: &mut Retry<'_>,
        err: StoreError,
    ) -> Result<(), StoreError> {
        retry.wait(&self.store, err).await
    }

    /// A read connection for this sender's reads ([`Store::read_connection`]).
    pub async fn read_connection(&self, block: Duration) -> Result<ReadConnection, StoreError> {
        self.store.read_connection(block).await
    }
}

impl Inspector {
    /// A read connection for walks over streams ([`Store::read_connection`]).
    pub async fn read_connection(&self, block: Duration) -> Result<ReadConnection, StoreError> {
        self.store.read_connection(block).await
    }
}
