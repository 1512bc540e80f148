//! The SMS message: the one type that is generated, encoded to stream fields and
//! decoded from them.

use thiserror::Error;

/// The longest body a message with a phone number may have, in characters:
/// one SMS.
pub const MAX_BODY_CHARS: usize = 100;

/// The longest e-mail text, in characters: the body of a message with only
/// an e-mail address, or its `email_body`. 4,000 bytes at most, so a dead
/// letter keeps it whole (and a requeue sends it whole).
pub const MAX_EMAIL_BODY_CHARS: usize = 1_000;

/// Field names of a message entry in the stream, readable with redis-cli.
pub mod field {
    /// The recipient's phone number in E.164 form.
    pub const RECIPIENT: &str = "recipient";
    /// The text, 1 to 100 characters of UTF-8.
    pub const BODY: &str = "body";
    /// When the message was created, in milliseconds since the Unix epoch.
    pub const CREATED_MS: &str = "created_ms";
    /// The recipient's e-mail address, when the request gave one.
    pub const EMAIL: &str = "email";
    /// The id the client gave the request that brought the message.
    pub const REQUEST_ID: &str = "request_id";
    /// The client's transaction id, carried along for its records.
    pub const TRANSACTION_ID: &str = "transaction_id";
    /// The client's customer id, carried along for its records.
    pub const CUSTOMER_ID: &str = "customer_id";
    /// The one channel a requeued message is for; the others skip it.
    pub const CHANNEL: &str = "channel";
    /// The e-mail channel's text when it differs from the SMS text: 1 to
    /// 1,000 characters.
    pub const EMAIL_BODY: &str = "email_body";
}

/// A stream entry's field/value pairs as stored: raw bytes, because a poison
/// entry may hold anything and must still be read (then dead-lettered).
pub type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

/// One SMS alert to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The recipient's phone number in E.164 form, e.g. `+447700900123`.
    pub recipient: String,
    /// The text: 1 to 100 characters.
    pub body: String,
    /// Creation time in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The recipient's e-mail address, for the e-mail channel; `None` when
    /// the message has none (that channel skips it).
    pub email: Option<String>,
}

/// What a message may carry beyond what it is sent with, from the HTTP API:
/// stored with it and shown with it (in dead letters), never needed to send
/// it, so an entry without them is as valid as one with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The recipient's e-mail address.
    pub email: Option<String>,
    /// The id the client gave its request.
    pub request_id: Option<String>,
    /// The client's transaction id.
    pub transaction_id: Option<String>,
    /// The client's customer id.
    pub customer_id: Option<String>,
}

impl Metadata {
    /// The fields present, by stream field name, in a fixed order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (field::EMAIL, &self.email),
            (field::REQUEST_ID, &self.request_id),
            (field::TRANSACTION_ID, &self.transaction_id),
            (field::CUSTOMER_ID, &self.customer_id),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_deref()?)))
    }
}

/// Why a stream entry is not a valid message; such an entry is dead-lettered
/// with reason `malformed`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A required field is absent.
    #[error("missing field '{0}'")]
    MissingField(&'static str),
    /// A field's value is not valid UTF-8.
    #[error("field '{0}' is not valid UTF-8")]
    NotUtf8(&'static str),
    /// The recipient is not an E.164 phone number.
    #[error("recipient '{0}' is not an E.164 phone number")]
    InvalidRecipient(String),
    /// The body is empty or longer than [`MAX_BODY_CHARS`].
    #[error("body has {0} characters, expected 1 to {MAX_BODY_CHARS}")]
    InvalidBodyLength(usize),
    /// The text of a message without a phone number, or its `email_body`,
    /// is empty or longer than [`MAX_EMAIL_BODY_CHARS`].
    #[error("{0} has {1} characters, expected 1 to {MAX_EMAIL_BODY_CHARS}")]
    InvalidEmailBodyLength(&'static str, usize),
    /// The e-mail address does not have the shape of one.
    #[error("email '{0}' is not an e-mail address")]
    InvalidEmail(String),
    /// The creation time is not a whole number of milliseconds.
    #[error("created_ms '{0}' is not a whole number")]
    InvalidCreatedMs(String),
    /// A field too long to be read at all.
    #[error(transparent)]
    Oversized(#[from] Oversized),
}

/// A field of a stream entry too long to be read: its bytes were dropped as
/// they arrived, so that a foreign entry of any size costs a reader no
/// memory. Only its name and length are known.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("field '{field}' is {bytes} bytes, too long to read")]
pub struct Oversized {
    /// The field's name, cut short if long; `…` when the name itself was too
    /// long to read.
    pub field: String,
    /// The length of what was too long (the value, or else the name).
    pub bytes: u64,
}

impl Oversized {
    /// A field named `field` (`None` when the name itself was dropped) whose
    /// value, or name, was `bytes` long.
    pub fn new(field: Option<&[u8]>, bytes: u64) -> Self {
        let field = field.map_or_else(
            || "…".to_owned(),
            |name| truncated(&String::from_utf8_lossy(name)),
        );
        Self { field, bytes }
    }
}

impl Message {
    /// The stream fields of this message, in a fixed order.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (field::RECIPIENT, self.recipient.clone()),
            (field::BODY, self.body.clone()),
            (field::CREATED_MS, self.created_ms.to_string()),
        ];
        if let Some(email) = &self.email {
            fields.push((field::EMAIL, email.clone()));
        }
        fields
    }

    /// Decodes and validates a stream entry's fields (raw bytes, as stored).
    pub fn from_fields(fields: &RawFields) -> Result<Self, DecodeError> {
        let view = MessageRef::from_fields(fields)?;
        let email = fields
            .iter()
            .find(|(key, _)| key.as_slice() == field::EMAIL.as_bytes())
            .map(|(_, value)| {
                String::from_utf8(value.clone()).map_err(|_| DecodeError::NotUtf8(field::EMAIL))
            })
            .transpose()?;
        if let Some(email) = email.as_deref().filter(|e| !is_email(e)) {
            return Err(DecodeError::InvalidEmail(truncated(email)));
        }
        Ok(Self {
            recipient: view.recipient.to_owned(),
            body: view.body.to_owned(),
            created_ms: view.created_ms,
            email,
        })
    }
}

/// A valid message borrowed from its stream fields: what the sender checks on
/// its hot path, without allocating the recipient and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// The recipient's phone number in E.164 form.
    pub recipient: &'a str,
    /// The text.
    pub body: &'a str,
    /// Creation time in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// What a channel makes of a stream entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressed<'a> {
    /// A valid message with an address for the channel: the address and
    /// the text.
    To {
        /// The address: a phone number or an e-mail address.
        address: &'a str,
        /// The text.
        body: &'a str,
        /// Creation time in milliseconds since the Unix epoch.
        created_ms: u64,
    },
    /// A valid message with nothing for this channel: no address of its
    /// kind, or requeued for another channel.
    NotForChannel,
}

impl<'a> Addressed<'a> {
    /// Decodes and validates a stream entry's fields for the channel
    /// `channel`, whose address is in field `address_field` (`recipient`
    /// or `email`). An entry with neither address is malformed, not
    /// skipped everywhere.
    pub fn from_fields(
        fields: &'a RawFields,
        channel: &str,
        address_field: &'static str,
    ) -> Result<Self, DecodeError> {
        let text = |name: &'static str| -> Result<Option<&'a str>, DecodeError> {
            fields
                .iter()
                .find(|(key, _)| key.as_slice() == name.as_bytes())
                .map(|(_, value)| {
                    std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8(name))
                })
                .transpose()
        };
        let body = text(field::BODY)?.ok_or(DecodeError::MissingField(field::BODY))?;
        let created =
            text(field::CREATED_MS)?.ok_or(DecodeError::MissingField(field::CREATED_MS))?;
        let created_ms = created
            .parse()
            .map_err(|_| DecodeError::InvalidCreatedMs(truncated(created)))?;
        let recipient = text(field::RECIPIENT)?;
        let email = text(field::EMAIL)?;
        if let Some(recipient) = recipient.filter(|r| !is_e164(r)) {
            return Err(DecodeError::InvalidRecipient(truncated(recipient)));
        }
        if let Some(email) = email.filter(|e| !is_email(e)) {
            return Err(DecodeError::InvalidEmail(truncated(email)));
        }
        if recipient.is_none() && email.is_none() {
            return Err(DecodeError::MissingField(field::RECIPIENT));
        }
        check_body(body, recipient.is_some())?;
        let email_body = text(field::EMAIL_BODY)?;
        if let Some(text) = email_body {
            check_email_text(field::EMAIL_BODY, text)?;
        }
        let for_other = text(field::CHANNEL)?.is_some_and(|only| only != channel);
        let address = if address_field == field::EMAIL {
            email
        } else {
            recipient
        };
        let body = match (address_field, email_body) {
            (field::EMAIL, Some(email_body)) => email_body,
            _ => body,
        };
        Ok(match address {
            Some(address) if !for_other => Self::To {
                address,
                body,
                created_ms,
            },
            _ => Self::NotForChannel,
        })
    }
}

impl<'a> MessageRef<'a> {
    /// Decodes and validates a stream entry's fields without copying them.
    pub fn from_fields(fields: &'a RawFields) -> Result<Self, DecodeError> {
        let text = |name: &'static str| -> Result<&'a str, DecodeError> {
            let raw = fields
                .iter()
                .find(|(key, _)| key.as_slice() == name.as_bytes())
                .map(|(_, value)| value.as_slice())
                .ok_or(DecodeError::MissingField(name))?;
            std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8(name))
        };
        let recipient = text(field::RECIPIENT)?;
        if !is_e164(recipient) {
            return Err(DecodeError::InvalidRecipient(truncated(recipient)));
        }
        let body = text(field::BODY)?;
        let chars = body.chars().count();
        if !(1..=MAX_BODY_CHARS).contains(&chars) {
            return Err(DecodeError::InvalidBodyLength(chars));
        }
        let created = text(field::CREATED_MS)?;
        let created_ms = created
            .parse()
            .map_err(|_| DecodeError::InvalidCreatedMs(truncated(created)))?;
        Ok(Self {
            recipient,
            body,
            created_ms,
        })
    }
}

/// Checks a message's `body`: one SMS when it has a phone number, else an
/// e-mail's text.
pub fn check_body(body: &str, has_phone: bool) -> Result<(), DecodeError> {
    if has_phone {
        let chars = body.chars().count();
        if !(1..=MAX_BODY_CHARS).contains(&chars) {
            return Err(DecodeError::InvalidBodyLength(chars));
        }
        Ok(())
    } else {
        check_email_text(field::BODY, body)
    }
}

/// Checks an e-mail's text, in field `name`.
fn check_email_text(name: &'static str, text: &str) -> Result<(), DecodeError> {
    let chars = text.chars().count();
    if !(1..=MAX_EMAIL_BODY_CHARS).contains(&chars) {
        return Err(DecodeError::InvalidEmailBodyLength(name, chars));
    }
    Ok(())
}

/// The longest e-mail address (RFC 5321's path limit), in bytes.
const MAX_EMAIL_BYTES: usize = 254;

/// Whether `address` has the shape of an e-mail address: one `@` between a
/// local part and a domain with a dot, no spaces. Whether it exists is the
/// mail server's business.
pub fn is_email(address: &str) -> bool {
    address.len() <= MAX_EMAIL_BYTES
        && !address.chars().any(char::is_whitespace)
        && address.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
}

/// Whether `number` is an E.164 phone number: `+`, a non-zero digit, then 6 to
/// 14 more digits (8 to 15 digits in all would be stricter than some national
/// plans allow, so the floor is 7).
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Keeps error messages short when the bad value is a huge poison field.
fn truncated(value: &str) -> String {
    cut_short(value, 40)
}

/// `value` cut to its first `limit` characters, `…` marking the cut: how
/// a value of any length is quoted in a message or a table.
pub fn cut_short(value: &str, limit: usize) -> String {
    match value.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

/// Now, in milliseconds since the Unix epoch: the clock messages are
/// stamped with (`created_ms`), and wall-clock schedules read.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &[u8])]) -> RawFields {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn round_trips_through_fields() {
        let message = Message {
            recipient: "+447700900123".into(),
            body: "Évacuez la zone 🚨".into(),
            created_ms: 1_700_000_000_000,
            email: Some("a.b@example.org".into()),
        };
        let encoded: Vec<_> = message
            .to_fields()
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(Message::from_fields(&encoded), Ok(message));
    }

    #[test]
    fn rejects_each_kind_of_bad_entry() {
        let ok_body: &[u8] = b"hello";
        let cases: Vec<(RawFields, DecodeError)> = vec![
            (
                fields(&[("body", ok_body), ("created_ms", b"1")]),
                DecodeError::MissingField("recipient"),
            ),
            (
                fields(&[
                    ("recipient", b"+15551234567"),
                    ("body", b"\xff\xfe"),
                    ("created_ms", b"1"),
                ]),
                DecodeError::NotUtf8("body"),
            ),
            (
                fields(&[
                    ("recipient", b"555-1234"),
                    ("body", ok_body),
                    ("created_ms", b"1"),
                ]),
                DecodeError::InvalidRecipient("555-1234".into()),
            ),
            (
                fields(&[
                    ("recipient", b"+15551234567"),
                    ("body", &[b'a'; 101]),
                    ("created_ms", b"1"),
                ]),
                DecodeError::InvalidBodyLength(101),
            ),
            (
                fields(&[
                    ("recipient", b"+15551234567"),
                    ("body", b""),
                    ("created_ms", b"1"),
                ]),
                DecodeError::InvalidBodyLength(0),
            ),
            (
                fields(&[
                    ("recipient", b"+15551234567"),
                    ("body", ok_body),
                    ("created_ms", b"x"),
                ]),
                DecodeError::InvalidCreatedMs("x".into()),
            ),
        ];
        for (entry, expected) in cases {
            assert_eq!(Message::from_fields(&entry), Err(expected));
        }
    }

    #[test]
    fn oversized_fields_are_named_briefly() {
        let long_name = vec![b'n'; 100];
        let oversized = Oversized::new(Some(&long_name), 70_000);
        assert_eq!(oversized.field, format!("{}…", "n".repeat(40)));
        assert_eq!(
            DecodeError::from(Oversized::new(None, 70_000)).to_string(),
            "field '…' is 70000 bytes, too long to read"
        );
    }

    #[test]
    fn the_email_channel_takes_its_own_text_and_an_email_alone_a_longer_one() {
        let long = "b".repeat(MAX_EMAIL_BODY_CHARS);
        let both = fields(&[
            ("recipient", b"+15551234567"),
            ("email", b"a@example.org"),
            ("body", b"Flood"),
            ("email_body", long.as_bytes()),
            ("created_ms", b"1"),
        ]);
        let text = |entry: &RawFields, channel, address| match Addressed::from_fields(
            entry, channel, address,
        )
        .expect("valid")
        {
            Addressed::To { body, .. } => body.len(),
            Addressed::NotForChannel => 0,
        };
        assert_eq!(text(&both, "sms", field::RECIPIENT), 5);
        assert_eq!(text(&both, "email", field::EMAIL), MAX_EMAIL_BODY_CHARS);
        let mail_only = fields(&[
            ("email", b"a@example.org"),
            ("body", long.as_bytes()),
            ("created_ms", b"1"),
        ]);
        assert_eq!(
            text(&mail_only, "email", field::EMAIL),
            MAX_EMAIL_BODY_CHARS
        );
        assert_eq!(text(&mail_only, "sms", field::RECIPIENT), 0, "skipped");
        let long_sms = fields(&[
            ("recipient", b"+15551234567"),
            ("email", b"a@example.org"),
            ("body", long.as_bytes()),
            ("created_ms", b"1"),
        ]);
        for (channel, address) in [("sms", field::RECIPIENT), ("email", field::EMAIL)] {
            assert_eq!(
                Addressed::from_fields(&long_sms, channel, address),
                Err(DecodeError::InvalidBodyLength(MAX_EMAIL_BODY_CHARS)),
                "malformed on every channel alike"
            );
        }
    }

    #[test]
    fn e164_rules() {
        for good in ["+15551234567", "+447700900123", "+4930123"] {
            assert!(is_e164(good), "{good} should be valid");
        }
        for bad in [
            "15551234567",
            "+0123456789",
            "+1234",
            "+1234567890123456",
            "+1555x234567",
            "",
        ] {
            assert!(!is_e164(bad), "{bad} should be invalid");
        }
    }
}
