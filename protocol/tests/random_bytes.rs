//! A plain random-bytes fuzz loop for the decoder, run in every test suite.
//!
//! The coverage-guided target lives in `protocol/fuzz` (cargo fuzz, nightly); this loop is
//! its always-available stand-in. It feeds the decoder both pure noise and valid envelopes
//! with random mutations (bit flips, truncations, insertions), which reach much deeper
//! into the postcard body than noise alone. Seeded, so a failure reproduces.

#[path = "support/samples.rs"]
mod samples;

use nebula_protocol::{DecodeError, decode, encode};

/// xorshift64*: tiny, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

const ITERATIONS: usize = 200_000;

#[test]
fn decoder_survives_random_and_mutated_input() {
    let seeds: Vec<Vec<u8>> = samples::every_variant()
        .iter()
        .map(|(_, message)| encode(message))
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut decoded, mut rejected) = (0usize, 0usize);
    for iteration in 0..ITERATIONS {
        let bytes = if iteration % 4 == 0 {
            let length = rng.below(256);
            (0..length).map(|_| rng.next() as u8).collect()
        } else {
            let mut bytes = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 => {
                        let index = rng.below(bytes.len());
                        bytes[index] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let index = rng.below(bytes.len());
                        bytes[index] = rng.next() as u8;
                    }
                    2 => bytes.truncate(rng.below(bytes.len() + 1)),
                    _ => {
                        let index = rng.below(bytes.len() + 1);
                        bytes.insert(index, rng.next() as u8);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            bytes
        };
        match decode(&bytes) {
            Ok(message) => {
                // Whatever decodes must survive a second round trip unchanged. (Byte equality is
                // too strong: postcard accepts over-long varints, which re-encode shorter.)
                assert_eq!(
                    decode(&encode(&message)),
                    Ok(message),
                    "decoded message does not round-trip"
                );
                decoded += 1;
            }
            Err(
                DecodeError::TooShort(_)
                | DecodeError::BadMagic(_)
                | DecodeError::UnsupportedVersion(_),
            )
            | Err(
                DecodeError::Malformed(_) | DecodeError::TrailingBytes(_) | DecodeError::Invalid(_),
            ) => rejected += 1,
        }
    }
    // The loop's real check is that nothing above panicked. These two make sure it tested
    // both paths: some mutations must still decode (so the decoder was driven deep into valid
    // bodies, not only stopped at the header), and most must be rejected.
    assert!(
        decoded > ITERATIONS / 100,
        "too few mutations decoded ({decoded}): the loop no longer reaches valid bodies"
    );
    assert!(
        rejected > ITERATIONS / 2,
        "mutations should mostly be rejected, got {rejected}"
    );
}
