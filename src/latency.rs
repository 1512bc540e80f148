//! The send-time histogram: bucket counts kept in Redis by `sms_settle`, and
//! percentiles estimated from them (never from a scan).

use std::collections::HashMap;

use serde::Serialize;

/// Upper bounds of the buckets in microseconds, as in `migrations/functions.lua`;
/// one more bucket takes everything above the last bound.
pub const BOUNDS_US: [u64; 13] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000,
    5_000_000, 10_000_000,
];

/// Counts of send attempts per bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Histogram {
    /// Attempts per bucket; the last entry counts those above every bound.
    pub counts: [u64; BOUNDS_US.len() + 1],
}

impl Histogram {
    /// Reads the `latency_le_<bound>` / `latency_le_inf` figures of a snapshot.
    pub fn from_fields(fields: &HashMap<String, i64>) -> Self {
        Self::read(|bucket| fields.get(&format!("latency_{bucket}")).copied())
    }

    /// Reads the `le_<bound>` / `le_inf` fields of a sender's hash, as
    /// `sms_settle` counts them there; a field that is no number counts 0.
    pub fn from_sender_hash(fields: &HashMap<String, String>) -> Self {
        Self::read(|bucket| fields.get(bucket).and_then(|v| v.parse().ok()))
    }

    /// The counts `field` gives for each bucket's name (`le_<bound>`, then
    /// `le_inf`); missing or negative counts are 0.
    fn read(field: impl Fn(&str) -> Option<i64>) -> Self {
        let mut histogram = Self::default();
        let names = BOUNDS_US
            .iter()
            .map(|bound| format!("le_{bound}"))
            .chain(std::iter::once("le_inf".to_owned()));
        for (count, name) in histogram.counts.iter_mut().zip(names) {
            *count = field(&name).unwrap_or(0).max(0) as u64;
        }
        histogram
    }

    /// Counts one value of `us` microseconds.
    pub fn record_us(&mut self, us: u64) {
        let bucket = BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BOUNDS_US.len());
        self.counts[bucket] += 1;
    }

    /// Adds the counts of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
    }

    /// Attempts counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0 to 1) in milliseconds, interpolated linearly inside
    /// its bucket; `None` when empty. Above the last bound it reports that bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let lower = if i == 0 { 0 } else { BOUNDS_US[i - 1] } as f64;
                let Some(upper) = BOUNDS_US.get(i) else {
                    return Some(lower / 1000.0);
                };
                let within = (rank - seen as f64) / *count as f64;
                return Some((lower + within * (*upper as f64 - lower)) / 1000.0);
            }
            seen += count;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lua_library_uses_the_same_bounds() {
        let lua = include_str!("../migrations/functions.lua");
        let line = lua
            .lines()
            .skip_while(|l| !l.starts_with("local LATENCY_BOUNDS"))
            .take_while(|l| !l.trim().is_empty())
            .collect::<String>();
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(numbers, BOUNDS_US.to_vec());
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut h = Histogram::default();
        h.counts[4] = 100; // 10 ms < t <= 20 ms
        assert_eq!(h.quantile_ms(0.5), Some(15.0));
        assert_eq!(h.quantile_ms(1.0), Some(20.0));
        h.counts[BOUNDS_US.len()] = 100; // above 10 s
        assert_eq!(h.quantile_ms(0.99), Some(10_000.0));
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn a_sender_hash_and_a_snapshot_read_the_same_buckets() {
        let hash: HashMap<String, String> = [("le_1000", "3"), ("le_inf", "2"), ("sent", "9")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let fields: HashMap<String, i64> = [("latency_le_1000", 3), ("latency_le_inf", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let from_hash = Histogram::from_sender_hash(&hash);
        assert_eq!(from_hash, Histogram::from_fields(&fields));
        assert_eq!(
            (from_hash.counts[0], from_hash.counts[BOUNDS_US.len()]),
            (3, 2)
        );
        assert_eq!(from_hash.total(), 5);
    }
}
