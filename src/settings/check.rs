//! Value checks shared by the command line (as clap value parsers), the
//! config file and scenario files. Each returns a one-line reason on failure.

use std::time::Duration;

/// A duration such as `0ms`, `250ms`, `2s`, `1m`.
pub fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|_| "expected a non-negative duration such as 0ms, 250ms, 2s or 1m".to_owned())
}

/// A retention: a duration such as `0s`, `1h`, `7d`, or `forever`.
pub fn retention(value: &str) -> Result<crate::store::Retention, String> {
    if value.trim().eq_ignore_ascii_case("forever") {
        return Ok(crate::store::Retention::Forever);
    }
    humantime::parse_duration(value.trim())
        .map(crate::store::Retention::Keep)
        .map_err(|_| "expected a duration such as 0s, 1h or 7d, or 'forever'".to_owned())
}

/// A stream entry id such as `1700000000000-0`.
pub fn stream_id(value: &str) -> Result<String, String> {
    let valid = value
        .split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok());
    if valid {
        Ok(value.to_owned())
    } else {
        Err("expected a stream entry id such as 1700000000000-0".to_owned())
    }
}

/// A dead letter's id, `ID` or `P/ID` (see [`super::DeadLetterId`]).
pub fn dead_letter_id(value: &str) -> Result<String, String> {
    value
        .parse::<super::DeadLetterId>()
        .map(|_| value.to_owned())
}

/// Where a re-created group starts: `end` or a stream entry id.
pub fn group_start(value: &str) -> Result<String, String> {
    if value == "end" {
        return Ok(value.to_owned());
    }
    stream_id(value)
        .map_err(|_| "expected 'end' or a stream entry id such as 1700000000000-0".to_owned())
}

/// A socket address such as `127.0.0.1:9464`.
pub fn socket_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "expected an address such as 127.0.0.1:9464".to_owned())
}

/// A lease: a duration of at least 100ms.
pub fn lease(value: &str) -> Result<Duration, String> {
    let lease = duration(value)?;
    if lease < Duration::from_millis(100) {
        return Err("the lease must be at least 100ms".to_owned());
    }
    Ok(lease)
}

/// A monitor interval: a duration of at least 10ms.
pub fn interval(value: &str) -> Result<Duration, String> {
    let interval = duration(value)?;
    if interval < Duration::from_millis(10) {
        return Err("the interval must be at least 10ms".to_owned());
    }
    Ok(interval)
}

/// A probability in [0, 1].
pub fn failure_rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .trim()
        .parse()
        .map_err(|_| "expected a number between 0 and 1".to_owned())?;
    if !(0.0..=1.0).contains(&rate) {
        return Err("expected a number between 0 and 1".to_owned());
    }
    Ok(rate)
}

fn positive(value: &str, what: &str) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{what} must be a whole number of at least 1")),
    }
}

/// A message count of at least 1.
pub fn count(value: &str) -> Result<u64, String> {
    positive(value, "the count")
}

/// A duration longer than zero, e.g. 5s, 24h.
pub fn positive_duration(value: &str) -> Result<Duration, String> {
    let parsed = duration(value)?;
    if parsed.is_zero() {
        return Err("expected a duration longer than zero, e.g. 5s".to_owned());
    }
    Ok(parsed)
}

/// How long an idempotency key is kept: up to 30 days.
pub fn idempotency_ttl(value: &str) -> Result<Duration, String> {
    let parsed = positive_duration(value)?;
    if parsed > Duration::from_secs(30 * 24 * 3600) {
        return Err("expected at most 30 days, e.g. 24h".to_owned());
    }
    Ok(parsed)
}

/// A request body limit: 1 KiB to 1 GiB, in bytes.
pub fn body_size(value: &str) -> Result<usize, String> {
    let n = positive(value, "the size")?;
    if !(1024..=64 << 20).contains(&n) {
        return Err("expected 1024 to 67108864 bytes (64 MiB)".to_owned());
    }
    Ok(n as usize)
}

/// A count that may be 0 (to skip a step).
pub fn count_or_zero(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "expected a whole number of at least 0".to_owned())
}

/// A batch size from 1 to 100,000.
pub fn batch(value: &str) -> Result<usize, String> {
    let n = positive(value, "the batch size")?;
    if n > 100_000 {
        return Err("the batch size must be at most 100000".to_owned());
    }
    Ok(n as usize)
}

/// A concurrency from 1 to 1,000,000.
pub fn concurrency(value: &str) -> Result<usize, String> {
    let n = positive(value, "the concurrency")?;
    if n > 1_000_000 {
        return Err("the concurrency must be at most 1000000".to_owned());
    }
    Ok(n as usize)
}

/// The most partitions a queue may have: each is a stream with its own
/// consumer group and counters, read by every sender.
pub const MAX_PARTITIONS: u32 = 1024;

/// A partition count from 1 to [`MAX_PARTITIONS`].
pub fn partitions(value: &str) -> Result<u32, String> {
    let n = positive(value, "the partition count")?;
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_PARTITIONS)
        .ok_or_else(|| format!("the partition count must be at most {MAX_PARTITIONS}"))
}

/// A partition number, from 0 to [`MAX_PARTITIONS`] - 1 (checked against
/// the queue's count when it is opened).
pub fn partition(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n < MAX_PARTITIONS)
        .ok_or_else(|| {
            format!(
                "expected a partition number from 0 to {}",
                MAX_PARTITIONS - 1
            )
        })
}

/// The primaries of a private cluster: 3 (Redis Cluster's least) to 16.
pub fn cluster_primaries(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (3..=16).contains(&n) => Ok(n),
        _ => Err("a cluster has from 3 to 16 primaries".to_owned()),
    }
}

/// Max attempts from 1 to 1,000.
pub fn max_attempts(value: &str) -> Result<u32, String> {
    let n = positive(value, "max attempts")?;
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= 1000)
        .ok_or_else(|| "max attempts must be at most 1000".to_owned())
}

/// A part of a Redis key (prefix, group, sender name): 1 to 64 characters of
/// letters, digits, `-`, `_` and `.`, so it cannot break the key layout.
pub fn key_part(value: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err("expected 1 to 64 letters, digits, '-', '_' or '.'".to_owned())
    }
}

/// A dead letter's reason, one of [`crate::store::DEAD_REASONS`].
pub fn dead_reason(value: &str) -> Result<String, String> {
    if crate::store::DEAD_REASONS.contains(&value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "expected one of {}",
            crate::store::DEAD_REASONS.join(", ")
        ))
    }
}

/// A routing key: 1 to 255 bytes, as the HTTP API takes one. An empty key
/// would send a whole run to one partition under a name nobody meant.
pub fn route_key(value: &str) -> Result<String, String> {
    if (1..=255).contains(&value.len()) {
        Ok(value.to_owned())
    } else {
        Err("expected a key of 1 to 255 bytes".to_owned())
    }
}

/// How many rotated log files to keep: 1 to 100,000.
pub fn log_keep(value: &str) -> Result<usize, String> {
    let n = positive(value, "the number of log files to keep")?;
    if n > 100_000 {
        return Err("the number of log files to keep must be at most 100000".to_owned());
    }
    Ok(n as usize)
}

/// A throughput cap: `N/s` (or a bare `N`), 1 to 10,000,000 per second.
pub fn rate_per_second(value: &str) -> Result<u32, String> {
    let number = value.trim();
    let number = number.strip_suffix("/s").unwrap_or(number);
    match number.parse::<u32>() {
        Ok(n) if (1..=10_000_000).contains(&n) => Ok(n),
        _ => Err("expected a rate such as 100/s (1 to 10000000 per second)".to_owned()),
    }
}

/// Failed sends in a row that open a breaker: 1 to 1,000,000.
pub fn breaker_failures(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err("expected 1 to 1000000 failed sends in a row".to_owned()),
    }
}

/// A channel: `NAME` or `NAME:KIND`, the name a valid key part.
pub fn channel(value: &str) -> Result<crate::channel::Channel, String> {
    let channel = crate::channel::Channel::parse(value)?;
    key_part(&channel.name).map_err(|reason| format!("channel name: {reason}"))?;
    Ok(channel)
}

/// A file that exists and can be read (a certificate, a key, a password).
pub fn readable_file(value: &str) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(value);
    match std::fs::File::open(&path) {
        Ok(_) => Ok(path),
        Err(err) => Err(format!("cannot read the file: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        assert_eq!(duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert!(duration("-5ms").is_err());
        assert!(duration("5 parsecs").is_err());
        assert!(lease("99ms").is_err());
        assert!(interval("9ms").is_err());
        assert!(failure_rate("1.01").is_err());
        assert!(failure_rate("NaN").is_err());
        assert_eq!(failure_rate("0"), Ok(0.0));
        assert!(count("0").is_err());
        assert_eq!(count_or_zero("0"), Ok(0));
        assert!(batch("100001").is_err());
        assert!(concurrency("0").is_err());
        assert!(max_attempts("0").is_err());
        assert!(max_attempts("1001").is_err());
        assert!(key_part("a b").is_err());
        assert!(key_part("{x}").is_err());
        assert_eq!(retention("forever"), Ok(crate::store::Retention::Forever));
        assert_eq!(
            retention("0s"),
            Ok(crate::store::Retention::Keep(Duration::ZERO))
        );
        assert!(retention("-1h").is_err());
        assert!(stream_id("12-3").is_ok());
        assert!(stream_id("12").is_err());
        assert!(dead_letter_id("2/12-3").is_ok() && dead_letter_id("12-3").is_ok());
        for bad in ["x/12-3", "-1/12-3", "2/12", "2/", "/12-3"] {
            assert!(dead_letter_id(bad).is_err(), "{bad}");
        }
        assert!(group_start("end").is_ok());
        assert!(group_start("start").is_err());
        assert!(socket_addr("127.0.0.1:9464").is_ok());
        assert!(socket_addr("localhost").is_err());
        assert!(readable_file("/nonexistent/ca.pem").is_err());
        assert!(readable_file(env!("CARGO_MANIFEST_PATH")).is_ok());
    }
}
