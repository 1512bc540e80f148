//! Fingerprints of what a request asks for: a repeat under an idempotency
//! key must ask for the same, or it is another request reusing the key.
//!
//! A header key covers the request's bytes; a `request_id` covers the
//! message that carries it (a batch carries each id once). Both also cover
//! the partition count of each queue written to: routing depends on it, so
//! a repeat after the queue grew would put its messages where the first
//! request's records are not. Such a repeat is refused (422) rather than
//! written a second time.

use std::collections::HashMap;

use super::request::Incoming;

/// The fingerprint of a request with a header key: its bytes and the
/// partition counts its messages were routed by, `(queue, count)` in any
/// order.
pub(super) fn of_request(body: &[u8], mut counts: Vec<(String, u32)>) -> String {
    counts.sort();
    counts.dedup();
    let mut routed = Vec::new();
    for (queue, count) in &counts {
        field(&mut routed, Some(queue));
        field(&mut routed, Some(&count.to_string()));
    }
    digest(&[body, &routed])
}

/// Each `request_id`'s fingerprint, over every message carrying it, each
/// with the partition count of its queue.
pub(super) fn of_request_ids<'a>(
    messages: impl Iterator<Item = (&'a Incoming, u32)>,
) -> HashMap<String, String> {
    let mut canon: HashMap<String, Vec<u8>> = HashMap::new();
    for (incoming, partitions) in messages {
        if let Some(id) = &incoming.metadata.request_id {
            let out = canon.entry(id.clone()).or_default();
            canonical(incoming, out);
            field(out, Some(&partitions.to_string()));
        }
    }
    canon
        .into_iter()
        .map(|(id, bytes)| (id, digest(&[&bytes])))
        .collect()
}

/// Appends an unambiguous encoding of what `incoming` asks for.
fn canonical(incoming: &Incoming, out: &mut Vec<u8>) {
    let partition = incoming.partition.map(|p| p.to_string());
    for part in [
        incoming.topic.as_deref(),
        incoming.recipient.as_deref(),
        Some(incoming.body.as_str()),
        incoming.key.as_deref(),
        partition.as_deref(),
    ] {
        field(out, part);
    }
    // Named pairs, present only when given, so that a request without them
    // keeps the fingerprint it had before they existed.
    let email_body = incoming
        .email_body
        .as_deref()
        .map(|text| (crate::message::field::EMAIL_BODY, text));
    for (name, value) in email_body.into_iter().chain(incoming.metadata.fields()) {
        field(out, Some(name));
        field(out, Some(value));
    }
    out.push(0x1e);
}

/// Appends one field, length-prefixed, marked present or absent.
fn field(out: &mut Vec<u8>, value: Option<&str>) {
    let text = value.unwrap_or("");
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.push(u8::from(value.is_some()));
}

/// SHA-256 of `parts`, as hex.
fn digest(parts: &[&[u8]]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Metadata;

    fn incoming(body: &str, key: Option<&str>) -> Incoming {
        Incoming {
            topic: None,
            recipient: Some("+4915112345678".to_owned()),
            body: body.to_owned(),
            email_body: None,
            key: key.map(str::to_owned),
            partition: None,
            metadata: Metadata {
                request_id: Some("r-1".to_owned()),
                ..Metadata::default()
            },
        }
    }

    fn of_id(message: &Incoming, partitions: u32) -> String {
        of_request_ids([(message, partitions)].into_iter())["r-1"].clone()
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let one = incoming("hello", None);
        assert_eq!(of_id(&one, 3), of_id(&one.clone(), 3));
        assert_ne!(of_id(&one, 3), of_id(&incoming("hellO", None), 3));
        assert_ne!(
            of_id(&one, 3),
            of_id(&incoming("hello", Some("")), 3),
            "an empty key is not no key"
        );
        assert_ne!(of_id(&one, 3), of_id(&one, 4), "a grown queue routes anew");
    }

    #[test]
    fn a_request_fingerprint_covers_bytes_and_routing() {
        let counts = |n| vec![("sms".to_owned(), n), ("other".to_owned(), 2)];
        let first = of_request(b"{}", counts(3));
        let mut reordered = counts(3);
        reordered.reverse();
        assert_eq!(first, of_request(b"{}", reordered));
        assert_ne!(first, of_request(b"{ }", counts(3)));
        assert_ne!(first, of_request(b"{}", counts(4)));
        assert_eq!(first.len(), 64);
    }
}
