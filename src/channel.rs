//! Channels: the ways one alert goes out. Each channel is a consumer group
//! of the same name over the queue's streams, so every channel sees every
//! message, settles it on its own (sent, dead or skipped) and keeps its own
//! counters, dead letters and senders.
//!
//! A channel has a kind, which says which address of a message it sends to:
//! the `sms` kind the recipient's phone number, the `email` kind the e-mail
//! address. A message without that address is skipped by the channel.
//! The queue records its channels, first one first, as `name:kind` pairs
//! separated by commas (`sms:sms,email:email`).

use std::fmt;

use crate::message::field;

/// The channel a queue has when none is asked for.
pub const DEFAULT_CHANNEL: &str = "sms";

/// What a channel sends through, and so which address it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// Text messages, to the recipient's phone number.
    Sms,
    /// E-mail, to the message's e-mail address.
    Email,
}

impl ChannelKind {
    /// The kind's name, as the queue records it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Email => "email",
        }
    }

    /// The stream field holding the address a channel of this kind sends to.
    pub fn address_field(self) -> &'static str {
        match self {
            Self::Sms => field::RECIPIENT,
            Self::Email => field::EMAIL,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "sms" => Some(Self::Sms),
            "email" => Some(Self::Email),
            _ => None,
        }
    }
}

/// One channel of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel {
    /// Its name, also the name of its consumer group.
    pub name: String,
    /// What it sends through.
    pub kind: ChannelKind,
}

impl Channel {
    /// Parses `NAME[:KIND]`: without a kind, a channel named `email` is of
    /// the e-mail kind and any other of the SMS kind. The name must already
    /// be a valid key part (the caller checks it).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (name, kind) = match spec.split_once(':') {
            Some((name, kind)) => (
                name,
                ChannelKind::parse(kind)
                    .ok_or_else(|| format!("channel kind '{kind}' is not 'sms' or 'email'"))?,
            ),
            None if spec == "email" => (spec, ChannelKind::Email),
            None => (spec, ChannelKind::Sms),
        };
        if name.is_empty() {
            return Err(format!("channel '{spec}' has no name"));
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
        })
    }

    /// A channel of the SMS kind: what a queue from before channels has.
    pub fn sms(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: ChannelKind::Sms,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.kind.name())
    }
}

/// The list as the queue records it: `name:kind` pairs separated by commas.
pub fn encode(channels: &[Channel]) -> String {
    channels
        .iter()
        .map(Channel::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the list the queue records, or says what is wrong with it.
pub fn decode(text: &str) -> Result<Vec<Channel>, String> {
    let channels = text
        .split(',')
        .map(|spec| match spec.split_once(':') {
            Some(_) => Channel::parse(spec),
            None => Err(format!("'{spec}' is not name:kind")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_unique(&channels)?;
    Ok(channels)
}

/// Refuses a list that names a channel twice: one name is one consumer
/// group, which cannot be of two kinds, and a repeat is a typo.
pub fn check_unique(channels: &[Channel]) -> Result<(), String> {
    for (i, channel) in channels.iter().enumerate() {
        if channels[..i].iter().any(|c| c.name == channel.name) {
            return Err(format!("channel '{}' is listed twice", channel.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_takes_its_kind_from_the_name() {
        assert_eq!(Channel::parse("email").unwrap().kind, ChannelKind::Email);
        assert_eq!(Channel::parse("sms").unwrap().kind, ChannelKind::Sms);
        assert_eq!(Channel::parse("senders").unwrap().kind, ChannelKind::Sms);
        let relay = Channel::parse("relay:email").unwrap();
        assert_eq!(
            (relay.name.as_str(), relay.kind),
            ("relay", ChannelKind::Email)
        );
        assert!(Channel::parse("x:fax").unwrap_err().contains("'fax'"));
        assert!(Channel::parse(":sms").is_err());
    }

    #[test]
    fn the_recorded_list_round_trips() {
        let channels = vec![Channel::sms("senders"), Channel::parse("email").unwrap()];
        let text = encode(&channels);
        assert_eq!(text, "senders:sms,email:email");
        assert_eq!(decode(&text).unwrap(), channels);
        assert!(decode("sms:sms,sms:email").unwrap_err().contains("twice"));
        assert!(decode("sms").is_err());
        assert!(decode("").is_err());
    }

    #[test]
    fn each_kind_names_its_address() {
        assert_eq!(ChannelKind::Sms.address_field(), "recipient");
        assert_eq!(ChannelKind::Email.address_field(), "email");
    }
}
