//! The domain error: what can go wrong below the HTTP layer, in words that name the
//! thing. Status codes are not chosen here: `api::response::status_of` is the one place
//! that maps these variants to HTTP.

use std::fmt;

use crate::engine::{Docker, DockerError, PROBE_TIMEOUT};

#[derive(Debug)]
pub enum Error {
    /// The request itself is wrong: a bad field, name, profile or bound.
    Invalid(String),
    /// The request asks for what this server does not let it have (a runtime the
    /// operator did not allow).
    Forbidden(String),
    /// No sandbox of that name in our namespace.
    SandboxNotFound(String),
    /// A sandbox of that name already exists.
    SandboxExists(String),
    /// The sandbox exists but is stopped.
    SandboxNotRunning(String),
    /// The sandbox is paused: its processes are frozen until it is resumed.
    SandboxPaused(String),
    /// The image is not in the local engine; we never pull.
    ImageMissing(String),
    /// No snapshot of that name in our namespace.
    SnapshotNotFound(String),
    /// A snapshot of that name already exists.
    SnapshotExists(String),
    /// A sandbox made from the snapshot still exists, so its image stays.
    SnapshotInUse(String),
    /// No volume of that name in our namespace.
    VolumeNotFound(String),
    /// A container still mounts the volume.
    VolumeInUse(String),
    /// The engine has a volume of that name that we did not make for this namespace.
    VolumeNotOurs(String),
    /// No file at this path in the sandbox.
    FileNotFound { sandbox: String, path: String },
    /// The path exists but is not a regular file; `what` says what it is instead
    /// ("a directory", "a special file").
    NotAFile { path: String, what: &'static str },
    /// The file is larger than the configured limit for file transfers.
    FileTooLarge { path: String, limit: u64 },
    /// A write to the root filesystem of a sandbox whose profile makes it read-only.
    ReadOnlyRoot { path: String, profile: String },
    /// The sandbox's user may not do this to the path; `reason` is the system's word.
    FileAccessDenied { path: String, reason: String },
    /// The filesystem holding the path (a size-capped tmpfs, usually) is full.
    NoSpace { path: String },
    /// A write to the sandbox's root filesystem left its disk quota used up: what did
    /// not fit is not there, whatever the engine said.
    DiskQuotaFull { path: String, quota_mb: u64 },
    /// The path can only be reached inside the running container (a tmpfs, or any
    /// delete), and the sandbox is stopped.
    FileNeedsRunning { sandbox: String, path: String },
    /// The command's working directory cannot be entered in the container (it does not
    /// exist, or is a file); `reason` is the system's word.
    WorkdirUnusable { dir: String, reason: String },
    /// No detached command of that id in the sandbox.
    DetachedNotFound { sandbox: String, id: String },
    /// A run's connection to its container broke off before the result: the command
    /// may or may not have run to its end.
    RunLost(String),
    /// The output other requests hold fills the output memory: this request's output
    /// (or file, or logs) would not fit. Nothing was run or read.
    OutputMemoryFull { limit: u64 },
    /// A container's stub speaks another protocol version than this server (a sandbox
    /// made by an incompatible build); `found` is what its hello said, if readable.
    StubMismatch { found: Option<u64>, expected: u32 },
    /// What the server keeps in its data dir could not be written; the words say what.
    DataDir(String),
    /// The `public` egress policy cannot be made to hold on this host (the words say
    /// why): nothing was made.
    EgressUnavailable(String),
    /// A disk quota cannot be made to hold on this host (the words say why): nothing
    /// was made.
    DiskQuota(String),
    /// The sandbox was removed (by another request, or at the engine) while this
    /// request was making it.
    SandboxRemovedMeanwhile(String),
    /// The sandbox was stopped and started again while a command ran in it: the
    /// command ended with the processes of the first start.
    SandboxRestarted(String),
    /// Commands being started in the sandbox kept a pause out (`exec::gate`).
    SandboxBusy(String),
    /// The engine failed or is unreachable.
    Engine(DockerError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(message) | Error::Forbidden(message) => f.write_str(message),
            Error::SandboxNotFound(name) => write!(f, "Sandbox '{name}' not found"),
            Error::SandboxExists(name) => write!(f, "Sandbox '{name}' already exists"),
            Error::SandboxNotRunning(name) => {
                write!(f, "Sandbox '{name}' is stopped: start it before exec")
            }
            Error::SandboxPaused(name) => {
                write!(f, "Sandbox '{name}' is paused: resume it first")
            }
            Error::ImageMissing(image) => write!(
                f,
                "image '{image}' is not present in the local engine (nothing is pulled: \
                 load or build it first)"
            ),
            Error::SnapshotNotFound(name) => write!(f, "Snapshot '{name}' not found"),
            Error::SnapshotExists(name) => write!(f, "Snapshot '{name}' already exists"),
            Error::SnapshotInUse(name) => write!(
                f,
                "Snapshot '{name}' is in use by a container made from it (a sandbox made from \
                 it, or one being made): remove that first"
            ),
            Error::VolumeNotFound(name) => write!(f, "Volume '{name}' not found"),
            Error::VolumeInUse(name) => write!(
                f,
                "Volume '{name}' is mounted by a sandbox: remove the sandboxes that use it first"
            ),
            Error::VolumeNotOurs(name) => write!(
                f,
                "Volume '{name}' cannot be used: the engine has a volume of its name that \
                 agentkernel did not make for this namespace"
            ),
            Error::FileNotFound { sandbox, path } => {
                write!(f, "File '{path}' not found in sandbox '{sandbox}'")
            }
            Error::NotAFile { path, what } => {
                write!(f, "'{path}' is {what}, not a regular file")
            }
            Error::FileTooLarge { path, limit } => write!(
                f,
                "File '{path}' is larger than the {limit} byte limit for file transfers"
            ),
            Error::ReadOnlyRoot { path, profile } => write!(
                f,
                "Cannot write '{path}': the root filesystem is read-only under the \
                 '{profile}' profile (write under /tmp instead)"
            ),
            Error::FileAccessDenied { path, reason } => {
                write!(f, "Cannot access '{path}' in the sandbox: {reason}")
            }
            Error::NoSpace { path } => write!(
                f,
                "Cannot write '{path}': no space left on its filesystem in the sandbox"
            ),
            Error::DiskQuotaFull { path, quota_mb } => write!(
                f,
                "Cannot write '{path}' entirely: the sandbox's disk quota of {quota_mb} MiB \
                 is used up, and what did not fit was not written"
            ),
            Error::FileNeedsRunning { sandbox, path } => write!(
                f,
                "Sandbox '{sandbox}' is stopped: start it to reach '{path}' (tmpfs paths and \
                 deletes need the running container)"
            ),
            Error::WorkdirUnusable { dir, reason } => {
                write!(f, "Cannot run the command in workdir '{dir}': {reason}")
            }
            Error::RunLost(message) => f.write_str(message),
            Error::DetachedNotFound { sandbox, id } => {
                write!(
                    f,
                    "Detached command '{id}' not found in sandbox '{sandbox}'"
                )
            }
            Error::OutputMemoryFull { limit } => write!(
                f,
                "Server busy: the output held for requests in progress fills the output \
                 memory ({limit} bytes, --max-output-memory-bytes); retry shortly"
            ),
            Error::StubMismatch { found, expected } => {
                let found = match found {
                    Some(version) => format!("protocol version {version}"),
                    None => "an unreadable hello".to_string(),
                };
                write!(
                    f,
                    "the container's in-container stub answered with {found}, and this server \
                     speaks protocol version {expected}: it was made by an incompatible build \
                     of agentkernel; recreate it (read out its files first)"
                )
            }
            Error::DataDir(message) => write!(f, "Server data dir: {message}"),
            Error::EgressUnavailable(reason) => write!(
                f,
                "The 'public' network policy cannot be enforced on this host ({reason}); \
                 nothing was made: ask for network 'none' or 'full', or start the server \
                 with --default-network"
            ),
            Error::DiskQuota(reason) => write!(
                f,
                "The sandbox's disk quota cannot be enforced on this host ({reason}); \
                 nothing was made: start the server with --no-disk-quota to run without"
            ),
            Error::SandboxRemovedMeanwhile(name) => write!(
                f,
                "Sandbox '{name}' was removed (by another request, or at the engine) while \
                 it was being made"
            ),
            Error::SandboxRestarted(name) => write!(
                f,
                "Sandbox '{name}' was restarted while the command ran: the command ended \
                 with its processes"
            ),
            Error::SandboxBusy(name) => write!(
                f,
                "Sandbox '{name}' has commands being started that did not start within 10 s: \
                 retry the pause shortly"
            ),
            Error::Engine(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// A run whose connection to its container broke off, or brought no result in time,
    /// because the engine itself died or froze is the engine's failure (503, naming it),
    /// not a lost run: asks the engine, and answers with its error when it does not
    /// answer. Any other error, or a run lost with the engine answering, is unchanged.
    pub fn unless_engine_down(self, docker: &Docker) -> Error {
        match self {
            Error::RunLost(_) => match docker.probe(PROBE_TIMEOUT) {
                Ok(()) => self,
                Err(engine) => {
                    log::warn!("a run broke off and the engine does not answer: {engine}");
                    Error::Engine(engine)
                }
            },
            other => other,
        }
    }
}

impl From<DockerError> for Error {
    fn from(error: DockerError) -> Error {
        Error::Engine(error)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
