//! The DNS messages of the forwarder that serves sandboxes whose egress policy is an
//! allow-list. A sandbox's query is parsed here into one plain name, which the server
//! matches against the policy's patterns (`name_matches`); an allowed query goes
//! upstream unchanged, and the A records read here from the upstream's response are the
//! addresses the server opens in the packet filter before it relays that response. A
//! refused name gets an NXDOMAIN made here. Pure functions of bytes: no sockets, no
//! policy, no packet filter. Only A records count: the sandboxes' network has no IPv6.
//!
//! Invariants: every message is hostile until parsed, so nothing here panics on any
//! bytes and all work is bounded by the message: at most `MAX_MESSAGE` bytes, names of
//! at most 253 characters in labels of at most 63 bytes, and at most 128 compression
//! pointers per name, each pointing past the header and strictly before the stretch of
//! name it sits in (so no loop can form). A question's labels hold only letters,
//! digits, '-' and '_': the name matched is then the name resolved, with no dot hidden
//! inside a label. Owner names of records are stepped over, whatever their bytes.

use std::fmt;
use std::net::Ipv4Addr;

/// Record type: an IPv4 address.
pub const TYPE_A: u16 = 1;
/// Record type: an IPv6 address (of no use: the sandboxes' network has no IPv6).
pub const TYPE_AAAA: u16 = 28;
/// Class: the internet.
pub const CLASS_IN: u16 = 1;
/// Response code: the name does not exist (what a refused name gets).
pub const RCODE_NXDOMAIN: u8 = 3;
/// Response code: the server will not answer.
pub const RCODE_REFUSED: u8 = 5;
/// Longest UDP message we read or write (classic DNS without EDNS0 is 512; allow EDNS0 sizes).
pub const MAX_MESSAGE: usize = 4096;

const HEADER: usize = 12;
const MAX_LABEL: usize = 63;
const MAX_NAME: usize = 253;
const MAX_JUMPS: usize = 128;
/// QDCOUNT 1, ANCOUNT, NSCOUNT and ARCOUNT 0.
const ONE_QUESTION: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

/// A sandbox's question, as `parse_query` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The message id, echoed in the answer.
    pub id: u16,
    /// Lowercase, dot-separated, no trailing dot ("" for the root).
    pub name: String,
    /// The record type asked for (`TYPE_A`, `TYPE_AAAA`, ...).
    pub qtype: u16,
    /// The class asked for (`CLASS_IN` in practice).
    pub qclass: u16,
}

/// What an upstream's response told: its rcode, and the IPv4 addresses with their TTLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The response code (0 NOERROR, 3 NXDOMAIN, ...).
    pub rcode: u8,
    /// Every A record of the answer section, in order, with its TTL in seconds.
    pub addresses: Vec<(Ipv4Addr, u32)>,
}

/// A message we will not read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsError(pub String);

impl fmt::Display for DnsError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "unusable DNS message: {}", self.0)
    }
}

impl std::error::Error for DnsError {}

fn error(message: impl Into<String>) -> DnsError {
    DnsError(message.into())
}

/// A query as a client sends it: QR=0, opcode 0 (standard query), exactly one question
/// (QDCOUNT=1); ANCOUNT/NSCOUNT 0; ARCOUNT may be 0 or 1 (EDNS0 OPT) and is ignored, but
/// with ARCOUNT 0 nothing may follow the question. Labels at most 63 bytes of letters,
/// digits, '-' and '_' (case-folded to lowercase), the name at most 253 characters;
/// compression pointers are followed as in responses.
pub fn parse_query(packet: &[u8]) -> Result<Query, DnsError> {
    let (id, flags) = read_header(packet)?;
    if flags & 0xF800 != 0 {
        return Err(error(format!("not a standard query: flags {flags:#06x}")));
    }
    // read_header checked that the header is there: the 0 fallback is never taken.
    let counts = [4, 6, 8, 10].map(|offset| u16_at(packet, offset).unwrap_or(0));
    if counts[..3] != [1, 0, 0] || counts[3] > 1 {
        return Err(error(format!("a query's section counts are {counts:?}")));
    }
    let (name, end) = read_question(packet)?;
    let (qtype, qclass) = (u16_at(packet, end)?, u16_at(packet, end + 2)?);
    if counts[3] == 0 && packet.len() != end + 4 {
        return Err(error("bytes follow a query's question, and no record"));
    }
    Ok(Query {
        id,
        name,
        qtype,
        qclass,
    })
}

/// The answer refusing `query` with `rcode`: same id, QR=1, opcode 0, RD copied from the
/// query packet, RA=1, the one question echoed, no records. Takes the original packet so
/// that RD can be copied.
pub fn refusal(packet: &[u8], query: &Query, rcode: u8) -> Vec<u8> {
    reply(packet, query, rcode)
}

/// NOERROR with no records (what an allowed name gets for an AAAA or other non-A
/// question when we do not forward it).
pub fn empty_answer(packet: &[u8], query: &Query) -> Vec<u8> {
    reply(packet, query, 0)
}

/// From an upstream response to `query`: checks QR=1, opcode 0, same id, the same single
/// question (name compared case-insensitively, same type/class), then returns the rcode
/// and every A record (class IN, RDLENGTH 4) of the answer section with its TTL (read as
/// 0 when its high bit is set, RFC 2181 §8), whatever its owner name (CNAME chains put
/// the target's A records there). The other sections are not read.
pub fn parse_response(packet: &[u8], query: &Query) -> Result<Response, DnsError> {
    let (id, flags) = read_header(packet)?;
    if id != query.id {
        return Err(error(format!("response id {id}, query id {}", query.id)));
    }
    if flags & 0xF800 != 0x8000 || u16_at(packet, 4)? != 1 {
        return Err(error("not a standard response with one question"));
    }
    let (name, end) = read_question(packet)?;
    let asked = (u16_at(packet, end)?, u16_at(packet, end + 2)?);
    if name != query.name || asked != (query.qtype, query.qclass) {
        let wanted = &query.name;
        return Err(error(format!("answers {name:?} {asked:?}, not {wanted:?}")));
    }
    let mut position = end + 4;
    let mut addresses = Vec::new();
    // Each record takes at least 11 bytes: the message bounds this loop.
    for _ in 0..u16_at(packet, 6)? {
        position = read_name(packet, position, false)?.1;
        let Some(&[t0, t1, c0, c1, s0, s1, s2, s3, l0, l1]) = packet.get(position..position + 10)
        else {
            return Err(error("record cut short"));
        };
        let data_end = position + 10 + usize::from(u16::from_be_bytes([l0, l1]));
        let data = packet
            .get(position + 10..data_end)
            .ok_or_else(|| error("data cut short"))?;
        let is_a =
            u16::from_be_bytes([t0, t1]) == TYPE_A && u16::from_be_bytes([c0, c1]) == CLASS_IN;
        if let (true, &[a, b, c, d]) = (is_a, data) {
            let ttl = u32::from_be_bytes([s0, s1, s2, s3]);
            let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
            addresses.push((Ipv4Addr::new(a, b, c, d), ttl));
        }
        position = data_end;
    }
    let rcode = (flags & 0x000F) as u8;
    Ok(Response { rcode, addresses })
}

/// A response answering `query` with these A records (for tests' fake upstream
/// resolvers): same id, QR=1, RD copied, RA=1, question echoed, answer names as a
/// compression pointer to the question (0xC00C). Addresses beyond what fits in
/// `MAX_MESSAGE` bytes are left out.
pub fn answer(packet: &[u8], query: &Query, addresses: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut out = reply(packet, query, 0);
    // 16 bytes a record: at most 256 of them, a count that fits.
    let room = MAX_MESSAGE.saturating_sub(out.len()) / 16;
    let fitting = &addresses[..addresses.len().min(room)];
    out[6..8].copy_from_slice(&(fitting.len() as u16).to_be_bytes());
    for address in fitting {
        out.extend_from_slice(&[0xC0, 0x0C, 0, TYPE_A as u8, 0, CLASS_IN as u8]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&address.octets());
    }
    out
}

/// A query packet (RD=1) for tests and for probing. `name` is written as given, split at
/// its dots (a trailing dot ignored); empty labels are left out and long ones cut to 63
/// bytes, so a bad name makes a packet that does not say it.
pub fn query_packet(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]);
    out.extend_from_slice(&ONE_QUESTION);
    write_question(&mut out, name, qtype, CLASS_IN);
    out
}

/// Whether `name` (as parse_query gives it) matches an allow-list pattern: exact
/// (case-insensitive, a trailing dot on either ignored), or "*.suffix" matching any name
/// strictly below suffix at any depth ("*.debian.org" matches "deb.debian.org" and
/// "a.b.debian.org", not "debian.org" nor "xdebian.org"). No other '*' is a wildcard.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern).as_bytes();
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    match pattern.strip_prefix(b"*.") {
        // An empty suffix ("*..") would allow every name: it allows none.
        Some([]) => false,
        Some(suffix) => {
            let Some(dot) = name.len().checked_sub(suffix.len() + 1) else {
                return false;
            };
            dot > 0 && name[dot] == b'.' && name[dot + 1..].eq_ignore_ascii_case(suffix)
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

/// The id and flags of a message of a length we read.
fn read_header(packet: &[u8]) -> Result<(u16, u16), DnsError> {
    if packet.len() < HEADER || packet.len() > MAX_MESSAGE {
        return Err(error(format!("a message of {} bytes", packet.len())));
    }
    Ok((u16_at(packet, 0)?, u16_at(packet, 2)?))
}

fn byte_at(packet: &[u8], offset: usize) -> Result<u8, DnsError> {
    let byte = packet.get(offset).copied();
    byte.ok_or_else(|| error(format!("message ends before offset {}", offset + 1)))
}

fn u16_at(packet: &[u8], offset: usize) -> Result<u16, DnsError> {
    match packet.get(offset..offset + 2) {
        Some(&[high, low]) => Ok(u16::from_be_bytes([high, low])),
        _ => Err(error(format!("message ends before offset {}", offset + 2))),
    }
}

/// The question's name and the offset of its type.
fn read_question(packet: &[u8]) -> Result<(String, usize), DnsError> {
    let (name, end) = read_name(packet, HEADER, true)?;
    // A strict name is ASCII: letters, digits, '-', '_' and dots.
    let name = String::from_utf8(name).map_err(|_| error("question name is not ASCII"))?;
    Ok((name, end))
}

/// The name at `start`, lowercased, its labels joined by dots, and the offset where what
/// follows the name begins (just past its first pointer, if it has one). `strict` refuses label
/// bytes other than letters, digits, '-' and '_'.
fn read_name(packet: &[u8], start: usize, strict: bool) -> Result<(Vec<u8>, usize), DnsError> {
    let mut name = Vec::new();
    let (mut position, mut stretch_start, mut end, mut jumps) = (start, start, None, 0);
    loop {
        let length = usize::from(byte_at(packet, position)?);
        match length & 0xC0 {
            0x00 if length == 0 => return Ok((name, end.unwrap_or(position + 1))),
            0x00 => {
                let label = packet.get(position + 1..position + 1 + length);
                let label = label.ok_or_else(|| error("label cut short"))?;
                if name.len() + usize::from(!name.is_empty()) + length > MAX_NAME {
                    return Err(error(format!("name longer than {MAX_NAME} characters")));
                }
                let plain = |byte: &u8| byte.is_ascii_alphanumeric() || b"-_".contains(byte);
                if strict && !label.iter().all(plain) {
                    return Err(error(format!("label {:?}", String::from_utf8_lossy(label))));
                }
                if !name.is_empty() {
                    name.push(b'.');
                }
                name.extend(label.iter().map(u8::to_ascii_lowercase));
                position += 1 + length;
            }
            0xC0 => {
                let target = ((length & 0x3F) << 8) | usize::from(byte_at(packet, position + 1)?);
                jumps += 1;
                if target < HEADER || target >= stretch_start || jumps > MAX_JUMPS {
                    return Err(error(format!("pointer {jumps} at {position} to {target}")));
                }
                end.get_or_insert(position + 2);
                (position, stretch_start) = (target, target);
            }
            _ => return Err(error(format!("label type {length:#04x} at {position}"))),
        }
    }
}

/// A response of `rcode` to `query` with its question and no records.
fn reply(packet: &[u8], query: &Query, rcode: u8) -> Vec<u8> {
    let recursion_desired = packet.get(2).map_or(0, |flags| flags & 0x01);
    let mut out = Vec::with_capacity(HEADER + query.name.len() + 6);
    out.extend_from_slice(&query.id.to_be_bytes());
    out.extend_from_slice(&[0x80 | recursion_desired, 0x80 | (rcode & 0x0F)]);
    out.extend_from_slice(&ONE_QUESTION);
    write_question(&mut out, &query.name, query.qtype, query.qclass);
    out
}

fn write_question(out: &mut Vec<u8>, name: &str, qtype: u16, qclass: u16) {
    let name = name.strip_suffix('.').unwrap_or(name);
    for label in name.split('.').filter(|label| !label.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(MAX_LABEL)];
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&qclass.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dig +noedns pypi.org A`: id 0x1234, RD.
    const QUERY: [u8; 26] = [
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x04, b'p', b'y', b'p', b'i', 0x03, b'o', b'r', b'g', 0x00, // pypi.org
        0x00, 0x01, 0x00, 0x01, // A, IN
    ];
    /// `dig pypi.org A`: RD and AD, and an EDNS0 OPT record (UDP size 1232).
    const QUERY_EDNS: [u8; 37] = [
        0x12, 0x34, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // header
        0x04, b'p', b'y', b'p', b'i', 0x03, b'o', b'r', b'g', 0x00, // pypi.org
        0x00, 0x01, 0x00, 0x01, // A, IN
        0x00, 0x00, 0x29, 0x04, 0xD0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // OPT
    ];
    /// NXDOMAIN for `QUERY`: QR, RD, RA, rcode 3.
    const NXDOMAIN: [u8; 26] = [
        0x12, 0x34, 0x81, 0x83, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x04, b'p', b'y', b'p', b'i', 0x03, b'o', b'r', b'g', 0x00, // pypi.org
        0x00, 0x01, 0x00, 0x01, // A, IN
    ];
    /// www.pypi.org A, id 0xBEEF: a CNAME to pypi.org (a pointer into the question, to
    /// 16), then two A records owned by that pointer.
    const RESPONSE: [u8; 76] = [
        0xBE, 0xEF, 0x81, 0x80, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, // header
        0x03, b'w', b'w', b'w', 0x04, b'p', b'y', b'p', b'i', 0x03, b'o', b'r', b'g', 0x00, //
        0x00, 0x01, 0x00, 0x01, // A, IN; the answers start at 30
        0xC0, 0x0C, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x0E, 0x10, 0x00, 0x02, 0xC0, 0x10, //
        0xC0, 0x10, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2C, 0x00, 0x04, 151, 101, 0, 223,
        0xC0, 0x10, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2C, 0x00, 0x04, 151, 101, 64, 223,
    ];
    /// The addresses in `RESPONSE`.
    const FASTLY: [Ipv4Addr; 2] = [
        Ipv4Addr::new(151, 101, 0, 223),
        Ipv4Addr::new(151, 101, 64, 223),
    ];

    fn query(id: u16, name: &str, qtype: u16) -> Query {
        let (name, qclass) = (name.to_string(), CLASS_IN);
        Query {
            id,
            name,
            qtype,
            qclass,
        }
    }

    fn www() -> Query {
        query(0xBEEF, "www.pypi.org", TYPE_A)
    }

    fn pypi() -> Query {
        query(0x1234, "pypi.org", TYPE_A)
    }

    /// Whether a response to `www()` is refused.
    fn refused(packet: &[u8]) -> bool {
        parse_response(packet, &www()).is_err()
    }

    fn changed<const N: usize>(mut packet: [u8; N], offset: usize, byte: u8) -> [u8; N] {
        packet[offset] = byte;
        packet
    }

    #[test]
    fn a_query_with_or_without_edns_reads_as_its_question() {
        assert_eq!(parse_query(&QUERY), Ok(pypi()));
        assert_eq!(parse_query(&QUERY_EDNS), Ok(pypi()));
        assert_eq!(query_packet(0x1234, "pypi.org", TYPE_A), QUERY);
        assert_eq!(query_packet(0x1234, "pypi.org.", TYPE_A), QUERY);
        let shouted = parse_query(&query_packet(7, "Deb.DEBIAN.org", TYPE_AAAA));
        assert_eq!(shouted, Ok(query(7, "deb.debian.org", TYPE_AAAA)));
        assert_eq!(parse_query(&query_packet(1, "", 2)), Ok(query(1, "", 2)));
    }

    #[test]
    fn refusals_and_empty_answers_echo_the_question_and_rd() {
        assert_eq!(refusal(&QUERY, &pypi(), RCODE_NXDOMAIN), NXDOMAIN);
        let refused = changed(NXDOMAIN, 3, 0x85);
        assert_eq!(refusal(&QUERY_EDNS, &pypi(), RCODE_REFUSED), refused);
        assert_eq!(empty_answer(&QUERY, &pypi()), changed(NXDOMAIN, 3, 0x80));
        let no_recursion = refusal(&changed(QUERY, 2, 0), &pypi(), RCODE_NXDOMAIN);
        assert_eq!(no_recursion, changed(NXDOMAIN, 2, 0x80));
        assert!(parse_query(&NXDOMAIN).is_err(), "an answer is not a query");
    }

    #[test]
    fn queries_that_are_not_one_plain_question_are_errors() {
        for (offset, byte, why) in [
            (2, 0x81, "QR=1"),
            (2, 0x11, "opcode 2"),
            (5, 2, "two questions"),
            (7, 1, "an answer"),
            (11, 2, "two additional records"),
            (12, 0x40, "an extended label type"),
            (13, b'*', "a star"),
            (13, b'.', "a dot inside a label"),
            (13, 0xC3, "a byte that is not ASCII"),
        ] {
            assert!(parse_query(&changed(QUERY, offset, byte)).is_err(), "{why}");
        }
        let trailing = [&QUERY[..], &[0]].concat();
        assert!(parse_query(&trailing).is_err(), "a trailing byte");
        let long_label = [&QUERY[..12], &[64], &[b'a'; 64], &[0, 0, 1, 0, 1]].concat();
        assert!(parse_query(&long_label).is_err(), "a 64-byte label");
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        let parsed = parse_query(&query_packet(1, &longest, 1));
        assert_eq!(parsed, Ok(query(1, &longest, 1)));
        let too_long = query_packet(1, &format!("{longest}b"), 1);
        assert!(parse_query(&too_long).is_err(), "254 characters");
        for length in 0..QUERY.len() {
            assert!(parse_query(&QUERY[..length]).is_err(), "{length}");
        }
    }

    #[test]
    fn a_response_gives_its_rcode_and_every_address_behind_its_cnames() {
        let addresses = FASTLY.map(|address| (address, 300)).to_vec();
        let expected = Response {
            rcode: 0,
            addresses,
        };
        assert_eq!(parse_response(&RESPONSE, &www()), Ok(expected));
        // 0x20 randomization: the echoed question may differ in case.
        let shouted = changed(changed(RESPONSE, 13, b'W'), 18, b'Y');
        assert_eq!(parse_response(&shouted, &www()).unwrap().addresses.len(), 2);
        let nxdomain = changed(changed(RESPONSE, 3, 0x83), 7, 0);
        let (rcode, addresses) = (RCODE_NXDOMAIN, vec![]);
        let expected = Response { rcode, addresses };
        assert_eq!(parse_response(&nxdomain[..30], &www()), Ok(expected));
        let negative_ttl = parse_response(&changed(RESPONSE, 50, 0x80), &www()).unwrap();
        assert_eq!(negative_ttl.addresses[0].1, 0);
    }

    #[test]
    fn every_truncation_of_a_response_is_an_error() {
        for length in 0..RESPONSE.len() {
            assert!(refused(&RESPONSE[..length]), "{length}");
        }
    }

    #[test]
    fn our_fake_upstream_answer_reads_back() {
        let mut expected = changed(changed(NXDOMAIN, 3, 0x80), 7, 2).to_vec();
        for address in FASTLY {
            expected.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            expected.extend_from_slice(&address.octets());
        }
        assert_eq!(answer(&QUERY, &pypi(), &FASTLY, 60), expected);
        let response = parse_response(&expected, &pypi()).unwrap();
        assert_eq!(response.addresses, FASTLY.map(|address| (address, 60)));
        let many = answer(&QUERY, &pypi(), &[Ipv4Addr::LOCALHOST; 1000], 60);
        assert!(many.len() <= MAX_MESSAGE);
        assert_eq!(parse_response(&many, &pypi()).unwrap().addresses.len(), 254);
        // A name no query has (pub fields) makes a long reply, never a panic.
        let huge = query(1, &"a.".repeat(3000), TYPE_A);
        assert_eq!(answer(&QUERY, &huge, &FASTLY, 60)[6..8], [0, 0]);
    }

    #[test]
    fn responses_to_another_question_are_errors() {
        assert!(parse_response(&RESPONSE, &query(0xBEEE, "www.pypi.org", TYPE_A)).is_err());
        assert!(parse_response(&RESPONSE, &query(0xBEEF, "pypi.org", TYPE_A)).is_err());
        assert!(parse_response(&RESPONSE, &query(0xBEEF, "www.pypi.org", TYPE_AAAA)).is_err());
        assert!(refused(&changed(RESPONSE, 5, 2)), "two questions");
        assert!(refused(&changed(RESPONSE, 2, 0x01)), "QR=0");
    }

    #[test]
    fn pointer_loops_forward_pointers_and_long_chains_are_errors() {
        let header = [0xBE, 0xEF, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        for name in [
            &[0xC0, 0x0C][..],               // to itself
            &[0x01, b'a', 0xC0, 0x0C],       // a label, then back to it
            &[0xC0, 0x0E, 0x01, b'a', 0x00], // forwards
            &[0xC0, 0x02],                   // into the header
        ] {
            let packet = [&header, name, &[0, 1, 0, 1]].concat();
            assert!(refused(&packet), "{name:x?}");
            // Refused at its first pointer, not at the 129th or by a later check.
            let error = read_name(&packet, HEADER, true).unwrap_err();
            assert!(error.0.starts_with("pointer 1 at "), "{error}");
        }
        assert!(
            refused(&changed(RESPONSE, 31, 30)),
            "an owner name to itself"
        );
        // Pointers each to the one before, the first to "a": 128 jumps are read, 129 not.
        let mut chain = [&header[..], &[0x01, b'a', 0x00, 0xC0, 0x0C]].concat();
        for _ in 0..MAX_JUMPS {
            let target = chain.len() - 2;
            chain.extend_from_slice(&[0xC0 | (target >> 8) as u8, target as u8]);
        }
        let last = chain.len() - 2;
        assert_eq!(read_name(&chain, last - 2, true), Ok((b"a".to_vec(), last)));
        let too_many = read_name(&chain, last, true).unwrap_err();
        assert!(too_many.0.starts_with("pointer 129 "), "{too_many}");
    }

    #[test]
    fn names_match_exactly_or_strictly_below_a_wildcard() {
        for (pattern, name, expected) in [
            ("pypi.org", "pypi.org", true),
            ("PyPI.org.", "pypi.org", true),
            ("pypi.org", "www.pypi.org", false),
            ("pypi.org", "pypi.org.evil", false),
            ("*.debian.org", "deb.debian.org", true),
            ("*.debian.org", "a.b.debian.org", true),
            ("*.Debian.ORG.", "deb.debian.org", true),
            ("*.debian.org", "debian.org", false),
            ("*.debian.org", "xdebian.org", false),
            ("*.debian.org", ".debian.org", false),
            ("*", "pypi.org", false),
            ("*.", "pypi.org", false),
            ("*..", "a..", false),
            ("10.1.2.3:8080", "10.1.2.3", false),
            ("192.168.0.0/24", "192.168.0.0", false),
        ] {
            assert_eq!(name_matches(pattern, name), expected, "{pattern} {name}");
        }
    }

    #[test]
    fn random_and_mutated_packets_never_panic() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..4000 {
            let length = next() % 300;
            let random: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            let mut packet = match round % 4 {
                0 => random,
                1 => [&RESPONSE[..12], &random].concat(),
                2 => RESPONSE.to_vec(),
                _ => QUERY_EDNS.to_vec(),
            };
            if round % 4 >= 2 {
                for _ in 0..1 + next() % 4 {
                    let at = next() as usize % packet.len();
                    packet[at] = next() as u8;
                }
                packet.truncate(packet.len() - (next() % 4) as usize);
            }
            let _ = parse_query(&packet);
            let _ = parse_response(&packet, &www());
            let _ = parse_response(&packet, &pypi());
        }
    }
}
