//! Standard base64 (RFC 4648 §4, alphabet `A-Z a-z 0-9 + /`, `=` padding), written here
//! because two small functions do not justify a dependency. The files API uses it for
//! content that is not UTF-8, and the docker client for the Engine's path-stat header.
//!
//! Invariants: `encode` always pads; `decode` accepts padded or unpadded input but
//! refuses any byte outside the alphabet (whitespace included), padding anywhere but at
//! the end, and a length no encoder can produce, naming the offending position.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes `bytes`, padded to a multiple of four characters.
pub fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = match *chunk {
            [a] => u32::from(a) << 16,
            [a, b] => u32::from(a) << 16 | u32::from(b) << 8,
            [a, b, c] => u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c),
            _ => unreachable!("chunks(3) yields one to three bytes"),
        };
        // One input byte makes two characters, two make three, three make four.
        let characters = chunk.len() + 1;
        for index in 0..4 {
            if index < characters {
                let sextet = (group >> (18 - 6 * index)) & 0x3f;
                text.push(ALPHABET[sextet as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Writes what `encode` makes of `bytes` to `out`, a block at a time, so that the
/// whole encoding is never held at once.
pub fn encode_to(out: &mut dyn std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    // A multiple of three: blocks encode without padding, except the last.
    const BLOCK: usize = 3 * 1024;
    for block in bytes.chunks(BLOCK) {
        out.write_all(encode(block).as_bytes())?;
    }
    Ok(())
}

/// Decodes base64 text; the error says what is wrong and where.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let unpadded = bytes
        .strip_suffix(b"==")
        .or_else(|| bytes.strip_suffix(b"="))
        .unwrap_or(bytes);
    let padded = unpadded.len() != bytes.len();
    if padded && !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "invalid base64: padded text must be a multiple of 4 characters long, got {}",
            bytes.len()
        ));
    }
    if unpadded.len() % 4 == 1 {
        return Err(format!(
            "invalid base64: {} characters cannot encode whole bytes",
            unpadded.len()
        ));
    }
    let mut decoded = Vec::with_capacity(unpadded.len() / 4 * 3 + 2);
    for (chunk_index, chunk) in unpadded.chunks(4).enumerate() {
        let mut group = 0u32;
        for (index, &byte) in chunk.iter().enumerate() {
            let value = sextet(byte).ok_or_else(|| {
                format!(
                    "invalid base64: character {:?} at position {} is not in the alphabet",
                    byte as char,
                    chunk_index * 4 + index
                )
            })?;
            group |= u32::from(value) << (18 - 6 * index);
        }
        // Two characters carry one byte, three carry two, four carry three.
        let [_, first, second, third] = group.to_be_bytes();
        decoded.extend_from_slice(&[first, second, third][..chunk.len() - 1]);
    }
    Ok(decoded)
}

fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648 §10.
    const VECTORS: [(&str, &str); 7] = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn rfc_4648_test_vectors() {
        for (plain, encoded) in VECTORS {
            assert_eq!(encode(plain.as_bytes()), encoded, "{plain:?}");
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes(), "{encoded:?}");
            // Unpadded input decodes the same.
            let unpadded = encoded.trim_end_matches('=');
            assert_eq!(decode(unpadded).unwrap(), plain.as_bytes(), "{unpadded:?}");
        }
    }

    #[test]
    fn block_encoding_is_the_whole_encoding() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for length in [0, 1, 3071, 3072, 3073, 6144, 10_000] {
            let mut out = Vec::new();
            encode_to(&mut out, &data[..length]).unwrap();
            assert_eq!(out, encode(&data[..length]).as_bytes(), "{length}");
        }
    }

    #[test]
    fn every_byte_value_round_trips_at_every_length() {
        let all: Vec<u8> = (0..=255).collect();
        for length in 0..all.len() {
            let slice = &all[all.len() - length..];
            assert_eq!(decode(&encode(slice)).unwrap(), slice);
        }
        assert_eq!(encode(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn refuses_what_no_encoder_writes() {
        for (bad, expected) in [
            ("Zm9v!A==", "'!' at position 4"),
            ("Zm 9", "' ' at position 2"),
            ("Zm9\n", "'\\n' at position 3"),
            ("Z", "1 characters"),
            ("Zm9vY", "5 characters"),
            ("Zg=", "multiple of 4"),
            ("Z===", "at position 1"),
            ("Zg==Zg==", "'=' at position 2"),
        ] {
            let error = decode(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }
}
