//! Random identifiers and secrets from the operating system's generator, and the
//! digests secrets are stored and compared as (SHA-256, compared in constant time).

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A record id: 16 characters of `[a-z0-9]` (about 82 bits), URL-safe and unguessable.
pub fn record_id() -> String {
    random_string(16)
}

/// A request id: 20 characters of `[a-z0-9]`. Ids only need to be unique, not secret,
/// so they come from a per-thread generator seeded once from the OS (no system call
/// per request).
pub fn request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    let mut out = String::with_capacity(20);
    STATE.with(|s| {
        let mut x = s.get();
        for _ in 0..2 {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let mut v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            for _ in 0..10 {
                out.push(ALPHABET[(v % 36) as usize] as char);
                v /= 36;
            }
        }
        s.set(x);
    });
    out
}

/// A uniformly random number in `0.0..1.0` (for jitter; not a secret).
pub fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// A secret token: 43 characters of `[a-z0-9]` (about 222 bits).
pub fn secret_token() -> String {
    random_string(43)
}

fn random_string(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        if getrandom::fill(&mut buf).is_err() {
            // The OS generator does not fail on supported platforms; if it ever does,
            // refusing to continue beats handing out a predictable id.
            std::process::abort();
        }
        for b in buf {
            // Rejection sampling keeps the distribution uniform (252 = 7 * 36).
            if b < 252 && out.len() < len {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    out
}

/// SHA-256 of a token; tokens are compared by digest in constant time.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_safe_and_distinct() {
        let a = record_id();
        let b = record_id();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
