//! Seeded random messages: valid E.164 recipients and bodies of 1 to 100 characters.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::message::{MAX_BODY_CHARS, Message};

/// Country calling codes and the length of national numbers under them, so the
/// generated numbers look like real ones.
const COUNTRIES: &[(&str, usize)] = &[
    ("1", 10),   // NANP
    ("33", 9),   // France
    ("44", 10),  // United Kingdom
    ("49", 11),  // Germany
    ("55", 11),  // Brazil
    ("61", 9),   // Australia
    ("81", 10),  // Japan
    ("91", 10),  // India
    ("234", 10), // Nigeria
    ("358", 9),  // Finland
];

/// Characters a body is drawn from: letters, digits, punctuation and a few
/// non-ASCII letters so that the UTF-8 path is exercised.
const BODY_ALPHABET: &[char] = &[
    'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's',
    't', 'u', 'v', 'w', 'x', 'y', 'z', 'A', 'E', 'I', 'O', 'U', 'S', 'T', 'W', '0', '1', '2', '3',
    '4', '5', '6', '7', '8', '9', ' ', ' ', ' ', ' ', '.', ',', '!', '?', '-', ':', 'é', 'ü', 'ñ',
];

/// Produces random messages; the same seed gives the same sequence.
#[derive(Debug)]
pub struct MessageGenerator {
    rng: StdRng,
}

impl MessageGenerator {
    /// A generator whose sequence is fixed by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A generator seeded from the operating system.
    pub fn from_entropy() -> Self {
        Self {
            rng: rand::make_rng::<StdRng>(),
        }
    }

    /// The next message, stamped with `created_ms`.
    pub fn next_message(&mut self, created_ms: u64) -> Message {
        Message {
            recipient: self.recipient(),
            body: self.body(),
            created_ms,
        }
    }

    fn recipient(&mut self) -> String {
        let (code, national_len) = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let mut number = String::with_capacity(1 + code.len() + national_len);
        number.push('+');
        number.push_str(code);
        number.push(char::from(b'1' + self.rng.random_range(0..9u8)));
        for _ in 1..national_len {
            number.push(char::from(b'0' + self.rng.random_range(0..10u8)));
        }
        number
    }

    fn body(&mut self) -> String {
        let len = self.rng.random_range(1..=MAX_BODY_CHARS);
        (0..len)
            .map(|_| BODY_ALPHABET[self.rng.random_range(0..BODY_ALPHABET.len())])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::is_e164;

    #[test]
    fn same_seed_same_messages() {
        let mut a = MessageGenerator::seeded(7);
        let mut b = MessageGenerator::seeded(7);
        for _ in 0..100 {
            assert_eq!(a.next_message(1), b.next_message(1));
        }
        let mut c = MessageGenerator::seeded(8);
        assert_ne!(
            MessageGenerator::seeded(7).next_message(1),
            c.next_message(1)
        );
    }

    #[test]
    fn messages_are_valid_and_lengths_vary() {
        let mut generator = MessageGenerator::seeded(1);
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let message = generator.next_message(1);
            assert!(is_e164(&message.recipient), "{}", message.recipient);
            let chars = message.body.chars().count();
            assert!((1..=MAX_BODY_CHARS).contains(&chars), "{chars} characters");
            lengths.insert(chars);
        }
        assert!(lengths.contains(&1) && lengths.contains(&MAX_BODY_CHARS));
        assert!(
            lengths.len() > 90,
            "only {} distinct lengths",
            lengths.len()
        );
    }
}
