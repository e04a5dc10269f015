//! A minimal POSIX ustar codec for the Engine's archive endpoints.
//!
//! `PUT /containers/{id}/archive` takes a tar stream and `GET` returns one, so uploading or
//! downloading a single file means writing or reading a small tar archive. This module knows
//! only the tar format, not HTTP or Docker. The writer emits regular files as ustar members
//! (checksum, octal fields, 512-byte padding, two zero blocks at the end) and falls back to a
//! GNU `././@LongLink` member for a name that no ustar prefix split can hold. The reader takes
//! the first member of a stream and understands what Docker's Go `archive/tar` and GNU tar
//! write in front of it: PAX `x` headers (`path`, `linkpath`, `size`), GNU `L`/`K` long names,
//! and `g` global headers, which it skips.
//!
//! Invariants: names written are relative, non-empty, free of NUL bytes and `..` components;
//! every header read has its checksum verified before any field is trusted; the reader never
//! holds more than the caller's `max_data` bytes of member data, refusing from the header's
//! size before reading data, and never more than `MAX_EXTENDED_DATA` bytes of any PAX or GNU
//! extension header; a stream that ends inside a header, inside data or padding, or before the
//! member an extension header announced is `Truncated`, never a short member.

use std::fmt;
use std::io::{self, Read};

/// Every header and every run of data occupies whole blocks of this size.
const BLOCK: usize = 512;

/// The largest size an 11-digit octal field can carry: 8 GiB - 1.
const MAX_OCTAL_SIZE: u64 = 0o777_7777_7777;

/// The bound on one PAX or GNU extension header's data. Paths are at most a few KiB, but PAX
/// headers can also carry extended attributes, so this is generous while still bounded.
const MAX_EXTENDED_DATA: u64 = 1024 * 1024;

/// How many extension headers may precede the first member. Real archives use one or two; the
/// bound keeps a hostile stream of tiny headers from spinning the reader forever.
const MAX_EXTENDED_HEADERS: usize = 32;

/// POSIX ustar magic and version: `ustar\0` followed by `00`.
const USTAR_MAGIC: &[u8; 8] = b"ustar\x0000";

/// GNU tar's magic and version: `ustar  \0`. Headers carrying it have no prefix field.
const GNU_MAGIC: &[u8; 8] = b"ustar  \x00";

/// The name GNU tar gives the pseudo-member that carries a long name.
const GNU_LONG_LINK_NAME: &str = "././@LongLink";

// Byte ranges of the header fields, from the ustar specification.
const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHECKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..265;
const DEVMAJOR: std::ops::Range<usize> = 329..337;
const DEVMINOR: std::ops::Range<usize> = 337..345;
const PREFIX: std::ops::Range<usize> = 345..500;

/// Everything that can go wrong while writing or reading an archive.
#[derive(Debug)]
pub enum TarError {
    /// Reading from the underlying stream failed for a reason other than its end.
    Io(io::Error),
    /// A header's checksum field does not match the sum of its bytes, or is not a number.
    BadChecksum,
    /// The stream ended inside a header, inside member data or padding, or after an extension
    /// header but before the member it describes.
    Truncated,
    /// The archive holds no member: it is empty or starts with its end-of-archive zero blocks.
    Empty,
    /// A member's data is larger than the limit: the caller's `max_data` when reading, the
    /// 8 GiB - 1 an octal size field can express when writing.
    TooLarge {
        /// The member's size in bytes, as its header declares it.
        size: u64,
        /// The largest size that was allowed.
        limit: u64,
    },
    /// A name given to the writer is not a non-empty relative file path without NUL bytes,
    /// `..` components or a trailing `/`. Holds the offending name.
    InvalidName(String),
    /// A header field cannot be written or read: a number too large for its field, a
    /// malformed PAX record, a name that is not UTF-8, too many extension headers.
    BadHeader(String),
}

impl fmt::Display for TarError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarError::Io(error) => write!(formatter, "reading the tar archive failed: {error}"),
            TarError::BadChecksum => {
                write!(
                    formatter,
                    "a tar header's checksum does not match its contents"
                )
            }
            TarError::Truncated => {
                write!(formatter, "the tar archive ends in the middle of a member")
            }
            TarError::Empty => write!(formatter, "the tar archive holds no member"),
            TarError::TooLarge { size, limit } => write!(
                formatter,
                "the tar member holds {size} bytes, more than the limit of {limit} bytes"
            ),
            TarError::InvalidName(name) => write!(
                formatter,
                "{name:?} is not a valid tar member name: it must be a non-empty relative path \
                 without NUL bytes, '..' components or a trailing '/'"
            ),
            TarError::BadHeader(reason) => write!(formatter, "invalid tar header: {reason}"),
        }
    }
}

impl std::error::Error for TarError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TarError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for TarError {
    fn from(error: io::Error) -> Self {
        TarError::Io(error)
    }
}

/// One regular file to put in an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileEntry<'a> {
    /// Path inside the archive; a leading `/` is stripped so the name is relative.
    pub name: &'a str,
    /// The file's contents, at most 8 GiB - 1 bytes.
    pub data: &'a [u8],
    /// Permission bits, at most `0o7777` (no file-type bits).
    pub mode: u32,
    /// Modification time in seconds since the Unix epoch.
    pub mtime: u64,
    /// Numeric owner, at most `0o7777777`.
    pub uid: u32,
    /// Numeric group, at most `0o7777777`.
    pub gid: u32,
}

/// What a read found for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (typeflag `0`, NUL without a trailing `/` in the name, or `7`).
    File,
    /// A directory (typeflag `5`, or NUL with a trailing `/` in the name as old tars wrote it).
    Directory,
    /// A symbolic link and the path it points to.
    Symlink {
        /// The link's target, exactly as recorded.
        target: String,
    },
    /// Any other member type (hard link, device, FIFO, ...), by its typeflag byte.
    Other(u8),
}

/// One member as read from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The member's path exactly as recorded (PAX `path`, GNU long name, or prefix/name).
    pub name: String,
    /// What kind of member this is.
    pub kind: EntryKind,
    /// The mode field as recorded; usually just the permission bits.
    pub mode: u32,
    /// The data size from the header (or a PAX `size` record); equals `data.len()`.
    pub size: u64,
    /// The member's data.
    pub data: Vec<u8>,
}

/// Builds an uncompressed ustar archive holding the given regular files, ending with the two
/// zero blocks.
///
/// A name up to 100 bytes goes in the name field; a longer one is split at a `/` into the
/// 155-byte prefix and 100-byte name fields; a name that cannot be split that way is written
/// as a GNU long name member followed by a GNU-format header, as GNU tar does.
pub fn write_archive(entries: &[FileEntry<'_>]) -> Result<Vec<u8>, TarError> {
    let members: Vec<Member<'_>> = entries
        .iter()
        .map(|entry| Member {
            name: entry.name,
            kind: MemberKind::File(entry.data),
            mode: entry.mode,
            mtime: entry.mtime,
            uid: entry.uid,
            gid: entry.gid,
        })
        .collect();
    write_members(&members)
}

/// What a member written by `write_members` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind<'a> {
    File(&'a [u8]),
    Directory,
    /// A symbolic link to this target (at most 100 bytes: the header's link field).
    Symlink(&'a str),
}

/// One member to write: a regular file, a directory or a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// Path inside the archive, as `FileEntry::name` (a directory's without its `/`).
    pub name: &'a str,
    pub kind: MemberKind<'a>,
    pub mode: u32,
    pub mtime: u64,
    pub uid: u32,
    pub gid: u32,
}

/// `write_archive` for files, directories and symlinks.
pub fn write_members(members: &[Member<'_>]) -> Result<Vec<u8>, TarError> {
    let mut archive = Vec::new();
    for member in members {
        let relative = relative_name(member.name)?;
        let (typeflag, data, linkname): (u8, &[u8], &[u8]) = match member.kind {
            MemberKind::File(data) => (b'0', data, b""),
            MemberKind::Directory => (b'5', b"", b""),
            MemberKind::Symlink(target) => {
                if target.is_empty() || target.len() > LINKNAME.len() || target.contains('\0') {
                    return Err(TarError::BadHeader(format!(
                        "symlink {}: its target must be 1 to {} bytes, without NUL",
                        member.name,
                        LINKNAME.len()
                    )));
                }
                (b'2', b"", target.as_bytes())
            }
        };
        // A directory's name ends with `/`, as tar writes it.
        let owned;
        let name = if typeflag == b'5' {
            owned = format!("{relative}/");
            owned.as_str()
        } else {
            relative
        };
        let fields = HeaderFields {
            name: name.as_bytes(),
            prefix: b"",
            linkname,
            mode: member.mode,
            uid: member.uid,
            gid: member.gid,
            size: data.len() as u64,
            mtime: member.mtime,
            typeflag,
            magic: USTAR_MAGIC,
        };
        if name.len() <= NAME.len() {
            archive.extend_from_slice(&encode_header(&fields)?);
        } else if let Some((prefix, rest)) = split_ustar_name(name) {
            let fields = HeaderFields {
                name: rest.as_bytes(),
                prefix: prefix.as_bytes(),
                ..fields
            };
            archive.extend_from_slice(&encode_header(&fields)?);
        } else {
            // GNU tar counts the terminating NUL as part of the long name's data.
            let mut long_name = name.as_bytes().to_vec();
            long_name.push(0);
            let long_link = HeaderFields {
                name: GNU_LONG_LINK_NAME.as_bytes(),
                prefix: b"",
                linkname: b"",
                mode: 0,
                uid: 0,
                gid: 0,
                size: long_name.len() as u64,
                mtime: 0,
                typeflag: b'L',
                magic: GNU_MAGIC,
            };
            archive.extend_from_slice(&encode_header(&long_link)?);
            push_padded(&mut archive, &long_name);
            // The real header keeps the first 100 bytes of the name, as GNU tar writes it, so
            // a reader that ignores `L` members still sees something recognisable.
            let main = HeaderFields {
                name: &name.as_bytes()[..NAME.len()],
                magic: GNU_MAGIC,
                ..fields
            };
            archive.extend_from_slice(&encode_header(&main)?);
        }
        push_padded(&mut archive, data);
    }
    archive.extend_from_slice(&[0u8; 2 * BLOCK]);
    Ok(archive)
}

/// Reads the first member of an archive (GET archive of a single path returns one member
/// first), refusing to hold more than `max_data` bytes of data: returns `TarError::TooLarge`
/// from the header's size before reading data.
///
/// PAX `x` and GNU `L`/`K` headers before the member are applied to it and `g` global headers
/// are skipped. On success the reader is left at the block after the member's padding, so a
/// second call reads the next member. An empty stream, or one whose first block is zero, is
/// `TarError::Empty`.
pub fn read_first_entry(reader: &mut impl Read, max_data: u64) -> Result<Entry, TarError> {
    let mut extensions = Extensions::default();
    let mut block = [0u8; BLOCK];
    for _ in 0..=MAX_EXTENDED_HEADERS {
        let at_end = !read_block(reader, &mut block)? || block.iter().all(|&byte| byte == 0);
        if at_end {
            // An extension header promises a member; ending right after it is a cut archive.
            return Err(if extensions.seen {
                TarError::Truncated
            } else {
                TarError::Empty
            });
        }
        verify_checksum(&block)?;
        let size = parse_numeric(&block[SIZE], "size")?;
        match block[TYPEFLAG] {
            b'x' => {
                let data = read_extended_data(reader, size)?;
                parse_pax_records(&data, &mut extensions)?;
            }
            b'g' => skip_data(reader, size)?,
            b'L' => {
                let data = read_extended_data(reader, size)?;
                extensions.gnu_long_name = Some(gnu_long_string(data, "long name")?);
            }
            b'K' => {
                let data = read_extended_data(reader, size)?;
                extensions.gnu_long_link = Some(gnu_long_string(data, "long link name")?);
            }
            typeflag => return read_member(reader, &block, typeflag, size, extensions, max_data),
        }
        extensions.seen = true;
    }
    Err(TarError::BadHeader(format!(
        "more than {MAX_EXTENDED_HEADERS} extension headers precede the first member"
    )))
}

/// The values of one header before encoding; `name` and `prefix` are raw field contents.
struct HeaderFields<'a> {
    name: &'a [u8],
    prefix: &'a [u8],
    /// A symlink's target (`LINKNAME`); empty for other members.
    linkname: &'a [u8],
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    magic: &'a [u8; 8],
}

/// Encodes one header block, checksum included. Every limit of the format is checked here so
/// that nothing is silently truncated.
fn encode_header(fields: &HeaderFields<'_>) -> Result<[u8; BLOCK], TarError> {
    if fields.size > MAX_OCTAL_SIZE {
        return Err(TarError::TooLarge {
            size: fields.size,
            limit: MAX_OCTAL_SIZE,
        });
    }
    if fields.mode > 0o7777 {
        return Err(TarError::BadHeader(format!(
            "mode {:o} has bits beyond the permission bits 7777",
            fields.mode
        )));
    }
    // The callers guarantee these; a failure here is a bug in this module, not bad input.
    debug_assert!(fields.name.len() <= NAME.len());
    debug_assert!(fields.prefix.len() <= PREFIX.len());

    let mut header = [0u8; BLOCK];
    header[NAME][..fields.name.len()].copy_from_slice(fields.name);
    put_octal(&mut header[MODE], u64::from(fields.mode), "mode")?;
    put_octal(&mut header[UID], u64::from(fields.uid), "uid")?;
    put_octal(&mut header[GID], u64::from(fields.gid), "gid")?;
    put_octal(&mut header[SIZE], fields.size, "size")?;
    put_octal(&mut header[MTIME], fields.mtime, "mtime")?;
    header[TYPEFLAG] = fields.typeflag;
    header[LINKNAME][..fields.linkname.len()].copy_from_slice(fields.linkname);
    header[MAGIC].copy_from_slice(fields.magic);
    // uname and gname stay empty: the Engine extracts by numeric uid and gid.
    put_octal(&mut header[DEVMAJOR], 0, "devmajor")?;
    put_octal(&mut header[DEVMINOR], 0, "devminor")?;
    header[PREFIX][..fields.prefix.len()].copy_from_slice(fields.prefix);

    // The checksum is summed with its own field read as eight spaces, then written as six
    // octal digits, a NUL and a space, the layout every tar since V7 writes.
    header[CHECKSUM].fill(b' ');
    let checksum = unsigned_sum(&header);
    header[CHECKSUM].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    Ok(header)
}

/// Writes `value` as zero-padded octal digits followed by a NUL, filling `field`.
fn put_octal(field: &mut [u8], value: u64, what: &str) -> Result<(), TarError> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return Err(TarError::BadHeader(format!(
            "{what} {value} does not fit in a {digits}-digit octal field"
        )));
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// Appends `data` and the zeros that pad it to a whole number of blocks.
fn push_padded(archive: &mut Vec<u8>, data: &[u8]) {
    archive.extend_from_slice(data);
    archive.resize(archive.len() + padding(data.len() as u64), 0);
}

/// How many zero bytes follow `size` bytes of data to reach a block boundary.
fn padding(size: u64) -> usize {
    // The remainder is below 512, so the cast cannot truncate.
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// Validates a name for writing and makes it relative.
fn relative_name(name: &str) -> Result<&str, TarError> {
    let relative = name.trim_start_matches('/');
    let valid = !relative.is_empty()
        && !relative.contains('\0')
        && !relative.ends_with('/')
        && !relative.split('/').any(|component| component == "..");
    if valid {
        Ok(relative)
    } else {
        Err(TarError::InvalidName(name.to_string()))
    }
}

/// Splits a name longer than the name field into ustar prefix and name at a `/`.
///
/// Like GNU tar and Go, this takes the last `/` that leaves the prefix within 155 bytes; any
/// split that fits at all also fits there, because a later slash only shortens the name part.
fn split_ustar_name(name: &str) -> Option<(&str, &str)> {
    let searchable = &name.as_bytes()[..name.len().min(PREFIX.len() + 1)];
    let slash = searchable.iter().rposition(|&byte| byte == b'/')?;
    let (prefix, rest) = (&name[..slash], &name[slash + 1..]);
    let fits = !prefix.is_empty() && !rest.is_empty() && rest.len() <= NAME.len();
    fits.then_some((prefix, rest))
}

/// The sum of the header's bytes taken as unsigned, as POSIX specifies.
fn unsigned_sum(header: &[u8; BLOCK]) -> u64 {
    header.iter().map(|&byte| u64::from(byte)).sum()
}

/// Checks the checksum field against the header, counting the field itself as spaces. Sums
/// taken over signed bytes are accepted too, because some historical tars wrote those.
fn verify_checksum(header: &[u8; BLOCK]) -> Result<(), TarError> {
    let recorded = parse_octal(&header[CHECKSUM]).ok_or(TarError::BadChecksum)?;
    let mut blanked = *header;
    blanked[CHECKSUM].fill(b' ');
    let unsigned = unsigned_sum(&blanked);
    let signed: i64 = blanked.iter().map(|&byte| i64::from(byte as i8)).sum();
    if recorded == unsigned || i64::try_from(recorded).ok() == Some(signed) {
        Ok(())
    } else {
        Err(TarError::BadChecksum)
    }
}

/// Parses a numeric field: octal digits, or GNU base-256 when the high bit of the first byte
/// is set (how GNU tar and Go store sizes of 8 GiB and more).
fn parse_numeric(field: &[u8], what: &str) -> Result<u64, TarError> {
    if field[0] & 0x80 == 0 {
        return parse_octal(field).ok_or_else(|| {
            TarError::BadHeader(format!("the {what} field is not an octal number"))
        });
    }
    // The bit below the marker is the sign; negative values mean nothing for our fields.
    if field[0] & 0x40 != 0 {
        return Err(TarError::BadHeader(format!("the {what} field is negative")));
    }
    let mut value = u64::from(field[0] & 0x3f);
    for &byte in &field[1..] {
        if value > u64::MAX >> 8 {
            return Err(TarError::BadHeader(format!(
                "the {what} field overflows 64 bits"
            )));
        }
        value = (value << 8) | u64::from(byte);
    }
    Ok(value)
}

/// Parses octal digits after optional leading spaces, ended by a NUL, a space or the field's
/// end, as GNU tar does. An empty field is zero. Returns `None` for anything else.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let start = field
        .iter()
        .position(|&byte| byte != b' ')
        .unwrap_or(field.len());
    let mut value: u64 = 0;
    let mut rest = &field[start..];
    while let Some((&byte, tail)) = rest.split_first() {
        if !(b'0'..=b'7').contains(&byte) {
            break;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(byte - b'0'))?;
        rest = tail;
    }
    match rest.first() {
        None | Some(0) | Some(b' ') => Some(value),
        Some(_) => None,
    }
}

/// Fills one block. Returns `Ok(false)` if the stream ended cleanly before its first byte, and
/// `Truncated` if it ended part-way, which is why this is not `read_exact`.
fn read_block(reader: &mut impl Read, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
    let mut filled = 0;
    while filled < BLOCK {
        match reader.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(TarError::Truncated),
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(TarError::Io(error)),
        }
    }
    Ok(true)
}

/// Reads exactly `size` bytes of data and then its padding. The buffer grows as bytes arrive
/// rather than being allocated from the header's claim, so a lying header costs nothing.
fn read_data(reader: &mut impl Read, size: u64) -> Result<Vec<u8>, TarError> {
    let mut data = Vec::new();
    let received = reader.take(size).read_to_end(&mut data)?;
    if (received as u64) < size {
        return Err(TarError::Truncated);
    }
    let mut pad = [0u8; BLOCK];
    reader
        .read_exact(&mut pad[..padding(size)])
        .map_err(truncated_on_eof)?;
    Ok(data)
}

/// Reads the data of a PAX or GNU extension header, within `MAX_EXTENDED_DATA`.
fn read_extended_data(reader: &mut impl Read, size: u64) -> Result<Vec<u8>, TarError> {
    if size > MAX_EXTENDED_DATA {
        return Err(TarError::BadHeader(format!(
            "an extension header of {size} bytes is larger than the {MAX_EXTENDED_DATA} bytes \
             allowed"
        )));
    }
    read_data(reader, size)
}

/// Discards `size` bytes of data and their padding without holding them.
fn skip_data(reader: &mut impl Read, size: u64) -> Result<(), TarError> {
    // A base-256 size can be near u64::MAX; saturating still ends in Truncated, not a wrap.
    let total = size.saturating_add(padding(size) as u64);
    let skipped = io::copy(&mut reader.take(total), &mut io::sink())?;
    if skipped < total {
        return Err(TarError::Truncated);
    }
    Ok(())
}

/// `read_exact` reports a short stream as `UnexpectedEof`; for an archive that is truncation.
fn truncated_on_eof(error: io::Error) -> TarError {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        TarError::Truncated
    } else {
        TarError::Io(error)
    }
}

/// What PAX and GNU extension headers said about the next member.
#[derive(Default)]
struct Extensions {
    /// Whether any extension header was read, so the stream must go on to a member.
    seen: bool,
    pax_path: Option<String>,
    pax_linkpath: Option<String>,
    pax_size: Option<u64>,
    gnu_long_name: Option<String>,
    gnu_long_link: Option<String>,
}

/// Applies the records of a PAX `x` header: each is `"<length> <key>=<value>\n"`, where the
/// decimal length counts the whole record including itself and the newline.
fn parse_pax_records(data: &[u8], extensions: &mut Extensions) -> Result<(), TarError> {
    let malformed = || TarError::BadHeader("a PAX extended header record is malformed".into());
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&byte| byte == b' ')
            .ok_or_else(malformed)?;
        let length: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(malformed)?;
        if length <= space + 1 || length > rest.len() || rest[length - 1] != b'\n' {
            return Err(malformed());
        }
        let record = &rest[space + 1..length - 1];
        rest = &rest[length..];
        let equals = record
            .iter()
            .position(|&byte| byte == b'=')
            .ok_or_else(malformed)?;
        let (key, value) = (&record[..equals], &record[equals + 1..]);
        let text = || {
            String::from_utf8(value.to_vec()).map_err(|_| {
                TarError::BadHeader(format!(
                    "the PAX {} record is not valid UTF-8",
                    String::from_utf8_lossy(key)
                ))
            })
        };
        // An empty value deletes the keyword, which for these keys means "use the header".
        match key {
            b"path" => extensions.pax_path = Some(text()?).filter(|path| !path.is_empty()),
            b"linkpath" => extensions.pax_linkpath = Some(text()?).filter(|path| !path.is_empty()),
            b"size" if value.is_empty() => extensions.pax_size = None,
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|digits| digits.parse().ok())
                    .ok_or_else(|| {
                        TarError::BadHeader("the PAX size record is not a number".into())
                    })?;
                extensions.pax_size = Some(size);
            }
            // mtime, atime, uid, uname, extended attributes...: nothing we report.
            _ => {}
        }
    }
    Ok(())
}

/// Decodes a GNU long name or link: its data is the name followed by a NUL.
fn gnu_long_string(mut data: Vec<u8>, what: &str) -> Result<String, TarError> {
    if let Some(nul) = data.iter().position(|&byte| byte == 0) {
        data.truncate(nul);
    }
    String::from_utf8(data)
        .map_err(|_| TarError::BadHeader(format!("the GNU {what} is not valid UTF-8")))
}

/// Decodes a NUL-terminated (or field-filling) text field.
fn text_field(field: &[u8], what: &str) -> Result<String, TarError> {
    let end = field
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec())
        .map_err(|_| TarError::BadHeader(format!("the member's {what} is not valid UTF-8")))
}

/// Builds the member from its header and the extensions before it, then reads its data.
fn read_member(
    reader: &mut impl Read,
    header: &[u8; BLOCK],
    typeflag: u8,
    header_size: u64,
    extensions: Extensions,
    max_data: u64,
) -> Result<Entry, TarError> {
    let size = extensions.pax_size.unwrap_or(header_size);
    if size > max_data {
        return Err(TarError::TooLarge {
            size,
            limit: max_data,
        });
    }
    let name = match extensions.pax_path.or(extensions.gnu_long_name) {
        Some(name) => name,
        None => {
            let name = text_field(&header[NAME], "name")?;
            // Only POSIX ustar headers have a prefix; GNU headers keep other fields there.
            let prefix = if header[MAGIC.start..MAGIC.start + 6] == USTAR_MAGIC[..6] {
                text_field(&header[PREFIX], "name prefix")?
            } else {
                String::new()
            };
            if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            }
        }
    };
    let mode = u32::try_from(parse_numeric(&header[MODE], "mode")?)
        .map_err(|_| TarError::BadHeader("the mode field does not fit in 32 bits".into()))?;
    let kind = match typeflag {
        b'0' | b'7' => EntryKind::File,
        // Pre-POSIX tars marked directories only by a trailing slash.
        0 if name.ends_with('/') => EntryKind::Directory,
        0 => EntryKind::File,
        b'5' => EntryKind::Directory,
        b'2' => {
            let target = match extensions.pax_linkpath.or(extensions.gnu_long_link) {
                Some(target) => target,
                None => text_field(&header[LINKNAME], "link target")?,
            };
            EntryKind::Symlink { target }
        }
        other => EntryKind::Other(other),
    };
    let data = read_data(reader, size)?;
    Ok(Entry {
        name,
        kind,
        mode,
        size,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// A file entry with the fixed metadata most tests use.
    fn file<'a>(name: &'a str, data: &'a [u8]) -> FileEntry<'a> {
        FileEntry {
            name,
            data,
            mode: 0o644,
            mtime: 1_700_000_000,
            uid: 0,
            gid: 0,
        }
    }

    fn read_all(archive: &[u8]) -> Result<Entry, TarError> {
        read_first_entry(&mut Cursor::new(archive), u64::MAX)
    }

    /// Bytes that cycle through all 256 values, offset so that block boundaries do not line
    /// up with a repeat of the pattern.
    fn binary_data(size: usize) -> Vec<u8> {
        (0..size)
            .map(|index| (index * 7 + index / 256) as u8)
            .collect()
    }

    /// Fixes up the checksum of a header that a test edited by hand.
    fn reseal(header: &mut [u8]) {
        header[CHECKSUM].fill(b' ');
        let sum: u64 = header[..BLOCK].iter().map(|&byte| u64::from(byte)).sum();
        header[CHECKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    /// A Read that hands out 1 to 7 bytes per call and is sometimes interrupted, the way a
    /// socket under load behaves.
    struct Trickle<'a> {
        data: &'a [u8],
        calls: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(5) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "try again"));
            }
            let count = (self.calls % 7 + 1).min(buffer.len()).min(self.data.len());
            buffer[..count].copy_from_slice(&self.data[..count]);
            self.data = &self.data[count..];
            Ok(count)
        }
    }

    /// A fresh directory removed when the test ends, pass or fail.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let path =
                std::env::temp_dir().join(format!("agentkernel-tar-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs GNU tar with `input` on stdin and returns its stdout, failing on a non-zero exit.
    fn run_tar(arguments: &[&str], directory: &Path, input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("tar")
            .args(arguments)
            .current_dir(directory)
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("GNU tar is installed in every environment this crate is tested in");
        // Writing from another thread keeps a large archive from deadlocking on full pipes.
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || io::Write::write_all(&mut stdin, &input));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            output.status.success(),
            "tar {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    #[test]
    fn header_of_a_small_file_is_byte_exact() {
        let archive = write_archive(&[file("hello.txt", b"hello world\n")]).unwrap();

        let mut expected = [0u8; BLOCK];
        let mut put = |offset: usize, bytes: &[u8]| {
            expected[offset..offset + bytes.len()].copy_from_slice(bytes)
        };
        put(0, b"hello.txt");
        put(100, b"0000644\0");
        put(108, b"0000000\0");
        put(116, b"0000000\0");
        put(124, b"00000000014\0"); // 12 bytes
        put(136, b"14524770400\0"); // 1700000000
                                    // Sum of all bytes with this field as eight spaces, worked out by hand: name 930,
                                    // mode 350, uid 336, gid 336, size 533, mtime 562, checksum spaces 256, typeflag 48,
                                    // "ustar\0" 559, "00" 96, devmajor and devminor 336 each: 4678 = 0o11106.
        put(148, b"011106\0 ");
        put(156, b"0");
        put(257, b"ustar\0");
        put(263, b"00");
        put(329, b"0000000\0");
        put(337, b"0000000\0");

        assert_eq!(archive[..BLOCK], expected[..]);
        assert_eq!(&archive[BLOCK..BLOCK + 12], b"hello world\n");
        assert!(archive[BLOCK + 12..].iter().all(|&byte| byte == 0));
        // One header, one data block, two zero blocks.
        assert_eq!(archive.len(), 4 * BLOCK);

        let entry = read_all(&archive).unwrap();
        assert_eq!(
            entry,
            Entry {
                name: "hello.txt".into(),
                kind: EntryKind::File,
                mode: 0o644,
                size: 12,
                data: b"hello world\n".to_vec(),
            }
        );
    }

    #[test]
    fn binary_data_of_every_size_round_trips() {
        let sizes = [0, 1, 511, 512, 513, 100_000];
        let contents: Vec<Vec<u8>> = sizes.iter().map(|&size| binary_data(size)).collect();
        let names: Vec<String> = sizes
            .iter()
            .map(|size| format!("data/{size}.bin"))
            .collect();
        let entries: Vec<FileEntry<'_>> = names
            .iter()
            .zip(&contents)
            .map(|(name, data)| file(name, data))
            .collect();
        let archive = write_archive(&entries).unwrap();

        let blocks: usize = sizes.iter().map(|size| 1 + size.div_ceil(BLOCK)).sum();
        assert_eq!(archive.len(), (blocks + 2) * BLOCK);
        let distinct: std::collections::HashSet<u8> = contents[5].iter().copied().collect();
        assert_eq!(distinct.len(), 256);

        // Each call leaves the reader at the next header, so the members read in order.
        let mut reader = Cursor::new(&archive);
        for ((name, data), &size) in names.iter().zip(&contents).zip(&sizes) {
            let entry = read_first_entry(&mut reader, u64::MAX).unwrap();
            assert_eq!(&entry.name, name);
            assert_eq!(entry.kind, EntryKind::File);
            assert_eq!(entry.size, size as u64);
            assert_eq!(&entry.data, data);
        }
        assert!(matches!(
            read_first_entry(&mut reader, u64::MAX),
            Err(TarError::Empty)
        ));
    }

    #[test]
    fn long_name_is_split_into_prefix_and_name() {
        let directory = format!("{}/{}", "a".repeat(60), "b".repeat(60));
        let name = format!("{directory}/{}", "c".repeat(50));
        assert_eq!(name.len(), 172);
        let archive = write_archive(&[file(&name, b"x")]).unwrap();

        let header = &archive[..BLOCK];
        assert_eq!(&header[..50], "c".repeat(50).as_bytes());
        assert_eq!(header[50], 0);
        assert_eq!(&header[345..345 + 121], directory.as_bytes());
        assert_eq!(header[345 + 121], 0);
        assert_eq!(header[156], b'0');
        // No GNU member was needed: header, data block, end blocks.
        assert_eq!(archive.len(), 4 * BLOCK);
        assert_eq!(read_all(&archive).unwrap().name, name);
    }

    #[test]
    fn names_of_exactly_100_and_255_bytes_fit_ustar() {
        let hundred = "n".repeat(100);
        let archive = write_archive(&[file(&hundred, b"")]).unwrap();
        assert_eq!(&archive[..100], hundred.as_bytes());
        assert_eq!(read_all(&archive).unwrap().name, hundred);

        let longest = format!("{}/{}", "p".repeat(155), "n".repeat(100));
        let archive = write_archive(&[file(&longest, b"")]).unwrap();
        assert_eq!(archive[156], b'0');
        assert_eq!(read_all(&archive).unwrap().name, longest);
    }

    #[test]
    fn unsplittable_name_uses_a_gnu_long_name_member() {
        let name = format!("dir/{}", "z".repeat(150));
        let archive = write_archive(&[file(&name, b"long")]).unwrap();

        let long_link = &archive[..BLOCK];
        assert_eq!(&long_link[..14], b"././@LongLink\0");
        assert_eq!(long_link[156], b'L');
        assert_eq!(&long_link[257..265], b"ustar  \0");
        assert_eq!(&long_link[124..136], b"00000000233\0"); // 154 name bytes + NUL = 155
        assert_eq!(&archive[BLOCK..BLOCK + 154], name.as_bytes());
        assert_eq!(archive[BLOCK + 154], 0);
        let main = &archive[2 * BLOCK..3 * BLOCK];
        assert_eq!(&main[..100], &name.as_bytes()[..100]);
        assert_eq!(main[156], b'0');
        assert_eq!(&main[257..265], b"ustar  \0");
        // LongLink header and data, header and data, two end blocks.
        assert_eq!(archive.len(), 6 * BLOCK);

        let entry = read_all(&archive).unwrap();
        assert_eq!(entry.name, name);
        assert_eq!(entry.data, b"long");
    }

    #[test]
    fn writer_makes_names_relative_and_refuses_bad_ones() {
        let archive = write_archive(&[file("/etc/motd", b"")]).unwrap();
        assert_eq!(&archive[..9], b"etc/motd\0");

        for bad in ["", "/", "a\0b", "../x", "a/../../x", "dir/"] {
            match write_archive(&[file(bad, b"")]) {
                Err(TarError::InvalidName(name)) => assert_eq!(name, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn directories_and_symlinks_are_written_and_read_back() {
        let member = |name, kind| Member {
            name,
            kind,
            mode: 0o755,
            mtime: 0,
            uid: 1,
            gid: 2,
        };
        let archive = write_members(&[
            member("./d", MemberKind::Directory),
            member("./d/f", MemberKind::File(b"data")),
            member("./d/l", MemberKind::Symlink("f")),
        ])
        .unwrap();
        let mut reader = archive.as_slice();
        let mut read = Vec::new();
        while let Ok(entry) = read_first_entry(&mut reader, 1024) {
            read.push((entry.name, entry.kind, entry.data));
        }
        assert_eq!(
            read,
            [
                ("./d/".to_string(), EntryKind::Directory, Vec::new()),
                ("./d/f".to_string(), EntryKind::File, b"data".to_vec()),
                (
                    "./d/l".to_string(),
                    EntryKind::Symlink { target: "f".into() },
                    Vec::new()
                ),
            ]
        );
        let long = "x".repeat(101);
        assert!(write_members(&[member("l", MemberKind::Symlink(&long))]).is_err());
    }

    #[test]
    fn writer_refuses_values_that_do_not_fit() {
        let eight_gib = MAX_OCTAL_SIZE + 1;
        let fields = HeaderFields {
            name: b"big",
            prefix: b"",
            linkname: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: eight_gib,
            mtime: 0,
            typeflag: b'0',
            magic: USTAR_MAGIC,
        };
        assert!(matches!(
            encode_header(&fields),
            Err(TarError::TooLarge { size, limit }) if size == eight_gib && limit == MAX_OCTAL_SIZE
        ));
        let largest = HeaderFields {
            size: MAX_OCTAL_SIZE,
            ..fields
        };
        let header = encode_header(&largest).unwrap();
        assert_eq!(&header[124..136], b"77777777777\0");

        let mut entry = file("f", b"");
        entry.uid = 0o10000000;
        assert!(matches!(
            write_archive(&[entry]),
            Err(TarError::BadHeader(_))
        ));
        let mut entry = file("f", b"");
        entry.mode = 0o100644;
        assert!(matches!(
            write_archive(&[entry]),
            Err(TarError::BadHeader(_))
        ));
        let mut entry = file("f", b"");
        entry.mtime = 0o100000000000;
        assert!(matches!(
            write_archive(&[entry]),
            Err(TarError::BadHeader(_))
        ));
    }

    /// Builds the PAX header, with a hand-counted record length, that Go's `archive/tar`
    /// writes in front of a member whose name does not fit ustar.
    #[test]
    fn reads_a_pax_header_as_go_writes_it() {
        let long_path = format!("some/very/long/{}", "p".repeat(105));
        assert_eq!(long_path.len(), 120);
        // "130" + " " + "path=" + 120 + "\n" is 130 bytes; "20 mtime=1700000000\n" is 20.
        let path_record = format!("130 path={long_path}\n");
        assert_eq!(path_record.len(), 130);
        let records = format!("{path_record}20 mtime=1700000000\n");

        let mut archive = vec![0u8; BLOCK];
        archive[..26].copy_from_slice(b"some/very/PaxHeaders.0/ppp");
        archive[100..108].copy_from_slice(b"0000644\0");
        archive[108..116].copy_from_slice(b"0000000\0");
        archive[116..124].copy_from_slice(b"0000000\0");
        archive[124..136].copy_from_slice(b"00000000226\0"); // 150 bytes of records
        archive[136..148].copy_from_slice(b"00000000000\0");
        archive[156] = b'x';
        archive[257..265].copy_from_slice(b"ustar\x0000");
        reseal(&mut archive[..BLOCK]);
        archive.extend_from_slice(records.as_bytes());
        archive.resize(2 * BLOCK, 0);

        // Go's own header carries a truncated name, which the PAX path must override.
        let mut header = [0u8; BLOCK];
        header[..100].copy_from_slice(&long_path.as_bytes()[..100]);
        header[100..108].copy_from_slice(b"0000600\0");
        header[124..136].copy_from_slice(b"00000000003\0");
        header[156] = b'0';
        header[257..265].copy_from_slice(b"ustar\x0000");
        reseal(&mut header);
        archive.extend_from_slice(&header);
        archive.extend_from_slice(b"abc");
        archive.resize(4 * BLOCK + 2 * BLOCK, 0);

        let entry = read_all(&archive).unwrap();
        assert_eq!(entry.name, long_path);
        assert_eq!(entry.mode, 0o600);
        assert_eq!(entry.data, b"abc");
    }

    #[test]
    fn pax_size_and_linkpath_override_the_header() {
        let records = "9 size=5\n22 linkpath=target/é\n";
        // "é" is two bytes in UTF-8, so the record is 22 bytes, not 21.
        assert_eq!("22 linkpath=target/é\n".len(), 22);
        let mut archive = vec![0u8; BLOCK];
        archive[..9].copy_from_slice(b"PaxHeader");
        archive[124..136].copy_from_slice(format!("{:011o}\0", records.len()).as_bytes());
        archive[156] = b'x';
        archive[257..265].copy_from_slice(USTAR_MAGIC);
        reseal(&mut archive);
        push_padded(&mut archive, records.as_bytes());

        let mut symlink = [0u8; BLOCK];
        symlink[..4].copy_from_slice(b"link");
        symlink[124..136].copy_from_slice(b"00000000000\0");
        symlink[156] = b'2';
        symlink[157..163].copy_from_slice(b"ignore");
        symlink[257..265].copy_from_slice(USTAR_MAGIC);
        reseal(&mut symlink);
        archive.extend_from_slice(&symlink);
        push_padded(&mut archive, b"12345");

        let entry = read_all(&archive).unwrap();
        assert_eq!(entry.name, "link");
        assert_eq!(
            entry.kind,
            EntryKind::Symlink {
                target: "target/é".into()
            }
        );
        assert_eq!(entry.size, 5);
        assert_eq!(entry.data, b"12345");
    }

    #[test]
    fn global_headers_are_skipped() {
        let records = "22 comment=from a test\n";
        let mut archive = vec![0u8; BLOCK];
        archive[..13].copy_from_slice(b"GlobalHead.0\0");
        archive[124..136].copy_from_slice(format!("{:011o}\0", records.len()).as_bytes());
        archive[156] = b'g';
        archive[257..265].copy_from_slice(USTAR_MAGIC);
        reseal(&mut archive);
        push_padded(&mut archive, records.as_bytes());
        archive.extend_from_slice(&write_archive(&[file("after-global", b"ok")]).unwrap());

        let entry = read_all(&archive).unwrap();
        assert_eq!(entry.name, "after-global");
        assert_eq!(entry.data, b"ok");
    }

    #[test]
    fn malformed_pax_records_are_refused() {
        for records in [
            "99 path=x\n",
            "x path=y\n",
            "9 pathxx\n",
            "10 size=z\n",
            "8 path=x",
        ] {
            let mut extensions = Extensions::default();
            assert!(
                matches!(
                    parse_pax_records(records.as_bytes(), &mut extensions),
                    Err(TarError::BadHeader(_))
                ),
                "{records:?} was accepted"
            );
        }
    }

    #[test]
    fn reads_through_a_reader_that_returns_a_few_bytes_at_a_time() {
        let name = format!("deep/{}", "q".repeat(120));
        let data = binary_data(1500);
        let archive = write_archive(&[file(&name, &data), file("second", b"2")]).unwrap();
        let mut reader = Trickle {
            data: &archive,
            calls: 0,
        };
        let entry = read_first_entry(&mut reader, 1500).unwrap();
        assert_eq!(entry.name, name);
        assert_eq!(entry.data, data);
        let second = read_first_entry(&mut reader, 1500).unwrap();
        assert_eq!(second.name, "second");
        assert!(reader.calls > archive.len() / 7);
    }

    #[test]
    fn corrupted_checksum_is_refused() {
        let mut archive = write_archive(&[file("hello.txt", b"hello world\n")]).unwrap();
        archive[0] = b'j';
        assert!(matches!(read_all(&archive), Err(TarError::BadChecksum)));

        let mut archive = write_archive(&[file("hello.txt", b"hello world\n")]).unwrap();
        archive[148..156].copy_from_slice(b"nonsense");
        assert!(matches!(read_all(&archive), Err(TarError::BadChecksum)));

        let not_tar = [b'{'; BLOCK];
        assert!(matches!(read_all(&not_tar), Err(TarError::BadChecksum)));
    }

    #[test]
    fn truncated_archives_are_reported() {
        let archive = write_archive(&[file("hello.txt", b"hello world\n")]).unwrap();
        // Inside the header, inside the data, inside the padding.
        for cut in [1, 100, 511, 512, 520, 600, 1023] {
            assert!(
                matches!(read_all(&archive[..cut]), Err(TarError::Truncated)),
                "cut at {cut}"
            );
        }
        // The member is complete even without the end blocks.
        assert_eq!(read_all(&archive[..1024]).unwrap().data, b"hello world\n");

        // An extension header promises a member; the stream ends or zeros out before it.
        let name = "g".repeat(150);
        let archive = write_archive(&[file(&name, b"")]).unwrap();
        assert!(matches!(
            read_all(&archive[..1024]),
            Err(TarError::Truncated)
        ));
        let mut zeros_after = archive[..1024].to_vec();
        zeros_after.extend_from_slice(&[0u8; 2 * BLOCK]);
        assert!(matches!(read_all(&zeros_after), Err(TarError::Truncated)));
    }

    #[test]
    fn empty_archives_are_reported() {
        assert!(matches!(read_all(b""), Err(TarError::Empty)));
        assert!(matches!(read_all(&[0u8; 2 * BLOCK]), Err(TarError::Empty)));
        assert!(matches!(
            read_all(&write_archive(&[]).unwrap()),
            Err(TarError::Empty)
        ));
    }

    #[test]
    fn too_large_is_refused_from_the_header_before_reading_data() {
        let data = binary_data(100);
        let archive = write_archive(&[file("big", &data)]).unwrap();
        assert_eq!(
            read_first_entry(&mut Cursor::new(&archive), 100)
                .unwrap()
                .data,
            data
        );
        // Only the header is present, so reading data would have been Truncated.
        assert!(matches!(
            read_first_entry(&mut Cursor::new(&archive[..BLOCK]), 99),
            Err(TarError::TooLarge {
                size: 100,
                limit: 99
            })
        ));
    }

    #[test]
    fn base_256_sizes_are_understood() {
        let mut archive = write_archive(&[file("binary-size", b"12345")]).unwrap();
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[11] = 5;
        archive[124..136].copy_from_slice(&field);
        reseal(&mut archive[..BLOCK]);
        assert_eq!(read_all(&archive).unwrap().data, b"12345");

        // 10 GiB, which octal cannot express, is refused by size before any data is read.
        let ten_gib: u64 = 10 << 30;
        field[4..].copy_from_slice(&ten_gib.to_be_bytes());
        archive[124..136].copy_from_slice(&field);
        reseal(&mut archive[..BLOCK]);
        assert!(matches!(
            read_first_entry(&mut Cursor::new(&archive), 1 << 20),
            Err(TarError::TooLarge { size, limit }) if size == ten_gib && limit == 1 << 20
        ));

        field[0] = 0xff;
        archive[124..136].copy_from_slice(&field);
        reseal(&mut archive[..BLOCK]);
        assert!(matches!(read_all(&archive), Err(TarError::BadHeader(_))));
    }

    #[test]
    fn octal_fields_are_parsed_like_gnu_tar() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"   644 \0"), Some(0o644));
        assert_eq!(parse_octal(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"77777777777\0"), Some(MAX_OCTAL_SIZE));
        assert_eq!(parse_octal(b"0000648\0"), None);
        assert_eq!(parse_octal(b"12x"), None);
    }

    #[test]
    fn directories_symlinks_and_other_types_are_classified() {
        let mut archive = write_archive(&[file("placeholder", b"")]).unwrap();
        let mut kind_of = |name: &[u8], typeflag: u8| {
            archive[..BLOCK].fill(0);
            archive[..name.len()].copy_from_slice(name);
            archive[124..136].copy_from_slice(b"00000000000\0");
            archive[156] = typeflag;
            archive[157..160].copy_from_slice(b"dst");
            archive[257..265].copy_from_slice(USTAR_MAGIC);
            reseal(&mut archive[..BLOCK]);
            read_all(&archive).unwrap().kind
        };
        assert_eq!(kind_of(b"d/", b'5'), EntryKind::Directory);
        assert_eq!(kind_of(b"old-dir/", 0), EntryKind::Directory);
        assert_eq!(kind_of(b"old-file", 0), EntryKind::File);
        assert_eq!(
            kind_of(b"s", b'2'),
            EntryKind::Symlink {
                target: "dst".into()
            }
        );
        assert_eq!(kind_of(b"h", b'1'), EntryKind::Other(b'1'));
        assert_eq!(kind_of(b"fifo", b'6'), EntryKind::Other(b'6'));
    }

    #[test]
    fn errors_read_as_plain_english() {
        let too_large = TarError::TooLarge { size: 10, limit: 5 };
        assert_eq!(
            too_large.to_string(),
            "the tar member holds 10 bytes, more than the limit of 5 bytes"
        );
        assert_eq!(
            TarError::Empty.to_string(),
            "the tar archive holds no member"
        );
        assert!(TarError::InvalidName("../x".into())
            .to_string()
            .starts_with("\"../x\" is not a valid tar member name"));
    }

    #[test]
    fn gnu_tar_lists_and_extracts_what_we_write() {
        let directory = TempDir::new("gnu-lists");
        let split_name = format!("{}/{}", "s".repeat(80), "t".repeat(80));
        let gnu_name = format!("{}.bin", "u".repeat(150));
        let big = binary_data(100_000);
        let entries = [
            file("hello.txt", b"hello world\n"),
            file(&split_name, b"split"),
            FileEntry {
                mode: 0o755,
                uid: 1000,
                gid: 1001,
                ..file(&gnu_name, &big)
            },
        ];
        let archive = write_archive(&entries).unwrap();

        let listing = run_tar(&["-tvf", "-"], &directory.0, &archive);
        let listing = String::from_utf8(listing).unwrap();
        let lines: Vec<Vec<&str>> = listing
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            vec![
                vec![
                    "-rw-r--r--",
                    "0/0",
                    "12",
                    "2023-11-14",
                    "22:13",
                    "hello.txt"
                ],
                vec!["-rw-r--r--", "0/0", "5", "2023-11-14", "22:13", &split_name],
                vec![
                    "-rwxr-xr-x",
                    "1000/1001",
                    "100000",
                    "2023-11-14",
                    "22:13",
                    &gnu_name
                ],
            ],
            "listing was:\n{listing}"
        );

        let contents = run_tar(&["-xOf", "-"], &directory.0, &archive);
        let mut expected = b"hello world\nsplit".to_vec();
        expected.extend_from_slice(&big);
        assert_eq!(contents, expected);
    }

    #[test]
    fn reads_a_pax_archive_written_by_gnu_tar() {
        let directory = TempDir::new("gnu-pax");
        let name = format!("{}.txt", "v".repeat(146));
        assert_eq!(name.len(), 150);
        std::fs::write(directory.0.join(&name), b"written by GNU tar\n").unwrap();

        let archive = run_tar(&["-cf", "-", "--format=pax", &name], &directory.0, b"");
        // The name cannot go in ustar fields, so GNU tar must have used a PAX header.
        assert_eq!(archive[156], b'x');
        let entry = read_first_entry(&mut Cursor::new(&archive), 1024).unwrap();
        assert_eq!(entry.name, name);
        assert_eq!(entry.kind, EntryKind::File);
        assert_eq!(entry.data, b"written by GNU tar\n");
        assert!(matches!(
            read_first_entry(&mut Cursor::new(&archive), 10),
            Err(TarError::TooLarge {
                size: 19,
                limit: 10
            })
        ));
    }

    #[test]
    fn reads_gnu_long_names_and_links_written_by_gnu_tar() {
        let directory = TempDir::new("gnu-long");
        let target = format!("{}.txt", "w".repeat(146));
        let link = format!("{}.lnk", "l".repeat(116));
        std::fs::write(directory.0.join(&target), b"target\n").unwrap();
        std::os::unix::fs::symlink(&target, directory.0.join(&link)).unwrap();

        let archive = run_tar(
            &["-cf", "-", "--format=gnu", &target, &link],
            &directory.0,
            b"",
        );
        assert_eq!(archive[156], b'L');
        let mut reader = Cursor::new(&archive);
        let file = read_first_entry(&mut reader, 1024).unwrap();
        assert_eq!(file.name, target);
        assert_eq!(file.data, b"target\n");
        let symlink = read_first_entry(&mut reader, 1024).unwrap();
        assert_eq!(symlink.name, link);
        assert_eq!(symlink.kind, EntryKind::Symlink { target });
        assert!(symlink.data.is_empty());
        assert!(matches!(
            read_first_entry(&mut reader, 1024),
            Err(TarError::Empty)
        ));
    }
}
