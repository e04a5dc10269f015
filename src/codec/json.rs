//! JSON string literals written from bytes, piece by piece, so that a text of any size
//! (a command's output, a file) goes out without a second copy of it in memory.
//!
//! Invariants: the pieces are read as one byte sequence, decoded exactly as
//! `String::from_utf8_lossy` decodes it (each invalid sequence becomes one U+FFFD, a
//! character split across two pieces is joined), and escaped exactly as `serde_json`
//! escapes strings; so `write_text(out, pieces)` writes the same bytes as
//! `serde_json::to_writer(out, &String::from_utf8_lossy(&pieces.concat()))`.

use std::io::{self, Write};

/// Writes one JSON string literal, quotes included, of the bytes `pieces` yield in turn.
pub fn write_text<'a>(
    out: &mut dyn Write,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<()> {
    out.write_all(b"\"")?;
    let mut carry = Carry::default();
    for piece in pieces {
        carry.feed(out, piece)?;
    }
    write_lossy(out, carry.pending())?;
    out.write_all(b"\"")
}

/// Writes `bytes`, which must be UTF-8, as a JSON string literal; false (nothing
/// written) when they are not.
pub fn write_utf8(out: &mut dyn Write, bytes: &[u8]) -> io::Result<bool> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(false);
    };
    out.write_all(b"\"")?;
    write_escaped(out, text)?;
    out.write_all(b"\"")?;
    Ok(true)
}

/// How many bytes at the end of `data` start a UTF-8 sequence that is not complete yet
/// (0 to 3): the split just before them decodes the same whatever follows.
pub fn incomplete_utf8_tail(data: &[u8]) -> usize {
    for back in 1..=data.len().min(3) {
        let byte = data[data.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let needed = match byte {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// The start of a UTF-8 sequence that a piece ended in, waiting for the next piece.
/// Splitting right before a byte that is not a continuation byte never changes how the
/// bytes decode (no sequence, valid or not, extends over such a byte), and neither does
/// splitting after a sequence that needs no more bytes: so every split made here is one
/// that whole-text decoding would not notice.
#[derive(Default)]
struct Carry {
    bytes: [u8; 4],
    length: usize,
}

impl Carry {
    fn pending(&self) -> &[u8] {
        &self.bytes[..self.length]
    }

    fn feed(&mut self, out: &mut dyn Write, mut piece: &[u8]) -> io::Result<()> {
        // First complete (or give up on) the carried sequence, a byte at a time.
        while self.length > 0 {
            let Some((&first, rest)) = piece.split_first() else {
                return Ok(());
            };
            self.bytes[self.length] = first;
            self.length += 1;
            piece = rest;
            let tail = incomplete_utf8_tail(self.pending());
            if tail < self.length {
                let split = self.length - tail;
                write_lossy(out, &self.bytes[..split])?;
                self.bytes.copy_within(split..self.length, 0);
                self.length = tail;
            }
        }
        let tail = incomplete_utf8_tail(piece);
        let (whole, rest) = piece.split_at(piece.len() - tail);
        write_lossy(out, whole)?;
        self.bytes[..tail].copy_from_slice(rest);
        self.length = tail;
        Ok(())
    }
}

/// Decodes like `String::from_utf8_lossy` and writes the escaped text.
fn write_lossy(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    for chunk in bytes.utf8_chunks() {
        write_escaped(out, chunk.valid())?;
        if !chunk.invalid().is_empty() {
            out.write_all(
                char::REPLACEMENT_CHARACTER
                    .encode_utf8(&mut [0; 4])
                    .as_bytes(),
            )?;
        }
    }
    Ok(())
}

/// The inside of a JSON string, escaped as serde_json does: `"` and `\`, the short
/// forms `\b \t \n \f \r`, `\u00XX` (lowercase) for the other control characters, and
/// everything else (DEL and non-ASCII included) as it is.
fn write_escaped(out: &mut dyn Write, text: &str) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.write_all(&bytes[start..index])?;
        if short.is_empty() {
            let code = [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ];
            out.write_all(&code)?;
        } else {
            out.write_all(short)?;
        }
        start = index + 1;
    }
    out.write_all(&bytes[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(pieces: &[&[u8]]) -> String {
        let mut out = Vec::new();
        write_text(&mut out, pieces.iter().copied()).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn expected(pieces: &[&[u8]]) -> String {
        serde_json::to_string(&String::from_utf8_lossy(&pieces.concat())).unwrap()
    }

    #[test]
    fn escapes_every_ascii_byte_as_serde_json_does() {
        let all: Vec<u8> = (0..=0x7f).collect();
        assert_eq!(written(&[&all]), expected(&[&all]));
        assert_eq!(written(&[b"a\"b\\c\n"]), r#""a\"b\\c\n""#);
        assert_eq!(written(&[]), r#""""#);
    }

    #[test]
    fn joins_characters_split_across_pieces_and_replaces_invalid_bytes() {
        let euro = "x€y".as_bytes(); // 78 e2 82 ac 79
        assert_eq!(written(&[&euro[..2], &euro[2..3], &euro[3..]]), "\"x€y\"");
        for pieces in [
            &[&b"a\xe2\x82"[..], b"A"][..],
            &[b"\xe2", b"\xf0\x9f", b"\x98\x80"],
            &[b"\xf0\x80", b"\x80\x80"],
            &[b"\xed\xa0", b"\x80"],
            &[b"\xc0", b"\xaf"],
            &[b"\x80\x80\x80", b"\x80"],
            &[b"\xe2\x82\xac", b"\x80"],
            &[b"\xff", b"\xfe"],
            &[b"\xe2\x82"],
        ] {
            assert_eq!(written(pieces), expected(pieces), "{pieces:?}");
        }
    }

    #[test]
    fn any_split_of_any_bytes_decodes_as_the_whole() {
        // A small deterministic generator: bytes biased towards UTF-8 lead and
        // continuation bytes, cut at every possible place into up to four pieces.
        let mut state: u32 = 0x2545_f491;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let alphabet = [
            b'a', b'"', b'\n', 0x01, 0x7f, 0x80, 0x8f, 0xbf, 0xc2, 0xc0, 0xdf, 0xe0, 0xe2, 0xed,
            0xef, 0xf0, 0xf4, 0xf5, 0xff, 0xa0, 0x9f,
        ];
        for _ in 0..2000 {
            let length = (next() % 12) as usize;
            let bytes: Vec<u8> = (0..length)
                .map(|_| alphabet[next() as usize % alphabet.len()])
                .collect();
            let mut cuts: Vec<usize> = (0..3).map(|_| next() as usize % (length + 1)).collect();
            cuts.sort_unstable();
            let pieces = [
                &bytes[..cuts[0]],
                &bytes[cuts[0]..cuts[1]],
                &bytes[cuts[1]..cuts[2]],
                &bytes[cuts[2]..],
            ];
            assert_eq!(
                written(&pieces),
                expected(&pieces),
                "{bytes:x?} cut at {cuts:?}"
            );
        }
    }

    #[test]
    fn utf8_is_written_only_when_valid() {
        let mut out = Vec::new();
        assert!(write_utf8(&mut out, "é\t".as_bytes()).unwrap());
        assert_eq!(out, "\"é\\t\"".as_bytes());
        let mut out = Vec::new();
        assert!(!write_utf8(&mut out, b"\xff").unwrap());
        assert!(out.is_empty());
    }

    #[test]
    fn finds_utf8_sequences_cut_at_the_end() {
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail(euro), 0);
        assert_eq!(incomplete_utf8_tail(&euro[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&euro[..2]), 2);
        assert_eq!(incomplete_utf8_tail(&[b'a', 0xf0, 0x9f, 0x98]), 3);
        assert_eq!(incomplete_utf8_tail(&[0xff]), 0);
    }
}
