//! Handlers: plain functions from (context, typed input) to a reply, named after their
//! routes. Request bodies are parsed here into domain types (`RunRequest`,
//! `CreateSandbox`, `CommandSpec`, `SandboxPath` and file bytes) so that the code below
//! never re-validates.
//!
//! Invariants: unknown body fields are refused (400), except those the published SDKs
//! send, which must then be null or a value we honour; explicit JSON `null` means
//! "not given" for every optional field.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Config;
use crate::containers::labels::SandboxName;
use crate::containers::profile::{
    check_bound, check_host_cpus, check_host_memory, Limits, Profile, MEMORY_MB_RANGE, PIDS_RANGE,
    VCPUS_RANGE,
};
use crate::engine::reference::ImageRef;
use crate::error::Error;
use crate::exec::{CommandSpec, NoObserver};
use crate::files::{self, SandboxPath};
use crate::run::RunRequest;
use crate::sandbox::{self, CreateSandbox};

use super::response::{status_of, ApiError, Reply};
use super::sse::StreamJob;
use super::views::{command_data, sandbox_data};
use super::Context;

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
    // serde takes a sequence for a struct; our bodies are objects, always.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(malformed)?;
    if !value.is_object() {
        return Err(ApiError::BadBody(
            "request body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(value).map_err(malformed)
}

/// The per-command fields shared by `/run` and exec.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandFields {
    command: Option<Vec<String>>,
    env: Option<Vec<String>>,
    workdir: Option<String>,
    stdin: Option<String>,
    timeout_ms: Option<u64>,
    max_output_bytes: Option<u64>,
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

/// `data` stays the string `"ok"` the SDKs expect; what the edge counts rides beside it.
pub fn get_health(context: &Context) -> Result<Reply, ApiError> {
    use std::sync::atomic::Ordering::SeqCst;
    let edge = &context.edge;
    let mut reply = Reply::ok(json!("ok"));
    reply.body["status"] = json!("ok");
    reply.body["workers"] = json!({
        "configured": context.config.workers,
        "alive": edge.workers_alive.load(SeqCst),
    });
    reply.body["connections"] = json!({
        "open": edge.connections.load(SeqCst),
        "max": edge.max_connections.load(SeqCst),
    });
    Ok(reply)
}

pub fn get_pool(context: &Context) -> Result<Reply, ApiError> {
    Ok(Reply::ok(context.pool.stats()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    image: Option<String>,
    profile: Option<String>,
    fast: Option<bool>,
    #[serde(flatten)]
    command: CommandFields,
}

/// A `/run` body as a validated request.
pub fn parse_run(context: &Context, body: &[u8]) -> Result<RunRequest, ApiError> {
    run_request(context, parse_body(body)?)
}

fn run_request(context: &Context, body: RunBody) -> Result<RunRequest, ApiError> {
    let profile = parse_profile(body.profile, &context.config)?;
    let command = body.command.into_spec(&context.config)?;
    if let Some(workdir) = &command.workdir {
        profile.check_workdir(workdir).map_err(ApiError::BadBody)?;
    }
    let image = parse_image(
        body.image,
        context.config.images.image_for(&command.argv[0]),
    )?;
    Ok(RunRequest {
        image,
        profile,
        fast: body.fast.unwrap_or(true),
        command,
    })
}

pub fn post_run(context: &Context, body: &[u8]) -> Result<Reply, ApiError> {
    let request = parse_run(context, body)?;
    let result = crate::run::run(
        &context.docker,
        &context.config,
        &context.pool,
        &request,
        &mut NoObserver,
    )?;
    Ok(Reply::ok(command_data(&result)))
}

pub fn post_run_stream(context: &Context, body: &[u8]) -> Result<Reply, ApiError> {
    let request = parse_run(context, body)?;
    // Errors that have a status code are answered before the stream starts.
    if !context
        .docker
        .image_exists(request.image.as_str())
        .map_err(Error::from)?
    {
        return Err(Error::ImageMissing(request.image.to_string()).into());
    }
    Ok(Reply::events(StreamJob::Run(request)))
}

pub fn get_sandboxes(context: &Context) -> Result<Reply, ApiError> {
    let sandboxes = sandbox::list(&context.docker, &context.config)?;
    Ok(Reply::ok(Value::Array(
        sandboxes.iter().map(sandbox_data).collect(),
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: Option<String>,
    image: Option<String>,
    profile: Option<String>,
    memory_mb: Option<u64>,
    vcpus: Option<u64>,
    pids: Option<u64>,
    // Sent by the published SDKs; accepted only when null or something we honour.
    backend: Option<String>,
    source_url: Option<Value>,
    source_ref: Option<Value>,
    volumes: Option<Value>,
    secrets: Option<Value>,
    secret_files: Option<Value>,
}

pub fn post_sandboxes(context: &Context, body: &[u8]) -> Result<Reply, ApiError> {
    let body: CreateBody = parse_body(body)?;
    let name = body
        .name
        .ok_or_else(|| ApiError::BadBody("name is required".into()))?;
    let name = SandboxName::parse(&name).map_err(ApiError::BadBody)?;
    if let Some(backend) = body.backend.filter(|b| b != "docker") {
        return Err(ApiError::BadBody(format!(
            "backend '{backend}' is not supported: this server runs 'docker'"
        )));
    }
    let unsupported = [
        ("source_url", &body.source_url),
        ("source_ref", &body.source_ref),
        ("volumes", &body.volumes),
        ("secrets", &body.secrets),
        ("secret_files", &body.secret_files),
    ];
    for (field, value) in unsupported {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::BadBody(format!(
                "{field} is not supported by this server"
            )));
        }
    }
    let profile = parse_profile(body.profile, &context.config)?;
    let defaults = profile.default_limits();
    let image = parse_image(body.image, &context.config.images.default_image)?;
    // What the engine's host has bounds an override too (asked once, then cached).
    let host = || context.docker.host_resources().map_err(Error::from);
    let limits = Limits {
        memory_mb: match body.memory_mb {
            Some(mb) => {
                check_bound("memory_mb", mb, MEMORY_MB_RANGE).map_err(ApiError::BadBody)?;
                check_host_memory(mb, host()?).map_err(ApiError::BadBody)?
            }
            None => defaults.memory_mb,
        },
        millicpus: match body.vcpus {
            Some(cpus) => {
                check_bound("vcpus", cpus, VCPUS_RANGE).map_err(ApiError::BadBody)?;
                check_host_cpus(cpus, host()?).map_err(ApiError::BadBody)? * 1000
            }
            None => defaults.millicpus,
        },
        pids: match body.pids {
            Some(pids) => check_bound("pids", pids, PIDS_RANGE).map_err(ApiError::BadBody)?,
            None => defaults.pids,
        },
    };
    let request = CreateSandbox {
        name,
        image,
        profile,
        limits,
    };
    let create = |launcher| sandbox::create(&context.docker, &context.config, &launcher, &request);
    let created = match create(context.pool.launcher()) {
        Err(error) if context.pool.stub_mount_failed(&error) => create(context.pool.launcher()),
        other => other,
    }?;
    context.history.event(&request.name, "created");
    Ok(Reply::created(sandbox_data(&created)))
}

pub fn get_sandbox(context: &Context, name: &SandboxName) -> Result<Reply, ApiError> {
    let found = sandbox::get(&context.docker, &context.config, name)?;
    Ok(Reply::ok(sandbox_data(&found)))
}

pub fn delete_sandbox(context: &Context, name: &SandboxName) -> Result<Reply, ApiError> {
    sandbox::delete(&context.docker, &context.config, name)?;
    context.history.event(name, "removed");
    Ok(Reply::ok(json!({ "name": name.as_str(), "removed": true })))
}

pub fn post_sandbox_start(context: &Context, name: &SandboxName) -> Result<Reply, ApiError> {
    let started = sandbox::start(&context.docker, &context.config, name)?;
    context.history.event(name, "started");
    Ok(Reply::ok(sandbox_data(&started)))
}

pub fn post_sandbox_stop(context: &Context, name: &SandboxName) -> Result<Reply, ApiError> {
    let stopped = sandbox::stop(&context.docker, &context.config, name)?;
    context.history.event(name, "stopped");
    Ok(Reply::ok(sandbox_data(&stopped)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    /// Sent by the SDKs; running as root on request is not something we honour.
    sudo: Option<bool>,
    #[serde(flatten)]
    command: CommandFields,
}

/// An exec body as a validated command.
pub fn parse_exec(context: &Context, body: &[u8]) -> Result<CommandSpec, ApiError> {
    let body: ExecBody = parse_body(body)?;
    if body.sudo == Some(true) {
        return Err(ApiError::Domain(Error::Invalid(
            "sudo is not supported: commands run as the sandbox's profile user".into(),
        )));
    }
    body.command.into_spec(&context.config)
}

pub fn post_sandbox_exec(
    context: &Context,
    name: &SandboxName,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let spec = parse_exec(context, body)?;
    let result = sandbox::exec(
        &context.docker,
        &context.config,
        name,
        &spec,
        &mut NoObserver,
    )?;
    context.history.exec(name, &spec.argv, &result);
    Ok(Reply::ok(command_data(&result)))
}

pub fn post_sandbox_exec_stream(
    context: &Context,
    name: &SandboxName,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let spec = parse_exec(context, body)?;
    let found = sandbox::get(&context.docker, &context.config, name)?;
    if found.status != sandbox::SandboxStatus::Running {
        return Err(Error::SandboxNotRunning(name.to_string()).into());
    }
    Ok(Reply::events(StreamJob::Exec(name.clone(), spec)))
}

/// The history of the sandbox of that name: the current one's when it exists (from
/// its creation on), else everything recorded under the name (a removed sandbox's
/// past); 404 when there is neither.
pub fn get_sandbox_logs(context: &Context, name: &SandboxName) -> Result<Reply, ApiError> {
    let entries = match sandbox::get(&context.docker, &context.config, name) {
        Ok(_) => context.history.read_current(name),
        Err(Error::SandboxNotFound(_)) => {
            let entries = context.history.read(name);
            if entries.is_empty() {
                return Err(Error::SandboxNotFound(name.to_string()).into());
            }
            entries
        }
        Err(error) => return Err(error.into()),
    };
    Ok(Reply::ok(Value::Array(entries)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    commands: Option<Vec<Value>>,
}

/// Runs every command of the batch, up to `batch_concurrency` at once; one command's
/// failure is its own result, not the batch's.
pub fn post_batch_run(context: &Context, body: &[u8]) -> Result<Reply, ApiError> {
    let body: BatchBody = parse_body(body)?;
    let commands = body.commands.ok_or_else(|| {
        ApiError::BadBody("commands is required: an array of run requests".into())
    })?;
    let limit = context.config.max_batch;
    if commands.is_empty() || commands.len() > limit {
        return Err(ApiError::BadBody(format!(
            "commands must hold between 1 and {limit} entries, got {}",
            commands.len()
        )));
    }
    // An entry that does not validate is that entry's failure, like one that cannot run.
    let requests: Vec<Result<RunRequest, String>> = commands
        .into_iter()
        .map(|item| {
            let body: RunBody = serde_json::from_value(item)
                .map_err(|error| format!("invalid command entry: {error}"))?;
            run_request(context, body).map_err(|error| status_of(&error).1)
        })
        .collect();
    let results: Vec<Mutex<Option<Value>>> = requests.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let threads = context.config.batch_concurrency.clamp(1, requests.len());
    std::thread::scope(|scope| {
        for index in 0..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("batch-{index}"))
                .spawn_scoped(scope, || loop {
                    let item = next.fetch_add(1, Ordering::SeqCst);
                    let Some(request) = requests.get(item) else {
                        return;
                    };
                    let request = match request {
                        Ok(request) => request,
                        Err(message) => {
                            let value = json!({ "output": null, "error": message });
                            *results[item].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
                            continue;
                        }
                    };
                    let value = match crate::run::run(
                        &context.docker,
                        &context.config,
                        &context.pool,
                        request,
                        &mut NoObserver,
                    ) {
                        Ok(result) => {
                            let mut data = command_data(&result);
                            data["error"] = Value::Null;
                            data
                        }
                        Err(error) => json!({ "output": null, "error": error.to_string() }),
                    };
                    *results[item].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
                });
            if let Err(error) = spawned {
                log::error!("cannot start a batch thread: {error}");
            }
        }
    });
    let results: Vec<Value> = results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| json!({ "output": null, "error": "not run" }))
        })
        .collect();
    Ok(Reply::ok(json!({ "results": results })))
}

/// Most files in one `POST /sandboxes/{name}/files`.
const MAX_BATCH_FILES: usize = 10_000;

/// `GET /sandboxes/{name}/files/{path}`: the content as text when it is UTF-8, else as
/// base64; `size` is the file's byte count either way.
pub fn get_sandbox_file(
    context: &Context,
    name: &SandboxName,
    path: &SandboxPath,
) -> Result<Reply, ApiError> {
    let data = files::read_file(&context.docker, &context.config, name, path)?;
    let size = data.len();
    let (content, encoding) = match String::from_utf8(data) {
        Ok(text) => (text, "utf8"),
        Err(error) => (crate::codec::base64::encode(error.as_bytes()), "base64"),
    };
    Ok(Reply::ok(
        json!({ "content": content, "encoding": encoding, "size": size }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutFileBody {
    content: Option<String>,
    encoding: Option<String>,
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

/// `PUT /sandboxes/{name}/files/{path}` with `{"content", "encoding"}`.
pub fn put_sandbox_file(
    context: &Context,
    name: &SandboxName,
    path: &SandboxPath,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let body: PutFileBody = parse_body(body)?;
    let content = body
        .content
        .ok_or_else(|| ApiError::BadBody("content is required: a string".into()))?;
    let data = file_bytes(content, body.encoding.as_deref())?;
    let size = data.len();
    let files = [(path.clone(), data)];
    files::write_files(&context.docker, &context.config, name, &files)?;
    Ok(Reply::ok(json!({ "path": path.as_str(), "size": size })))
}

/// `DELETE /sandboxes/{name}/files/{path}`.
pub fn delete_sandbox_file(
    context: &Context,
    name: &SandboxName,
    path: &SandboxPath,
) -> Result<Reply, ApiError> {
    files::delete_file(&context.docker, &context.config, name, path)?;
    Ok(Reply::ok(json!({ "path": path.as_str(), "deleted": true })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostFilesBody {
    files: Option<std::collections::BTreeMap<String, String>>,
}

/// A batch body as (path, bytes) pairs: keys go through the same path rules as URLs
/// (without percent-decoding); two keys naming the same path keep the later one in
/// key order.
fn parse_files(body: &[u8]) -> Result<Vec<(SandboxPath, Vec<u8>)>, ApiError> {
    let body: PostFilesBody = parse_body(body)?;
    let files = body.files.ok_or_else(|| {
        ApiError::BadBody("files is required: an object of path to UTF-8 content".into())
    })?;
    if files.is_empty() || files.len() > MAX_BATCH_FILES {
        return Err(ApiError::BadBody(format!(
            "files must hold between 1 and {MAX_BATCH_FILES} entries, got {}",
            files.len()
        )));
    }
    let mut parsed = std::collections::BTreeMap::new();
    for (key, content) in files {
        let path = SandboxPath::parse(&key)
            .map_err(|error| ApiError::BadBody(format!("files: {error}")))?;
        parsed.insert(path, content.into_bytes());
    }
    Ok(parsed.into_iter().collect())
}

/// `POST /sandboxes/{name}/files` with `{"files": {path: content}}`: one upload for all.
pub fn post_sandbox_files(
    context: &Context,
    name: &SandboxName,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let files = parse_files(body)?;
    let written = files::write_files(&context.docker, &context.config, name, &files)?;
    Ok(Reply::ok(json!({ "written": written })))
}

#[cfg(test)]
mod tests {
    use super::*;

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

/// `GET /backends`, as the published SDKs ask it: one backend, docker, usable when
/// the engine answers.
pub fn get_backends(context: &Context) -> Result<Reply, ApiError> {
    let (usable, reason) = match context.docker.ping() {
        Ok(version) => (
            true,
            format!(
                "Docker Engine API {version} at {}",
                context.docker.socket().display()
            ),
        ),
        Err(error) => (false, error.to_string()),
    };
    let capabilities = json!({
        "mount_cwd": false, "mount_home": false, "attach": false, "host_volumes": false,
        "ssh": false, "proxy_secret_bindings": false, "secret_files": false,
        "snapshots": false, "resume": true, "full_state_pause_resume": false,
        "full_state_fork": false, "endpoints": false,
    });
    Ok(Reply::ok(json!({
        "default_backend": "docker",
        "backends": [{
            "backend": "docker",
            "configured": true,
            "usable": usable,
            "readiness_reason": reason,
            "capabilities": capabilities,
        }],
    })))
}

pub fn get_sandbox_by_uuid(context: &Context, uuid: &str) -> Result<Reply, ApiError> {
    let found = sandbox::find_by_uuid(&context.docker, &context.config, uuid)?;
    Ok(Reply::ok(sandbox_data(&found)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    by: Option<String>,
}

/// `POST /sandboxes/{name}/extend`: sandboxes here never expire, so any extension is
/// already granted; the answer says so (`expires_at: null`) rather than pretend a time.
pub fn post_sandbox_extend(
    context: &Context,
    name: &SandboxName,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let body: ExtendBody = parse_body(body)?;
    let by = body.by.unwrap_or_default();
    let valid = by.len() >= 2
        && by.is_ascii()
        && by[..by.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && matches!(by.as_bytes()[by.len() - 1], b's' | b'm' | b'h' | b'd');
    if !valid {
        return Err(ApiError::BadBody(format!(
            "by must be a duration like 30m, 2h or 1d, got '{by}'"
        )));
    }
    sandbox::get(&context.docker, &context.config, name)?;
    Ok(Reply::ok(json!({
        "name": name.as_str(),
        "expires_at": null,
        "message": "sandboxes on this server do not expire",
    })))
}

/// `POST /sandboxes/{name}/exec/detach`: starts the command and answers at once with
/// its record (`id`, `pid`, `status`, ...); it runs on in the sandbox.
pub fn post_sandbox_exec_detach(
    context: &Context,
    name: &SandboxName,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let spec = parse_exec(context, body)?;
    let record = crate::detached::start_in(&context.docker, &context.config, name, &spec)?;
    context.history.append_detached(name, &spec.argv, &record);
    Ok(Reply::ok(record))
}

pub fn get_detached_list(context: &Context, name: &SandboxName) -> Result<Reply, ApiError> {
    let records = crate::detached::list_in(&context.docker, &context.config, name)?;
    Ok(Reply::ok(records))
}

pub fn get_detached(context: &Context, name: &SandboxName, id: &str) -> Result<Reply, ApiError> {
    let record = crate::detached::status(&context.docker, &context.config, name, id)?;
    Ok(Reply::ok(record))
}

pub fn delete_detached(context: &Context, name: &SandboxName, id: &str) -> Result<Reply, ApiError> {
    let message = crate::detached::kill_in(&context.docker, &context.config, name, id)?;
    Ok(Reply::ok(message))
}

pub fn get_detached_logs(
    context: &Context,
    name: &SandboxName,
    id: &str,
    stderr_only: bool,
) -> Result<Reply, ApiError> {
    let mut logs = crate::detached::logs_of(&context.docker, &context.config, name, id)?;
    if stderr_only {
        logs["stdout"] = Value::Null;
    }
    Ok(Reply::ok(logs))
}

/// The OpenAPI 3.1 description of every route, body, answer and error of this server,
/// kept beside this file and checked against the router by `routes`' tests.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /openapi.json`: the OpenAPI document, as `application/json`. The one success
/// answer that is not in the `{"success","data","error"}` envelope: it is the
/// description of the envelope (and of everything else), so it is served as is. It
/// needs the API key like every other route.
pub fn get_openapi(_context: &Context) -> Result<Reply, ApiError> {
    // Parsed per request rather than kept in a global: it takes well under a millisecond,
    // and a unit test proves it parses.
    let document: Value = serde_json::from_str(OPENAPI).map_err(|error| {
        log::error!("the embedded OpenAPI document is not JSON: {error}");
        ApiError::Panic
    })?;
    Ok(Reply {
        status: 200,
        body: document,
        headers: Vec::new(),
        stream: None,
    })
}
