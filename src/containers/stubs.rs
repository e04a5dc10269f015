//! The stub copies containers mount: each version of our executable is kept at
//! `<data dir>/stubs/agentkernel-<sha256 of its content>`, read-only, and that path is
//! what containers mount as the stub. A sandbox keeps the mount it was created with, so
//! after an upgrade (the executable replaced or moved, even deleted) a sandbox made by an
//! older build still starts, with the stub it was made with, and the server checks that
//! stub's protocol version at its hello.
//!
//! Hashing the executable costs a read and a SHA-256 of it (about 20 ms for a release
//! build, seconds for a debug one), so the digest is remembered per file identity in
//! `stubs/by-file/<dev>-<inode>-<size>-<mtime>-<ctime>`: any change to the file (a
//! write, a replacement) changes its ctime or inode, which userspace cannot set back.
//!
//! Invariants: a copy appears under its name only whole, synced and read-only (written
//! under a temporary name, then linked into place), and is never rewritten once there
//! with the right size; a name always holds the content its digest names.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::codec::sha256;

/// The directory under the data dir.
pub const DIR: &str = "stubs";

/// The copy of the executable `source` describes (whose content is `bytes`) under
/// `<data_dir>/stubs`, made if missing.
pub fn install(
    data_dir: &Path,
    source: &Metadata,
    open: impl FnOnce() -> io::Result<Box<dyn Read>>,
) -> io::Result<PathBuf> {
    let size = source.size() as usize;
    let dir = data_dir.join(DIR);
    let index = dir.join("by-file");
    fs::create_dir_all(&index)?;
    let identity = format!(
        "{}-{}-{}-{}.{}-{}.{}",
        source.dev(),
        source.ino(),
        source.size(),
        source.mtime(),
        source.mtime_nsec(),
        source.ctime(),
        source.ctime_nsec()
    );
    let entry = index.join(&identity);
    let remembered = fs::read_to_string(&entry)
        .ok()
        .filter(|digest| digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(digest) = remembered {
        let copy = copy_path(&dir, &digest);
        if is_whole(&copy, size) {
            return Ok(copy);
        }
    }
    // Only now the whole executable, once per version, and a piece at a time (hashed
    // as it is copied): a start holds no more of it than one buffer.
    let mut source = open()?;
    let mut hasher = sha256::Sha256::default();
    let mut copied = 0usize;
    let temporary = write_temporary(&dir, "incoming", 0o555, |file| {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let count = match source.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            hasher.update(&buffer[..count]);
            file.write_all(&buffer[..count])?;
            copied += count;
        }
    })?;
    let digest = sha256::hex(&hasher.finish());
    let copy = copy_path(&dir, &digest);
    // Linked, not renamed, where nothing is there yet: a copy another process made
    // meanwhile stays as it is (mounted copies are never replaced under a container).
    let placed = if is_whole(&copy, copied) {
        Ok(())
    } else {
        match fs::hard_link(&temporary, &copy) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                if is_whole(&copy, copied) {
                    Ok(())
                } else {
                    fs::rename(&temporary, &copy)
                }
            }
            Ok(()) => {
                log::info!("stub: this version is kept at {}", copy.display());
                Ok(())
            }
            other => other,
        }
    };
    let _ = fs::remove_file(&temporary);
    placed?;
    // Remembering is an optimisation: a failure only costs a hash next time.
    if let Ok(temporary) = write_temporary(&index, &identity, 0o644, |file| {
        file.write_all(digest.as_bytes())
    }) {
        if fs::rename(&temporary, &entry).is_err() {
            let _ = fs::remove_file(&temporary);
        }
    }
    Ok(copy)
}

fn copy_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join(format!("agentkernel-{digest}"))
}

/// Whether `path` is a regular file of `size` bytes (a copy is written whole or not at
/// all; this catches one truncated or replaced by hand).
fn is_whole(path: &Path, size: usize) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.len() == size as u64)
}

/// A new file in `dir` under a temporary name, written by `write`, synced, with `mode`.
fn write_temporary(
    dir: &Path,
    name: &str,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(".{name}.{}.{unique}.tmp", std::process::id()));
    let written = (|| {
        let mut file = File::options().write(true).create_new(true).open(&path)?;
        write(&mut file)?;
        file.sync_all()?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
    })();
    match written {
        Ok(()) => Ok(path),
        Err(error) => {
            let _ = fs::remove_file(&path);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ak-stubs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn source(bytes: &'static [u8]) -> impl FnOnce() -> io::Result<Box<dyn Read>> {
        move || Ok(Box::new(bytes) as Box<dyn Read>)
    }

    fn executable(dir: &Path, name: &str, bytes: &[u8]) -> (Metadata, PathBuf) {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        (fs::metadata(&path).unwrap(), path)
    }

    #[test]
    fn copies_are_named_by_content_read_only_and_kept() {
        let dir = temporary_dir("named");
        let data = dir.join("data");
        let (meta, path) = executable(&dir, "one", b"version one");
        let copy = install(&data, &meta, source(b"version one")).unwrap();
        assert_eq!(
            copy,
            data.join(DIR).join(format!(
                "agentkernel-{}",
                sha256::hex_digest(b"version one")
            ))
        );
        assert_eq!(fs::read(&copy).unwrap(), b"version one");
        let mode = fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o555);
        // Again: the same copy, untouched.
        let inode = fs::metadata(&copy).unwrap().ino();
        assert_eq!(install(&data, &meta, source(b"version one")).unwrap(), copy);
        assert_eq!(fs::metadata(&copy).unwrap().ino(), inode);

        // An upgrade: the executable replaced (a new file under the same path). The old
        // copy stays for the containers that mount it.
        fs::remove_file(&path).unwrap();
        let (meta, _) = executable(&dir, "one", b"version two!");
        let upgraded = install(&data, &meta, source(b"version two!")).unwrap();
        assert_ne!(upgraded, copy);
        assert_eq!(fs::read(&upgraded).unwrap(), b"version two!");
        assert_eq!(fs::read(&copy).unwrap(), b"version one");

        // The same content elsewhere is the same copy.
        let (meta, _) = executable(&dir, "elsewhere", b"version one");
        assert_eq!(install(&data, &meta, source(b"version one")).unwrap(), copy);
        // No temporary file is left.
        let names: Vec<String> = fs::read_dir(data.join(DIR))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|name| !name.ends_with(".tmp")),
            "{names:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_remembered_digest_skips_the_hash_but_not_a_missing_copy() {
        let dir = temporary_dir("remembered");
        let data = dir.join("data");
        let (meta, _) = executable(&dir, "exe", b"content");
        let copy = install(&data, &meta, source(b"content")).unwrap();
        // The file's identity is remembered: bytes are not hashed again (were they, this
        // different content would name another copy).
        assert_eq!(
            install(&data, &meta, || panic!("read though remembered")).unwrap(),
            copy
        );
        // A copy deleted (or cut short) by hand is made again.
        fs::remove_file(&copy).unwrap();
        assert_eq!(install(&data, &meta, source(b"content")).unwrap(), copy);
        assert_eq!(fs::read(&copy).unwrap(), b"content");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&copy, b"cut").unwrap();
        assert_eq!(install(&data, &meta, source(b"content")).unwrap(), copy);
        assert_eq!(fs::read(&copy).unwrap(), b"content");
        let _ = fs::remove_dir_all(&dir);
    }
}
