//! The response side of the API: the `{"success","data","error"}` envelope, and
//! `status_of`, the one place where errors become HTTP status codes.
//!
//! Invariants: every answer, 404, 405, 413, 503 and the panic 500 included, is a JSON
//! envelope; error messages name the thing that was wrong.

use std::io::{self, Write};

use serde_json::{json, Value};

use crate::engine::DockerError;
use crate::error::Error;
use crate::exec::OutputBudget;

use super::routes::RouteError;
use super::sse::StreamJob;

/// What a handler answers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Body,
    /// Extra headers (`Allow` on a 405).
    pub headers: Vec<(&'static str, String)>,
    /// Set for event streams: the body is then events, not `body`.
    pub stream: Option<StreamJob>,
    /// The output memory this answer holds (its commands' output, a file's content):
    /// given back when the reply is dropped, once it has been written.
    pub holds: Option<OutputBudget>,
    /// An event stream's place among its namespace's concurrent runs, held until the
    /// stream has ended.
    pub run_slots: Option<crate::tenants::RunSlots>,
}

/// The JSON an answer carries.
pub enum Body {
    /// An envelope, whole.
    Json(Value),
    /// A success envelope whose `data` this writes, straight from where the handler
    /// keeps it (command output, a file's content): it may be written more than once
    /// (its length is measured first), and must write the same bytes each time.
    Data(Box<WriteData>),
    /// Bytes as they are, no envelope: Prometheus text (`GET /metrics`), a tar archive.
    Raw {
        bytes: Vec<u8>,
        content_type: &'static str,
    },
}

pub type WriteData = dyn Fn(&mut dyn Write) -> io::Result<()> + Send;

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Json(value) => write!(f, "Json({value})"),
            Body::Data(_) => f.write_str("Data(..)"),
            Body::Raw { bytes, .. } => write!(f, "Raw({} bytes)", bytes.len()),
        }
    }
}

impl Reply {
    pub fn ok(data: Value) -> Reply {
        Reply::success(200, data)
    }

    pub fn created(data: Value) -> Reply {
        Reply::success(201, data)
    }

    fn success(status: u16, data: Value) -> Reply {
        Reply::json(status, json!({ "success": true, "data": data }))
    }

    /// An answer with this whole envelope.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Body::Json(body),
            headers: Vec::new(),
            stream: None,
            holds: None,
            run_slots: None,
        }
    }

    /// A plain-text answer (`GET /metrics`).
    pub fn text(status: u16, text: String) -> Reply {
        Reply::raw(
            status,
            text.into_bytes(),
            "text/plain; version=0.0.4; charset=utf-8",
            None,
        )
    }

    /// Bytes of `content_type` as they are (no envelope), holding `holds` until written.
    pub fn raw(
        status: u16,
        bytes: Vec<u8>,
        content_type: &'static str,
        holds: Option<OutputBudget>,
    ) -> Reply {
        Reply {
            status,
            body: Body::Raw {
                bytes,
                content_type,
            },
            headers: Vec::new(),
            stream: None,
            holds,
            run_slots: None,
        }
    }

    /// The answer's `Content-Type`.
    pub fn content_type(&self) -> &'static str {
        match self.body {
            Body::Raw { content_type, .. } => content_type,
            Body::Json(_) | Body::Data(_) => "application/json",
        }
    }

    /// A 200 whose `data` `write` writes, holding `holds` until it has been written.
    pub fn data(
        write: impl Fn(&mut dyn Write) -> io::Result<()> + Send + 'static,
        holds: OutputBudget,
    ) -> Reply {
        Reply {
            status: 200,
            body: Body::Data(Box::new(write)),
            headers: Vec::new(),
            stream: None,
            holds: Some(holds),
            run_slots: None,
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, json!({ "success": false, "error": message.into() }))
    }

    /// An event stream running `job`, holding `holds` (room for its events in flight)
    /// while it runs.
    pub fn events(job: StreamJob, holds: OutputBudget) -> Reply {
        Reply {
            status: 200,
            body: Body::Json(Value::Null),
            headers: Vec::new(),
            stream: Some(job),
            holds: Some(holds),
            run_slots: None,
        }
    }

    /// Writes the envelope, then a newline.
    pub fn write_body(&self, out: &mut dyn Write) -> io::Result<()> {
        match &self.body {
            Body::Json(value) => serde_json::to_writer(&mut *out, value)?,
            Body::Data(write) => {
                out.write_all(b"{\"data\":")?;
                write(out)?;
                out.write_all(b",\"success\":true}")?;
            }
            Body::Raw { bytes, .. } => return out.write_all(bytes),
        }
        out.write_all(b"\n")
    }

    /// How many bytes `write_body` writes, measured by writing them nowhere.
    pub fn body_length(&self) -> u64 {
        let mut counter = Counter(0);
        self.write_body(&mut counter).expect("counting never fails");
        counter.0
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write_body(&mut bytes)
            .expect("writing to memory never fails");
        bytes
    }

    /// The envelope as a value: the CLI's local mode reads answers so.
    pub fn into_envelope(self) -> Value {
        match self.body {
            Body::Json(value) => value,
            Body::Data(_) => serde_json::from_slice(&self.bytes()).expect("answers are JSON"),
            Body::Raw { bytes, .. } => Value::String(String::from_utf8_lossy(&bytes).into()),
        }
    }
}

/// A writer that only counts.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Everything a request can fail with, from parsing to the engine.
#[derive(Debug)]
pub enum ApiError {
    Route(RouteError),
    Unauthorized,
    /// A body over the limit, refused from its declared or read length.
    BodyTooLarge {
        limit: u64,
    },
    /// The body is not the JSON we expect.
    BadBody(String),
    /// The work queue is full.
    Busy,
    /// Every client connection the server allows is open.
    TooManyConnections,
    /// The request bodies in flight use up the body memory budget.
    BodiesInFlight,
    /// The server stopped while the request was still arriving.
    ShuttingDown,
    /// The client hung up before its answer; its command was stopped.
    ClientGone,
    /// The request head or body did not arrive in time.
    RequestTimeout(&'static str),
    /// The request line is longer than the limit.
    UriTooLong(usize),
    /// A header line, the head or the header count is over its limit.
    HeadersTooLarge(String),
    /// A transfer coding we do not decode.
    NotImplemented(String),
    /// A handler panicked.
    Panic,
    /// The request's key may not do this (a tenant's key, an operator's route).
    Forbidden(String),
    /// Over one of the namespace's quotas (the keys file's): nothing was done.
    OverQuota(crate::tenants::OverQuota),
    /// Cluster mode: no agent is up to take the request.
    NoAgent,
    /// Cluster mode: the agent that holds (or may hold) `what` is down.
    NodeDown {
        node: String,
        what: String,
    },
    /// Cluster mode: another create of the namespace is being counted against its
    /// quotas, and did not end in time.
    CountBusy {
        namespace: String,
    },
    /// Cluster mode: as many uploads as an agent takes at once are arriving for it.
    UploadsBusy {
        node: String,
    },
    /// Cluster mode: the agent `node` broke off its answer, or gave one we cannot read.
    AgentFailed {
        node: String,
        error: String,
    },
    Domain(Error),
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        ApiError::Domain(error)
    }
}

impl From<crate::tenants::OverQuota> for ApiError {
    fn from(over: crate::tenants::OverQuota) -> ApiError {
        ApiError::OverQuota(over)
    }
}

impl From<RouteError> for ApiError {
    fn from(error: RouteError) -> ApiError {
        ApiError::Route(error)
    }
}

/// The one mapping from errors to status codes and messages.
pub fn status_of(error: &ApiError) -> (u16, String) {
    match error {
        ApiError::Route(RouteError::NotFound(path)) => (404, format!("No route for {path}")),
        ApiError::Route(RouteError::MethodNotAllowed {
            method,
            path,
            allowed,
        }) => (
            405,
            format!("Method {method} is not allowed on {path}: use {allowed}"),
        ),
        ApiError::Route(RouteError::BadParameter(message)) => (400, message.clone()),
        ApiError::Unauthorized => (
            401,
            "Unauthorized: send the API key as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"
                .into(),
        ),
        ApiError::BodyTooLarge { limit } => (
            413,
            format!("Request body is larger than the {limit} byte limit"),
        ),
        ApiError::BadBody(message) => (400, message.clone()),
        ApiError::Busy => (
            503,
            "Server busy: the request queue is full, retry shortly".into(),
        ),
        ApiError::TooManyConnections => (
            503,
            "Server busy: too many open connections, retry shortly".into(),
        ),
        ApiError::ShuttingDown => (503, "Server is shutting down".into()),
        ApiError::NoAgent => (
            503,
            "No agent of the cluster is up: see GET /health for each node's state".into(),
        ),
        ApiError::NodeDown { node, what } => (
            503,
            format!("{what} on node {node}, which is down: retry once it is back"),
        ),
        ApiError::CountBusy { namespace } => (
            503,
            format!(
                "Server busy: another create of namespace '{namespace}' is being counted \
                 against its quotas, retry shortly"
            ),
        ),
        ApiError::UploadsBusy { node } => (
            503,
            format!(
                "Server busy: {} uploads to node {node} (or {} of this tenant's) are \
                 arriving at once, retry shortly",
                crate::cluster::MAX_UPLOADS,
                crate::cluster::MAX_UPLOADS_PER_NAMESPACE
            ),
        ),
        ApiError::AgentFailed { node, error } => (
            502,
            format!("Node {node} did not answer the request in full: {error}"),
        ),
        ApiError::ClientGone => (
            499,
            "Client closed the request before its answer; its command was stopped".into(),
        ),
        ApiError::BodiesInFlight => (
            503,
            "Server busy: too many request bodies are arriving at once, retry shortly".into(),
        ),
        ApiError::RequestTimeout(what) => (408, format!("Request {what} took too long to arrive")),
        ApiError::UriTooLong(limit) => (
            414,
            format!("Request line is longer than the {limit} byte limit"),
        ),
        ApiError::HeadersTooLarge(message) => (431, message.clone()),
        ApiError::NotImplemented(message) => (501, message.clone()),
        ApiError::OverQuota(over) => (429, over.message.clone()),
        ApiError::Forbidden(message) => (403, message.clone()),
        ApiError::Panic => (
            500,
            "Internal server error (the request handler failed)".into(),
        ),
        ApiError::Domain(error) => {
            let status = match error {
                Error::Invalid(_) | Error::NotAFile { .. } | Error::WorkdirUnusable { .. } => 400,
                Error::FileAccessDenied { .. }
                | Error::ReadOnlyRoot { .. }
                | Error::Forbidden(_) => 403,
                Error::SandboxNotFound(_)
                | Error::ImageMissing(_)
                | Error::FileNotFound { .. }
                | Error::SnapshotNotFound(_)
                | Error::VolumeNotFound(_) => 404,
                Error::SandboxExists(_)
                | Error::SnapshotExists(_)
                | Error::SnapshotInUse(_)
                | Error::VolumeInUse(_)
                | Error::VolumeNotOurs(_)
                | Error::SandboxNotRunning(_)
                | Error::SandboxPaused(_)
                | Error::SandboxRemovedMeanwhile(_)
                | Error::SandboxRestarted(_)
                | Error::SandboxBusy(_)
                | Error::FileNeedsRunning { .. } => 409,
                Error::FileTooLarge { .. } => 413,
                Error::NoSpace { .. } | Error::DiskQuotaFull { .. } => 507,
                Error::Engine(DockerError::Unreachable { .. } | DockerError::Io { .. }) => 503,
                // What the engine refused and domain code did not trace to the client.
                Error::Engine(_) => 502,
                Error::RunLost(_) => 502,
                Error::StubMismatch { .. } => 502,
                Error::DetachedNotFound { .. } => 404,
                Error::OutputMemoryFull { .. } => 503,
                Error::DataDir(_) | Error::EgressUnavailable(_) | Error::DiskQuota(_) => 500,
            };
            (status, error.to_string())
        }
    }
}

impl ApiError {
    pub fn reply(&self) -> Reply {
        let (status, message) = status_of(self);
        let mut reply = Reply::error(status, message);
        if let ApiError::Route(RouteError::MethodNotAllowed { allowed, .. }) = self {
            reply.headers.push(("Allow", allowed.to_string()));
        }
        if matches!(
            self,
            ApiError::CountBusy { .. } | ApiError::UploadsBusy { .. }
        ) {
            reply.headers.push(("Retry-After", "1".to_string()));
        }
        if let ApiError::OverQuota(over) = self {
            // Whole seconds, at least one (RFC 9110 delay-seconds).
            let seconds = over.retry_after.as_secs().max(1);
            reply.headers.push(("Retry-After", seconds.to_string()));
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_domain_errors_to_statuses() {
        let cases = [
            (Error::Invalid("x".into()), 400),
            (Error::SandboxNotFound("x".into()), 404),
            (Error::ImageMissing("python:3.12-alpine".into()), 404),
            (Error::SandboxExists("x".into()), 409),
            (Error::SnapshotNotFound("x".into()), 404),
            (Error::SnapshotExists("x".into()), 409),
            (Error::SnapshotInUse("x".into()), 409),
            (Error::VolumeNotFound("x".into()), 404),
            (Error::VolumeInUse("x".into()), 409),
            (Error::VolumeNotOurs("x".into()), 409),
            (Error::SandboxNotRunning("x".into()), 409),
            (
                Error::FileNotFound {
                    sandbox: "s".into(),
                    path: "/x".into(),
                },
                404,
            ),
            (
                Error::NotAFile {
                    path: "/etc".into(),
                    what: "a directory",
                },
                400,
            ),
            (
                Error::FileTooLarge {
                    path: "/x".into(),
                    limit: 1,
                },
                413,
            ),
            (
                Error::ReadOnlyRoot {
                    path: "/etc/x".into(),
                    profile: "restrictive".into(),
                },
                403,
            ),
            (
                Error::FileAccessDenied {
                    path: "/x".into(),
                    reason: "permission denied".into(),
                },
                403,
            ),
            (
                Error::NoSpace {
                    path: "/tmp/x".into(),
                },
                507,
            ),
            (
                Error::FileNeedsRunning {
                    sandbox: "s".into(),
                    path: "/tmp/x".into(),
                },
                409,
            ),
            (
                Error::Engine(DockerError::Unreachable {
                    socket: "/nope.sock".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                }),
                503,
            ),
            (
                Error::WorkdirUnusable {
                    dir: "/nope".into(),
                    reason: "no such file or directory".into(),
                },
                400,
            ),
            (
                Error::Engine(DockerError::MountSourceMissing {
                    path: "/gone".into(),
                }),
                502,
            ),
            (Error::OutputMemoryFull { limit: 1 }, 503),
        ];
        for (error, status) in cases {
            assert_eq!(status_of(&ApiError::Domain(error)).0, status);
        }
    }

    #[test]
    fn messages_name_the_thing() {
        let (_, message) = status_of(&ApiError::Domain(Error::SandboxNotFound("x".into())));
        assert_eq!(message, "Sandbox 'x' not found");
        let (_, message) = status_of(&ApiError::Domain(Error::ImageMissing("py:1".into())));
        assert!(
            message.starts_with("image 'py:1' is not present"),
            "{message}"
        );
        let (_, message) = status_of(&ApiError::Domain(Error::Engine(DockerError::Unreachable {
            socket: "/nope.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })));
        assert!(message.contains("/nope.sock"), "{message}");
        let (_, message) = status_of(&ApiError::Domain(Error::FileNotFound {
            sandbox: "box".into(),
            path: "/x".into(),
        }));
        assert_eq!(message, "File '/x' not found in sandbox 'box'");
        let (_, message) = status_of(&ApiError::Domain(Error::ReadOnlyRoot {
            path: "/etc/x".into(),
            profile: "restrictive".into(),
        }));
        assert!(
            message.contains("'/etc/x'") && message.contains("read-only"),
            "{message}"
        );
    }

    #[test]
    fn envelopes_are_exact() {
        let reply = Reply::ok(json!("ok"));
        assert_eq!(reply.bytes(), b"{\"data\":\"ok\",\"success\":true}\n");
        let written = Reply::data(|out| out.write_all(b"\"ok\""), OutputBudget::new(0));
        assert_eq!(written.bytes(), reply.bytes());
        assert_eq!(written.body_length(), reply.bytes().len() as u64);
        assert_eq!(written.into_envelope(), reply.into_envelope());
        let reply = ApiError::Busy.reply();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.into_envelope()["success"], json!(false));
        let reply = ApiError::Route(RouteError::MethodNotAllowed {
            method: "PUT".into(),
            path: "/run".into(),
            allowed: "POST",
        })
        .reply();
        assert_eq!(reply.headers, vec![("Allow", "POST".to_string())]);
    }
}
