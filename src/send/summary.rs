//! What the sender tells while it runs and when it stops: a [`Progress`] of
//! counters the dispatcher and the writer add to as they go, one info line
//! per [`SUMMARY_EVERY`] with what changed since the last, and the stop
//! line's sentence ([`SendSummary`]'s `Display`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SendSummary;
use super::in_flight::Held;
use crate::store::ReportReply;

/// How often a running sender logs its progress.
pub(super) const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Counters of the sender's work so far, shared by its tasks. Relaxed
/// atomics: each is a count on its own, read only for the log.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Messages read, recovered or reclaimed.
    taken: AtomicU64,
    sent: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    /// Dead-lettered by a report or while claiming.
    dead: AtomicU64,
}

impl Progress {
    /// Counts `count` messages taken in (read, recovered or reclaimed).
    pub(super) fn took(&self, count: u64) {
        self.taken.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts `count` entries dead-lettered while claiming.
    pub(super) fn dead_on_claim(&self, count: u64) {
        self.dead.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts what one written report counted.
    pub(super) fn wrote(&self, reply: &ReportReply) {
        self.sent.fetch_add(reply.sent, Ordering::Relaxed);
        self.duplicates
            .fetch_add(reply.duplicates, Ordering::Relaxed);
        self.failed.fetch_add(reply.failed, Ordering::Relaxed);
        self.dead.fetch_add(reply.dead, Ordering::Relaxed);
    }

    fn counts(&self) -> Counts {
        Counts {
            taken: self.taken.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
        }
    }
}

/// The counters read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    taken: u64,
    sent: u64,
    duplicates: u64,
    failed: u64,
    dead: u64,
}

impl Counts {
    /// What was counted since `earlier`.
    fn since(self, earlier: Self) -> Self {
        Self {
            taken: self.taken.saturating_sub(earlier.taken),
            sent: self.sent.saturating_sub(earlier.sent),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            failed: self.failed.saturating_sub(earlier.failed),
            dead: self.dead.saturating_sub(earlier.dead),
        }
    }
}

/// Logs one line of progress every `every` until `stop` fires: what was
/// written since the last line, the send rate, and the messages held.
pub(super) async fn report_every(
    every: Duration,
    progress: &Progress,
    held: &Held,
    stop: &CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // From zero: the first line counts all since the sender started.
    let mut last = Counts::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = progress.counts();
        let line = progress_line(now.since(last), every, held.len());
        tracing::info!(
            taken = now.taken,
            duplicates = now.duplicates,
            "sender progress: {line}"
        );
        last = now;
    }
}

/// `12,345 sent, 12 failed, 3 dead in the last 30s (411/s); 120 in flight`.
fn progress_line(delta: Counts, every: Duration, in_flight: usize) -> String {
    let rate = delta.sent as f64 / every.as_secs_f64().max(1e-9);
    format!(
        "{} sent, {} failed, {} dead in the last {}s ({}/s); {} in flight",
        thousands(delta.sent),
        thousands(delta.failed),
        thousands(delta.dead),
        every.as_secs(),
        thousands(rate as u64),
        thousands(in_flight as u64),
    )
}

/// `sent 1,000 messages, 3 failed attempts, 1 dead-lettered, 0 given back,
/// in 12.3s`; duplicate deliveries are named only when there were some.
impl fmt::Display for SendSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flushed = &self.flushed;
        write!(
            f,
            "sent {} messages, {} failed attempts, {} dead-lettered, ",
            thousands(flushed.sent),
            thousands(flushed.failed),
            thousands(flushed.dead + self.dispatched.dead_on_claim),
        )?;
        if flushed.duplicates > 0 {
            write!(f, "{} duplicates, ", thousands(flushed.duplicates))?;
        }
        write!(
            f,
            "{} given back, in {:.1}s",
            thousands(self.given_back()),
            self.elapsed.as_secs_f64()
        )
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::send::{DispatchTotals, FlushTotals};

    /// Log output gathered in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        /// Captures what this thread logs until the guard is dropped.
        fn as_default() -> (Self, tracing::subscriber::DefaultGuard) {
            let captured = Self::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(captured.clone())
                .with_ansi(false)
                .finish();
            (captured, tracing::subscriber::set_default(subscriber))
        }

        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("not poisoned").clone();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn reply(sent: u64, failed: u64, dead: u64) -> ReportReply {
        ReportReply {
            sent,
            failed,
            dead,
            ..ReportReply::default()
        }
    }

    /// Waits in paused time until `captured` holds `count` progress lines.
    async fn progress_lines(captured: &Captured, count: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + SUMMARY_EVERY * 10;
        loop {
            let lines: Vec<String> = captured
                .lines()
                .into_iter()
                .filter(|l| l.contains("sender progress"))
                .collect();
            if lines.len() >= count || tokio::time::Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_period_with_what_changed_in_it() {
        let (captured, _guard) = Captured::as_default();
        let progress = Arc::new(Progress::default());
        let in_flight = super::super::in_flight::InFlight::default();
        let held = Held::default();
        held.add(in_flight.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (progress, held, stop) = (progress.clone(), held.clone(), stop.clone());
            async move { report_every(SUMMARY_EVERY, &progress, &held, &stop).await }
        });
        let start = tokio::time::Instant::now();

        progress.took(12_500);
        progress.wrote(&reply(12_345, 12, 3));
        for id in 0..120 {
            in_flight.insert(&id.to_string());
        }
        tokio::time::sleep_until(start + SUMMARY_EVERY / 2).await;
        assert!(
            progress_lines(&captured, 0).await.is_empty(),
            "no line before the first period ends"
        );
        let first = progress_lines(&captured, 1).await;

        progress.wrote(&reply(300, 0, 0));
        progress.dead_on_claim(2);
        in_flight.remove_all(["0", "1"].into_iter());
        let both = progress_lines(&captured, 2).await;
        let elapsed = start.elapsed();
        stop.cancel();
        task.await.expect("the summary task ends when stopped");

        assert_eq!(first.len(), 1, "{first:?}");
        assert!(
            first[0].contains(
                "sender progress: 12,345 sent, 12 failed, 3 dead in the last 30s (411/s); \
                 120 in flight"
            ),
            "first line: {}",
            first[0]
        );
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(
            both[1].contains("300 sent, 0 failed, 2 dead in the last 30s (10/s); 118 in flight"),
            "second line: {}",
            both[1]
        );
        assert!(
            elapsed >= SUMMARY_EVERY * 2 && elapsed < SUMMARY_EVERY * 2 + Duration::from_secs(1),
            "two lines after two periods, not {elapsed:?}"
        );
        assert_eq!(
            progress_lines(&captured, 3).await.len(),
            2,
            "none once stopped"
        );
    }

    #[test]
    fn the_summary_reads_as_a_sentence() {
        let summary = SendSummary {
            dispatched: DispatchTotals {
                read: 1_004,
                dead_on_claim: 1,
                ..DispatchTotals::default()
            },
            flushed: FlushTotals {
                sent: 1_000,
                failed: 3,
                ..FlushTotals::default()
            },
            abandoned: 0,
            elapsed: Duration::from_millis(12_345),
        };
        assert_eq!(
            summary.to_string(),
            "sent 1,000 messages, 3 failed attempts, 1 dead-lettered, 0 given back, in 12.3s"
        );
        let with_duplicates = SendSummary {
            flushed: FlushTotals {
                duplicates: 2,
                unwritten: 4,
                ..summary.flushed
            },
            abandoned: 1_500,
            ..summary
        };
        assert_eq!(
            with_duplicates.to_string(),
            "sent 1,000 messages, 3 failed attempts, 1 dead-lettered, 2 duplicates, \
             1,504 given back, in 12.3s"
        );
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        let grouped: Vec<String> = [0, 999, 1_000, 12_345, 1_234_567]
            .into_iter()
            .map(thousands)
            .collect();
        assert_eq!(grouped, ["0", "999", "1,000", "12,345", "1,234,567"]);
    }
}
