//! The domain error: what can go wrong below the HTTP layer, in words that name the
//! thing. Status codes are not chosen here: `api::response::status_of` is the one place
//! that maps these variants to HTTP.

use std::fmt;

use crate::docker::DockerError;

#[derive(Debug)]
pub enum Error {
    /// The request itself is wrong: a bad field, name, profile or bound.
    Invalid(String),
    /// No sandbox of that name in our namespace.
    SandboxNotFound(String),
    /// A sandbox of that name already exists.
    SandboxExists(String),
    /// The sandbox exists but is stopped.
    SandboxNotRunning(String),
    /// The image is not in the local engine; we never pull.
    ImageMissing(String),
    /// The engine failed or is unreachable.
    Engine(DockerError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(message) => f.write_str(message),
            Error::SandboxNotFound(name) => write!(f, "Sandbox '{name}' not found"),
            Error::SandboxExists(name) => write!(f, "Sandbox '{name}' already exists"),
            Error::SandboxNotRunning(name) => {
                write!(f, "Sandbox '{name}' is stopped: start it before exec")
            }
            Error::ImageMissing(image) => write!(
                f,
                "image '{image}' is not present in the local engine (nothing is pulled: \
                 load or build it first)"
            ),
            Error::Engine(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<DockerError> for Error {
    fn from(error: DockerError) -> Error {
        Error::Engine(error)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
