//! Decoding of raw Redis replies, for the replies redis-rs has no type for
//! (Function results) or decodes too strictly (stream fields must stay bytes:
//! a poison entry with invalid UTF-8 must not make a whole read fail).

use redis::Value;

use super::StoreError;
use crate::message::RawFields;

/// Whether `value` is a counter Redis's `HINCRBY` takes and can add to
/// without overflowing, as the Functions judge it: Redis refuses leading
/// zeros, `+` and `-0`, and 18 digits leave headroom for any increment.
pub fn is_counter(value: &[u8]) -> bool {
    if value == b"0" {
        return true;
    }
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    (1..=18).contains(&digits.len()) && digits[0] != b'0' && digits.iter().all(u8::is_ascii_digit)
}

/// A reply that had the wrong shape, naming the command.
pub(super) fn bad(command: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Reply {
        command,
        detail: detail.into(),
    }
}

/// The elements of an array reply.
pub(super) fn array(command: &'static str, value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(bad(command, format!("expected an array, got {other:?}"))),
    }
}

/// A string reply as bytes.
pub(super) fn bytes(command: &'static str, value: Value) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(bad(command, format!("expected a string, got {other:?}"))),
    }
}

/// A string reply as UTF-8 text (ids, names: never user data).
pub(super) fn text(command: &'static str, value: Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(command, value)?).map_err(|_| bad(command, "expected UTF-8 text"))
}

/// An integer reply (Lua numbers arrive as integers).
pub(super) fn int(command: &'static str, value: Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(n),
        Value::BulkString(ref raw) => std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(command, format!("expected an integer, got {value:?}"))),
        other => Err(bad(command, format!("expected an integer, got {other:?}"))),
    }
}

/// A flat `field, value, field, value…` list of byte strings as pairs.
pub(super) fn field_pairs(command: &'static str, value: Value) -> Result<RawFields, StoreError> {
    let items = array(command, value)?;
    if !items.len().is_multiple_of(2) {
        return Err(bad(command, "odd number of field/value items"));
    }
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(field), Some(value)) = (items.next(), items.next()) {
        pairs.push((bytes(command, field)?, bytes(command, value)?));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::is_counter;

    #[test]
    fn counters_are_integers_redis_can_add_to() {
        for good in ["0", "7", "-12", "999999999999999999"] {
            assert!(is_counter(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "x",
            "007",
            "-0",
            "+5",
            "1.5",
            " 1",
            "9223372036854775807",
            "-",
            "00",
        ] {
            assert!(!is_counter(bad.as_bytes()), "{bad}");
        }
    }
}
