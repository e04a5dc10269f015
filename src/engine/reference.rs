//! Image references as the Engine parses them (the `distribution/reference` grammar),
//! checked before a request reaches the engine: a reference the engine would refuse, or
//! would read as a path (`/`, `../../etc` answered 301 from the engine's router), is the
//! client's mistake and a 400 naming it, never an engine error passed through.
//!
//! Grammar (what we accept):
//!
//! ```text
//! reference := name [ ":" tag ] [ "@" digest ]  |  image-id
//! name      := [ domain "/" ] component ( "/" component )*     (at most 255 bytes)
//! domain    := label ( "." label )* [ ":" port ]               (or "localhost")
//! component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"* ) [a-z0-9]+ )*
//! tag       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest    := "sha256:" 64 lowercase hex digits
//! image-id  := "sha256:" 64 hex digits  |  12 to 64 hex digits (an id or its prefix)
//! ```
//!
//! As in the Engine, the first part of a name is a registry host only when it contains
//! `.` or `:`, or is `localhost`, or has an uppercase letter.

use std::fmt;

/// Longest name the Engine accepts (without tag and digest).
const NAME_MAX_BYTES: usize = 255;
/// Longest tag.
const TAG_MAX_BYTES: usize = 128;

/// A syntactically valid image reference, kept as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef(String);

impl ImageRef {
    /// Parses a reference; the error names it and says what is wrong with it.
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        match check(text) {
            Ok(()) => Ok(ImageRef(text.to_string())),
            Err(why) => Err(format!(
                "image '{}' is not a valid image reference: {why}",
                text.escape_debug()
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("it is empty");
    }
    if let Some(id) = text.strip_prefix("sha256:") {
        if id.len() == 64 && is_hex(id) {
            return Ok(());
        }
    }
    // Everything an image id may be is also a valid name, so ids need no case of
    // their own below.
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or("the digest must be sha256:<64 hex digits>")?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("the digest must be sha256:<64 lowercase hex digits>");
        }
    }
    // A tag follows the last ':' unless that ':' belongs to a registry's port
    // (then a '/' comes after it).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    check_name(name)
}

fn check_tag(tag: &str) -> Result<(), &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    if bytes.is_empty() || bytes.len() > TAG_MAX_BYTES {
        return Err("a tag must be 1 to 128 characters");
    }
    if !word(bytes[0]) || !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') {
        return Err(
            "a tag may hold letters, digits, '_', '.' and '-', and not start with '.' or '-'",
        );
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > NAME_MAX_BYTES {
        return Err("the name is longer than 255 characters");
    }
    let path = match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            check_domain(first)?;
            path
        }
        _ => name,
    };
    for component in path.split('/') {
        check_component(component)?;
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), &'static str> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a registry port must be digits");
        }
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("the registry host is not a valid host name")
    }
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"* ) [a-z0-9]+ )*`
fn check_component(component: &str) -> Result<(), &'static str> {
    const WHAT: &str = "each part of a name must be lowercase letters and digits, \
                        joined by '.', '_', '__' or dashes";
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return Err("a name has an empty part ('//', or a leading or trailing '/')");
    }
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(WHAT);
    }
    let mut index = 0;
    while index < bytes.len() {
        if alnum(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !alnum(bytes[index]) {
            index += 1;
        }
        let separator = &component[start..index];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return Err(WHAT);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_engine_accepts() {
        let hex = "a".repeat(64);
        for good in [
            "busybox",
            "alpine:3.20",
            "agentkernel/busybox:latest",
            "python:3.12-alpine",
            "oven/bun:1-alpine",
            "library/a__b.c-d---e:V1_x.y-z",
            "localhost/img",
            "localhost:5000/team/img:tag",
            "registry.example.com/a/b/c",
            "Registry.Example.com:443/x",
            "ec24e4701b86",
            &format!("sha256:{hex}"),
            &format!("busybox@sha256:{hex}"),
            &format!("reg.io:5000/busybox:1@sha256:{hex}"),
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_paths_and_malformed_references() {
        for bad in [
            "",
            "/",
            "../../etc",
            "/etc/passwd",
            "a/",
            "a//b",
            "Busybox",
            "busybox:",
            "busybox:.x",
            &format!("busybox:{}", "x".repeat(129)),
            "busybox@sha256:abc",
            "busybox@md5:abc",
            "a..b",
            "-a",
            "a-",
            "a b",
            "a?b",
            "reg.io:port/x",
            "reg_io.com/x",
            &"a".repeat(256),
        ] {
            let error = ImageRef::parse(bad).unwrap_err();
            assert!(
                error.starts_with(&format!("image '{}'", bad.escape_debug())),
                "{error}"
            );
        }
    }
}
