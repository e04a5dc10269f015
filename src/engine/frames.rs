//! The Engine's multiplexed stream format for non-TTY attach, exec and logs: frames of
//! an 8-byte header `[stream u8, 0, 0, 0, length u32 big-endian]` and `length` bytes of
//! payload.
//!
//! Invariants: a frame split across reads is reassembled (headers and payloads are read
//! with `read_exact`); an EOF exactly between frames is the normal end of the stream,
//! an EOF anywhere else is an error; no frame larger than `MAX_FRAME_BYTES` is accepted,
//! so a corrupt length cannot make us allocate gigabytes.

use std::io::{self, Read};

/// The Engine writes frames of at most 32 KiB; anything far beyond that is corruption.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
}

/// Reads frames one at a time from a hijacked connection.
pub struct FrameReader<R> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader { inner }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next frame, or `None` at a clean end of stream. `payload` is overwritten.
    pub fn next_frame(&mut self, payload: &mut Vec<u8>) -> io::Result<Option<StreamKind>> {
        let mut header = [0u8; 8];
        let mut filled = 0;
        while filled < header.len() {
            match self.inner.read(&mut header[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a frame header",
                    ))
                }
                Ok(count) => filled += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        let kind = match header[0] {
            0 => StreamKind::Stdin,
            1 => StreamKind::Stdout,
            2 => StreamKind::Stderr,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown stream type {other} in frame header"),
                ))
            }
        };
        let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {length} bytes exceeds the {MAX_FRAME_BYTES} byte limit"),
            ));
        }
        payload.resize(length, 0);
        self.inner.read_exact(payload)?;
        Ok(Some(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::http::tests::Trickle;

    /// Encodes one frame, as the engine would.
    fn encode_frame(kind: StreamKind, payload: &[u8]) -> Vec<u8> {
        let type_byte = match kind {
            StreamKind::Stdin => 0,
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
        };
        let mut frame = vec![type_byte, 0, 0, 0];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn collect(raw: &[u8], pieces: &[usize]) -> io::Result<Vec<(StreamKind, Vec<u8>)>> {
        let mut reader = FrameReader::new(Trickle::new(raw, pieces));
        let mut frames = Vec::new();
        let mut payload = Vec::new();
        while let Some(kind) = reader.next_frame(&mut payload)? {
            frames.push((kind, payload.clone()));
        }
        Ok(frames)
    }

    #[test]
    fn demultiplexes_byte_exact_fixture_split_anywhere() {
        let raw: &[u8] = b"\x01\x00\x00\x00\x00\x00\x00\x05out1\n\
\x02\x00\x00\x00\x00\x00\x00\x05err1\n\
\x01\x00\x00\x00\x00\x00\x00\x00\
\x01\x00\x00\x00\x00\x00\x00\x03\xff\x00\x80";
        let expected = vec![
            (StreamKind::Stdout, b"out1\n".to_vec()),
            (StreamKind::Stderr, b"err1\n".to_vec()),
            (StreamKind::Stdout, Vec::new()),
            (StreamKind::Stdout, vec![0xff, 0x00, 0x80]),
        ];
        for pieces in [&[1][..], &[3, 5, 2], &[7], &[8], &[9], &[4096]] {
            assert_eq!(collect(raw, pieces).unwrap(), expected, "pieces {pieces:?}");
        }
    }

    #[test]
    fn encode_matches_the_wire_format() {
        assert_eq!(
            encode_frame(StreamKind::Stderr, b"ab"),
            b"\x02\x00\x00\x00\x00\x00\x00\x02ab"
        );
        let big = vec![7u8; 70_000];
        let frames = collect(&encode_frame(StreamKind::Stdout, &big), &[1000]).unwrap();
        assert_eq!(frames, vec![(StreamKind::Stdout, big)]);
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let error = collect(b"\x01\x00\x00", &[1]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let error = collect(b"\x01\x00\x00\x00\x00\x00\x00\x05ab", &[1]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn rejects_corrupt_headers() {
        let error = collect(b"\x07\x00\x00\x00\x00\x00\x00\x01x", &[64]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let error = collect(b"\x01\x00\x00\x00\xff\xff\xff\xff", &[64]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
