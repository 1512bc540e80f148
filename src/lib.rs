//! sms-alerts: a persistent job queue on Redis Streams that simulates sending
//! very large numbers of SMS alerts, correct under crashes, and built to run
//! for months: retention keeps Redis's memory bounded, and a queue whose
//! state Redis lost or an operator damaged is noticed, never papered over.
//!
//! # Layout
//! Each layer knows only the ones below it.
//!
//! - [`cli`]: what the user typed (clap, `SMS_*` environment overrides);
//!   [`config_file`]: the TOML file; [`settings`]: what the program uses,
//!   validated once, defaults as named constants.
//! - [`keys`]: the only place Redis key names are built (hash-tagged, cluster-safe).
//! - [`message`]: the SMS message type, encoded to and decoded from stream
//!   fields; [`generator`]: seeded random messages.
//! - [`store`]: Redis: the queue's identity (created once by `migrate`,
//!   checked by every write), pool and dedicated connections, a minimal
//!   connection of our own for the hot paths (the sender's XREADGROUP
//!   replies, decoded by `redis-protocol`, values over 64 KiB dropped as they
//!   arrive, and the producer's exactly-once `MULTI`/`EXEC` batches fenced by
//!   `WATCH`), stream operations, typed wrappers of the Functions library in
//!   `migrations/`, producer runs, the migrations, the one retry loop for
//!   transient failures, and requests queued now and awaited later. Every
//!   connection uses the queue's password and, for `rediss://`, TLS.
//! - [`produce`]: the producer, one resumable run at a time; [`send`]: one
//!   sender (dispatch with read-ahead, a gateway timing the sends in one
//!   timer queue, simulate, batched results, reclaim, name lease, retention
//!   in passing, a stop on lost or damaged state); [`stats`]: snapshots of
//!   the counters, [`latency`] the send-time histogram; [`monitor`]: reports
//!   rendered as lines, JSON or a live terminal display, with alerts.
//! - [`audit`]: an independent, memory-bounded reconciliation of the counters
//!   against the stream, the pending list and the dead stream;
//!   [`senders`]: listing the group's senders and pruning dead ones safely;
//!   [`dead`]: listing, requeueing and purging dead letters; [`repair`]:
//!   what an operator runs after lost or damaged state, explicitly.
//! - [`bench`](mod@bench): throughput, efficiency, memory and latency against Redis's
//!   own XADD ceiling, and what a queue that runs for months costs.
//! - [`metrics`]: Prometheus `/metrics`, served by the monitor.
//! - [`demo`]: a whole simulation in one process, on a private Redis from
//!   [`embedded`] unless one is given (the bench uses it too).
//! - [`acl`]: the least-privilege `ACL SETUSER` rule for one queue prefix.
//! - [`exit`]: the process exit codes.
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
pub mod cli;
pub mod config_file;
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
pub mod send;
pub mod senders;
pub mod settings;
pub mod stats;
pub mod store;
