//! One-shot runs: a fresh container per command, removed afterwards.
//!
//! The cold path follows the race-free flow measured in the engine notes: create →
//! attach (before start, so no output is missed) → start → read to EOF → wait →
//! inspect (for OOM) → remove. The command's argv becomes the container's entrypoint
//! as is, with no shell in between, so arguments arrive exactly as given.
//!
//! Invariants: every container made here is labelled `kind=run` and is removed on every
//! path out, success or error; a missing image is reported before anything is created.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::command::{collect_stream, CommandResult, CommandSpec, Status};
use crate::config::Config;
use crate::docker::{ContainerSpec, Docker, DockerError};
use crate::error::{Error, Result};
use crate::labels::{self, Kind};
use crate::profile::Profile;

/// A validated `/run` request.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    pub image: String,
    pub profile: Profile,
    pub fast: bool,
    pub command: CommandSpec,
}

/// Runs a command in a fresh container.
pub fn run(docker: &Docker, config: &Config, request: &RunRequest) -> Result<CommandResult> {
    run_cold(docker, config, request)
}

pub fn run_cold(docker: &Docker, config: &Config, request: &RunRequest) -> Result<CommandResult> {
    let started = Instant::now();
    if !docker.image_exists(&request.image)? {
        return Err(Error::ImageMissing(request.image.clone()));
    }
    let spec = &request.command;
    let profile = request.profile;
    let container = ContainerSpec {
        name: None,
        image: request.image.clone(),
        labels: labels::labels(
            &config.namespace,
            Kind::Run,
            &request.image,
            profile.name(),
            None,
        ),
        entrypoint: Some(spec.argv.clone()),
        cmd: None,
        env: spec.env.clone(),
        working_dir: spec.workdir.clone(),
        user: profile.user().map(str::to_string),
        open_stdin: spec.stdin.is_some(),
        auto_remove: false,
        host: profile.host_settings(
            profile.default_limits(),
            spec.workdir.as_deref().unwrap_or("/"),
            Vec::new(),
        ),
    };
    let id = docker.container_create(&container).map_err(|error| {
        if error.is_not_found() {
            Error::ImageMissing(request.image.clone())
        } else {
            Error::Engine(error)
        }
    })?;
    let result = attach_start_collect(docker, &id, spec, started);
    if let Err(error) = docker.container_remove(&id) {
        log::warn!("could not remove run container {id}: {error}");
    }
    result
}

fn attach_start_collect(
    docker: &Docker,
    id: &str,
    spec: &CommandSpec,
    started: Instant,
) -> Result<CommandResult> {
    let mut hijacked = docker.container_attach(id, spec.stdin.is_some())?;
    if let Err(error) = docker.container_start(id) {
        return match error {
            // The program could not be started (not found, not executable): report it
            // the way a shell would, as a command result.
            DockerError::Api {
                status: 400,
                message,
            } => Ok(CommandResult {
                output: message.clone().into_bytes(),
                stdout: Vec::new(),
                stderr: message.into_bytes(),
                exit_code: Some(127),
                signal: None,
                status: Status::Exited,
                duration: started.elapsed(),
            }),
            other => Err(Error::Engine(other)),
        };
    }
    let feed = spec
        .stdin
        .as_deref()
        .map(|data| (hijacked.stdin.try_clone(), data));
    let collected = with_stdin_fed(feed, || {
        collect_stream(
            &mut hijacked,
            started + spec.timeout,
            spec.max_output_bytes,
            || {
                if let Err(error) = docker.container_kill(id) {
                    log::warn!("could not kill timed-out container {id}: {error}");
                }
            },
        )
    })
    .map_err(|source| {
        Error::Engine(DockerError::Io {
            operation: "attach stream".into(),
            source,
        })
    })?;
    drop(hijacked);
    let exit_code = docker.container_wait(id, std::time::Duration::from_secs(30))?;
    let oom_killed = docker
        .container_inspect(id)
        .map(|inspect| inspect.state.oom_killed)
        .unwrap_or(false);
    let status = if collected.timed_out {
        Status::Timeout
    } else if oom_killed {
        Status::OomKilled
    } else if collected.truncated {
        Status::OutputTruncated
    } else {
        Status::Exited
    };
    Ok(CommandResult {
        output: collected.output,
        stdout: collected.stdout,
        stderr: collected.stderr,
        exit_code: if collected.timed_out {
            None
        } else {
            Some(exit_code)
        },
        signal: None,
        status,
        duration: started.elapsed(),
    })
}

/// Runs `read` while another thread writes `stdin` (if any) and half-closes: reading
/// and writing must overlap, or a command that echoes its input deadlocks on a full
/// pipe.
pub fn with_stdin_fed<T>(
    feed: Option<(std::io::Result<UnixStream>, &[u8])>,
    read: impl FnOnce() -> T,
) -> T {
    let Some((writer, data)) = feed else {
        return read();
    };
    std::thread::scope(|scope| {
        let feeder = std::thread::Builder::new()
            .name("stdin-feeder".into())
            .spawn_scoped(scope, move || {
                let mut writer = writer?;
                writer.write_all(data)?;
                writer.shutdown(std::net::Shutdown::Write)
            });
        let result = read();
        if let Ok(handle) = feeder {
            match handle.join() {
                Ok(Err(error)) => log::debug!("stdin feeder stopped early: {error}"),
                Err(_) => log::warn!("stdin feeder panicked"),
                Ok(Ok(())) => {}
            }
        }
        result
    })
}
