//! Object ids: 25 random base-36 characters, as swarmkit makes them. Ids
//! are made by the request handler before a write is proposed, never while
//! a raft entry is applied, so that every manager applies the same bytes.

use rand::Rng;

pub const ID_LEN: usize = 25;
/// How many characters the CLI and console show.
pub const SHORT_ID_LEN: usize = 12;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A new random id.
pub fn new_id() -> String {
    let mut rng = rand::thread_rng();
    (0..ID_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Whether `s` has the shape of an id (used to tell ids from names).
pub fn looks_like_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

pub fn short(id: &str) -> &str {
    &id[..id.len().min(SHORT_ID_LEN)]
}

/// Big-endian bytes as a base-36 number, left-padded with zeros to `width`.
pub fn base36(bytes: &[u8], width: usize) -> String {
    // Repeated division of the big-endian number by 36.
    let mut digits = Vec::new();
    let mut number: Vec<u8> = bytes.to_vec();
    while number.iter().any(|&b| b != 0) {
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            *byte = (acc / 36) as u8;
            remainder = acc % 36;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Unix time in milliseconds. Stamped into proposals by request handlers.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_25_base36_characters() {
        for _ in 0..100 {
            let id = new_id();
            assert!(looks_like_id(&id), "{id}");
        }
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn base36_matches_known_values() {
        assert_eq!(base36(&[0], 1), "0");
        assert_eq!(base36(&[35], 1), "z");
        assert_eq!(base36(&[36], 1), "10");
        assert_eq!(base36(&[1, 0], 4), "0074");
        // A sha256 digest fits in 50 base-36 digits, as in swarm join tokens.
        assert_eq!(base36(&[0xff; 32], 50).len(), 50);
    }
}
