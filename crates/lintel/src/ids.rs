//! Random identifiers and secrets from the operating system's generator.

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A record id: 16 characters of `[a-z0-9]` (about 82 bits), URL-safe and unguessable.
pub fn record_id() -> String {
    random_string(16)
}

/// A request id: 20 characters of `[a-z0-9]`.
pub fn request_id() -> String {
    random_string(20)
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
