//! `agentkernel cp`: a file or directory between this machine and a sandbox, like
//! `docker cp`, through the archive routes (`GET`/`PUT /sandboxes/{name}/archive`).
//!
//! Invariants: what comes from a sandbox is checked like an upload (`files::
//! read_members`: nothing named outside the destination, no link that reaches out of it
//! however links chain, no devices), a member that fails is left out and said, and
//! nothing is written through a symlink already on this machine; what goes up is
//! regular files only (directories as their paths), read without following links.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::backend::{Backend, ClientError};
use crate::codec::tar::{self, EntryKind, FileEntry};
use crate::containers::labels::SandboxName;
use crate::files::SandboxPath;
use crate::server::request::Request;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Local(PathBuf),
    /// `NAME:PATH`.
    Sandbox {
        name: String,
        path: String,
    },
}

impl Place {
    /// `NAME:/path` is a sandbox's path (the name valid, the path absolute); anything
    /// else, a local path.
    pub fn parse(text: &str) -> Place {
        if let Some((name, path)) = text.split_once(':') {
            if SandboxName::parse(name).is_ok() && path.starts_with('/') {
                return Place::Sandbox {
                    name: name.to_string(),
                    path: path.to_string(),
                };
            }
        }
        Place::Local(PathBuf::from(text))
    }
}

/// Most bytes an upload reads from this machine (the server's limit is usually lower).
const MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// Copies `from` to `to` (one of them a sandbox); returns what to print.
pub fn copy(backend: &Backend, from: &Place, to: &Place) -> Result<String, String> {
    match (from, to) {
        (Place::Sandbox { name, path }, Place::Local(dir)) => download(backend, name, path, dir),
        (Place::Local(source), Place::Sandbox { name, path }) => {
            upload(backend, source, name, path)
        }
        _ => Err("one side of cp is a sandbox path (NAME:/path), the other a local one".into()),
    }
}

fn sandbox_path(name: &str, path: &str) -> Result<(SandboxName, SandboxPath), String> {
    Ok((SandboxName::parse(name)?, SandboxPath::parse(path)?))
}

/// `NAME:/dir` into the existing local directory `into`: the sandbox's `dir` lands as
/// `into/<dir's last part>`.
fn download(backend: &Backend, name: &str, path: &str, into: &Path) -> Result<String, String> {
    if !into.is_dir() {
        return Err(format!(
            "{}: not a directory here (cp copies into an existing one)",
            into.display()
        ));
    }
    let (name, path) = sandbox_path(name, path)?;
    let archive = backend
        .fetch(Request::GetArchive(name, path))
        .map_err(|error| error.to_string())?;
    let members = crate::files::read_members(&archive).map_err(|error| error.to_string())?;
    let mut written = 0;
    for (raw, checked) in members {
        let entry = match checked {
            Ok(entry) => entry,
            // Left out, and said: the rest of a directory is still worth having.
            Err(why) => {
                eprintln!("agentkernel: {raw:?} left out: {why}");
                continue;
            }
        };
        if entry.name.is_empty() {
            continue;
        }
        let relative = PathBuf::from(&entry.name);
        let target = into.join(&relative);
        refuse_links_on_the_way(into, &relative)?;
        let failed = |error: io::Error| format!("{}: {error}", target.display());
        match &entry.kind {
            EntryKind::Directory => std::fs::create_dir_all(&target).map_err(failed)?,
            EntryKind::File => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(failed)?;
                }
                write_file(&target, &entry.data, entry.mode).map_err(failed)?;
            }
            EntryKind::Symlink { target: link } => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(failed)?;
                }
                std::os::unix::fs::symlink(link, &target).map_err(failed)?;
            }
            EntryKind::Other(_) => unreachable!("check_archive refuses every other kind"),
        }
        written += 1;
    }
    Ok(format!(
        "{written} entries copied into {}\n",
        into.display()
    ))
}

/// Refuses to write below a symlink that is already on this machine: an archive member
/// could otherwise land wherever the link points.
fn refuse_links_on_the_way(base: &Path, relative: &Path) -> Result<(), String> {
    let mut at = base.to_path_buf();
    for part in relative.components() {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok_and(|meta| meta.file_type().is_symlink()) {
            return Err(format!(
                "{}: a symlink is in the way (nothing is written through one)",
                at.display()
            ));
        }
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
}

/// A local file or directory into the sandbox's existing directory `path`, as
/// `path/<its last part>`.
fn upload(backend: &Backend, source: &Path, name: &str, path: &str) -> Result<String, String> {
    let (name, path) = sandbox_path(name, path)?;
    let base = source
        .file_name()
        .and_then(|part| part.to_str())
        .ok_or_else(|| format!("{}: needs a name to copy under", source.display()))?
        .to_string();
    let mut files = Vec::new();
    let mut total = 0u64;
    collect(source, &base, &mut files, &mut total)?;
    let entries: Vec<FileEntry<'_>> = files
        .iter()
        .map(|(name, data, mode)| FileEntry {
            name,
            data,
            mode: *mode,
            mtime: 0,
            uid: 0,
            gid: 0,
        })
        .collect();
    let archive = tar::write_archive(&entries).map_err(|error| error.to_string())?;
    let answer = backend
        .send(Request::PutArchive(name, path.clone(), archive), None)
        .and_then(|answer| answer.data())
        .map_err(|error: ClientError| error.to_string())?;
    Ok(format!(
        "{} files copied into {path}\n",
        answer["members"].as_u64().unwrap_or(0)
    ))
}

/// The regular files at and below `path`, named under `name`; symlinks and special
/// files are left out (said on stderr).
fn collect(
    path: &Path,
    name: &str,
    files: &mut Vec<(String, Vec<u8>, u32)>,
    total: &mut u64,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |error: io::Error| format!("{}: {error}", path.display());
    let meta = std::fs::symlink_metadata(path).map_err(failed)?;
    if meta.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(path)
            .map_err(failed)?
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        children.sort_by_key(|child| child.file_name());
        for child in children {
            let Some(child_name) = child.file_name().to_str().map(str::to_string) else {
                eprintln!(
                    "agentkernel: {}: not UTF-8, left out",
                    child.path().display()
                );
                continue;
            };
            collect(&child.path(), &format!("{name}/{child_name}"), files, total)?;
        }
    } else if meta.is_file() {
        *total += meta.len();
        if *total > MAX_UPLOAD_BYTES {
            return Err(format!("more than {MAX_UPLOAD_BYTES} bytes to copy"));
        }
        let data = std::fs::read(path).map_err(failed)?;
        files.push((name.to_string(), data, meta.permissions().mode() & 0o777));
    } else {
        eprintln!(
            "agentkernel: {}: not a regular file or directory, left out",
            path.display()
        );
    }
    Ok(())
}
