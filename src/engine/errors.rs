//! `DockerError`, and every decision about what the engine's error texts mean.
//!
//! The engine explains most failures only in English: an error answer's
//! `{"message": ...}`, or, once an exec's connection is hijacked, a line written into
//! the stream in place of the process's output. The few of those texts that callers act
//! on are turned into typed variants here, where the answer is parsed (`from_answer`,
//! `from_in_stream`, `exec_refusal`), each from a byte-exact sample of Docker
//! 20.10's words in the tests below; everything else stays `Api` or `InStream` and is
//! only ever shown.
//!
//! Invariant: no code outside `engine/` looks into an engine error's text. Callers match
//! variants; `scripts/check-engine-boundary.py` (in `make lint`) checks it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::Deserialize;

/// Everything that can go wrong talking to the engine.
#[derive(Debug)]
pub enum DockerError {
    /// The socket could not be connected to: no daemon, wrong path or no permission.
    Unreachable { socket: PathBuf, source: io::Error },
    /// A connected call failed or timed out while sending or receiving.
    Io {
        operation: String,
        source: io::Error,
    },
    /// The engine answered with an error status and this message, which means nothing
    /// more specific below.
    Api { status: u16, message: String },
    /// The engine's answer could not be understood.
    Protocol(String),
    /// After hijacking an attach or exec connection, the engine wrote this error text
    /// into the stream instead of the process's output (it could not start the process:
    /// its container stopped or went away), and it is none of the typed refusals below.
    InStream(String),
    /// A bind mount's source does not exist on the engine's host (our executable was
    /// deleted since start, or the engine runs on another host).
    MountSourceMissing { path: String },
    /// The engine refused a mount's configuration for another reason; its words.
    MountInvalid(String),
    /// An archive upload would have replaced the directory `path` with a file (the
    /// uploads ask for `noOverwriteDirNonDir`).
    WouldReplaceDirectory { path: String },
    /// An archive upload could not create `path`: one of its parents is a file, not a
    /// directory.
    NotADirectory { path: String },
    /// An archive upload met a read-only filesystem: the container's read-only root or
    /// a read-only mount (at `path`, when the engine names it).
    ReadOnlyFilesystem { path: Option<String> },
    /// An exec's program does not exist in the container.
    ExecutableNotFound { program: String },
    /// An exec's working directory cannot be entered; `reason` is the system's word
    /// (`no such file or directory`, `not a directory`).
    WorkdirUnusable { dir: String, reason: String },
    /// An exec refused because its container stopped (the runtime's `cannot exec in a
    /// stopped container`), in an answer or in the stream; its words.
    ContainerStopped(String),
    /// Refused because the container is being removed (`container is marked for
    /// removal and cannot be started`, `... which is being removed`); its words.
    ContainerRemoving(String),
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::Unreachable { socket, source } => write!(
                f,
                "Docker Engine unreachable at {}: {source}",
                socket.display()
            ),
            DockerError::Io { operation, source } => {
                write!(f, "Docker Engine call {operation} failed: {source}")
            }
            DockerError::Api { status, message } => {
                write!(f, "Docker Engine answered {status}: {message}")
            }
            DockerError::Protocol(message) => {
                write!(f, "unexpected answer from the Docker Engine: {message}")
            }
            DockerError::InStream(message) => {
                write!(
                    f,
                    "the Docker Engine could not start the process: {message}"
                )
            }
            DockerError::ContainerStopped(message) => {
                write!(f, "the container stopped: {message}")
            }
            DockerError::ContainerRemoving(message) => {
                write!(f, "the container is being removed: {message}")
            }
            DockerError::MountSourceMissing { path } => write!(
                f,
                "the Docker Engine cannot mount '{path}': it does not exist on the engine's host"
            ),
            DockerError::MountInvalid(message) => {
                write!(f, "the Docker Engine refused a mount: {message}")
            }
            DockerError::WouldReplaceDirectory { path } => write!(
                f,
                "the Docker Engine refused to replace the directory '{path}' with a file"
            ),
            DockerError::NotADirectory { path } => write!(
                f,
                "the Docker Engine cannot create '{path}': one of its parents is not a directory"
            ),
            DockerError::ReadOnlyFilesystem { path: Some(path) } => {
                write!(
                    f,
                    "the Docker Engine cannot write '{path}': read-only file system"
                )
            }
            DockerError::ReadOnlyFilesystem { path: None } => {
                write!(f, "the Docker Engine cannot write: read-only file system")
            }
            DockerError::ExecutableNotFound { program } => write!(
                f,
                "the Docker Engine could not start '{program}': no such executable in the container"
            ),
            DockerError::WorkdirUnusable { dir, reason } => write!(
                f,
                "the Docker Engine could not start the process in '{dir}': {reason}"
            ),
        }
    }
}

impl std::error::Error for DockerError {}

impl DockerError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::Api { status: 404, .. })
    }

    /// Refused for the state the object is in (a container stopped or being removed
    /// included).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            DockerError::Api { status: 409, .. }
                | DockerError::ContainerStopped(_)
                | DockerError::ContainerRemoving(_)
        )
    }

    /// An error answer: `{"message": "..."}` (anything else is quoted as text), typed
    /// where its words say something a caller acts on.
    pub(super) fn from_answer(status: u16, body: &[u8]) -> DockerError {
        #[derive(Deserialize)]
        struct Message {
            message: String,
        }
        let message = match serde_json::from_slice::<Message>(body) {
            Ok(parsed) => parsed.message,
            Err(_) => String::from_utf8_lossy(body).trim().to_string(),
        };
        typed_answer(status, &message).unwrap_or(DockerError::Api { status, message })
    }

    /// The text the engine wrote into a hijacked stream in place of a process's output,
    /// typed where its words say something a caller acts on.
    pub fn from_in_stream(text: &str) -> DockerError {
        let text = text.trim();
        typed_refusal(text).unwrap_or_else(|| DockerError::InStream(text.to_string()))
    }
}

/// The engine could not start an exec's process when it reports exit code 126 and the
/// whole output is one line of its own on stdout, `OCI runtime exec failed: ...\r\n`
/// (runc's words through containerd; notes §3). That refusal, typed; `None` for a
/// process that ran, whatever it printed.
pub fn exec_refusal(exit_code: Option<i64>, stdout: &[u8], stderr: &[u8]) -> Option<DockerError> {
    const PREFIX: &str = "OCI runtime exec failed: ";
    if exit_code != Some(126) || !stderr.is_empty() {
        return None;
    }
    let line = std::str::from_utf8(stdout).ok()?.strip_suffix("\r\n")?;
    if !line.starts_with(PREFIX) || line.contains('\n') {
        return None;
    }
    Some(DockerError::from_in_stream(line))
}

/// The error answers we type, by status and words.
fn typed_answer(status: u16, message: &str) -> Option<DockerError> {
    const MOUNT: &str = "invalid mount config for type ";
    // (A pause's refusals when a stop won the race: runc's, then the engine's own.)
    if [
        STOPPED,
        "cannot pause a stopped container",
        "container not running",
    ]
    .iter()
    .any(|words| message.contains(words))
    {
        return Some(DockerError::ContainerStopped(message.to_string()));
    }
    if ["marked for removal", "which is being removed"]
        .iter()
        .any(|words| message.contains(words))
    {
        return Some(DockerError::ContainerRemoving(message.to_string()));
    }
    const SOURCE_MISSING: &str = "bind source path does not exist: ";
    const TAR: &str = "Error processing tar file(exit status 1): ";
    match status {
        400 if message.starts_with(MOUNT) => Some(match message.split_once(SOURCE_MISSING) {
            Some((_, path)) => DockerError::MountSourceMissing {
                path: path.to_string(),
            },
            None => DockerError::MountInvalid(message.to_string()),
        }),
        500 if message == "container rootfs is marked read-only"
            || message == "mounted volume is marked read-only" =>
        {
            Some(DockerError::ReadOnlyFilesystem { path: None })
        }
        500 => {
            let untar = message.strip_prefix(TAR)?;
            // `cannot overwrite directory "/etc" with non-directory "/"`: the first is the
            // directory in the way, the second the extraction point.
            if let Some(rest) = untar.strip_prefix("cannot overwrite directory ") {
                let (path, _) = go_quoted(rest)?;
                return Some(DockerError::WouldReplaceDirectory { path });
            }
            // `open /root/f/x: not a directory` (a parent is a file) and
            // `open /mnt/x: read-only file system`: the path after the operation's name.
            let path_of = |rest: &str| {
                let (_, path) = rest.split_once(' ')?;
                path.starts_with('/').then(|| path.to_string())
            };
            if let Some(rest) = untar.strip_suffix(": not a directory") {
                return Some(DockerError::NotADirectory {
                    path: path_of(rest)?,
                });
            }
            if let Some(rest) = untar.strip_suffix(": read-only file system") {
                return Some(DockerError::ReadOnlyFilesystem {
                    path: Some(path_of(rest)?),
                });
            }
            None
        }
        _ => None,
    }
}

/// The in-stream refusals we type: a missing program, an unusable working directory.
/// The runtime's words for an exec into a container that stopped.
const STOPPED: &str = "cannot exec in a stopped container";

fn typed_refusal(text: &str) -> Option<DockerError> {
    const START: &str = "unable to start container process: ";
    if text.contains(STOPPED) {
        return Some(DockerError::ContainerStopped(text.to_string()));
    }
    let (_, detail) = text.split_once(START)?;
    // `exec: "nosuchcmd": executable file not found in $PATH: unknown`, or for a path
    // `exec: "/no/such": stat /no/such: no such file or directory: unknown`.
    if let Some(rest) = detail.strip_prefix("exec: ") {
        let (program, rest) = go_quoted(rest)?;
        let missing = rest.starts_with(": executable file not found in $PATH")
            || (rest.starts_with(": stat ") && rest.contains(": no such file or directory"));
        return missing.then_some(DockerError::ExecutableNotFound { program });
    }
    // `chdir to cwd ("/nonexist") set in config.json failed: no such file or directory: unknown`
    if let Some(rest) = detail.strip_prefix("chdir to cwd (") {
        let (dir, rest) = go_quoted(rest)?;
        let reason = rest.strip_prefix(") set in config.json failed: ")?;
        let reason = reason.split(": ").next().unwrap_or(reason);
        return Some(DockerError::WorkdirUnusable {
            dir,
            reason: reason.to_string(),
        });
    }
    None
}

/// A string quoted by Go's `%q` at the start of `text` (`"a\"b"`), unquoted, and the
/// rest of `text`. Only the escapes of printable text are undone (`\"`, `\\`); a
/// string with others is kept as written, which only ever affects how it is shown.
fn go_quoted(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let mut unquoted = String::new();
    let mut chars = body.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((unquoted, &body[index + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped @ ('"' | '\\'))) => unquoted.push(escaped),
                Some((_, other)) => {
                    unquoted.push('\\');
                    unquoted.push(other);
                }
                None => return None,
            },
            other => unquoted.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of an error answer exactly as Docker 20.10 sent it (trailing newline
    /// included).
    fn answer(status: u16, body: &str) -> DockerError {
        DockerError::from_answer(status, body.as_bytes())
    }

    #[test]
    fn mount_refusals_are_typed() {
        let error = answer(
            400,
            "{\"message\":\"invalid mount config for type \\\"bind\\\": bind source path \
             does not exist: /nonexistent/agentkernel\"}\n",
        );
        assert!(
            matches!(&error, DockerError::MountSourceMissing { path } if path == "/nonexistent/agentkernel"),
            "{error:?}"
        );
        let error = answer(
            400,
            "{\"message\":\"invalid mount config for type \\\"bind\\\": invalid mount path: \
             'x' mount path must be absolute\"}\n",
        );
        assert!(matches!(error, DockerError::MountInvalid(_)), "{error:?}");
    }

    #[test]
    fn archive_upload_refusals_are_typed_with_their_paths() {
        let error = answer(
            500,
            "{\"message\":\"Error processing tar file(exit status 1): cannot overwrite \
             directory \\\"/etc\\\" with non-directory \\\"/\\\"\"}\n",
        );
        assert!(
            matches!(&error, DockerError::WouldReplaceDirectory { path } if path == "/etc"),
            "{error:?}"
        );
        let error = answer(
            500,
            "{\"message\":\"Error processing tar file(exit status 1): open /root/f/x: not a \
             directory\"}\n",
        );
        assert!(
            matches!(&error, DockerError::NotADirectory { path } if path == "/root/f/x"),
            "{error:?}"
        );
        let error = answer(
            500,
            "{\"message\":\"Error processing tar file(exit status 1): open /mnt/ro/x: \
             read-only file system\"}\n",
        );
        assert!(
            matches!(&error, DockerError::ReadOnlyFilesystem { path: Some(path) } if path == "/mnt/ro/x"),
            "{error:?}"
        );
        for message in [
            "container rootfs is marked read-only",
            "mounted volume is marked read-only",
        ] {
            let error = answer(500, &format!("{{\"message\":\"{message}\"}}\n"));
            assert!(
                matches!(error, DockerError::ReadOnlyFilesystem { path: None }),
                "{error:?}"
            );
        }
    }

    #[test]
    fn other_answers_stay_untyped() {
        for (status, body) in [
            (
                404,
                "{\"message\":\"Could not find the file /nonexist in container x\"}\n",
            ),
            (
                500,
                "{\"message\":\"Error processing tar file(exit status 1): archive/tar: \
                 invalid tar header\"}\n",
            ),
            (
                500,
                "{\"message\":\"extraction point is not a directory\"}\n",
            ),
            // The same words under another status are not the same refusal.
            (
                409,
                "{\"message\":\"container rootfs is marked read-only\"}\n",
            ),
        ] {
            let error = answer(status, body);
            assert!(
                matches!(&error, DockerError::Api { status: s, .. } if *s == status),
                "{error:?}"
            );
        }
        let error = answer(400, "client version 1.11 is too old\n");
        assert!(
            matches!(&error, DockerError::Api { message, .. } if message == "client version 1.11 is too old"),
            "{error:?}"
        );
    }

    /// The stdout frame payload of a refused exec, as Docker 20.10 wrote it.
    const NOT_FOUND: &str = "OCI runtime exec failed: exec failed: unable to start container \
        process: exec: \"nosuchcmd\": executable file not found in $PATH: unknown\r\n";
    const NO_SUCH_PATH: &str = "OCI runtime exec failed: exec failed: unable to start \
        container process: exec: \"/no/such/path\": stat /no/such/path: no such file or \
        directory: unknown\r\n";
    const NO_WORKDIR: &str = "OCI runtime exec failed: exec failed: unable to start container \
        process: chdir to cwd (\"/nonexist/dir\") set in config.json failed: no such file or \
        directory: unknown\r\n";
    const WORKDIR_IS_FILE: &str = "OCI runtime exec failed: exec failed: unable to start \
        container process: chdir to cwd (\"/etc/passwd\") set in config.json failed: not a \
        directory: unknown: Are you trying to mount a directory onto a file (or vice-versa)? \
        Check if the specified host path exists and is the expected type\r\n";

    #[test]
    fn exec_refusals_are_typed() {
        let refusal = |stdout: &str| exec_refusal(Some(126), stdout.as_bytes(), b"");
        assert!(
            matches!(refusal(NOT_FOUND), Some(DockerError::ExecutableNotFound { program }) if program == "nosuchcmd")
        );
        assert!(
            matches!(refusal(NO_SUCH_PATH), Some(DockerError::ExecutableNotFound { program }) if program == "/no/such/path")
        );
        assert!(matches!(
            refusal(NO_WORKDIR),
            Some(DockerError::WorkdirUnusable { dir, reason })
                if dir == "/nonexist/dir" && reason == "no such file or directory"
        ));
        assert!(matches!(
            refusal(WORKDIR_IS_FILE),
            Some(DockerError::WorkdirUnusable { dir, reason })
                if dir == "/etc/passwd" && reason == "not a directory"
        ));
        let other = "OCI runtime exec failed: exec failed: unable to start container process: \
                     unable to find user nosuchuser: no matching entries in passwd file\r\n";
        assert!(
            matches!(refusal(other), Some(DockerError::InStream(text)) if !text.ends_with('\n'))
        );
    }

    #[test]
    fn processes_that_ran_are_not_refusals() {
        // Another exit code, output on stderr too, or no engine line: the process ran.
        assert!(exec_refusal(Some(127), NOT_FOUND.as_bytes(), b"").is_none());
        assert!(exec_refusal(None, NOT_FOUND.as_bytes(), b"").is_none());
        assert!(exec_refusal(Some(126), NOT_FOUND.as_bytes(), b"x").is_none());
        assert!(exec_refusal(Some(126), NOT_FOUND.trim_end().as_bytes(), b"").is_none());
        let printed = format!("line\n{NOT_FOUND}");
        assert!(exec_refusal(Some(126), printed.as_bytes(), b"").is_none());
        assert!(exec_refusal(Some(126), b"permission denied\r\n", b"").is_none());
    }

    #[test]
    fn in_stream_text_is_typed_or_kept() {
        assert!(matches!(
            DockerError::from_in_stream(NOT_FOUND),
            DockerError::ExecutableNotFound { .. }
        ));
        let stopped =
            "OCI runtime exec failed: exec failed: cannot exec in a stopped container: unknown\r\n";
        assert!(matches!(
            DockerError::from_in_stream(stopped),
            DockerError::ContainerStopped(text) if text == stopped.trim()
        ));
        // The same words in an exec start's answer (a 500), likewise.
        let answer = format!("{{\"message\":\"{}\"}}", stopped.trim());
        let error = DockerError::from_answer(500, answer.as_bytes());
        assert!(error.is_conflict(), "{error:?}");
        assert!(matches!(
            DockerError::from_in_stream("OCI runtime exec failed: exec failed: something else"),
            DockerError::InStream(_)
        ));
    }

    #[test]
    fn refusals_of_a_container_being_removed_are_typed() {
        // As this engine (20.10) answered requests racing a removal.
        let answers: [(u16, &[u8]); 3] = [
            (500, br#"{"message":"Cannot update container 4f0c: container is marked for removal and cannot be \"update\""}"#),
            (409, br#"{"message":"container is marked for removal and cannot be started"}"#),
            (409, br#"{"message":"You cannot commit container 4f0c which is being removed"}"#),
        ];
        for (status, body) in answers {
            let error = DockerError::from_answer(status, body);
            assert!(
                matches!(error, DockerError::ContainerRemoving(_)),
                "{error:?}"
            );
            assert!(error.is_conflict());
        }
        // A pause that lost to a stop (runc's words, then the engine's).
        for message in [
            "Cannot pause container 4f0c: OCI runtime pause failed: container not running: unknown",
            "Cannot pause container 4f0c: cannot pause a stopped container: unknown",
        ] {
            let body = serde_json::json!({ "message": message }).to_string();
            let error = DockerError::from_answer(500, body.as_bytes());
            assert!(
                matches!(error, DockerError::ContainerStopped(_)),
                "{error:?}"
            );
        }
        // The engine's own "already in progress" of a second removal stays as it was.
        let again = br#"{"message":"removal of container 4f0c is already in progress"}"#;
        assert!(matches!(
            DockerError::from_answer(409, again),
            DockerError::Api { status: 409, .. }
        ));
    }

    #[test]
    fn go_quoting_is_undone() {
        assert_eq!(
            go_quoted(r#""a\"b\\c": rest"#),
            Some((r#"a"b\c"#.to_string(), ": rest"))
        );
        assert_eq!(go_quoted(r#""\x00""#), Some((r"\x00".to_string(), "")));
        assert_eq!(go_quoted(r#""open"#), None);
        assert_eq!(go_quoted("bare"), None);
    }
}
