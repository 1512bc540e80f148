//! What a `POST /api/v1/produce` body asks for, validated: one message or a
//! batch (`{"messages": [...]}`), each in our shape (`recipient`, `body`,
//! `key`, `partition`) or in the alerting-request shape clients already
//! send (`phone`, `message_body`, `topic_name`, `email`, `request_id`,
//! `transaction_id`, `customer_id`, `key`). A message is checked by the
//! producer's rules ([`crate::message`]); a batch refuses its bad messages
//! one by one and keeps the good ones. A `request_id` is a message's
//! idempotency key, so it names one message: a batch's later messages that
//! repeat an earlier one's id are refused, and the first is kept.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::answer::Refusal;
use crate::message::{DecodeError, Metadata, check_body, is_e164, is_email};

/// The longest key, id or idempotency key a request may carry, in bytes.
pub(super) const MAX_ID_BYTES: usize = 255;

/// One valid message of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Incoming {
    /// The queue it goes to (`topic_name`); `None` for the server's own.
    pub(super) topic: Option<String>,
    /// The phone number, E.164; `None` for a message to an e-mail address
    /// alone.
    pub(super) recipient: Option<String>,
    /// The text: one SMS with a phone number, else an e-mail's.
    pub(super) body: String,
    /// The e-mail channel's own text, when it differs from the SMS.
    pub(super) email_body: Option<String>,
    /// The routing key; `None` routes by the recipient.
    pub(super) key: Option<String>,
    /// An explicit partition, over any key.
    pub(super) partition: Option<u32>,
    /// What travels with it.
    pub(super) metadata: Metadata,
}

/// A request's messages, each valid or refused with its reason.
#[derive(Debug)]
pub(super) enum Parsed {
    /// A lone message: the answer is its own.
    Single(Result<Incoming, Refusal>),
    /// `{"messages": [...]}`: one result per message, in order.
    Batch(Vec<Result<Incoming, Refusal>>),
}

/// A message as the client wrote it: every field either shape may use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMessage {
    recipient: Option<String>,
    phone: Option<String>,
    body: Option<String>,
    message_body: Option<String>,
    email_body: Option<String>,
    key: Option<String>,
    partition: Option<u32>,
    topic_name: Option<String>,
    email: Option<String>,
    request_id: Option<String>,
    transaction_id: Option<String>,
    customer_id: Option<String>,
}

/// Reads a request body already known to be JSON. A body that is not an
/// object, or a `messages` that is not a list of 1 to `max_batch`, refuses
/// the whole request.
///
/// The body is read once into its top-level fields, each kept as raw JSON,
/// and each message is then read straight into its typed form: no tree of
/// JSON values is built for a batch of a thousand messages.
pub(super) fn parse(body: &[u8], max_batch: usize) -> Result<Parsed, Refusal> {
    let not_json = |err: serde_json::Error| {
        Refusal::bad_request("", "", format!("the body is not valid JSON: {err}"))
    };
    let top: &RawValue = serde_json::from_slice(body).map_err(not_json)?;
    if !top.get().starts_with('{') {
        return Err(Refusal::bad_request(
            "",
            "",
            "expected a JSON object: one message, or {\"messages\": [...]}",
        ));
    }
    let mut fields: HashMap<String, &RawValue> =
        serde_json::from_str(top.get()).map_err(not_json)?;
    let Some(messages) = fields.remove("messages") else {
        return Ok(Parsed::Single(message(top)));
    };
    if let Some(other) = fields.keys().next() {
        return Err(Refusal::bad_request(
            other,
            "",
            format!("unknown field '{other}' beside 'messages'"),
        ));
    }
    let Ok(messages) = serde_json::from_str::<Vec<&RawValue>>(messages.get()) else {
        return Err(Refusal::bad_request(
            "messages",
            messages.get(),
            "'messages' must be a list of messages",
        ));
    };
    if messages.is_empty() {
        return Err(Refusal::bad_request(
            "messages",
            "[]",
            "'messages' holds no message",
        ));
    }
    if messages.len() > max_batch {
        return Err(Refusal::too_large(format!(
            "the batch holds {} messages, more than --max-batch {max_batch}",
            messages.len()
        )));
    }
    let mut messages: Vec<_> = messages.into_iter().map(message).collect();
    refuse_repeated_ids(&mut messages);
    Ok(Parsed::Batch(messages))
}

/// Refuses each valid message whose `request_id` an earlier valid message
/// of the batch carries. Written, both would take the one id's record, and
/// that id sent again alone would match neither.
fn refuse_repeated_ids(messages: &mut [Result<Incoming, Refusal>]) {
    let mut first_at: HashMap<String, usize> = HashMap::new();
    for (index, message) in messages.iter_mut().enumerate() {
        let Some(id) = message
            .as_ref()
            .ok()
            .and_then(|incoming| incoming.metadata.request_id.clone())
        else {
            continue;
        };
        match first_at.get(&id) {
            Some(first) => {
                *message = Err(Refusal::bad_request(
                    "request_id",
                    &id,
                    format!(
                        "request_id '{id}' is the message at index {first} of this batch \
                         already: a request_id names one message"
                    ),
                ));
            }
            None => {
                first_at.insert(id, index);
            }
        }
    }
}

/// One message, checked.
fn message(raw: &RawValue) -> Result<Incoming, Refusal> {
    if !raw.get().starts_with('{') {
        return Err(Refusal::bad_request(
            "",
            raw.get(),
            "a message must be a JSON object",
        ));
    }
    let wire: WireMessage =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
            .map_err(|err| type_refusal(raw, &err))?;
    let recipient = match (wire.recipient, wire.phone, &wire.email) {
        (None, None, Some(_)) => None,
        (None, None, None) => {
            return Err(Refusal::bad_request(
                "recipient",
                "",
                "missing field 'recipient' (or 'phone'; or 'email' for an e-mail alone)",
            ));
        }
        (recipient, phone, _) => Some(one_of(recipient, "recipient", phone, "phone")?),
    };
    let body = one_of(wire.body, "body", wire.message_body, "message_body")?;
    if let Some((recipient_field, recipient)) = &recipient
        && !is_e164(recipient)
    {
        return Err(Refusal::bad_request(
            recipient_field,
            recipient,
            format!("'{recipient_field}' is not an E.164 phone number (+ and 7 to 15 digits)"),
        ));
    }
    let (body_field, body) = body;
    check_body(&body, recipient.is_some())
        .map_err(|err| length_refusal(body_field, &body, &err))?;
    let email_body = match (wire.email_body, &wire.email) {
        (Some(text), None) => {
            return Err(Refusal::bad_request(
                "email_body",
                &text,
                "'email_body' is the e-mail channel's text: the message needs an 'email'",
            ));
        }
        (Some(text), Some(_)) => {
            check_body(&text, false).map_err(|err| length_refusal("email_body", &text, &err))?;
            Some(text)
        }
        (None, _) => None,
    };
    let topic = wire
        .topic_name
        .map(|topic| checked_topic(topic, "topic_name"))
        .transpose()?;
    let key = wire.key.map(|key| bounded(key, "key")).transpose()?;
    let request_id = wire
        .request_id
        .map(|id| idempotency_key(id, "request_id"))
        .transpose()?;
    let email = wire.email.map(checked_email).transpose()?;
    let transaction_id = wire
        .transaction_id
        .map(|id| bounded(id, "transaction_id"))
        .transpose()?;
    let customer_id = wire
        .customer_id
        .map(|id| bounded(id, "customer_id"))
        .transpose()?;
    Ok(Incoming {
        topic,
        recipient: recipient.map(|(_, recipient)| recipient),
        body,
        email_body,
        key,
        partition: wire.partition,
        metadata: Metadata {
            email,
            request_id,
            transaction_id,
            customer_id,
        },
    })
}

/// A refusal of a text of the wrong length, in field `name`, with the
/// limit for the message's addresses.
fn length_refusal(name: &'static str, text: &str, err: &DecodeError) -> Refusal {
    let why = match err {
        DecodeError::InvalidBodyLength(chars) => format!(
            "'{name}' has {chars} characters, expected 1 to {} (one SMS)",
            crate::message::MAX_BODY_CHARS
        ),
        DecodeError::InvalidEmailBodyLength(_, chars) => format!(
            "'{name}' has {chars} characters, expected 1 to {} for an e-mail",
            crate::message::MAX_EMAIL_BODY_CHARS
        ),
        other => other.to_string(),
    };
    Refusal::bad_request(name, text, why)
}

/// The refusal of a message serde could not read: the field at fault and
/// its value as the client wrote it, when the fault lies in one field (a
/// wrong type); none for an unknown field, which the error names.
fn type_refusal(raw: &RawValue, err: &serde_path_to_error::Error<serde_json::Error>) -> Refusal {
    let path = err.path().to_string();
    let (field, value) = match path.as_str() {
        "." | "" => (String::new(), String::new()),
        field => {
            let value =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
                    .ok()
                    .and_then(|fields| fields.get(field).map(ToString::to_string))
                    .unwrap_or_default();
            (field.to_owned(), value)
        }
    };
    let why = if field.is_empty() {
        format!("invalid message: {}", err.inner())
    } else {
        format!("invalid message: '{field}': {}", err.inner())
    };
    Refusal::bad_request(&field, &value, why)
}

/// The one of two synonymous fields the message gives. Both given is
/// refused naming the second field with its own value, as every refusal
/// shows the value of the field it names.
fn one_of(
    first: Option<String>,
    first_name: &'static str,
    second: Option<String>,
    second_name: &'static str,
) -> Result<(&'static str, String), Refusal> {
    match (first, second) {
        (Some(value), None) => Ok((first_name, value)),
        (None, Some(value)) => Ok((second_name, value)),
        (None, None) => Err(Refusal::bad_request(
            first_name,
            "",
            format!("missing field '{first_name}' (or '{second_name}')"),
        )),
        (Some(_), Some(value)) => Err(Refusal::bad_request(
            second_name,
            &value,
            format!("give '{first_name}' or '{second_name}', not both"),
        )),
    }
}

/// A free-form id carried along: at most [`MAX_ID_BYTES`].
fn bounded(value: String, field: &'static str) -> Result<String, Refusal> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(Refusal::bad_request(
            field,
            &value,
            format!("'{field}' must be 1 to {MAX_ID_BYTES} bytes long"),
        ));
    }
    Ok(value)
}

/// An idempotency key (the `Idempotency-Key` header, or a message's
/// `request_id`): 1 to [`MAX_ID_BYTES`] visible ASCII characters, as it
/// becomes part of a Redis key name.
pub(super) fn idempotency_key(value: String, field: &'static str) -> Result<String, Refusal> {
    let visible = value.bytes().all(|b| b.is_ascii_graphic());
    if value.is_empty() || value.len() > MAX_ID_BYTES || !visible {
        return Err(Refusal::bad_request(
            field,
            &value,
            format!("'{field}' must be 1 to {MAX_ID_BYTES} visible ASCII characters"),
        ));
    }
    Ok(value)
}

/// A queue name: what `--prefix` accepts.
fn checked_topic(value: String, field: &'static str) -> Result<String, Refusal> {
    crate::settings::check::key_part(&value)
        .map_err(|reason| Refusal::bad_request(field, &value, format!("'{field}': {reason}")))
}

/// An e-mail address, checked for its shape only (see [`is_email`]).
fn checked_email(value: String) -> Result<String, Refusal> {
    if !is_email(&value) {
        return Err(Refusal::bad_request(
            "email",
            &value,
            "'email' is not an e-mail address (local@domain.tld)",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(body: &str) -> Result<Incoming, Refusal> {
        match parse(body.as_bytes(), 10).expect("parses") {
            Parsed::Single(message) => message,
            Parsed::Batch(_) => panic!("expected a single message"),
        }
    }

    #[test]
    fn both_shapes_give_the_same_message() {
        let ours =
            single(r#"{"recipient": "+4915112345678", "body": "Flood warning"}"#).expect("valid");
        let theirs = single(
            r#"{"request_id": "r-1", "topic_name": "alerts", "message_body": "Flood warning",
                "transaction_id": "t-9", "email": "a@example.org", "phone": "+4915112345678",
                "customer_id": "c-7", "key": "district-4"}"#,
        )
        .expect("valid");
        assert_eq!(
            (ours.recipient.as_deref(), ours.body.as_str()),
            (Some("+4915112345678"), "Flood warning")
        );
        assert_eq!((theirs.recipient, theirs.body), (ours.recipient, ours.body));
        assert_eq!(theirs.topic.as_deref(), Some("alerts"));
        assert_eq!(theirs.key.as_deref(), Some("district-4"));
        assert_eq!(theirs.metadata.request_id.as_deref(), Some("r-1"));
        assert_eq!(theirs.metadata.customer_id.as_deref(), Some("c-7"));
        assert_eq!(theirs.metadata.fields().count(), 4);
    }

    #[test]
    fn each_bad_field_is_named_with_its_value() {
        for (body, field, value) in [
            (
                r#"{"recipient": "555-1234", "body": "x"}"#,
                "recipient",
                "555-1234",
            ),
            (r#"{"phone": "+0123", "body": "x"}"#, "phone", "+0123"),
            (r#"{"recipient": "+4915112345678", "body": ""}"#, "body", ""),
            (r#"{"recipient": "+4915112345678"}"#, "body", ""),
            (
                r#"{"recipient": "+4915112345678", "body": "x", "email": "nobody"}"#,
                "email",
                "nobody",
            ),
            (
                r#"{"recipient": "+4915112345678", "body": "x", "topic_name": "a b"}"#,
                "topic_name",
                "a b",
            ),
            (
                r#"{"recipient": "+4915112345678", "body": "x", "request_id": "a b"}"#,
                "request_id",
                "a b",
            ),
            (
                r#"{"recipient": "+4915112345678", "phone": "+4915112345679", "body": "x"}"#,
                "phone",
                "+4915112345679",
            ),
            (
                r#"{"phone": "+4915112345678", "body": "x", "message_body": "y"}"#,
                "message_body",
                "y",
            ),
        ] {
            let refusal = single(body).expect_err(body);
            assert_eq!(
                (refusal.field.as_str(), refusal.value.as_str()),
                (field, value),
                "{body}"
            );
            assert_eq!(refusal.status, 400, "{body}");
        }
        let long = format!(
            r#"{{"recipient": "+4915112345678", "body": "{}"}}"#,
            "a".repeat(101)
        );
        assert!(
            single(&long)
                .expect_err("too long")
                .error
                .contains("101 characters")
        );
        let unknown = single(r#"{"recipient": "+4915112345678", "body": "x", "colour": 1}"#)
            .expect_err("unknown field");
        assert!(unknown.error.contains("colour"), "{}", unknown.error);
        for (body, field, value) in [
            (
                r#"{"recipient": "+4915112345678", "body": "x", "partition": "two"}"#,
                "partition",
                "\"two\"",
            ),
            (
                r#"{"recipient": "+4915112345678", "body": "x", "partition": -1}"#,
                "partition",
                "-1",
            ),
            (
                r#"{"recipient": 4915112345678, "body": "x"}"#,
                "recipient",
                "4915112345678",
            ),
            (
                r#"{"recipient": "+4915112345678", "body": ["x"]}"#,
                "body",
                "[\"x\"]",
            ),
        ] {
            let refusal = single(body).expect_err(body);
            assert_eq!(
                (
                    refusal.status,
                    refusal.field.as_str(),
                    refusal.value.as_str()
                ),
                (400, field, value),
                "{body}: {}",
                refusal.error
            );
            assert!(
                refusal.error.contains(&format!("'{field}'")),
                "{}",
                refusal.error
            );
        }
    }

    #[test]
    fn an_email_alone_may_carry_a_longer_text() {
        let long = "a".repeat(1_000);
        let mail = single(&format!(
            r#"{{"email": "a@example.org", "message_body": "{long}"}}"#
        ))
        .expect("an e-mail address is address enough");
        assert_eq!((mail.recipient, mail.body.len()), (None, 1_000));
        let too_long = single(&format!(
            r#"{{"email": "a@example.org", "body": "{long}a"}}"#
        ))
        .expect_err("over the e-mail limit");
        assert_eq!(too_long.field, "body");
        assert!(
            too_long.error.contains("1001 characters"),
            "{}",
            too_long.error
        );
        let sms = single(&format!(
            r#"{{"phone": "+4915112345678", "email": "a@example.org", "body": "{}"}}"#,
            "a".repeat(101)
        ))
        .expect_err("a phone number keeps the body to one SMS");
        assert!(sms.error.contains("one SMS"), "{}", sms.error);
        let both = single(&format!(
            r#"{{"phone": "+4915112345678", "email": "a@example.org", "body": "Flood",
                 "email_body": "{long}"}}"#
        ))
        .expect("the e-mail's own text");
        assert_eq!(both.email_body.map(|t| t.len()), Some(1_000));
        let orphan = single(r#"{"phone": "+4915112345678", "body": "x", "email_body": "y"}"#)
            .expect_err("email_body without an email");
        assert_eq!(
            (orphan.field.as_str(), orphan.value.as_str()),
            ("email_body", "y")
        );
        let nowhere = single(r#"{"body": "x"}"#).expect_err("no address");
        assert_eq!(nowhere.field, "recipient");
    }

    #[test]
    fn a_batch_keeps_its_good_messages_and_refuses_its_bad_ones() {
        let body = r#"{"messages": [
            {"recipient": "+4915112345678", "body": "one"},
            {"recipient": "bad", "body": "two"},
            {"recipient": "+4915112345679", "body": "three", "partition": 2}
        ]}"#;
        let Parsed::Batch(messages) = parse(body.as_bytes(), 10).expect("parses") else {
            panic!("expected a batch");
        };
        let valid: Vec<bool> = messages.iter().map(Result::is_ok).collect();
        assert_eq!(valid, [true, false, true]);
        assert_eq!(messages[2].as_ref().expect("valid").partition, Some(2));
    }

    #[test]
    fn a_request_id_names_one_message_of_a_batch() {
        let body = r#"{"messages": [
            {"phone": "+4915112345678", "message_body": "bad", "request_id": "r2", "email": "x"},
            {"phone": "+4915112345678", "message_body": "a", "request_id": "r2"},
            {"phone": "+4915112345678", "message_body": "b", "request_id": "r3"},
            {"phone": "+4915112345678", "message_body": "b", "request_id": "r2"},
            {"phone": "+4915112345678", "message_body": "c"},
            {"phone": "+4915112345678", "message_body": "c"}
        ]}"#;
        let Parsed::Batch(messages) = parse(body.as_bytes(), 10).expect("parses") else {
            panic!("expected a batch");
        };
        let valid: Vec<bool> = messages.iter().map(Result::is_ok).collect();
        assert_eq!(valid, [false, true, true, false, true, true]);
        assert_eq!(messages[1].as_ref().expect("kept").body, "a");
        let repeat = messages[3].as_ref().expect_err("a repeat");
        assert_eq!(
            (repeat.status, repeat.field.as_str(), repeat.value.as_str()),
            (400, "request_id", "r2")
        );
        assert!(
            repeat.error.contains("'r2'") && repeat.error.contains("index 1"),
            "{}",
            repeat.error
        );
    }

    #[test]
    fn whole_requests_are_refused_for_their_shape_or_size() {
        for (body, status) in [
            ("[1, 2]", 400),
            (r#"{"messages": {}}"#, 400),
            (r#"{"messages": []}"#, 400),
            (r#"{"messages": [], "extra": 1}"#, 400),
            ("{not json", 400),
        ] {
            let refusal = parse(body.as_bytes(), 2).expect_err(body);
            assert_eq!(refusal.status, status, "{body}");
        }
        let three = r#"{"messages": [{}, {}, {}]}"#;
        assert_eq!(
            parse(three.as_bytes(), 2).expect_err("too many").status,
            413
        );
    }
}
