//! The live terminal display: a progress bar with ETA, a status line and a
//! per-sender table, redrawn in place (indicatif). Alerts print above it.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::Report;

/// The display's bars: one progress bar, two status lines, the table lines.
pub(super) struct Live {
    multi: MultiProgress,
    progress: ProgressBar,
    status: ProgressBar,
    health: ProgressBar,
    table: Vec<ProgressBar>,
}

fn text_line(multi: &MultiProgress) -> ProgressBar {
    let line = multi.add(ProgressBar::new(0));
    line.set_style(
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    line
}

impl Live {
    pub(super) fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
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
            "  {:<width$}  {:>9}  {:>8}  {:>6}  {:>9}  {:>8}  {:>7}",
            "sender", "sent", "failed", "dead", "avg ms", "msg/s", "pending"
        )];
        lines.extend(report.senders.iter().map(|s| {
            format!(
                "  {:<width$}  {:>9}  {:>8}  {:>6}  {:>9}  {:>8.1}  {:>7}",
                s.name,
                s.sent,
                s.failed,
                s.dead,
                s.avg_send_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
                s.rate_per_s,
                s.pending
            )
        }));
        while self.table.len() < lines.len() {
            let line = text_line(&self.multi);
            self.table.push(line);
        }
        for (bar, line) in self.table.iter().zip(lines) {
            bar.set_message(line);
        }
        self.progress.tick();
    }

    pub(super) fn finish(&self) {
        self.progress.finish();
        self.status.finish();
        self.health.finish();
        for line in &self.table {
            line.finish();
        }
    }
}
