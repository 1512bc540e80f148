//! The live terminal display: a progress bar with ETA, a status line, a
//! per-sender table and, when asked, a per-partition table, redrawn in place
//! (indicatif). Alerts print above it.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::Report;

/// The display's bars: one progress bar, two status lines, the table lines.
pub(super) struct Live {
    multi: MultiProgress,
    progress: ProgressBar,
    status: ProgressBar,
    health: ProgressBar,
    table: Vec<ProgressBar>,
    /// The per-partition table's lines; `None` when not asked for.
    partitions: Option<Vec<ProgressBar>>,
}

fn text_line(multi: &MultiProgress) -> ProgressBar {
    let line = multi.add(ProgressBar::new(0));
    line.set_style(
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    line
}

impl Live {
    /// The display on the terminal, with a row per partition if `by_partition`.
    pub(super) fn new(by_partition: bool) -> Self {
        let mut live = Self::drawn_to(ProgressDrawTarget::stdout());
        live.partitions = by_partition.then(Vec::new);
        live
    }

    /// The display drawn to `target`: the terminal, or nowhere in tests,
    /// which read the lines back from the bars.
    fn drawn_to(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let progress = multi.add(ProgressBar::new(0));
        progress.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} [{elapsed_precise}] [{wide_bar:.cyan/blue}] {pos}/{len} settled ({percent}%) ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let status = text_line(&multi);
        let health = text_line(&multi);
        Self {
            multi,
            progress,
            status,
            health,
            table: Vec::new(),
            partitions: None,
        }
    }

    pub(super) fn show(&mut self, report: &Report) {
        for alert in &report.alerts {
            let _ = self.multi.println(alert);
        }
        self.progress.set_length(report.produced);
        self.progress.set_position(report.sent + report.dead);
        let lag = report.lag.map_or_else(|| "?".to_owned(), |l| l.to_string());
        self.status.set_message(format!(
            "sent {} | failed {} | dead {} | pending {} | queued {} | duplicates {} | avg {} | {} | {:.1} msg/s",
            report.sent,
            report.failed,
            report.dead,
            report.pending,
            lag,
            report.duplicates,
            report.avg_send_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms")),
            report.percentiles_text(),
            report.rate_per_s,
        ));
        let dead = report
            .dead_by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let retention = report.retention_ms.map_or_else(
            || "-".to_owned(),
            |ms| crate::store::Retention::from_millis(ms).to_string(),
        );
        self.health.set_message(format!(
            "{} | live senders {} | dead: {dead} | trimmed {} | retention {retention}",
            report.ages_text(),
            report.live_senders,
            report.trimmed,
        ));
        let width = report
            .senders
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut lines = vec![format!(
            "  {:<width$}  {:>9}  {:>8}  {:>6}  {:>9}  {:>9}  {:>8}  {:>7}",
            "sender", "sent", "failed", "dead", "avg ms", "p99 ms", "msg/s", "pending"
        )];
        let ms = |ms: Option<f64>| ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"));
        lines.extend(report.senders.iter().map(|s| {
            format!(
                "  {:<width$}  {:>9}  {:>8}  {:>6}  {:>9}  {:>9}  {:>8.1}  {:>7}",
                s.name,
                s.sent,
                s.failed,
                s.dead,
                ms(s.avg_send_ms),
                ms(s.p99_ms),
                s.rate_per_s,
                s.pending
            )
        }));
        show_lines(&self.multi, &mut self.table, lines);
        if let Some(bars) = &mut self.partitions {
            show_lines(&self.multi, bars, partition_lines(report));
        }
        self.progress.tick();
    }

    pub(super) fn finish(&self) {
        self.progress.finish();
        self.status.finish();
        self.health.finish();
        for line in self.table.iter().chain(self.partitions.iter().flatten()) {
            line.finish();
        }
    }
}

/// Shows `lines` on `bars`, adding bars as needed; bars are reused, never
/// removed, so the display keeps its height.
fn show_lines(multi: &MultiProgress, bars: &mut Vec<ProgressBar>, lines: Vec<String>) {
    while bars.len() < lines.len() {
        bars.push(text_line(multi));
    }
    for (bar, line) in bars.iter().zip(lines) {
        bar.set_message(line);
    }
}

/// The per-partition table: a header and a line per partition.
fn partition_lines(report: &Report) -> Vec<String> {
    let age = |ms: Option<u64>| {
        ms.map_or_else(
            || "-".to_owned(),
            |ms| format!("{:.1}s", ms as f64 / 1000.0),
        )
    };
    let mut lines = vec![format!(
        "  {:>9}  {:>10}  {:>9}  {:>7}  {:>7}  {:>9}  {:>9}",
        "partition", "produced", "sent", "dead", "pending", "queued", "oldest"
    )];
    lines.extend(report.partitions.iter().map(|p| {
        format!(
            "  {:>9}  {:>10}  {:>9}  {:>7}  {:>7}  {:>9}  {:>9}",
            p.partition,
            p.produced,
            p.sent,
            p.dead,
            p.pending,
            p.lag.map_or_else(|| "?".to_owned(), |lag| lag.to_string()),
            age(p.oldest_queued_age_ms.max(p.oldest_pending_age_ms)),
        )
    }));
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::monitor::report::SenderRow;
    use crate::stats::Snapshot;

    fn report() -> Report {
        let now = Snapshot {
            produced: 1_000,
            sent: 600,
            failed: 40,
            dead: 25,
            dead_max_attempts: 20,
            dead_malformed: 5,
            pending: 30,
            lag: Some(345),
            duplicates: 2,
            attempts: 665,
            send_time_us: 13_300_000,
            trimmed: 100,
            ..Snapshot::default()
        };
        let mut report = Report::new(&now, None, Duration::from_secs(3));
        report.alerts = vec!["ALERT failure rate 6.0% over 0.05".to_owned()];
        report.senders = vec![
            SenderRow {
                gateway: String::new(),
                breaker: String::new(),
                breaker_opened: 0,
                channel: String::new(),
                name: "a-long-sender-name".to_owned(),
                sent: 400,
                failed: 30,
                dead: 20,
                pending: 10,
                avg_send_ms: Some(12.34),
                p50_ms: Some(11.0),
                p95_ms: Some(18.0),
                p99_ms: Some(19.52),
                rate_per_s: 33.3,
            },
            SenderRow {
                gateway: String::new(),
                breaker: String::new(),
                breaker_opened: 0,
                channel: String::new(),
                name: "b".to_owned(),
                sent: 200,
                failed: 10,
                dead: 5,
                pending: 20,
                avg_send_ms: None,
                p50_ms: None,
                p95_ms: None,
                p99_ms: None,
                rate_per_s: 0.0,
            },
        ];
        report
    }

    #[test]
    fn the_bar_counts_settled_against_produced_and_the_lines_carry_the_figures() {
        let mut live = Live::drawn_to(ProgressDrawTarget::hidden());
        live.show(&report());
        assert_eq!(live.progress.length(), Some(1_000));
        assert_eq!(live.progress.position(), 625, "sent + dead");
        let status = live.status.message();
        assert!(
            status.starts_with(
                "sent 600 | failed 40 | dead 25 | pending 30 | queued 345 | duplicates 2 | avg 20.0 ms"
            ),
            "status line: {status}"
        );
        let health = live.health.message();
        assert_eq!(
            health,
            "oldest queued -, pending - | live senders 0 | \
             dead: deleted 0, expired 0, malformed 5, max_attempts 20 | trimmed 100 | retention -"
        );
        let table: Vec<String> = live.table.iter().map(|line| line.message()).collect();
        let fields = |line: &str| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            table.iter().map(|line| fields(line)).collect::<Vec<_>>(),
            [
                vec![
                    "sender", "sent", "failed", "dead", "avg", "ms", "p99", "ms", "msg/s",
                    "pending"
                ],
                vec![
                    "a-long-sender-name",
                    "400",
                    "30",
                    "20",
                    "12.3",
                    "19.5",
                    "33.3",
                    "10"
                ],
                vec!["b", "200", "10", "5", "-", "-", "0.0", "20"],
            ],
            "a header and one line per sender"
        );
        // Columns line up: the name column is as wide as the longest name.
        assert!(
            table.iter().all(|line| line.len() == table[0].len()),
            "{table:#?}"
        );
        let right_edge = |line: &str, field: &str| line.find(field).map(|at| at + field.len());
        assert_eq!(
            right_edge(&table[1], " 400"),
            right_edge(&table[0], " sent"),
            "numbers are right-aligned under their heading: {table:#?}"
        );
    }

    #[test]
    fn fewer_senders_later_keep_the_table_and_finish_ends_every_line() {
        let mut live = Live::drawn_to(ProgressDrawTarget::hidden());
        let mut report = report();
        live.show(&report);
        report.senders.truncate(1);
        report.lag = None;
        report.avg_send_ms = None;
        live.show(&report);
        assert_eq!(live.table.len(), 3, "lines are reused, never removed");
        assert!(
            live.status.message().contains("| queued ? |")
                && live.status.message().contains("| avg - |"),
            "{}",
            live.status.message()
        );
        live.finish();
        assert!(live.progress.is_finished() && live.status.is_finished());
        assert!(live.table.iter().all(ProgressBar::is_finished));
    }

    #[test]
    fn by_partition_adds_a_row_per_partition_under_the_senders() {
        let part = |produced: u64, sent: u64, lag: Option<u64>| Snapshot {
            produced,
            sent,
            lag,
            ..Snapshot::default()
        };
        let total = Snapshot::total(vec![part(600, 500, Some(100)), part(400, 100, None)]);
        let report = Report::new(&total, None, Duration::from_secs(1));
        let mut live = Live::drawn_to(ProgressDrawTarget::hidden());
        live.partitions = Some(Vec::new());
        live.show(&report);
        let rows: Vec<Vec<String>> = live
            .partitions
            .iter()
            .flatten()
            .map(|line| {
                line.message()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        assert_eq!(
            rows,
            [
                vec![
                    "partition",
                    "produced",
                    "sent",
                    "dead",
                    "pending",
                    "queued",
                    "oldest"
                ],
                vec!["0", "600", "500", "0", "0", "100", "-"],
                vec!["1", "400", "100", "0", "0", "?", "-"],
            ]
        );
        assert_eq!(
            live.progress.length(),
            Some(1_000),
            "the bar counts the totals"
        );
        live.finish();
        assert!(
            live.partitions
                .iter()
                .flatten()
                .all(ProgressBar::is_finished)
        );
        let plain = Live::drawn_to(ProgressDrawTarget::hidden());
        assert!(plain.partitions.is_none(), "no table unless asked for");
    }
}
