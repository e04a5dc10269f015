//! The fast way into a sandbox: its init's exec socket. A sandbox made with one has a
//! small tmpfs of its own at `stub::EXEC_SOCKET_DIR` (no host disk, `noexec`,
//! `nosuid`), where its init (`stub --idle`) listens; an exec connects there from the
//! host through the init's root (`/proc/PID/root`), checks that the listener is the
//! sandbox's init, opens with the sandbox's token, and then speaks the stub protocol
//! with the supervisor the init started for it: a fork in the sandbox, no engine round
//! trip, no runc exec. Records travel raw, without the engine's stream framing.
//!
//! The token (`<data dir>/run/<key>.token`, 32 random bytes, never inside the sandbox)
//! reaches the init only on its stdin, through an attach (`give_token`): the engine is
//! the only way in, and a non-dumpable PID 1's stdin is out of every command's reach.
//! So a command of the sandbox can connect to the socket but cannot start anything
//! through it; and a listener of its own in the socket's place is found out before the
//! token is sent (its peer pid is not the init's), and the exec goes by `docker exec`.
//!
//! Invariants: the token is sent only to a listener whose peer pid is the sandbox's
//! init, checked only where that pid is visible as our own idle stub (so the peer pid
//! is never 0); the connect never waits (a listener whose queue is full is refused at
//! once), and the path must name a socket, not a link; anything that stops the socket
//! from working (an older sandbox, no data dir, a server that may not look into the
//! init's root, an init that lost its token with a restart and did not get it again)
//! falls back to `docker exec`, never to an error.

use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::engine::{Docker, DockerError};
use crate::stub;

/// Where a server keeps the tokens, under its data dir.
const RUN_DIR: &str = "run";

/// One sandbox's exec socket, seen from the host.
#[derive(Debug, Clone)]
pub struct ExecSocket {
    token: Vec<u8>,
}

/// How the listener is known by its command line: a sandbox's init, or the init of a
/// warm container of the pool (which serves one run on its socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    SandboxInit,
    Temporary,
}

impl Listener {
    fn argv(self) -> &'static [&'static str] {
        match self {
            Listener::SandboxInit => &[stub::STUB_PATH, "stub", "--idle"],
            Listener::Temporary => &[stub::STUB_PATH, "stub"],
        }
    }
}

/// A new sandbox's socket key: random (a sandbox that fails to be made, say for a name
/// already taken, never touches another's token).
pub fn new_key() -> io::Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(crate::codec::sha256::hex(&bytes))
}

/// Whether `key` is one `new_key` makes: 16 lowercase hex digits. A key comes from a
/// container's label, which an image can carry too: any other is no key, so that it
/// never names a path outside the run directory.
pub fn valid_key(key: &str) -> bool {
    key.len() == 16 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn token_path(data_dir: &Path, key: &str) -> io::Result<PathBuf> {
    if !valid_key(key) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an exec socket key",
        ));
    }
    Ok(data_dir.join(RUN_DIR).join(format!("{key}.token")))
}

/// Makes a new sandbox's token.
pub fn prepare(data_dir: &Path, key: &str) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let run = data_dir.join(RUN_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run)?;
    let mut token = [0u8; stub::TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut token)?;
    let path = token_path(data_dir, key)?;
    let partial = path.with_extension("token.partial");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?
        .write_all(&token)?;
    std::fs::rename(&partial, &path)
}

/// The tmpfs options of a sandbox's socket directory: owned by the sandbox's user
/// (`owner`, when it is not root), in which its init creates the socket.
pub fn tmpfs_options(owner: Option<(u32, u32)>) -> String {
    let mut options = "rw,nosuid,nodev,noexec,size=64k,mode=0700".to_string();
    if let Some((uid, gid)) = owner {
        options.push_str(&format!(",uid={uid},gid={gid}"));
    }
    options
}

/// A socket with a new random token, kept only in memory: a warm container's, which
/// lives no longer than this process.
pub fn random() -> io::Result<ExecSocket> {
    let mut token = vec![0u8; stub::TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut token)?;
    Ok(ExecSocket { token })
}

/// A sandbox's socket, if it has its token.
pub fn open(data_dir: &Path, key: &str) -> io::Result<ExecSocket> {
    let token = std::fs::read(token_path(data_dir, key)?)?;
    if token.len() != stub::TOKEN_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "exec token of the wrong size",
        ));
    }
    Ok(ExecSocket { token })
}

/// Removes a deleted sandbox's token.
pub fn remove(data_dir: &Path, key: &str) {
    if let Ok(path) = token_path(data_dir, key) {
        let _ = std::fs::remove_file(path);
    }
}

impl ExecSocket {
    /// The token record for an init's stdin.
    pub fn token_record(&self) -> Vec<u8> {
        stub::encode_record(stub::TOKEN, &self.token)
    }

    /// Gives the sandbox's init its token, on its stdin through an attach: after every
    /// start of the container (its init starts without one).
    pub fn give_token(&self, docker: &Docker, container: &str) -> Result<(), DockerError> {
        let mut attached = docker.container_attach(container, true)?;
        attached
            .stdin
            .write_all(&self.token_record())
            .map_err(|source| DockerError::Io {
                operation: "attach (exec token)".into(),
                source,
            })?;
        // Nothing comes back; the engine copies what was written before it closes.
        let _ = attached.stdin.shutdown(std::net::Shutdown::Write);
        Ok(())
    }

    /// Connects to the init's socket through its root, checks that the listener is the
    /// init (`init_pid`, the engine's `State.Pid`, running as `listener`), and opens
    /// with the token.
    pub fn connect(&self, init_pid: i64, listener: Listener) -> io::Result<UnixStream> {
        if !is_our_init(init_pid, listener) {
            return Err(io::Error::other(format!(
                "the container's init (pid {init_pid}) is not visible here as our stub \
                 (does the server run in another PID namespace?)"
            )));
        }
        let path = format!("/proc/{init_pid}/root{}", stub::EXEC_SOCKET);
        // A link in its place (to a socket of the host, say) is never followed.
        if !std::fs::symlink_metadata(&path)?.file_type().is_socket() {
            return Err(io::Error::other(format!("{path} is not a socket")));
        }
        let stream = connect_at_once(&path)?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
        let peer_pid = i64::from(peer.pid.as_raw_nonzero().get());
        if peer_pid != init_pid {
            return Err(io::Error::other(format!(
                "the socket's listener is pid {peer_pid}, not the container's init {init_pid}"
            )));
        }
        (&stream).write_all(&stub::encode_record(stub::AUTH, &self.token))?;
        Ok(stream)
    }
}

/// Connects without waiting: a unix socket's connect either succeeds at once or, when
/// the listener's queue is full (a listener that never accepts), fails at once.
fn connect_at_once(path: &str) -> io::Result<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Whether `pid` is, in our own PID namespace, our stub running as `listener`: then
/// every process of its container is visible to us too, and a socket's peer pid is
/// never 0.
fn is_our_init(pid: i64, listener: Listener) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv: Vec<&[u8]> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    argv.len() == listener.argv().len()
        && argv
            .iter()
            .zip(listener.argv())
            .all(|(seen, expected)| *seen == expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_and_new_each_time() {
        let key = new_key().unwrap();
        assert_eq!(key.len(), 16);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_key().unwrap(), key);
    }

    #[test]
    fn prepare_makes_a_private_token_open_reads() {
        use std::os::unix::fs::PermissionsExt;
        let data = std::env::temp_dir().join(format!("ak-socket-test-{}", std::process::id()));
        let (k1, k2) = ("0123456789abcdef", "fedcba9876543210");
        prepare(&data, k1).unwrap();
        let path = token_path(&data, k1).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let socket = open(&data, k1).unwrap();
        assert_eq!(socket.token.len(), stub::TOKEN_BYTES);
        // Another sandbox, another token.
        prepare(&data, k2).unwrap();
        assert_ne!(open(&data, k2).unwrap().token, socket.token);
        remove(&data, k2);
        remove(&data, k1);
        assert!(open(&data, k1).is_err());
        let _ = std::fs::remove_dir_all(&data);
    }

    /// A key is a label's value, which an image can set: only ours name a file, so
    /// none reaches outside the run directory.
    #[test]
    fn keys_that_new_key_cannot_make_name_no_file() {
        let data = std::env::temp_dir().join(format!("ak-socket-keys-{}", std::process::id()));
        std::fs::create_dir_all(data.join(RUN_DIR)).unwrap();
        let outside = data.join("victim.token");
        std::fs::write(&outside, [0u8; stub::TOKEN_BYTES]).unwrap();
        for key in ["../victim", "", "0123456789ABCDEF", "0123456789abcde", "k1"] {
            assert!(!valid_key(key), "{key}");
            assert!(prepare(&data, key).is_err(), "{key}");
            assert!(open(&data, key).is_err(), "{key}");
            remove(&data, key);
        }
        assert!(outside.exists());
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn the_socket_directory_is_a_small_private_tmpfs() {
        assert_eq!(
            tmpfs_options(None),
            "rw,nosuid,nodev,noexec,size=64k,mode=0700"
        );
        assert!(tmpfs_options(Some((65534, 65534))).ends_with(",uid=65534,gid=65534"));
    }

    #[test]
    fn a_full_listener_is_refused_at_once() {
        let path = std::env::temp_dir().join(format!("ak-full-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let path_text = path.to_str().unwrap();
        // Fill its queue (it never accepts), then one more must fail, not wait.
        let mut held = Vec::new();
        let refused = (0..10_000).find_map(|_| match connect_at_once(path_text) {
            Ok(stream) => {
                held.push(stream);
                None
            }
            Err(error) => Some(error),
        });
        assert!(refused.is_some(), "never refused");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn only_a_visible_idle_stub_counts_as_an_init() {
        for listener in [Listener::SandboxInit, Listener::Temporary] {
            assert!(!is_our_init(0, listener));
            assert!(!is_our_init(-1, listener));
            assert!(!is_our_init(i64::from(std::process::id()), listener));
        }
    }
}
