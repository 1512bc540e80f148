//! sms-alerts: a persistent job queue on Redis Streams that simulates sending
//! very large numbers of SMS alerts, correct under crashes, and built to run
//! for months: retention keeps Redis's memory bounded, and a queue whose
//! state Redis lost or an operator damaged is noticed, never papered over.
//!
//! # Layout
//! Layers, lowest first; a module imports only from layers below its own
//! (`tests/layers.rs` checks every `crate::` path against this list):
//!
//! 1. Leaves: [`keys`] (the only place Redis key names are built,
//!    hash-tagged, and their Redis Cluster slots), [`routing`] (which
//!    partition a message goes to), [`message`] (the SMS message type, encoded to and
//!    decoded from stream fields), [`latency`] (the send-time histogram),
//!    [`embedded`] (a private redis-server), [`exit`] (the exit codes).
//! 2. [`generator`]: seeded random messages; [`channel`]: the ways an
//!    alert goes out (SMS, e-mail), each a consumer group.
//! 3. [`store`]: Redis. The queue's identity (created once by `migrate`,
//!    checked by every write), its partitions, where each is served (one
//!    Redis, or a cluster's primaries by slot), the connections (a pool for
//!    cold commands, a pipelined connection of our own for the hot paths), stream
//!    operations, typed wrappers of the Functions library in `migrations/`,
//!    producer runs, migrations and the one retry policy. Callers act
//!    through a role handle (producer, sender, inspector, operator) that
//!    has only the commands its job needs. Every connection uses the
//!    queue's password and, for `rediss://`, TLS.
//! 4. [`settings`]: what the program uses, validated: one struct per
//!    subcommand, the defaults as constants, the value types and the checks.
//! 5. [`stats`]: snapshots of the counters.
//! 6. The work: [`produce`] (one resumable run at a time), [`send`] (one
//!    sender), [`monitor`] (reports as lines, JSON or a live display, with
//!    alerts), [`metrics`] (Prometheus), [`audit`] (an independent
//!    reconciliation), [`senders`], [`dead`], [`repair`] and [`acl`] (the
//!    least-privilege rule).
//! 7. [`demo`] (a whole simulation in one process),
//!    [`bench`](mod@bench) (throughput, efficiency, memory and latency
//!    against Redis's own XADD ceiling) and [`serve`] (the HTTP API: writes
//!    once per idempotency key, the monitor's report, metrics).
//! 8. [`cli`]: what the user typed (flags, environment, config file), each
//!    option declared once, turned into settings.
//!
//! Every long-running function takes its shutdown signal as a parameter
//! (a [`tokio_util::sync::CancellationToken`]): the binary wires it to
//! Ctrl-C/SIGTERM, tests cancel it themselves.
//!
//! # Guarantees
//! At-least-once delivery with exactly-once counting: a message is counted as
//! sent only by the call whose XACK removed it from the pending list, in the
//! same atomic Function call that counts it; a message left pending by a dead
//! sender is reclaimed after its lease; one that keeps failing moves to the
//! dead stream atomically. So `entries added = sent + dead + abandoned +
//! pending + queued` holds at every moment a snapshot is taken. Every Function
//! checks the queue's identity and the keys and counters it touches before its
//! first write; a process that finds the state lost or damaged stops (exit
//! code 3) rather than repair it by guessing.

pub mod acl;
pub mod audit;
pub mod bench;
pub mod channel;
pub mod cli;
pub mod dead;
pub mod demo;
pub mod embedded;
pub mod exit;
pub mod generator;
pub mod keys;
pub mod latency;
pub mod message;
pub mod metrics;
pub mod monitor;
pub mod produce;
pub mod repair;
pub mod routing;
pub mod send;
pub mod senders;
pub mod serve;
pub mod settings;
pub mod stats;
pub mod store;
