//! Requests as typed values: `Request` is a closed enum with one variant per route,
//! carrying the route's parameters and its body, typed. It is built in one place,
//! `Request::parse`, from a `Route` and the body bytes (the edge's body check: a JSON
//! object whose fields have the documented types and names), or directly by the
//! command line's local mode; `handlers::dispatch` runs it. Each body then turns into
//! the domain's input (`RunRequest`, `CommandSpec`, `CreateSandbox`, file bytes) with
//! its `validate` method, against the server's `Config`: what is in range, required,
//! a valid name, path or image is decided there, first thing in the handler, before
//! any engine call.
//!
//! Invariants: unknown body fields are refused (400), except those the published SDKs
//! send, which must then be null or a value we honour; explicit JSON `null` means
//! "not given" for every optional field, and a field not given is left out when a body
//! is serialized (`Request::body`, the command line's remote mode), so that the server's
//! defaults apply; a body serialized and parsed again is the same body.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::containers::allow::AllowList;
use crate::containers::labels::SandboxName;
use crate::containers::profile::{
    check_bound, check_host_cpus, check_host_memory, Limits, Network, Profile, MEMORY_MB_RANGE,
    PIDS_RANGE, VCPUS_RANGE,
};
use crate::engine::reference::ImageRef;
use crate::engine::HostResources;
use crate::error::Error;
use crate::exec::CommandSpec;
use crate::files::SandboxPath;
use crate::run::RunRequest;
use crate::sandbox::CreateSandbox;

use super::response::{status_of, ApiError};
use super::routes::Route;

/// One request to the API: a route with its typed parameters and body.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    OpenApi,
    Health,
    Backends,
    Pool,
    Run(RunBody),
    RunStream(RunBody),
    BatchRun(BatchBody),
    ListSandboxes,
    CreateSandbox(CreateBody),
    GetSandbox(SandboxName),
    GetSandboxByUuid(String),
    ExtendSandbox(SandboxName, ExtendBody),
    DeleteSandbox(SandboxName),
    ExecSandbox(SandboxName, ExecBody),
    ExecSandboxStream(SandboxName, ExecBody),
    ExecDetach(SandboxName, ExecBody),
    DetachedList(SandboxName),
    DetachedStatus(SandboxName, String),
    DetachedKill(SandboxName, String),
    DetachedLogs {
        sandbox: SandboxName,
        id: String,
        stderr_only: bool,
    },
    StartSandbox(SandboxName),
    StopSandbox(SandboxName),
    PauseSandbox(SandboxName),
    ResumeSandbox(SandboxName),
    SandboxStats(SandboxName),
    SandboxLogs(SandboxName),
    GetSandboxFile(SandboxName, SandboxPath),
    PutSandboxFile(SandboxName, SandboxPath, PutFileBody),
    DeleteSandboxFile(SandboxName, SandboxPath),
    PostSandboxFiles(SandboxName, FilesBody),
    ListSnapshots,
    CreateSnapshot(SnapshotBody),
    GetSnapshot(SandboxName),
    DeleteSnapshot(SandboxName),
    RestoreSnapshot(SandboxName, CreateBody),
    Metrics,
    GetArchive(SandboxName, SandboxPath),
    /// The body is the tar archive itself.
    PutArchive(SandboxName, SandboxPath, Vec<u8>),
    ListVolumes,
    DeleteVolume(SandboxName),
}

impl Request {
    /// The sandbox a request works on, by the name in its path (`Route::sandbox`), and
    /// what it needs of it.
    pub fn sandbox(&self) -> Option<(SandboxName, crate::sandbox::Needs)> {
        use crate::sandbox::Needs;
        let needs = match self {
            Request::ExecSandbox(..)
            | Request::ExecSandboxStream(..)
            | Request::ExecDetach(..)
            | Request::DetachedKill(..)
            | Request::PauseSandbox(_)
            | Request::SandboxStats(_) => Needs::Running,
            // (A resume tells its own races: `sandbox::resume`.)
            _ => Needs::Anything,
        };
        Some((self.route().sandbox()?.clone(), needs))
    }

    /// Takes what a cluster's router says the namespace holds on its other agents
    /// (`tenants::ELSEWHERE_HEADER`), on the requests that add to what it holds.
    pub fn with_elsewhere(mut self, elsewhere: crate::tenants::Elsewhere) -> Request {
        match &mut self {
            Request::CreateSandbox(body) | Request::RestoreSnapshot(_, body) => {
                body.elsewhere = elsewhere
            }
            Request::CreateSnapshot(body) => body.elsewhere = elsewhere,
            _ => {}
        }
        self
    }

    /// The request a routed request's body makes of it. Routes without a body ignore
    /// whatever was sent.
    pub fn parse(route: Route, body: &[u8]) -> Result<Request, ApiError> {
        Ok(match route {
            Route::OpenApi => Request::OpenApi,
            Route::Health => Request::Health,
            Route::Backends => Request::Backends,
            Route::Pool => Request::Pool,
            Route::Run => Request::Run(parse_body(body)?),
            Route::RunStream => Request::RunStream(parse_body(body)?),
            Route::BatchRun => Request::BatchRun(parse_body(body)?),
            Route::ListSandboxes => Request::ListSandboxes,
            Route::CreateSandbox => Request::CreateSandbox(parse_body(body)?),
            Route::GetSandbox(name) => Request::GetSandbox(name),
            Route::GetSandboxByUuid(uuid) => Request::GetSandboxByUuid(uuid),
            Route::ExtendSandbox(name) => Request::ExtendSandbox(name, parse_body(body)?),
            Route::DeleteSandbox(name) => Request::DeleteSandbox(name),
            Route::ExecSandbox(name) => Request::ExecSandbox(name, parse_body(body)?),
            Route::ExecSandboxStream(name) => Request::ExecSandboxStream(name, parse_body(body)?),
            Route::ExecDetach(name) => Request::ExecDetach(name, parse_body(body)?),
            Route::DetachedList(name) => Request::DetachedList(name),
            Route::DetachedStatus(name, id) => Request::DetachedStatus(name, id),
            Route::DetachedKill(name, id) => Request::DetachedKill(name, id),
            Route::DetachedLogs {
                sandbox,
                id,
                stderr_only,
            } => Request::DetachedLogs {
                sandbox,
                id,
                stderr_only,
            },
            Route::StartSandbox(name) => Request::StartSandbox(name),
            Route::StopSandbox(name) => Request::StopSandbox(name),
            Route::PauseSandbox(name) => Request::PauseSandbox(name),
            Route::SandboxStats(name) => Request::SandboxStats(name),
            Route::ResumeSandbox(name) => Request::ResumeSandbox(name),
            Route::SandboxLogs(name) => Request::SandboxLogs(name),
            Route::GetSandboxFile(name, path) => Request::GetSandboxFile(name, path),
            Route::PutSandboxFile(name, path) => {
                Request::PutSandboxFile(name, path, parse_body(body)?)
            }
            Route::DeleteSandboxFile(name, path) => Request::DeleteSandboxFile(name, path),
            Route::PostSandboxFiles(name) => Request::PostSandboxFiles(name, parse_body(body)?),
            Route::ListSnapshots => Request::ListSnapshots,
            Route::Metrics => Request::Metrics,
            Route::GetArchive(name, dir) => Request::GetArchive(name, dir),
            Route::ListVolumes => Request::ListVolumes,
            Route::DeleteVolume(name) => Request::DeleteVolume(name),
            Route::PutArchive(name, dir) => Request::PutArchive(name, dir, body.to_vec()),
            Route::CreateSnapshot => Request::CreateSnapshot(parse_body(body)?),
            Route::GetSnapshot(name) => Request::GetSnapshot(name),
            Route::DeleteSnapshot(name) => Request::DeleteSnapshot(name),
            // The SDKs send no body: none is an empty one.
            Route::RestoreSnapshot(name) => Request::RestoreSnapshot(
                name,
                if body.iter().all(u8::is_ascii_whitespace) {
                    CreateBody::default()
                } else {
                    parse_body(body)?
                },
            ),
        })
    }

    /// The route this request is sent on (`Route::target` gives its method and path).
    pub fn route(&self) -> Route {
        match self {
            Request::OpenApi => Route::OpenApi,
            Request::Health => Route::Health,
            Request::Backends => Route::Backends,
            Request::Pool => Route::Pool,
            Request::Run(_) => Route::Run,
            Request::RunStream(_) => Route::RunStream,
            Request::BatchRun(_) => Route::BatchRun,
            Request::ListSandboxes => Route::ListSandboxes,
            Request::CreateSandbox(_) => Route::CreateSandbox,
            Request::GetSandbox(name) => Route::GetSandbox(name.clone()),
            Request::GetSandboxByUuid(uuid) => Route::GetSandboxByUuid(uuid.clone()),
            Request::ExtendSandbox(name, _) => Route::ExtendSandbox(name.clone()),
            Request::DeleteSandbox(name) => Route::DeleteSandbox(name.clone()),
            Request::ExecSandbox(name, _) => Route::ExecSandbox(name.clone()),
            Request::ExecSandboxStream(name, _) => Route::ExecSandboxStream(name.clone()),
            Request::ExecDetach(name, _) => Route::ExecDetach(name.clone()),
            Request::DetachedList(name) => Route::DetachedList(name.clone()),
            Request::DetachedStatus(name, id) => Route::DetachedStatus(name.clone(), id.clone()),
            Request::DetachedKill(name, id) => Route::DetachedKill(name.clone(), id.clone()),
            Request::DetachedLogs {
                sandbox,
                id,
                stderr_only,
            } => Route::DetachedLogs {
                sandbox: sandbox.clone(),
                id: id.clone(),
                stderr_only: *stderr_only,
            },
            Request::StartSandbox(name) => Route::StartSandbox(name.clone()),
            Request::StopSandbox(name) => Route::StopSandbox(name.clone()),
            Request::PauseSandbox(name) => Route::PauseSandbox(name.clone()),
            Request::SandboxStats(name) => Route::SandboxStats(name.clone()),
            Request::ResumeSandbox(name) => Route::ResumeSandbox(name.clone()),
            Request::SandboxLogs(name) => Route::SandboxLogs(name.clone()),
            Request::GetSandboxFile(name, path) => {
                Route::GetSandboxFile(name.clone(), path.clone())
            }
            Request::PutSandboxFile(name, path, _) => {
                Route::PutSandboxFile(name.clone(), path.clone())
            }
            Request::DeleteSandboxFile(name, path) => {
                Route::DeleteSandboxFile(name.clone(), path.clone())
            }
            Request::PostSandboxFiles(name, _) => Route::PostSandboxFiles(name.clone()),
            Request::ListSnapshots => Route::ListSnapshots,
            Request::Metrics => Route::Metrics,
            Request::GetArchive(name, dir) => Route::GetArchive(name.clone(), dir.clone()),
            Request::ListVolumes => Route::ListVolumes,
            Request::DeleteVolume(name) => Route::DeleteVolume(name.clone()),
            Request::PutArchive(name, dir, _) => Route::PutArchive(name.clone(), dir.clone()),
            Request::CreateSnapshot(_) => Route::CreateSnapshot,
            Request::GetSnapshot(name) => Route::GetSnapshot(name.clone()),
            Request::DeleteSnapshot(name) => Route::DeleteSnapshot(name.clone()),
            Request::RestoreSnapshot(name, _) => Route::RestoreSnapshot(name.clone()),
        }
    }

    /// The body as JSON bytes, as `parse` reads it back; `None` for a route without one.
    pub fn body(&self) -> Option<Vec<u8>> {
        fn json<T: Serialize>(body: &T) -> Vec<u8> {
            serde_json::to_vec(body).expect("request bodies always serialize")
        }
        match self {
            Request::Run(body) | Request::RunStream(body) => Some(json(body)),
            Request::BatchRun(body) => Some(json(body)),
            Request::CreateSandbox(body) => Some(json(body)),
            Request::ExtendSandbox(_, body) => Some(json(body)),
            Request::ExecSandbox(_, body)
            | Request::ExecSandboxStream(_, body)
            | Request::ExecDetach(_, body) => Some(json(body)),
            Request::PutSandboxFile(_, _, body) => Some(json(body)),
            Request::PostSandboxFiles(_, body) => Some(json(body)),
            Request::CreateSnapshot(body) => Some(json(body)),
            Request::RestoreSnapshot(_, body) => Some(json(body)),
            Request::PutArchive(_, _, archive) => Some(archive.clone()),
            Request::OpenApi
            | Request::Health
            | Request::Backends
            | Request::Pool
            | Request::ListSandboxes
            | Request::GetSandbox(_)
            | Request::GetSandboxByUuid(_)
            | Request::DeleteSandbox(_)
            | Request::DetachedList(_)
            | Request::DetachedStatus(..)
            | Request::DetachedKill(..)
            | Request::DetachedLogs { .. }
            | Request::StartSandbox(_)
            | Request::StopSandbox(_)
            | Request::PauseSandbox(_)
            | Request::SandboxStats(_)
            | Request::ResumeSandbox(_)
            | Request::SandboxLogs(_)
            | Request::GetSandboxFile(..)
            | Request::DeleteSandboxFile(..)
            | Request::ListSnapshots
            | Request::Metrics
            | Request::GetArchive(..)
            | Request::ListVolumes
            | Request::DeleteVolume(_)
            | Request::GetSnapshot(_)
            | Request::DeleteSnapshot(_) => None,
        }
    }
}

/// Parses a JSON body into `T`, turning serde's message into a 400 that says what was
/// wrong where.
fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadBody(
            "request body must be a JSON object".into(),
        ));
    }
    let malformed = |error: serde_json::Error| {
        ApiError::BadBody(if error.is_syntax() || error.is_eof() {
            format!("malformed JSON in request body: {error}")
        } else {
            format!("invalid request body: {error}")
        })
    };
    // serde takes a sequence for a struct; our bodies are objects, always. Checked on
    // the first byte, then parsed straight into the typed body: never into a `Value`
    // first, which costs many times the body's size (`deny_unknown_fields` stops at the
    // first stray key instead).
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        // Not an object: a malformed document is named as such, a well-formed one that
        // is not an object (an array, a string) gets the plain rule.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(error) => malformed(error),
                Ok(_) => ApiError::BadBody("request body must be a JSON object".into()),
            },
        );
    }
    serde_json::from_slice(body).map_err(malformed)
}

/// The per-command fields shared by `/run` and exec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

impl CommandFields {
    fn into_spec(self, config: &Config) -> Result<CommandSpec, ApiError> {
        let argv = self
            .command
            .ok_or_else(|| ApiError::BadBody("command is required: an array of strings".into()))?;
        let timeout_ms = match self.timeout_ms {
            None => config.default_timeout_ms,
            Some(0) => return Err(ApiError::BadBody("timeout_ms must be positive".into())),
            Some(ms) if ms > config.max_timeout_ms => {
                return Err(ApiError::BadBody(format!(
                    "timeout_ms must be at most {}, got {ms}",
                    config.max_timeout_ms
                )))
            }
            Some(ms) => ms,
        };
        let max_output_bytes = match self.max_output_bytes {
            None => config.default_max_output_bytes,
            Some(bytes) if bytes > config.max_output_bytes_limit => {
                return Err(ApiError::BadBody(format!(
                    "max_output_bytes must be at most {}, got {bytes}",
                    config.max_output_bytes_limit
                )))
            }
            Some(bytes) => bytes,
        };
        CommandSpec::new(
            argv,
            self.env.unwrap_or_default(),
            self.workdir,
            self.stdin.map(String::into_bytes),
            Duration::from_millis(timeout_ms),
            max_output_bytes,
        )
        .map_err(ApiError::BadBody)
    }
}

/// The image a body names, else `default` (configured, so already valid).
fn parse_image(image: Option<String>, default: &str) -> Result<ImageRef, ApiError> {
    match image {
        Some(image) if image.trim().is_empty() => {
            Err(ApiError::BadBody("image must not be empty".into()))
        }
        Some(image) => ImageRef::parse(&image).map_err(ApiError::BadBody),
        None => ImageRef::parse(default).map_err(|error| {
            ApiError::Domain(Error::Invalid(format!("configured default {error}")))
        }),
    }
}

fn parse_profile(name: Option<String>, config: &Config) -> Result<Profile, ApiError> {
    match name {
        None => Ok(config.default_profile),
        Some(name) => Profile::parse(&name).map_err(ApiError::BadBody),
    }
}

/// `POST /run` and `/run/stream`, and each entry of `/batch/run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast: Option<bool>,
    /// The egress policy: `none`, `public` or `full` (default: the profile's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Value>,
    /// What the container may write to its root filesystem, in MiB (default: the
    /// profile's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// The engine runtime (`runc`, `runsc`): default the server's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(flatten)]
    pub command: CommandFields,
}

impl RunBody {
    /// The run this body asks for, with the server's defaults filled in.
    pub fn validate(self, config: &Config) -> Result<RunRequest, ApiError> {
        let profile = parse_profile(self.profile, config)?;
        let command = self.command.into_spec(config)?;
        if let Some(workdir) = &command.workdir {
            profile.check_workdir(workdir).map_err(ApiError::BadBody)?;
        }
        let image = parse_image(self.image, config.images.image_for(&command.argv[0]))?;
        let (runtime, network, allow) =
            parse_boundary(self.runtime, self.network, profile, config)?;
        Ok(RunRequest {
            namespace: config.namespace.clone(),
            image,
            network,
            allow,
            disk_mb: parse_disk(self.disk_mb, profile, config)?,
            runtime,
            profile,
            fast: self.fast.unwrap_or(true),
            command,
        })
    }
}

/// `POST /batch/run`. Entries stay JSON values until `validate`: an entry that does not
/// parse is that entry's failure, not the batch's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<Vec<Value>>,
}

impl BatchBody {
    /// Each entry as a run, or as the message of what is wrong with it.
    pub fn validate(self, config: &Config) -> Result<Vec<Result<RunRequest, String>>, ApiError> {
        let commands = self.commands.ok_or_else(|| {
            ApiError::BadBody("commands is required: an array of run requests".into())
        })?;
        let limit = config.max_batch;
        if commands.is_empty() || commands.len() > limit {
            return Err(ApiError::BadBody(format!(
                "commands must hold between 1 and {limit} entries, got {}",
                commands.len()
            )));
        }
        Ok(commands
            .into_iter()
            .map(|item| {
                let body: RunBody = serde_json::from_value(item)
                    .map_err(|error| format!("invalid command entry: {error}"))?;
                body.validate(config).map_err(|error| status_of(&error).1)
            })
            .collect())
    }
}

/// `POST /sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// What the sandbox may write to its root filesystem, in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// The engine runtime (`runc`, `runsc`): default the server's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Seconds, or a duration string (`90s`, `30m`, `2h`, `1d`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Value>,
    /// The egress policy: `none`, `public` or `full` (default: the profile's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Value>,
    /// A snapshot to make the sandbox from (its files; its profile and limits unless
    /// given), instead of an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    // Sent by the published SDKs; accepted only when null or something we honour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_url: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_files: Option<Value>,
    /// What the namespace holds on a cluster's other agents (from the router's
    /// header, never the body).
    #[serde(skip)]
    pub elsewhere: crate::tenants::Elsewhere,
}

impl CreateBody {
    /// The sandbox this body asks for. `host` tells what the engine's host has; it is
    /// asked only for a memory or CPU override, which must fit in it.
    pub fn validate(
        self,
        config: &Config,
        host: &dyn Fn() -> Result<HostResources, ApiError>,
    ) -> Result<CreateSandbox, ApiError> {
        let name = self
            .name
            .ok_or_else(|| ApiError::BadBody("name is required".into()))?;
        let name = SandboxName::parse(&name).map_err(ApiError::BadBody)?;
        if let Some(backend) = self.backend.filter(|b| b != "docker") {
            return Err(ApiError::BadBody(format!(
                "backend '{backend}' is not supported: this server runs 'docker'"
            )));
        }
        let unsupported = [
            ("source_url", &self.source_url),
            ("source_ref", &self.source_ref),
            ("secrets", &self.secrets),
            ("secret_files", &self.secret_files),
        ];
        for (field, value) in unsupported {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ApiError::BadBody(format!(
                    "{field} is not supported by this server"
                )));
            }
        }
        let profile = parse_profile(self.profile, config)?;
        let defaults = profile.default_limits();
        let image = match self.snapshot {
            None => parse_image(self.image, &config.images.default_image)?,
            Some(_) if self.image.is_some() => {
                return Err(ApiError::BadBody(
                    "give image or snapshot, not both: a sandbox is made from one".into(),
                ))
            }
            Some(snapshot) => {
                let snapshot = SandboxName::parse(&snapshot).map_err(|message| {
                    ApiError::BadBody(message.replacen("sandbox name", "snapshot name", 1))
                })?;
                ImageRef::parse(&crate::snapshot::reference(&config.namespace, &snapshot))
                    .map_err(ApiError::BadBody)?
            }
        };
        let limits = Limits {
            memory_mb: match self.memory_mb {
                Some(mb) => {
                    check_bound("memory_mb", mb, MEMORY_MB_RANGE).map_err(ApiError::BadBody)?;
                    check_host_memory(mb, host()?).map_err(ApiError::BadBody)?
                }
                None => defaults.memory_mb,
            },
            millicpus: match self.vcpus {
                Some(cpus) => {
                    check_bound("vcpus", cpus, VCPUS_RANGE).map_err(ApiError::BadBody)?;
                    check_host_cpus(cpus, host()?).map_err(ApiError::BadBody)? * 1000
                }
                None => defaults.millicpus,
            },
            pids: match self.pids {
                Some(pids) => check_bound("pids", pids, PIDS_RANGE).map_err(ApiError::BadBody)?,
                None => defaults.pids,
            },
            disk_mb: parse_disk(self.disk_mb, profile, config)?,
        };
        let volumes = match self.volumes {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let texts = items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(text) => Ok(text),
                        other => Err(ApiError::BadBody(format!(
                            "volumes: each is a string name:/path, got {other}"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                crate::volume::parse_all(&texts).map_err(ApiError::BadBody)?
            }
            Some(other) => {
                return Err(ApiError::BadBody(format!(
                    "volumes must be a list of name:/path strings, got {other}"
                )))
            }
        };
        let (runtime, network, allow) =
            parse_boundary(self.runtime, self.network, profile, config)?;
        Ok(CreateSandbox {
            name,
            image,
            network,
            allow,
            runtime,
            profile,
            limits,
            volumes,
            ttl: parse_lifetime("ttl", self.ttl)?.or(config.sandbox_ttl),
            idle_timeout: parse_lifetime("idle_timeout", self.idle_timeout)?
                .or(config.sandbox_idle_timeout),
        })
    }
}

/// A request's runtime and egress policy, the one under the other.
type Boundary = (Option<String>, Network, Option<AllowList>);

fn parse_boundary(
    runtime: Option<String>,
    network: Option<Value>,
    profile: Profile,
    config: &Config,
) -> Result<Boundary, ApiError> {
    let runtime = parse_runtime(runtime)?;
    let asked = network.as_ref().is_some_and(|value| !value.is_null());
    let (network, allow) = network_under(
        parse_network(network, profile, config)?,
        asked,
        &runtime,
        config,
    )?;
    Ok((runtime, network, allow))
}

/// The policy under the request's runtime: gVisor runs with its own network stack off
/// (`--network=none`, the only way it runs on the hosts we know), so a gVisor
/// container reaches nothing: its policy is `none`, and a request for another is a
/// 400 rather than a policy that would not hold as it says.
fn network_under(
    (network, allow): (Network, Option<AllowList>),
    asked: bool,
    runtime: &Option<String>,
    config: &Config,
) -> Result<(Network, Option<AllowList>), ApiError> {
    let runtime = runtime.as_deref().or(config.default_runtime.as_deref());
    if !crate::containers::runtime::is_gvisor(runtime) || network == Network::None {
        return Ok((network, allow));
    }
    if !asked {
        return Ok((Network::None, None));
    }
    Err(ApiError::BadBody(format!(
        "runtime '{}' runs without a network here (gVisor's network stack is off): \
         network must be none, not {network}",
        runtime.unwrap_or_default()
    )))
}

/// A `runtime`: a name the engine could have (whether it has it is asked when the
/// container is made).
fn parse_runtime(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(name) if !crate::containers::runtime::valid_name(&name) => {
            Err(ApiError::BadBody(format!(
                "invalid runtime '{name}': a runtime name is letters, digits, '.', '_' and '-'"
            )))
        }
        other => Ok(other),
    }
}

/// A `disk_mb`: within `DISK_MB_RANGE` and the server's `max_disk_mb`; none is the
/// profile's default (brought down to that).
fn parse_disk(value: Option<u64>, profile: Profile, config: &Config) -> Result<u64, ApiError> {
    let Some(mb) = value else {
        return Ok(config.disk_for(profile));
    };
    let (low, high) = crate::containers::profile::DISK_MB_RANGE;
    let high = high.min(config.max_disk_mb);
    if (low..=high).contains(&mb) {
        Ok(mb)
    } else {
        Err(ApiError::BadBody(format!(
            "disk_mb must be between {low} and {high} (the server's --max-disk-mb), got {mb}"
        )))
    }
}

/// A `network`: a policy's name; none (or null) is the server's default for the
/// profile.
fn parse_network(
    value: Option<Value>,
    profile: Profile,
    config: &Config,
) -> Result<(Network, Option<AllowList>), ApiError> {
    let over = |asked: &str| {
        ApiError::Forbidden(format!(
            "network {asked} is wider than this server allows here (at most '{}')",
            config.max_network
        ))
    };
    match value {
        None | Some(Value::Null) => Ok((config.network_for(profile), None)),
        Some(Value::String(name)) if name == "allow" => Err(ApiError::BadBody(
            "network allow needs its list: {\"allow\": [\"pypi.org\", \"10.0.0.0/8:443\", ...]}"
                .into(),
        )),
        Some(Value::String(name)) => {
            let network = Network::parse(&name).map_err(ApiError::BadBody)?;
            if network > config.max_network {
                return Err(over(&format!("'{network}'")));
            }
            Ok((network, None))
        }
        Some(Value::Object(mut fields)) if fields.len() == 1 && fields.contains_key("allow") => {
            let items = match fields.remove("allow") {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(text) => Ok(text),
                        other => Err(ApiError::BadBody(format!(
                            "network allow: each entry is a string, got {other}"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                other => {
                    return Err(ApiError::BadBody(format!(
                        "network allow must be a list of destinations, got {}",
                        other.unwrap_or(Value::Null)
                    )))
                }
            };
            let list = AllowList::parse(&items).map_err(ApiError::BadBody)?;
            // A list naming what `public` refuses (private, link-local...) reaches
            // further than `public`: it needs the ceiling `full`.
            let neighbours = crate::containers::egress::HostView::read().neighbours;
            let rank = if list.names_refused_ranges(&neighbours) {
                Network::Full
            } else {
                Network::Allow
            };
            if rank > config.max_network {
                return Err(over("{\"allow\": [...]}"));
            }
            Ok((Network::Allow, Some(list)))
        }
        Some(other) => Err(ApiError::BadBody(format!(
            "network must be none, public, full or {{\"allow\": [...]}}, got {other}"
        ))),
    }
}

/// A `ttl` or `idle_timeout`: whole seconds, or a duration string; null is none.
fn parse_lifetime(field: &str, value: Option<Value>) -> Result<Option<Duration>, ApiError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(number)) => number.to_string(),
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(ApiError::BadBody(format!(
                "{field} must be seconds or a duration like 30m, got {other}"
            )))
        }
    };
    crate::expiry::parse_duration(&text)
        .map(Some)
        .map_err(|error| ApiError::BadBody(format!("{field}: {error}")))
}

/// `POST /sandboxes/{name}/exec`, `/exec/stream` and `/exec/detach`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// Sent by the SDKs; running as root on request is not something we honour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sudo: Option<bool>,
    #[serde(flatten)]
    pub command: CommandFields,
}

impl ExecBody {
    /// The command this body asks for, with the server's defaults filled in.
    pub fn validate(self, config: &Config) -> Result<CommandSpec, ApiError> {
        if self.sudo == Some(true) {
            return Err(ApiError::Domain(Error::Invalid(
                "sudo is not supported: commands run as the sandbox's profile user".into(),
            )));
        }
        self.command.into_spec(config)
    }
}

/// `POST /snapshots`: the sandbox to snapshot, and the snapshot's name (a default one
/// when absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// As `CreateBody::elsewhere`.
    #[serde(skip)]
    pub elsewhere: crate::tenants::Elsewhere,
}

impl SnapshotBody {
    pub fn validate(self) -> Result<(SandboxName, Option<SandboxName>), ApiError> {
        let sandbox = self
            .sandbox
            .ok_or_else(|| ApiError::BadBody("sandbox is required".into()))?;
        let sandbox = SandboxName::parse(&sandbox).map_err(ApiError::BadBody)?;
        let name = match self.name {
            None => None,
            Some(name) => Some(SandboxName::parse(&name).map_err(|message| {
                ApiError::BadBody(message.replacen("sandbox name", "snapshot name", 1))
            })?),
        };
        Ok((sandbox, name))
    }
}

/// `POST /sandboxes/{name}/extend`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl ExtendBody {
    /// `by`: a duration like `30m`, `2h` or `1d`.
    pub fn validate(self) -> Result<Duration, ApiError> {
        let by = self.by.ok_or_else(|| {
            ApiError::BadBody("by is required: a duration like 30m, 2h or 1d".into())
        })?;
        crate::expiry::parse_duration(&by)
            .map_err(|error| ApiError::BadBody(format!("by: {error}")))
    }
}

/// `PUT /sandboxes/{name}/files/{path}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutFileBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
}

impl PutFileBody {
    /// The file's content as bytes.
    pub fn validate(self) -> Result<Vec<u8>, ApiError> {
        let content = self
            .content
            .ok_or_else(|| ApiError::BadBody("content is required: a string".into()))?;
        file_bytes(content, self.encoding.as_deref())
    }
}

/// A file body's content as bytes: `utf8` (the default) as is, `base64` decoded.
fn file_bytes(content: String, encoding: Option<&str>) -> Result<Vec<u8>, ApiError> {
    match encoding {
        None | Some("utf8" | "utf-8") => Ok(content.into_bytes()),
        Some("base64") => crate::codec::base64::decode(&content)
            .map_err(|error| ApiError::BadBody(format!("content: {error}"))),
        Some(other) => Err(ApiError::BadBody(format!(
            "unknown encoding '{}': expected utf8 or base64",
            other.escape_debug()
        ))),
    }
}

/// Most files in one `POST /sandboxes/{name}/files`.
const MAX_BATCH_FILES: usize = 10_000;

/// `POST /sandboxes/{name}/files`: `{"files": {path: content}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
}

impl FilesBody {
    /// The files as (path, bytes) pairs: keys go through the same path rules as URLs
    /// (without percent-decoding); two keys naming the same path keep the later one in
    /// key order.
    pub fn validate(self) -> Result<Vec<(SandboxPath, Vec<u8>)>, ApiError> {
        let files = self.files.ok_or_else(|| {
            ApiError::BadBody("files is required: an object of path to UTF-8 content".into())
        })?;
        if files.is_empty() || files.len() > MAX_BATCH_FILES {
            return Err(ApiError::BadBody(format!(
                "files must hold between 1 and {MAX_BATCH_FILES} entries, got {}",
                files.len()
            )));
        }
        let mut parsed = BTreeMap::new();
        for (key, content) in files {
            let path = SandboxPath::parse(&key)
                .map_err(|error| ApiError::BadBody(format!("files: {error}")))?;
            parsed.insert(path, content.into_bytes());
        }
        Ok(parsed.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::containers::launcher::Launcher;
    use crate::containers::pool::Pool;
    use crate::engine::Docker;
    use crate::server::{handlers, routes, Context};

    /// Where the tests' engine would be: nowhere. Whatever these tests see answered
    /// other than a 503 was decided before the engine was asked.
    const NO_ENGINE: &str = "/nonexistent/agentkernel-unit-test.sock";

    fn context() -> Context {
        let config = Config {
            docker_socket: NO_ENGINE.into(),
            ..Config::default()
        };
        let docker = Docker::new(config.docker_socket.clone(), Duration::from_millis(100));
        Context::new(config, docker, Pool::local(Launcher::detect(false, None)))
    }

    /// The status and envelope a server with no engine answers: routed, parsed and
    /// dispatched as a worker does it.
    fn answer(method: &str, url: &str, body: &str) -> (u16, Value) {
        let context = context();
        let reply = routes::parse(method, url)
            .map_err(ApiError::from)
            .and_then(|route| Request::parse(route, body.as_bytes()))
            .and_then(|request| handlers::dispatch(&context, request))
            .unwrap_or_else(|error| error.reply());
        assert!(reply.stream.is_none(), "{method} {url}: an event stream");
        (reply.status, reply.into_envelope())
    }

    fn error_of(body: &Value) -> &str {
        body["error"].as_str().unwrap_or_default()
    }

    /// Asserts a 400 (or `status`) whose message contains `expected`.
    fn assert_refused(method: &str, url: &str, body: &str, status: u16, expected: &str) {
        let (got, answer) = answer(method, url, body);
        assert_eq!(got, status, "{method} {url} {body}: {answer}");
        assert_eq!(answer["success"], json!(false), "{answer}");
        assert!(
            error_of(&answer).contains(expected),
            "{method} {url} {body}: {answer}"
        );
    }

    // Moved from the integration tests (api.rs).
    #[test]
    fn malformed_bodies_get_400_naming_the_problem() {
        let cases = [
            ("{not json", "malformed JSON"),
            ("", "JSON object"),
            (r#"[["echo","hi"]]"#, "JSON object"),
            (r#"{"command":"echo hi"}"#, "invalid type"),
            (r#"{"command":[1,2]}"#, "invalid type"),
            (r#"{"command":[]}"#, "non-empty"),
            (r#"{"image":"x"}"#, "command is required"),
            (
                r#"{"command":["true"],"profile":"root"}"#,
                "unknown profile 'root'",
            ),
            (r#"{"command":["true"],"fast":"yes"}"#, "invalid type"),
            (r#"{"command":["true"],"env":["NOEQ"]}"#, "env entry 'NOEQ'"),
            (r#"{"command":["true"],"workdir":"rel"}"#, "absolute"),
            (r#"{"command":["true"],"timeout_ms":0}"#, "timeout_ms"),
            (r#"{"command":["true"],"extra":1}"#, "unknown field `extra`"),
        ];
        for (body, expected) in cases {
            assert_refused("POST", "/run", body, 400, expected);
        }
    }

    // Moved from the integration tests (validation.rs); that a valid reference which
    // is not there stays a 404 is in runs.rs and streams.rs.
    #[test]
    fn invalid_image_references_are_400s_naming_them_everywhere() {
        for image in [
            "/",
            "../../etc",
            "Busybox",
            "busybox:",
            "a//b",
            "x@sha256:abc",
        ] {
            let expected = format!("image '{image}'");
            let run = json!({"image": image, "command": ["true"]}).to_string();
            for path in ["/run", "/run/stream"] {
                assert_refused("POST", path, &run, 400, &expected);
            }
            let create = json!({"name": "bad-image", "image": image}).to_string();
            assert_refused("POST", "/sandboxes", &create, 400, &expected);
            let batch = json!({"commands": [{"image": image, "command": ["true"]}]});
            let (status, body) = answer("POST", "/batch/run", &batch.to_string());
            assert_eq!(status, 200, "{body}");
            let entry = &body["data"]["results"][0];
            assert_eq!(entry["output"], json!(null), "{body}");
            assert!(error_of(entry).contains(&expected), "batch {image}: {body}");
        }
    }

    // Moved from the integration tests (validation.rs).
    #[test]
    fn workdirs_the_engine_would_refuse_are_400s() {
        for workdir in ["/proc", "/dev", "/etc/hosts", "/a/../b"] {
            let body = json!({"profile": "restrictive", "fast": false, "command": ["true"],
                              "workdir": workdir});
            let expected = format!("'{workdir}'");
            assert_refused("POST", "/run", &body.to_string(), 400, &expected);
        }
        for (field, value) in [("workdir", json!("relative")), ("env", json!(["1X=y"]))] {
            let mut body = json!({"command": ["true"]});
            body[field] = value;
            assert_refused("POST", "/run", &body.to_string(), 400, "");
        }
    }

    // Moved from the integration tests (sandboxes.rs); the one case that needs the
    // engine, a missing image (404), is in runs.rs.
    #[test]
    fn invalid_create_requests_are_400s() {
        let long_name = format!(r#"{{"name":"{}"}}"#, "n".repeat(64));
        let cases = [
            (r#"{}"#, "name is required"),
            (r#"{"name":"-bad"}"#, "invalid sandbox name"),
            (r#"{"name":"a/b"}"#, "invalid sandbox name"),
            (&*long_name, "invalid sandbox name"),
            (r#"{"name":"ok","profile":"x"}"#, "unknown profile 'x'"),
            (
                r#"{"name":"ok","memory_mb":1}"#,
                "memory_mb must be between 16 and 16384",
            ),
            (r#"{"name":"ok","vcpus":99}"#, "vcpus must be between"),
            (
                r#"{"name":"ok","backend":"firecracker"}"#,
                "backend 'firecracker'",
            ),
            (
                r#"{"name":"ok","volumes":["/:/host"]}"#,
                "host paths are refused",
            ),
            (r#"{"name":"ok","volumes":"v:/d"}"#, "must be a list"),
            (r#"{"name":"ok","volumes":[1]}"#, "each is a string"),
            (r#"{"name":"ok","volumes":["v:/proc"]}"#, "managed"),
        ];
        for (body, expected) in cases {
            assert_refused("POST", "/sandboxes", body, 400, expected);
        }
    }

    // Moved from the integration tests (files.rs): the body is refused before the
    // sandbox is looked at.
    #[test]
    fn file_bodies_are_400s_naming_the_problem() {
        for (body, expected) in [
            (
                json!({ "content": "%%", "encoding": "base64" }),
                "invalid base64",
            ),
            (
                json!({ "content": "x", "encoding": "hex" }),
                "unknown encoding 'hex'",
            ),
            (json!({ "encoding": "utf8" }), "content is required"),
            (json!({ "content": "x", "mode": 493 }), "unknown field"),
        ] {
            let url = "/sandboxes/errs/files/tmp/x";
            assert_refused("PUT", url, &body.to_string(), 400, expected);
        }
    }

    /// The other side of the matrices above: what validates goes on to the engine (here
    /// a 503 naming its socket), so validation refuses no more than it should.
    #[test]
    fn valid_bodies_get_past_validation_to_the_engine() {
        for (method, url, body) in [
            ("POST", "/run", r#"{"command":["true"],"image":null}"#),
            ("POST", "/run/stream", r#"{"command":["true"]}"#),
            ("POST", "/sandboxes", r#"{"name":"ok","backend":"docker"}"#),
            ("POST", "/sandboxes", r#"{"name":"ok","vcpus":2}"#),
            ("POST", "/sandboxes/b/exec", r#"{"command":["true"]}"#),
            (
                "POST",
                "/sandboxes/b/exec/stream",
                r#"{"command":["true"]}"#,
            ),
            (
                "POST",
                "/sandboxes/b/exec/detach",
                r#"{"command":["true"]}"#,
            ),
            ("POST", "/sandboxes/b/extend", r#"{"by":"2h"}"#),
            ("PUT", "/sandboxes/b/files/tmp/x", r#"{"content":"x"}"#),
            ("POST", "/sandboxes/b/files", r#"{"files":{"/tmp/x":"1"}}"#),
            ("POST", "/sandboxes/b/start", ""),
        ] {
            assert_refused(method, url, body, 503, NO_ENGINE);
        }
        let (status, body) = answer(
            "POST",
            "/batch/run",
            r#"{"commands":[{"command":["true"]}]}"#,
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            error_of(&body["data"]["results"][0]).contains(NO_ENGINE),
            "{body}"
        );
    }

    #[test]
    fn bodies_survive_serializing_and_parsing_again() {
        let name = SandboxName::parse("box").unwrap();
        let path = SandboxPath::parse("/tmp/x").unwrap();
        let command = CommandFields {
            command: Some(vec!["sh".into(), "-c".into(), "echo \"€\"".into()]),
            env: Some(vec!["A=1".into()]),
            workdir: Some("/w".into()),
            stdin: Some("in\n".into()),
            timeout_ms: Some(5),
            max_output_bytes: Some(7),
        };
        let requests = [
            Request::Run(RunBody {
                image: Some("busybox".into()),
                profile: Some("restrictive".into()),
                network: Some(json!("none")),
                disk_mb: Some(64),
                runtime: Some("runsc".into()),
                fast: Some(false),
                command: command.clone(),
            }),
            Request::RunStream(RunBody::default()),
            Request::BatchRun(BatchBody {
                commands: Some(vec![json!({"command": ["true"]})]),
            }),
            Request::CreateSandbox(CreateBody {
                name: Some("box".into()),
                memory_mb: Some(64),
                vcpus: Some(1),
                pids: Some(64),
                backend: Some("docker".into()),
                ..CreateBody::default()
            }),
            Request::ExecSandbox(
                name.clone(),
                ExecBody {
                    sudo: Some(false),
                    command,
                },
            ),
            Request::ExecSandboxStream(name.clone(), ExecBody::default()),
            Request::ExecDetach(name.clone(), ExecBody::default()),
            Request::ExtendSandbox(
                name.clone(),
                ExtendBody {
                    by: Some("1d".into()),
                },
            ),
            Request::PutSandboxFile(
                name.clone(),
                path.clone(),
                PutFileBody {
                    content: Some("AA==".into()),
                    encoding: Some("base64".into()),
                },
            ),
            Request::PostSandboxFiles(
                name.clone(),
                FilesBody {
                    files: Some([("/tmp/a".to_string(), "1".to_string())].into()),
                },
            ),
            Request::StartSandbox(name.clone()),
            Request::GetSandboxFile(name, path),
            Request::Health,
        ];
        for request in requests {
            let body = request.body();
            let parsed = Request::parse(request.route(), body.as_deref().unwrap_or_default());
            assert_eq!(parsed.ok().as_ref(), Some(&request), "{request:?}");
        }
        // Fields not given are left out, not sent as null.
        let empty = Request::Run(RunBody::default()).body().unwrap();
        assert_eq!(empty, b"{}");
    }

    #[test]
    fn file_bodies_decode_by_encoding() {
        assert_eq!(
            file_bytes("héllo".into(), None).unwrap(),
            "héllo".as_bytes()
        );
        assert_eq!(file_bytes("x".into(), Some("utf8")).unwrap(), b"x");
        assert_eq!(
            file_bytes("AP8=".into(), Some("base64")).unwrap(),
            vec![0x00, 0xff]
        );
        let error = file_bytes("A!".into(), Some("base64")).unwrap_err();
        assert!(matches!(error, ApiError::BadBody(m) if m.contains("'!'")));
        let error = file_bytes("x".into(), Some("hex")).unwrap_err();
        assert!(matches!(error, ApiError::BadBody(m) if m.contains("'hex'")));
    }

    #[test]
    fn put_bodies_need_content_and_know_their_fields() {
        let parse = |text: &str| parse_body::<PutFileBody>(text.as_bytes());
        let body = parse(r#"{"content":"x","encoding":null}"#).unwrap();
        assert_eq!((body.content.as_deref(), body.encoding), (Some("x"), None));
        assert!(parse(r#"{"content":"x","mode":"0755"}"#).is_err());
        assert!(parse(r#"{"content":5}"#).is_err());
    }

    #[test]
    fn batch_keys_are_sandbox_paths() {
        let parse_files = |body: &[u8]| parse_body::<FilesBody>(body).and_then(FilesBody::validate);
        let files = parse_files(br#"{"files":{"tmp/b":"2","/tmp/a":"1","//tmp//b":"3"}}"#).unwrap();
        let paths: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(paths, ["/tmp/a", "/tmp/b"]);
        for (body, expected) in [
            (r#"{"files":{"/tmp/../x":"1"}}"#, "'..'"),
            (r#"{"files":{}}"#, "between 1 and"),
            (r#"{}"#, "files is required"),
            (r#"{"files":{"/x":1}}"#, "invalid request body"),
        ] {
            match parse_files(body.as_bytes()) {
                Err(ApiError::BadBody(message)) => {
                    assert!(message.contains(expected), "{body}: {message}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
