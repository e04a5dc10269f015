//! The CLI's way to the API: a `Backend` that is either this process (local mode) or a
//! running server (remote mode), and that answers every command the same way.
//!
//! Commands arrive here as the server's own typed requests (`server::request::Request`).
//! Local mode builds the same `server::Context` the server builds and hands the request
//! to `handlers::dispatch` in process; remote mode sends it over HTTP, to the path of
//! its route (`Route::target`) with its body serialized (`Request::body`), which the
//! server parses back into the same value. Both modes thus go through the same
//! validation, domain code and error mapping: their answers are the same JSON by
//! construction, not by care. Streaming run and exec are the streaming routes'
//! requests (`/run/stream`, `/sandboxes/{name}/exec/stream`): in process, the handler's
//! job runs with our observer where the server would write events
//! (`StreamJob::execute`); remotely, we read the server's events.
//!
//! Invariants: both modes send the same request (a body serialized and parsed again is
//! the same body, and local mode refuses a body over the limit as the server does); an
//! error becomes one `ClientError` whose message is the API's own; every remote call has
//! a deadline and every answer read has a bound. Only this file and `server/` know
//! HTTP.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::containers::launcher::Launcher;
use crate::containers::pool::Pool;
use crate::engine::frames::StreamKind;
use crate::engine::Docker;
use crate::exec::Observer;
use crate::server::handlers::dispatch;
use crate::server::request::Request;
use crate::server::response::{status_of, ApiError, Reply};
use crate::server::{views, Context};

/// How long a remote call that does not run a command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The timeout to assume for a command that sets none: it gets the server's default,
/// which we cannot know, but which is at most the server's default maximum.
pub const UNKNOWN_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a remote command may run past its own timeout before we give up on it.
const COMMAND_GRACE: Duration = Duration::from_secs(60);
/// Largest JSON answer we read (a run's output is capped per stream by the server).
const MAX_ANSWER_BYTES: u64 = 512 * 1024 * 1024;
/// Longest SSE line we accept (one output event: a chunk of output, JSON-escaped).
const MAX_EVENT_LINE_BYTES: u64 = 16 * 1024 * 1024;

/// Where commands go.
pub enum Backend {
    /// This process drives the engine, through the server's own code.
    Local(Box<Context>),
    /// A running server, over HTTP.
    Remote(Remote),
}

pub struct Remote {
    /// `http://host:port`, without a trailing slash.
    base: String,
    api_key: Option<String>,
    agent: ureq::Agent,
}

/// An API answer: the status and the whole envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub envelope: Value,
}

impl Answer {
    /// The `data` of a success envelope, or the envelope's error.
    pub fn data(self) -> Result<Value, ClientError> {
        match self.envelope.get("success") {
            Some(Value::Bool(true)) => Ok(self.envelope.get("data").cloned().unwrap_or_default()),
            _ => Err(ClientError::Api {
                status: self.status,
                message: self
                    .envelope
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the server answered an error without a message")
                    .to_string(),
            }),
        }
    }

    fn from_reply(reply: Reply) -> Answer {
        Answer {
            status: reply.status,
            envelope: reply.into_envelope(),
        }
    }
}

/// What can go wrong between the CLI and the API.
#[derive(Debug)]
pub enum ClientError {
    /// The API refused or failed the request; `message` is its own.
    Api { status: u16, message: String },
    /// The server could not be reached, or the connection failed mid-way.
    Unreachable { url: String, message: String },
    /// The server answered something that is not our protocol.
    Protocol(String),
    /// Our own output went away (a closed pipe) while a command ran.
    Output(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api { message, .. } => f.write_str(message),
            ClientError::Unreachable { url, message } => {
                write!(f, "cannot reach the server at {url}: {message}")
            }
            ClientError::Protocol(message) => write!(f, "unexpected answer: {message}"),
            ClientError::Output(error) => write!(f, "cannot write output: {error}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<ApiError> for ClientError {
    fn from(error: ApiError) -> ClientError {
        let (status, message) = status_of(&error);
        ClientError::Api { status, message }
    }
}

impl Backend {
    /// This process as the server: the context `serve` builds, minus the threads. The
    /// pool keeps no warm containers and removes used ones at once, as a one-command
    /// process must.
    pub fn local(config: Config) -> Backend {
        let docker = Docker::new(config.docker_socket.clone(), config.docker_timeout);
        crate::containers::disk::configure(config.data_dir.as_deref(), config.disk_quota);
        let pool = Pool::local(Launcher::detect(config.stub, config.data_dir.as_deref()));
        Backend::Local(Box::new(Context::new(config, docker, pool)))
    }

    /// `base` is an `http://` URL; the key, when given, is sent as `X-API-Key`.
    pub fn remote(base: &str, api_key: Option<String>) -> Backend {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .build();
        Backend::Remote(Remote {
            base: base.trim_end_matches('/').to_string(),
            api_key,
            agent,
        })
    }

    /// One request, answered with its status and envelope, whatever the status.
    /// `timeout` is the command's, for a request that runs one: the call may then take
    /// that long and a grace; other calls get a fixed bound.
    pub fn send(&self, request: Request, timeout: Option<Duration>) -> Result<Answer, ClientError> {
        match self {
            Backend::Local(context) => {
                check_body_size(&context.config, &request)?;
                let reply = match dispatch(context, request) {
                    Ok(reply) => reply,
                    Err(error) => error.reply(),
                };
                flush_disks(context);
                Ok(Answer::from_reply(reply))
            }
            Backend::Remote(remote) => remote.send(&request, timeout),
        }
    }

    /// A request whose answer is bytes (an archive), not an envelope; an error answer
    /// is its envelope's error.
    pub fn fetch(&self, request: Request) -> Result<Vec<u8>, ClientError> {
        match self {
            Backend::Local(context) => {
                let reply = match dispatch(context, request) {
                    Ok(reply) => reply,
                    Err(error) => error.reply(),
                };
                if reply.status == 200 {
                    return Ok(reply.bytes());
                }
                Err(Answer::from_reply(reply)
                    .data()
                    .err()
                    .unwrap_or_else(|| ClientError::Protocol("an envelope, not bytes".into())))
            }
            Backend::Remote(remote) => remote.fetch(&request),
        }
    }

    /// Runs a command through a streaming route's request (`Request::RunStream`,
    /// `Request::ExecSandboxStream`): output goes to `observer` as it is produced; the
    /// answer is the command's `data` (at least `exit_code`, `status`, `signal`,
    /// `duration_ms`).
    pub fn stream(
        &self,
        request: Request,
        timeout: Option<Duration>,
        observer: &mut dyn Observer,
    ) -> Result<Value, ClientError> {
        match self {
            Backend::Local(context) => {
                let answer = stream_local(context, request, observer);
                flush_disks(context);
                answer
            }
            Backend::Remote(remote) => remote.stream(&request, timeout, observer),
        }
    }

    /// In local mode, whether the engine answers; a remote server's health is its own.
    pub fn engine_reachable(&self) -> Result<(), ClientError> {
        match self {
            Backend::Local(context) => context
                .docker
                .ping()
                .map(|_| ())
                .map_err(|error| ApiError::Domain(error.into()).into()),
            Backend::Remote(_) => Ok(()),
        }
    }
}

/// In local mode, the disks of the containers a request used are released before the
/// process ends (a server does it in the background).
fn flush_disks(context: &Context) {
    crate::containers::disk::flush_pending(&context.docker, Duration::from_secs(5));
}

/// The server refuses bodies over its limit before reading them; so does local mode,
/// measuring the body remote mode would send.
fn check_body_size(config: &Config, request: &Request) -> Result<(), ClientError> {
    let limit = crate::server::body_limit(config, &request.route());
    let length = request.body().map_or(0, |body| body.len());
    if length as u64 > limit {
        return Err(ApiError::BodyTooLarge { limit }.into());
    }
    Ok(())
}

/// A streaming request answered in process: the server's own handler decides (and
/// checks) what runs; the job then runs with our observer where the server would put
/// its event stream.
fn stream_local(
    context: &Context,
    request: Request,
    observer: &mut dyn Observer,
) -> Result<Value, ClientError> {
    check_body_size(&context.config, &request)?;
    let (_, path) = request.route().target();
    let mut reply = match dispatch(context, request) {
        Ok(reply) => reply,
        Err(error) => error.reply(),
    };
    let Some(job) = reply.stream.take() else {
        return Err(Answer::from_reply(reply).data().err().unwrap_or_else(|| {
            ClientError::Protocol(format!("{path} answered without a stream"))
        }));
    };
    let result = job.execute(context, observer).map_err(ApiError::from)?;
    Ok(views::command_data(&result))
}

impl Remote {
    fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ureq::Response, ClientError> {
        let mut request = self.agent.request(method, url).timeout(timeout);
        if let Some(key) = &self.api_key {
            request = request.set("X-API-Key", key);
        }
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_bytes(body),
            None => request.call(),
        };
        match result {
            Ok(response) => Ok(response),
            // Error statuses carry our envelope: they are answers, not failures.
            Err(ureq::Error::Status(_, response)) => Ok(response),
            Err(ureq::Error::Transport(transport)) => Err(ClientError::Unreachable {
                url: self.base.clone(),
                message: transport.to_string(),
            }),
        }
    }

    fn send(&self, request: &Request, timeout: Option<Duration>) -> Result<Answer, ClientError> {
        let (method, path) = request.route().target();
        let url = format!("{}{path}", self.base);
        let timeout = timeout.map_or(CALL_TIMEOUT, |t| t + COMMAND_GRACE);
        let response = self.call(method, &url, request.body().as_deref(), timeout)?;
        self.read_answer(response)
    }

    fn fetch(&self, request: &Request) -> Result<Vec<u8>, ClientError> {
        let (method, path) = request.route().target();
        let url = format!("{}{path}", self.base);
        let response = self.call(method, &url, None, CALL_TIMEOUT)?;
        if response.status() != 200 {
            return Err(self.read_answer(response)?.data().err().unwrap_or_else(|| {
                ClientError::Protocol("a success envelope instead of bytes".into())
            }));
        }
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(MAX_ANSWER_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| ClientError::Unreachable {
                url: self.base.clone(),
                message: format!("reading the answer: {error}"),
            })?;
        if bytes.len() as u64 > MAX_ANSWER_BYTES {
            return Err(ClientError::Protocol(format!(
                "an answer of more than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        Ok(bytes)
    }

    fn read_answer(&self, response: ureq::Response) -> Result<Answer, ClientError> {
        let status = response.status();
        let mut text = Vec::new();
        response
            .into_reader()
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut text)
            .map_err(|error| ClientError::Unreachable {
                url: self.base.clone(),
                message: format!("reading the answer: {error}"),
            })?;
        let envelope = serde_json::from_slice(&text).map_err(|_| {
            ClientError::Protocol(format!(
                "status {status} with a body that is not JSON: {:?}",
                String::from_utf8_lossy(&text[..text.len().min(200)])
            ))
        })?;
        Ok(Answer { status, envelope })
    }

    fn stream(
        &self,
        request: &Request,
        timeout: Option<Duration>,
        observer: &mut dyn Observer,
    ) -> Result<Value, ClientError> {
        let (method, path) = request.route().target();
        let url = format!("{}{path}", self.base);
        let timeout = timeout.unwrap_or(UNKNOWN_COMMAND_TIMEOUT) + COMMAND_GRACE;
        let response = self.call(method, &url, request.body().as_deref(), timeout)?;
        if response.status() != 200 {
            return Err(self.read_answer(response)?.data().err().unwrap_or_else(|| {
                ClientError::Protocol("a success envelope instead of an event stream".into())
            }));
        }
        if response.content_type() != "text/event-stream" {
            return Err(ClientError::Protocol(format!(
                "expected an event stream, got '{}'",
                response.content_type()
            )));
        }
        let broken = |error: io::Error| ClientError::Unreachable {
            url: self.base.clone(),
            message: format!("the event stream broke: {error}"),
        };
        let mut events = EventReader::new(BufReader::new(response.into_reader()));
        while let Some(event) = events.next_event().map_err(broken)? {
            let data: Value = serde_json::from_str(&event.data).map_err(|_| {
                ClientError::Protocol(format!("event '{}' with data {:?}", event.name, event.data))
            })?;
            match event.name.as_str() {
                "output" => {
                    let kind = match data["stream"].as_str() {
                        Some("stderr") => StreamKind::Stderr,
                        _ => StreamKind::Stdout,
                    };
                    let text = data["data"].as_str().unwrap_or_default();
                    observer
                        .output(kind, text.as_bytes())
                        .map_err(ClientError::Output)?;
                }
                "done" => return Ok(data),
                "error" => {
                    return Err(ClientError::Api {
                        status: 200,
                        message: data["message"]
                            .as_str()
                            .unwrap_or("the command failed")
                            .to_string(),
                    })
                }
                // `started`, and whatever later servers add.
                _ => {}
            }
        }
        Err(ClientError::Protocol(
            "the event stream ended before the command finished".into(),
        ))
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// Reads `text/event-stream`: `event:` and `data:` fields, a blank line ends an event,
/// lines starting with `:` are comments (heartbeats). Lines are bounded.
pub struct EventReader<R> {
    reader: R,
    line: Vec<u8>,
}

impl<R: BufRead> EventReader<R> {
    pub fn new(reader: R) -> EventReader<R> {
        EventReader {
            reader,
            line: Vec::new(),
        }
    }

    /// The next event, or `None` at the end of the stream.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        let mut name = String::new();
        let mut data: Option<String> = None;
        loop {
            self.line.clear();
            let read = (&mut self.reader)
                .take(MAX_EVENT_LINE_BYTES + 1)
                .read_until(b'\n', &mut self.line)?;
            if read == 0 {
                // A stream cut mid-event does not deliver the half event.
                return Ok(None);
            }
            if read as u64 > MAX_EVENT_LINE_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an event line longer than the limit",
                ));
            }
            let line = String::from_utf8_lossy(&self.line);
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                match data.take() {
                    Some(data) => {
                        let name = if name.is_empty() {
                            "message".to_string()
                        } else {
                            std::mem::take(&mut name)
                        };
                        return Ok(Some(Event { name, data }));
                    }
                    None => {
                        name.clear();
                        continue;
                    }
                }
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => name = value.to_string(),
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events(bytes: &[u8]) -> Vec<Event> {
        let mut reader = EventReader::new(bytes);
        let mut all = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            all.push(event);
        }
        all
    }

    fn event(name: &str, data: &str) -> Event {
        Event {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn reads_the_servers_event_stream() {
        let stream = b"event: started\ndata: {\"command\":[\"sh\"]}\n\n\
            : heartbeat\n\n\
            event: output\ndata: {\"stream\":\"stdout\",\"data\":\"a\\n\"}\n\n\
            event: done\r\ndata: {\"exit_code\":3}\r\n\r\n";
        assert_eq!(
            events(stream),
            vec![
                event("started", r#"{"command":["sh"]}"#),
                event("output", r#"{"stream":"stdout","data":"a\n"}"#),
                event("done", r#"{"exit_code":3}"#),
            ]
        );
    }

    #[test]
    fn joins_data_lines_and_drops_a_cut_event() {
        assert_eq!(
            events(b"data: one\ndata:two\n\nevent: done\ndata: {}"),
            vec![event("message", "one\ntwo")]
        );
        assert!(events(b"").is_empty());
        assert!(events(b": only a comment\n\n").is_empty());
    }

    #[test]
    fn answers_carry_data_or_the_api_error() {
        let ok = Answer {
            status: 200,
            envelope: json!({"success": true, "data": [1]}),
        };
        assert_eq!(ok.data().unwrap(), json!([1]));
        let failed = Answer {
            status: 404,
            envelope: json!({"success": false, "error": "Sandbox 'x' not found"}),
        };
        let error = failed.data().unwrap_err();
        assert_eq!(error.to_string(), "Sandbox 'x' not found");
        assert!(matches!(error, ClientError::Api { status: 404, .. }));
    }
}
