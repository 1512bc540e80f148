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
    /// Whether messages get an e-mail address too (most of them do).
    emails: bool,
}

/// One message in this many gets no e-mail address when messages get them,
/// so that an e-mail channel has messages to skip.
const NO_EMAIL_ONE_IN: u32 = 10;

/// The domains of generated e-mail addresses (reserved for examples).
const EMAIL_DOMAINS: &[&str] = &["example.org", "example.com", "example.net"];

impl MessageGenerator {
    /// A generator whose sequence is fixed by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            emails: false,
        }
    }

    /// A generator seeded from the operating system.
    pub fn from_entropy() -> Self {
        Self {
            rng: rand::make_rng::<StdRng>(),
            emails: false,
        }
    }

    /// The same generator, giving nine messages in ten an e-mail address
    /// too (for a queue with an e-mail channel). Without it, the sequence
    /// for a seed is what it always was.
    pub fn with_emails(self) -> Self {
        Self {
            emails: true,
            ..self
        }
    }

    /// The next message, stamped with `created_ms`.
    pub fn next_message(&mut self, created_ms: u64) -> Message {
        let recipient = self.recipient();
        let body = self.body();
        let email = if self.emails && self.rng.random_range(0..NO_EMAIL_ONE_IN) != 0 {
            Some(self.email())
        } else {
            None
        };
        Message {
            recipient,
            body,
            created_ms,
            email,
        }
    }

    fn email(&mut self) -> String {
        let len = self.rng.random_range(3..=12);
        let mut address = String::with_capacity(len + 13);
        let mut draws = Draws::new(&mut self.rng);
        for _ in 0..len {
            address.push(char::from(b'a' + draws.below(26) as u8));
        }
        address.push('@');
        address.push_str(EMAIL_DOMAINS[draws.below(EMAIL_DOMAINS.len())]);
        address
    }

    fn recipient(&mut self) -> String {
        let (code, national_len) = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let mut number = String::with_capacity(1 + code.len() + national_len);
        number.push('+');
        number.push_str(code);
        let mut draws = Draws::new(&mut self.rng);
        number.push(char::from(b'1' + draws.below(9) as u8));
        for _ in 1..national_len {
            number.push(char::from(b'0' + draws.below(10) as u8));
        }
        number
    }

    fn body(&mut self) -> String {
        let len = self.rng.random_range(1..=MAX_BODY_CHARS);
        // Most characters are one byte; a few take two.
        let mut body = String::with_capacity(len + len / 8);
        let mut draws = Draws::new(&mut self.rng);
        for _ in 0..len {
            body.push(BODY_ALPHABET[draws.below(BODY_ALPHABET.len())]);
        }
        body
    }
}

/// Small uniform draws, several from each 64-bit random word: a word read as
/// a fraction in [0, 1) gives its digits in base `n` one by one (multiply by
/// `n`: the high bits are the digit, the low bits the rest), so a body costs
/// an eighth of the ChaCha words that a word per character would.
struct Draws<'a> {
    rng: &'a mut StdRng,
    word: u64,
    left: u32,
}

impl<'a> Draws<'a> {
    /// Digits taken from one word. Each digit is uniform however many come
    /// before it (multiplying by an odd `n` only permutes the low bits); 8 of
    /// ours (n <= 57, under 6 bits each) use under 47 of the 64 bits, so they
    /// are as good as independent.
    const PER_WORD: u32 = 8;

    fn new(rng: &'a mut StdRng) -> Self {
        Self {
            rng,
            word: 0,
            left: 0,
        }
    }

    /// A number in `0..n`, for a small `n`.
    fn below(&mut self, n: usize) -> usize {
        if self.left == 0 {
            self.word = self.rng.random();
            self.left = Self::PER_WORD;
        }
        self.left -= 1;
        let product = u128::from(self.word) * n as u128;
        self.word = product as u64;
        (product >> 64) as usize
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
    fn most_messages_get_an_email_address_when_asked() {
        let mut generator = MessageGenerator::seeded(5).with_emails();
        let messages: Vec<Message> = (0..1000).map(|_| generator.next_message(1)).collect();
        let with = messages.iter().filter(|m| m.email.is_some()).count();
        assert!(
            (850..=950).contains(&with),
            "{with} of 1000 have an address"
        );
        for message in &messages {
            if let Some(email) = &message.email {
                assert!(crate::message::is_email(email), "{email}");
            }
        }
        let mut plain = MessageGenerator::seeded(5);
        assert!(plain.next_message(1).email.is_none());
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

    #[test]
    fn draws_are_uniform_at_every_position_in_a_word() {
        // Each of the eight digits taken from a word, counted apart: a digit
        // drawn from too few remaining bits would show as uneven counts.
        let mut rng = StdRng::seed_from_u64(3);
        let n = BODY_ALPHABET.len();
        let rounds = 20_000;
        let mut counts = vec![vec![0u32; n]; Draws::PER_WORD as usize];
        let mut repeats = 0u32;
        let mut draws = Draws::new(&mut rng);
        for _ in 0..rounds {
            let mut last = None;
            for position in counts.iter_mut() {
                let value = draws.below(n);
                position[value] += 1;
                repeats += u32::from(last == Some(value));
                last = Some(value);
            }
        }
        // Digits of one word are independent: a digit repeats the one
        // before it once in n times.
        let expected_repeats = f64::from(rounds * (Draws::PER_WORD - 1)) / n as f64;
        let off = (f64::from(repeats) - expected_repeats).abs() / expected_repeats;
        assert!(off < 0.1, "{repeats} repeats against {expected_repeats:.0}");
        let expected = f64::from(rounds) / n as f64;
        for (position, counts) in counts.iter().enumerate() {
            for (value, &count) in counts.iter().enumerate() {
                let off = (f64::from(count) - expected).abs() / expected;
                assert!(
                    off < 0.2,
                    "digit {position}, value {value}: {count} against {expected:.0}"
                );
            }
        }
    }
}
