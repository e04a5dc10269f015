//! The command line: `main` calls `run(parse(args))`. The parser takes explicit
//! arguments and environment so it is unit-testable; errors are printed once.
//!
//! Client commands (`run`, `exec`, `sandbox ...`, `health`) become an API request
//! (method, path, JSON body) built here and sent through a `client::Backend`, local or
//! remote; what they print is computed from the API's `data` alone, so both modes print
//! the same thing. `serve` and `stub` are the server and its in-container helper.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error. `run` and `exec` exit with the
//! command's own code instead: 124 on timeout, 128+N when killed by signal N, and 125
//! when agentkernel itself failed (as `docker run` does).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use lexopt::prelude::*;
use serde_json::{json, Map, Value};

pub mod backend;

use self::backend::Backend;
use crate::config::{Config, Environment, ImageTable, Namespace};
use crate::containers::labels::SandboxName;
use crate::containers::pool::PoolKey;
use crate::containers::profile::Profile;
use crate::engine::frames::StreamKind;
use crate::exec::Observer;

/// The help of one command: its usage line(s), printed alone on a usage error, and the
/// details `--help` adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic {
    pub usage: &'static str,
    pub details: &'static str,
}

impl Topic {
    pub fn help(&self) -> String {
        format!("Usage: {}\n\n{}", self.usage, self.details)
    }
}

pub const MAIN: Topic = Topic {
    usage: "agentkernel [--server URL] [-v|-q] COMMAND [ARGS...]",
    details: "\
Run untrusted commands in isolated Docker containers.

Commands:
  run [OPTIONS] [--] CMD [ARGS...]        run a command in a fresh container
  exec [OPTIONS] NAME [--] CMD [ARGS...]  run a command in a running sandbox
  sandbox create|list|info|start|stop|remove
                                          manage persistent sandboxes
  health                                  check that the engine (or server) answers
  serve [OPTIONS]                         serve the HTTP API

Options, before or after the command:
  --server URL     send every command to a running server over HTTP instead of
                   driving the local Docker Engine (also AGENTKERNEL_URL)
  -v, --verbose    more log output on stderr (-vv for debug)
  -q, --quiet      only errors in the log
  -h, --help       this help; `agentkernel COMMAND --help` for one command
  -V, --version    the version

Exit status: 0 success, 1 failure, 2 usage error. run and exec exit with the
command's code: 124 on timeout, 128+N on signal N, 125 if agentkernel failed.

Environment:
  AGENTKERNEL_URL            server to use (same as --server)
  AGENTKERNEL_API_KEY        serve: require this key; clients: send it as X-API-Key
  AGENTKERNEL_NAMESPACE      namespace of our containers (default: default)
  AGENTKERNEL_DEFAULT_IMAGE  image for commands of no known runtime (default: alpine:3.20)
  AGENTKERNEL_IMAGE_<RUNTIME> image for a runtime, e.g. AGENTKERNEL_IMAGE_PYTHON
  AGENTKERNEL_STUB=off       never use the in-container stub (docker exec instead)
  AGENTKERNEL_LOG            log level: error, warn, info, debug, trace
                             (default: info for serve, warn otherwise)
  DOCKER_HOST                unix:///path/to/docker.sock (default: /var/run/docker.sock)
",
};

pub const RUN: Topic = Topic {
    usage: "agentkernel run [--image I] [--profile P] [--no-fast] [--timeout SECS] \
[-e K=V]... [-w DIR] [--json] [--] CMD [ARGS...]",
    details: "\
Runs CMD with exactly these arguments (no shell) in a fresh container, removed
afterwards. Its stdout and stderr arrive on ours as it produces them; stdin is
passed through when it is not a terminal. Exits with the command's exit code:
124 on timeout, 128+N if killed by signal N, 125 if agentkernel itself failed.

  --image I        image (default: chosen from CMD's name, else the default image)
  --profile P      permissive, moderate (default) or restrictive
  --no-fast        a freshly started container instead of a warm one
  --timeout SECS   kill the command after SECS seconds (default: 30)
  -e, --env K=V    set an environment variable (-e K passes our own K)
  -w, --workdir DIR  absolute working directory
  --json           print the API's result object at the end instead of streaming
",
};

pub const EXEC: Topic = Topic {
    usage: "agentkernel exec [-e K=V]... [-w DIR] [--timeout SECS] [--json] NAME [--] \
CMD [ARGS...]",
    details: "\
Runs CMD in the running sandbox NAME, streaming its output; exit codes as for run.

  -e, --env K=V    set an environment variable (-e K passes our own K)
  -w, --workdir DIR  absolute working directory
  --timeout SECS   kill the command after SECS seconds (default: 30)
  --json           print the API's result object at the end instead of streaming
",
};

pub const SANDBOX: Topic = Topic {
    usage: "agentkernel sandbox create|list|info|start|stop|remove ...",
    details: "\
Persistent sandboxes: containers that keep their files across stop and start.

  agentkernel sandbox create NAME [--image I] [--profile P] [--memory-mb N]
                                  [--vcpus N] [--pids N] [--json]
  agentkernel sandbox list [--json]        an aligned table, or the API's JSON
  agentkernel sandbox info NAME [--json]
  agentkernel sandbox start|stop|remove NAME [--json]
",
};

pub const SANDBOX_CREATE: Topic = Topic {
    usage: "agentkernel sandbox create NAME [--image I] [--profile P] [--memory-mb N] \
[--vcpus N] [--pids N] [--json]",
    details: "\
Creates and starts a sandbox; prints its name (or the API's object with --json).
Limits default to the profile's; memory 16-16384 MiB, vcpus 1-16, pids 16-4096.
",
};

pub const SANDBOX_LIST: Topic = Topic {
    usage: "agentkernel sandbox list [--json]",
    details: "Lists the sandboxes of the namespace as an aligned table.\n",
};

pub const SANDBOX_INFO: Topic = Topic {
    usage: "agentkernel sandbox info NAME [--json]",
    details: "One sandbox, with the limits the engine applied, as `key  value` lines.\n",
};

pub const SANDBOX_CHANGE: Topic = Topic {
    usage: "agentkernel sandbox start|stop|remove NAME [--json]",
    details: "Starts, stops (files are kept) or removes a sandbox; prints its name.\n",
};

pub const HEALTH: Topic = Topic {
    usage: "agentkernel health",
    details: "\
Prints ok when the Docker Engine answers (local mode) or the server does (--server).
",
};

pub const SERVE: Topic = Topic {
    usage: "agentkernel serve [--host ADDR] [--port N] [--workers N] [--queue N]
                    [--namespace NS] [--default-image IMAGE] [--image RUNTIME=IMAGE]...
                    [--default-profile P] [--max-body-bytes N]
                    [--pool IMAGE[:PROFILE]=N]... [--pool-size N] [--pool-dynamic-size N]
                    [--no-stub] [--default-timeout-ms N] [--max-timeout-ms N]
                    [--max-output-bytes N] [--max-file-bytes N] [--client-timeout-secs N]
                    [--max-connections N] [--idle-timeout-secs N] [--head-timeout-secs N]",
    details: "\
Serves the HTTP API on 127.0.0.1:8080 until SIGTERM or SIGINT. See README.md.
",
};

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    /// The in-container stub (internal: the server runs it inside containers).
    Stub {
        idle: bool,
    },
    /// A file operation of the in-container stub (internal, like `Stub`).
    StubFile(crate::stub::FileOp),
    /// A detached-exec operation of the stub (internal).
    StubDetached(crate::detached::DetachedOp),
    /// A client command: where it goes, and what it asks.
    Client {
        target: Target,
        action: Action,
        verbosity: i32,
    },
    Help(Topic),
    Version,
}

/// Where a client command goes.
#[derive(Debug)]
pub enum Target {
    /// This process drives the engine with this configuration.
    Local(Box<Config>),
    /// A running server.
    Remote {
        url: String,
        api_key: Option<String>,
    },
}

/// The per-command fields of `run` and `exec`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandArgs {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub timeout_ms: Option<u64>,
    pub json: bool,
}

/// A client command, before it becomes an API request.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Run {
        image: Option<String>,
        profile: Option<String>,
        fast: bool,
        command: CommandArgs,
    },
    Exec {
        name: String,
        command: CommandArgs,
    },
    Create {
        name: String,
        image: Option<String>,
        profile: Option<String>,
        memory_mb: Option<u64>,
        vcpus: Option<u64>,
        pids: Option<u64>,
        json: bool,
    },
    List {
        json: bool,
    },
    Info {
        name: String,
        json: bool,
    },
    Change {
        verb: Verb,
        name: String,
        json: bool,
    },
    Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Remove,
}

/// A usage error: exit code 2, with the usage of the command it concerns.
#[derive(Debug, PartialEq)]
pub struct UsageError {
    pub message: String,
    pub usage: &'static str,
}

/// What a sub-parser found wrong; the caller knows which usage to attach.
#[derive(Debug, PartialEq)]
struct Misuse(String);

impl From<lexopt::Error> for Misuse {
    fn from(error: lexopt::Error) -> Misuse {
        Misuse(error.to_string())
    }
}

impl Misuse {
    fn of(self, topic: Topic) -> UsageError {
        UsageError {
            message: self.0,
            usage: topic.usage,
        }
    }
}

/// Options every client command takes, before or after its name.
#[derive(Debug, Default)]
struct Globals {
    server: Option<String>,
    verbosity: i32,
}

/// A global option, recognised apart from its value so that the parser is free to
/// read that value (a lexopt `Arg` borrows the parser).
#[derive(Debug, Clone, Copy)]
enum GlobalFlag {
    Server,
    Verbose,
    Quiet,
}

fn global_flag(arg: &lexopt::Arg) -> Option<GlobalFlag> {
    match arg {
        Long("server") => Some(GlobalFlag::Server),
        Long("verbose") | Short('v') => Some(GlobalFlag::Verbose),
        Long("quiet") | Short('q') => Some(GlobalFlag::Quiet),
        _ => None,
    }
}

impl Globals {
    fn apply(&mut self, flag: GlobalFlag, parser: &mut lexopt::Parser) -> Result<(), Misuse> {
        match flag {
            GlobalFlag::Server => self.server = Some(parser.value()?.string()?),
            GlobalFlag::Verbose => self.verbosity += 1,
            GlobalFlag::Quiet => self.verbosity -= 1,
        }
        Ok(())
    }
}

pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Environment,
) -> Result<Command, UsageError> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut globals = Globals::default();
    loop {
        let arg = parser.next().map_err(|e| Misuse::from(e).of(MAIN))?;
        let word = match arg {
            Some(Long("help") | Short('h')) => return Ok(Command::Help(MAIN)),
            Some(Long("version") | Short('V')) => return Ok(Command::Version),
            Some(Value(word)) => word.to_string_lossy().into_owned(),
            Some(other) => {
                if let Some(flag) = global_flag(&other) {
                    globals.apply(flag, &mut parser).map_err(|e| e.of(MAIN))?;
                    continue;
                }
                return Err(Misuse(other.unexpected().to_string()).of(MAIN));
            }
            None => return Err(Misuse("no command given".into()).of(MAIN)),
        };
        let (topic, action) = match word.as_str() {
            "serve" => return parse_serve(&mut parser, env).map_err(|e| e.of(SERVE)),
            "stub" => return parse_stub(&mut parser).map_err(|e| e.of(MAIN)),
            "run" => (RUN, parse_run(&mut parser, &mut globals, env)),
            "exec" => (EXEC, parse_exec(&mut parser, &mut globals, env)),
            "sandbox" => match parse_sandbox(&mut parser, &mut globals) {
                Ok(parsed) => parsed,
                Err((topic, misuse)) => return Err(misuse.of(topic)),
            },
            "health" => (HEALTH, parse_health(&mut parser, &mut globals)),
            other => return Err(Misuse(format!("unknown command '{other}'")).of(MAIN)),
        };
        let action = match action.map_err(|e| e.of(topic))? {
            Parsed::Help => return Ok(Command::Help(topic)),
            Parsed::Action(action) => action,
        };
        let target = target(&globals, env).map_err(|e| e.of(topic))?;
        return Ok(Command::Client {
            target,
            action,
            verbosity: globals.verbosity,
        });
    }
}

/// A sub-parser's result: an action, or a request for its help.
enum Parsed {
    Action(Action),
    Help,
}

fn parse_stub(parser: &mut lexopt::Parser) -> Result<Command, Misuse> {
    let flag = match parser.next()? {
        None => return Ok(Command::Stub { idle: false }),
        Some(Long(flag)) => flag.to_string(),
        Some(other) => return Err(other.unexpected().into()),
    };
    match flag.as_str() {
        "idle" => Ok(Command::Stub { idle: true }),
        "cat" | "untar" | "rm" => parse_stub_file(&flag, parser),
        "detach" | "supervise" | "detached-status" | "detached-list" | "detached-kill"
        | "detached-logs" => parse_stub_detached(&flag, parser),
        _ => Err(Misuse(format!("invalid option '--{flag}'"))),
    }
}

/// `--detach ID -- ARGV...`, `--supervise ID -- ARGV...`, `--detached-list`, or
/// `--detached-status|kill|logs ID`.
fn parse_stub_detached(op: &str, parser: &mut lexopt::Parser) -> Result<Command, Misuse> {
    use crate::detached::{valid_id, DetachedOp};
    if op == "detached-list" {
        return match parser.next()? {
            None => Ok(Command::StubDetached(DetachedOp::List)),
            Some(other) => Err(other.unexpected().into()),
        };
    }
    let id = parser.value()?.string()?;
    if !valid_id(&id) {
        return Err(Misuse(format!("invalid detached command id '{id}'")));
    }
    let op = match op {
        "detach" | "supervise" => {
            let argv: Vec<String> = parser
                .raw_args()?
                .skip_while(|arg| arg == "--")
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect();
            if argv.is_empty() {
                return Err(Misuse("a detached command needs a program".into()));
            }
            if op == "detach" {
                DetachedOp::Start { id, argv }
            } else {
                DetachedOp::Supervise { id, argv }
            }
        }
        "detached-status" => DetachedOp::Status { id },
        "detached-kill" => DetachedOp::Kill { id },
        _ => DetachedOp::Logs { id },
    };
    Ok(Command::StubDetached(op))
}

/// `--cat PATH MAX`, `--untar DIR MAX` or `--rm PATH`, and nothing after.
fn parse_stub_file(op: &str, parser: &mut lexopt::Parser) -> Result<Command, Misuse> {
    use crate::stub::FileOp;
    let path = parser.value()?.string()?;
    let op = match op {
        "cat" => FileOp::Cat {
            path,
            max: parser.value()?.parse()?,
        },
        "untar" => FileOp::Untar {
            dir: path,
            max: parser.value()?.parse()?,
        },
        _ => FileOp::Rm { path },
    };
    let path = match &op {
        FileOp::Cat { path, .. } | FileOp::Rm { path } => path,
        FileOp::Untar { dir, .. } => dir,
    };
    if !path.starts_with('/') {
        return Err(Misuse(format!(
            "stub file operations take absolute paths, got '{path}'"
        )));
    }
    match parser.next()? {
        None => Ok(Command::StubFile(op)),
        Some(other) => Err(other.unexpected().into()),
    }
}

/// Local unless `--server` or `AGENTKERNEL_URL` names a server.
fn target(globals: &Globals, env: &dyn Environment) -> Result<Target, Misuse> {
    match globals
        .server
        .clone()
        .or_else(|| env.var("AGENTKERNEL_URL"))
    {
        Some(url) => {
            // This build has no TLS: say so now rather than at the first request.
            if !url.starts_with("http://") || url.len() == "http://".len() {
                return Err(Misuse(format!(
                    "--server expects an http:// URL (like http://127.0.0.1:8080), got '{url}'"
                )));
            }
            Ok(Target::Remote {
                url,
                api_key: env.var("AGENTKERNEL_API_KEY"),
            })
        }
        None => Ok(Target::Local(Box::new(
            Config::from_env(env).map_err(Misuse)?,
        ))),
    }
}

/// `--timeout SECS`, fractions allowed, as whole milliseconds (at least 1).
fn parse_timeout(text: &str) -> Result<u64, Misuse> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= 1e9 => {
            Ok(((seconds * 1000.0).ceil() as u64).max(1))
        }
        _ => Err(Misuse(format!(
            "--timeout expects a positive number of seconds, got '{text}'"
        ))),
    }
}

/// `-e K=V` as given; `-e K` takes our own value of K, or nothing when K is unset (as
/// `docker run` does).
fn env_entry(text: String, env: &dyn Environment) -> Option<String> {
    if text.contains('=') {
        return Some(text);
    }
    env.var(&text).map(|value| format!("{text}={value}"))
}

/// The options `run` and `exec` share, recognised apart from their values.
#[derive(Debug, Clone, Copy)]
enum CommandFlag {
    Env,
    Workdir,
    Timeout,
    Json,
}

fn command_flag(arg: &lexopt::Arg) -> Option<CommandFlag> {
    match arg {
        Long("env") | Short('e') => Some(CommandFlag::Env),
        Long("workdir") | Short('w') => Some(CommandFlag::Workdir),
        Long("timeout") => Some(CommandFlag::Timeout),
        Long("json") => Some(CommandFlag::Json),
        _ => None,
    }
}

impl CommandArgs {
    fn apply(
        &mut self,
        flag: CommandFlag,
        parser: &mut lexopt::Parser,
        env: &dyn Environment,
    ) -> Result<(), Misuse> {
        match flag {
            CommandFlag::Env => {
                let entry = parser.value()?.string()?;
                if let Some(entry) = env_entry(entry, env) {
                    if !crate::exec::valid_env_entry(&entry) {
                        return Err(Misuse(format!(
                            "-e '{entry}': expected KEY=VALUE with KEY of letters, digits and '_'"
                        )));
                    }
                    self.env.push(entry);
                }
            }
            CommandFlag::Workdir => self.workdir = Some(parser.value()?.string()?),
            CommandFlag::Timeout => {
                self.timeout_ms = Some(parse_timeout(&parser.value()?.string()?)?)
            }
            CommandFlag::Json => self.json = true,
        }
        Ok(())
    }
}

/// The command: `first` and every argument after it, verbatim (options included).
fn rest_of_command(first: OsString, parser: &mut lexopt::Parser) -> Result<Vec<String>, Misuse> {
    let mut argv = vec![first.string()?];
    for arg in parser.raw_args()? {
        argv.push(arg.string()?);
    }
    Ok(argv)
}

fn parse_run(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
    env: &dyn Environment,
) -> Result<Parsed, Misuse> {
    let (mut image, mut profile, mut fast) = (None, None, true);
    let mut command = CommandArgs::default();
    while let Some(arg) = parser.next()? {
        if let Some(flag) = command_flag(&arg) {
            command.apply(flag, parser, env)?;
            continue;
        }
        if let Some(flag) = global_flag(&arg) {
            globals.apply(flag, parser)?;
            continue;
        }
        match arg {
            Long("image") => image = Some(parser.value()?.string()?),
            Long("profile") => profile = Some(parser.value()?.string()?),
            Long("no-fast") => fast = false,
            Long("help") | Short('h') => return Ok(Parsed::Help),
            Value(first) => {
                command.argv = rest_of_command(first, parser)?;
                break;
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if command.argv.is_empty() {
        return Err(Misuse("no command to run".into()));
    }
    Ok(Parsed::Action(Action::Run {
        image,
        profile,
        fast,
        command,
    }))
}

fn parse_exec(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
    env: &dyn Environment,
) -> Result<Parsed, Misuse> {
    let mut name = None;
    let mut command = CommandArgs::default();
    while let Some(arg) = parser.next()? {
        if let Some(flag) = command_flag(&arg) {
            command.apply(flag, parser, env)?;
            continue;
        }
        if let Some(flag) = global_flag(&arg) {
            globals.apply(flag, parser)?;
            continue;
        }
        match arg {
            Long("help") | Short('h') => return Ok(Parsed::Help),
            Value(word) if name.is_none() => name = Some(word.string()?),
            Value(first) => {
                command.argv = rest_of_command(first, parser)?;
                break;
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let name = name.ok_or_else(|| Misuse("no sandbox name given".into()))?;
    if command.argv.is_empty() {
        return Err(Misuse("no command to run".into()));
    }
    Ok(Parsed::Action(Action::Exec { name, command }))
}

fn parse_health(parser: &mut lexopt::Parser, globals: &mut Globals) -> Result<Parsed, Misuse> {
    while let Some(arg) = parser.next()? {
        if let Some(flag) = global_flag(&arg) {
            globals.apply(flag, parser)?;
            continue;
        }
        match arg {
            Long("help") | Short('h') => return Ok(Parsed::Help),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(Parsed::Action(Action::Health))
}

/// `sandbox SUBCOMMAND ...`; an error carries the usage of the subcommand it concerns.
fn parse_sandbox(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
) -> Result<(Topic, Result<Parsed, Misuse>), (Topic, Misuse)> {
    let word = loop {
        match parser.next().map_err(|e| (SANDBOX, e.into()))? {
            Some(Long("help") | Short('h')) => return Ok((SANDBOX, Ok(Parsed::Help))),
            Some(Value(word)) => break word.to_string_lossy().into_owned(),
            Some(other) => match global_flag(&other) {
                Some(flag) => globals.apply(flag, parser).map_err(|e| (SANDBOX, e))?,
                None => return Err((SANDBOX, Misuse(other.unexpected().to_string()))),
            },
            None => return Err((SANDBOX, Misuse("no sandbox command given".into()))),
        }
    };
    let (topic, verb) = match word.as_str() {
        "create" => (SANDBOX_CREATE, None),
        "list" | "ls" => (SANDBOX_LIST, None),
        "info" | "inspect" => (SANDBOX_INFO, None),
        "start" => (SANDBOX_CHANGE, Some(Verb::Start)),
        "stop" => (SANDBOX_CHANGE, Some(Verb::Stop)),
        "remove" | "rm" => (SANDBOX_CHANGE, Some(Verb::Remove)),
        other => {
            return Err((
                SANDBOX,
                Misuse(format!("unknown sandbox command '{other}'")),
            ))
        }
    };
    let mut name: Option<String> = None;
    let mut json = false;
    let (mut image, mut profile) = (None, None);
    let (mut memory_mb, mut vcpus, mut pids) = (None, None, None);
    let creating = topic == SANDBOX_CREATE;
    let takes_name = topic != SANDBOX_LIST;
    let parsed = (|| {
        while let Some(arg) = parser.next()? {
            if let Some(flag) = global_flag(&arg) {
                globals.apply(flag, parser)?;
                continue;
            }
            match arg {
                Long("help") | Short('h') => return Ok(Parsed::Help),
                Long("json") => json = true,
                Long("image") if creating => image = Some(parser.value()?.string()?),
                Long("profile") if creating => profile = Some(parser.value()?.string()?),
                Long("memory-mb") if creating => memory_mb = Some(parser.value()?.parse()?),
                Long("vcpus") if creating => vcpus = Some(parser.value()?.parse()?),
                Long("pids") if creating => pids = Some(parser.value()?.parse()?),
                Value(word) if takes_name && name.is_none() => name = Some(word.string()?),
                _ => return Err(arg.unexpected().into()),
            }
        }
        if !takes_name {
            return Ok(Parsed::Action(Action::List { json }));
        }
        let name = name.ok_or_else(|| Misuse("no sandbox name given".into()))?;
        Ok(Parsed::Action(match verb {
            Some(verb) => Action::Change { verb, name, json },
            None if creating => Action::Create {
                name,
                image,
                profile,
                memory_mb,
                vcpus,
                pids,
                json,
            },
            None => Action::Info { name, json },
        }))
    })();
    Ok((topic, parsed))
}

fn parse_serve(parser: &mut lexopt::Parser, env: &dyn Environment) -> Result<Command, Misuse> {
    let mut config = Config::from_env(env).map_err(Misuse)?;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("host") => config.host = parser.value()?.string()?,
            Long("port") => config.port = parser.value()?.parse()?,
            Long("workers") => config.workers = positive(parser.value()?.parse()?, "--workers")?,
            Long("queue") => config.queue = positive(parser.value()?.parse()?, "--queue")?,
            Long("namespace") => {
                config.namespace = Namespace::parse(&parser.value()?.string()?).map_err(Misuse)?
            }
            Long("default-image") => config.images.default_image = parser.value()?.string()?,
            Long("image") => set_image(&mut config.images, &parser.value()?.string()?)?,
            Long("default-profile") => {
                config.default_profile =
                    Profile::parse(&parser.value()?.string()?).map_err(Misuse)?
            }
            Long("max-body-bytes") => config.max_body_bytes = parser.value()?.parse()?,
            Long("max-file-bytes") => {
                config.max_file_bytes = parser.value()?.parse()?;
                if config.max_file_bytes == 0 {
                    return Err(Misuse("--max-file-bytes must be at least 1".into()));
                }
            }
            Long("pool") => {
                let text = parser.value()?.string()?;
                let entry = parse_pool(&text, config.default_profile)?;
                config.pool.get_or_insert_with(Vec::new).push(entry);
            }
            Long("pool-size") => config.pool_default_size = parser.value()?.parse()?,
            Long("pool-dynamic-size") => config.pool_dynamic_size = parser.value()?.parse()?,
            Long("no-stub") => config.stub = false,
            Long("client-timeout-secs") => {
                let seconds: u64 = parser.value()?.parse()?;
                if seconds == 0 {
                    return Err(Misuse("--client-timeout-secs must be at least 1".into()));
                }
                config.client_timeout = std::time::Duration::from_secs(seconds);
            }
            Long("max-connections") => {
                config.max_connections = positive(parser.value()?.parse()?, "--max-connections")?
            }
            Long("idle-timeout-secs") => {
                let seconds = positive(parser.value()?.parse()?, "--idle-timeout-secs")?;
                config.idle_timeout = std::time::Duration::from_secs(seconds as u64);
            }
            Long("head-timeout-secs") => {
                let seconds = positive(parser.value()?.parse()?, "--head-timeout-secs")?;
                config.head_timeout = std::time::Duration::from_secs(seconds as u64);
            }
            Long("default-timeout-ms") => config.default_timeout_ms = parser.value()?.parse()?,
            Long("max-timeout-ms") => config.max_timeout_ms = parser.value()?.parse()?,
            Long("max-output-bytes") => config.max_output_bytes_limit = parser.value()?.parse()?,
            Long("help") | Short('h') => return Ok(Command::Help(SERVE)),
            _ => return Err(arg.unexpected().into()),
        }
    }
    if config.default_timeout_ms == 0 || config.max_timeout_ms == 0 {
        return Err(Misuse("timeouts must be at least 1 ms".into()));
    }
    // A lower maximum lowers the default with it.
    config.default_timeout_ms = config.default_timeout_ms.min(config.max_timeout_ms);
    config.default_max_output_bytes = config
        .default_max_output_bytes
        .min(config.max_output_bytes_limit);
    Ok(Command::Serve(Box::new(config)))
}

/// `image[:profile]=N`; `N` may be 0 to keep no warm containers for that key.
fn parse_pool(text: &str, default_profile: Profile) -> Result<(PoolKey, usize), Misuse> {
    let (key, size) = text
        .rsplit_once('=')
        .ok_or_else(|| Misuse(format!("--pool expects IMAGE[:PROFILE]=N, got '{text}'")))?;
    let size = size
        .parse()
        .map_err(|_| Misuse(format!("--pool size '{size}' is not a number")))?;
    let key = PoolKey::parse(key, default_profile).map_err(Misuse)?;
    Ok((key, size))
}

fn positive(value: usize, flag: &str) -> Result<usize, Misuse> {
    if value == 0 {
        Err(Misuse(format!("{flag} must be at least 1")))
    } else {
        Ok(value)
    }
}

fn set_image(images: &mut ImageTable, assignment: &str) -> Result<(), Misuse> {
    let (runtime, image) = assignment
        .split_once('=')
        .ok_or_else(|| Misuse(format!("--image expects RUNTIME=IMAGE, got '{assignment}'")))?;
    images.set(runtime, image).map_err(Misuse)
}

/// Runs the command; returns the process exit code.
pub fn run(command: Command) -> i32 {
    match command {
        Command::Help(topic) => {
            print!("{}", topic.help());
            0
        }
        Command::Version => {
            println!("agentkernel {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Serve(config) => serve(*config),
        Command::Stub { idle: false } => crate::stub::main(),
        Command::Stub { idle: true } => crate::stub::idle(),
        Command::StubFile(op) => crate::stub::file_op(op),
        Command::StubDetached(op) => crate::detached::run_op(op),
        Command::Client { target, action, .. } => {
            let backend = match target {
                Target::Local(config) => Backend::local(*config),
                Target::Remote { url, api_key } => Backend::remote(&url, api_key),
            };
            run_client(&backend, &action)
        }
    }
}

/// An API request, as both modes send it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
}

impl Action {
    /// The request this action is. `stdin` is what to feed a run or exec command.
    pub fn call(&self, stdin: Option<String>) -> Call {
        let post = |path: String, body: Option<Value>| Call {
            method: "POST",
            path,
            body,
        };
        match self {
            Action::Run {
                image,
                profile,
                fast,
                command,
            } => {
                let mut body = command_body(command, stdin);
                insert_some(&mut body, "image", image.clone().map(Value::from));
                insert_some(&mut body, "profile", profile.clone().map(Value::from));
                if !fast {
                    body.insert("fast".into(), json!(false));
                }
                post("/run".into(), Some(Value::Object(body)))
            }
            Action::Exec { name, command } => post(
                format!("/sandboxes/{name}/exec"),
                Some(Value::Object(command_body(command, stdin))),
            ),
            Action::Create {
                name,
                image,
                profile,
                memory_mb,
                vcpus,
                pids,
                ..
            } => {
                let mut body = Map::new();
                body.insert("name".into(), json!(name));
                insert_some(&mut body, "image", image.clone().map(Value::from));
                insert_some(&mut body, "profile", profile.clone().map(Value::from));
                insert_some(&mut body, "memory_mb", memory_mb.map(Value::from));
                insert_some(&mut body, "vcpus", vcpus.map(Value::from));
                insert_some(&mut body, "pids", pids.map(Value::from));
                post("/sandboxes".into(), Some(Value::Object(body)))
            }
            Action::List { .. } => Call {
                method: "GET",
                path: "/sandboxes".into(),
                body: None,
            },
            Action::Info { name, .. } => Call {
                method: "GET",
                path: format!("/sandboxes/{name}"),
                body: None,
            },
            Action::Change {
                verb: Verb::Remove,
                name,
                ..
            } => Call {
                method: "DELETE",
                path: format!("/sandboxes/{name}"),
                body: None,
            },
            Action::Change { verb, name, .. } => {
                let verb = if *verb == Verb::Start {
                    "start"
                } else {
                    "stop"
                };
                post(format!("/sandboxes/{name}/{verb}"), None)
            }
            Action::Health => Call {
                method: "GET",
                path: "/health".into(),
                body: None,
            },
        }
    }

    /// The sandbox this action names, if any.
    fn sandbox(&self) -> Option<&str> {
        match self {
            Action::Exec { name, .. }
            | Action::Create { name, .. }
            | Action::Info { name, .. }
            | Action::Change { name, .. } => Some(name),
            _ => None,
        }
    }

    fn runs_a_command(&self) -> Option<&CommandArgs> {
        match self {
            Action::Run { command, .. } | Action::Exec { command, .. } => Some(command),
            _ => None,
        }
    }
}

fn insert_some(body: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        body.insert(key.to_string(), value);
    }
}

/// The body fields of `/run` and exec; fields not given are left out, so the server's
/// defaults apply.
fn command_body(command: &CommandArgs, stdin: Option<String>) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("command".into(), json!(command.argv));
    if !command.env.is_empty() {
        body.insert("env".into(), json!(command.env));
    }
    insert_some(
        &mut body,
        "workdir",
        command.workdir.clone().map(Value::from),
    );
    insert_some(&mut body, "timeout_ms", command.timeout_ms.map(Value::from));
    insert_some(&mut body, "stdin", stdin.map(Value::from));
    body
}

/// The exit code a command's `data` calls for, the way `docker run` reports it.
pub fn exit_code_of(data: &Value) -> i32 {
    let status = data["status"].as_str().unwrap_or_default();
    let code = data["exit_code"].as_i64();
    match (status, data["signal"].as_i64(), code) {
        ("timeout", _, _) => 124,
        ("signaled", Some(signal), _) if (1..128).contains(&signal) => 128 + signal as i32,
        (_, _, Some(code)) if (0..=255).contains(&code) => code as i32,
        // Killed for memory without an exit status: what SIGKILL would have said.
        ("oom_killed", _, _) => 137,
        _ => 125,
    }
}

/// Most stdin we pass through (the server's body limit is usually far lower).
const MAX_STDIN_BYTES: u64 = 64 * 1024 * 1024;

/// Our stdin, when it is not a terminal and has something in it.
fn read_stdin() -> Result<Option<String>, String> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    if let Err(error) = stdin
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
    {
        // A closed stdin (`<&-`) is no input, not a failure.
        log::debug!("not passing stdin through: {error}");
        return Ok(None);
    }
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        return Err(format!(
            "stdin is larger than {MAX_STDIN_BYTES} bytes: pass big inputs as files"
        ));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "stdin is not UTF-8 text (the API carries stdin as a JSON string)".into())
}

/// Runs a client action; prints what it says; returns the exit code.
fn run_client(backend: &Backend, action: &Action) -> i32 {
    // A failure of agentkernel itself: 125 where the exit code is the command's.
    let failed = if action.runs_a_command().is_some() {
        125
    } else {
        1
    };
    let fail = |message: &dyn std::fmt::Display| {
        eprintln!("agentkernel: {message}");
        failed
    };
    // Names become URL paths: only valid ones may, so that no path normalisation
    // (`..`) can make the two modes see different requests.
    if let Some(Err(message)) = action.sandbox().map(SandboxName::parse) {
        return fail(&message);
    }
    if let Some(command) = action.runs_a_command() {
        let stdin = match read_stdin() {
            Ok(stdin) => stdin,
            Err(message) => return fail(&message),
        };
        return run_command(backend, action.call(stdin), command, failed);
    }
    if *action == Action::Health {
        if let Err(error) = backend.engine_reachable() {
            return fail(&error);
        }
    }
    let call = action.call(None);
    let body = call.body.as_ref().map(|body| body.to_string().into_bytes());
    let data = match backend
        .request(call.method, &call.path, body.as_deref(), None)
        .and_then(|answer| answer.data())
    {
        Ok(data) => data,
        Err(error) => return fail(&error),
    };
    let text = match action {
        Action::List { json: false } => sandbox_table(&data),
        Action::Info { json: false, .. } => sandbox_fields(&data),
        Action::Create { json: false, .. } | Action::Change { json: false, .. } => {
            format!("{}\n", action.sandbox().unwrap_or_default())
        }
        Action::Health => format!("{}\n", data.as_str().unwrap_or("ok")),
        _ => format!("{data}\n"),
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(error) => fail(&format!("cannot write output: {error}")),
    }
}

fn run_command(backend: &Backend, call: Call, command: &CommandArgs, failed: i32) -> i32 {
    let body = call.body.unwrap_or_default().to_string().into_bytes();
    let timeout = Some(
        command
            .timeout_ms
            .map_or(backend::UNKNOWN_COMMAND_TIMEOUT, Duration::from_millis),
    );
    if command.json {
        // Not streamed: the API's own non-streaming answer, printed as it is.
        let answer = backend.request(call.method, &call.path, Some(&body), timeout);
        return match answer.and_then(|answer| answer.data()) {
            Ok(data) => {
                println!("{data}");
                exit_code_of(&data)
            }
            Err(error) => {
                eprintln!("agentkernel: {error}");
                failed
            }
        };
    }
    let mut console = Console::default();
    match backend.stream(&call.path, &body, timeout, &mut console) {
        Ok(data) => exit_code_of(&data),
        // Our reader left (`| head`): end quietly, as a tool killed by SIGPIPE would.
        Err(_) if console.broken_pipe => 141,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            failed
        }
    }
}

/// Writes a command's output to our own stdout and stderr as it arrives.
#[derive(Default)]
struct Console {
    broken_pipe: bool,
}

impl Observer for Console {
    fn output(&mut self, kind: StreamKind, bytes: &[u8]) -> io::Result<()> {
        // Flushed at once: output must arrive as it is produced, not when a buffer fills.
        let written = match kind {
            StreamKind::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            StreamKind::Stderr => {
                let mut err = io::stderr().lock();
                err.write_all(bytes).and_then(|()| err.flush())
            }
            StreamKind::Stdin => Ok(()),
        };
        if let Err(error) = &written {
            self.broken_pipe = error.kind() == io::ErrorKind::BrokenPipe;
        }
        written
    }
}

/// `sandbox list`: an aligned table, one sandbox a line, header first.
fn sandbox_table(data: &Value) -> String {
    let columns = [
        ("NAME", "name"),
        ("STATUS", "status"),
        ("IMAGE", "image"),
        ("PROFILE", "profile"),
        ("CREATED", "created_at"),
    ];
    let mut rows = vec![columns.iter().map(|(title, _)| title.to_string()).collect()];
    for sandbox in data.as_array().into_iter().flatten() {
        rows.push(
            columns
                .iter()
                .map(|(_, key)| scalar(&sandbox[*key]))
                .collect(),
        );
    }
    table(&rows)
}

/// Columns padded to their widest cell plus two spaces; the last is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 < columns {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            } else {
                line.push_str(cell);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `sandbox info`: `key  value` lines, the usual fields first, nested ones dotted.
fn sandbox_fields(data: &Value) -> String {
    let first = [
        "name",
        "id",
        "status",
        "backend",
        "image",
        "profile",
        "created_at",
        "memory_mb",
        "vcpus",
    ];
    let mut pairs = Vec::new();
    flatten("", data, &mut pairs);
    pairs.sort_by_key(|(key, _)| {
        (
            first.iter().position(|f| f == key).unwrap_or(first.len()),
            key.clone(),
        )
    });
    let rows: Vec<Vec<String>> = pairs.into_iter().map(|(k, v)| vec![k, v]).collect();
    table(&rows)
}

fn flatten(prefix: &str, value: &Value, pairs: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, pairs);
            }
        }
        other => pairs.push((prefix.to_string(), scalar(other))),
    }
}

/// A JSON scalar as a table cell: strings bare, null as `-`.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn serve(config: Config) -> i32 {
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(error) = signal_hook::flag::register(signal, Arc::clone(&shutdown)) {
            eprintln!("agentkernel: cannot install signal handler: {error}");
            return 1;
        }
    }
    let docker = crate::engine::Docker::new(config.docker_socket.clone(), config.docker_timeout);
    match docker.ping() {
        Ok(version) => {
            log::info!(
                "Docker Engine API {version} at {}",
                docker.socket().display()
            );
        }
        Err(error) => log::warn!("{error}; requests will answer 503 until it is reachable"),
    }
    let launcher = crate::containers::pool::Launcher::detect(config.stub);
    let pool =
        crate::containers::pool::Pool::new(launcher, &config.pool_keys(), config.pool_dynamic_size);
    let context = Arc::new(crate::server::Context::new(config, docker, pool));
    match crate::server::serve(context, shutdown) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            1
        }
    }
}

impl Command {
    /// The log level: `AGENTKERNEL_LOG` if set, else info for the server and warn for
    /// client commands (whose stderr is the command's); `-v` and `-q` move it.
    pub fn log_level(&self, env: &dyn Environment) -> log::LevelFilter {
        use log::LevelFilter::*;
        let (default, verbosity) = match self {
            Command::Client { verbosity, .. } => (Warn, *verbosity),
            _ => (Info, 0),
        };
        let base = env
            .var("AGENTKERNEL_LOG")
            .and_then(|text| text.parse().ok())
            .unwrap_or(default);
        let levels = [Off, Error, Warn, Info, Debug, Trace];
        let index = levels.iter().position(|l| *l == base).unwrap_or(2) as i32;
        levels[(index + verbosity).clamp(1, 5) as usize]
    }
}

/// Sets up logging to stderr.
pub fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .build();
    let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoEnvironment;
    impl Environment for NoEnvironment {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn parse_words(words: &[&str]) -> Result<Command, UsageError> {
        parse(words.iter().map(OsString::from), &NoEnvironment)
    }

    #[test]
    fn stub_file_operations_take_absolute_paths_and_limits() {
        use crate::stub::FileOp;
        let parsed = |words: &[&str]| match parse_words(words) {
            Ok(Command::StubFile(op)) => Ok(op),
            Ok(other) => panic!("{words:?} parsed as {other:?}"),
            Err(error) => Err(error),
        };
        assert_eq!(
            parsed(&["stub", "--cat", "/tmp/x", "16"]),
            Ok(FileOp::Cat {
                path: "/tmp/x".into(),
                max: 16
            })
        );
        assert_eq!(
            parsed(&["stub", "--untar", "/", "5"]),
            Ok(FileOp::Untar {
                dir: "/".into(),
                max: 5
            })
        );
        assert_eq!(
            parsed(&["stub", "--rm", "/-odd name"]),
            Ok(FileOp::Rm {
                path: "/-odd name".into()
            })
        );
        assert!(parsed(&["stub", "--cat", "relative", "1"]).is_err());
        assert!(parsed(&["stub", "--cat", "/x"]).is_err());
        assert!(parsed(&["stub", "--cat", "/x", "many"]).is_err());
        assert!(parsed(&["stub", "--rm", "/x", "extra"]).is_err());
        assert!(parsed(&["stub", "--bogus"]).is_err());
        let Command::Serve(config) = parse_words(&["serve", "--max-file-bytes", "1000"]).unwrap()
        else {
            panic!("expected serve");
        };
        assert_eq!(config.max_file_bytes, 1000);
        assert!(parse_words(&["serve", "--max-file-bytes", "0"]).is_err());
    }

    #[test]
    fn serve_defaults_to_loopback_8080() {
        let Command::Serve(config) = parse_words(&["serve"]).unwrap() else {
            panic!("expected serve");
        };
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 8080);
    }

    #[test]
    fn serve_takes_flags() {
        let words = [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "3000",
            "--workers",
            "3",
            "--queue=5",
            "--namespace",
            "ci",
            "--image",
            "python=local/py:3",
        ];
        let Command::Serve(config) = parse_words(&words).unwrap() else {
            panic!("expected serve");
        };
        assert_eq!(config.host, "0.0.0.0");
        assert_eq!(config.port, 3000);
        assert_eq!(config.workers, 3);
        assert_eq!(config.queue, 5);
        assert_eq!(config.namespace.as_str(), "ci");
        assert_eq!(config.images.image_for("python3"), "local/py:3");
    }

    #[test]
    fn pool_flags_name_image_profile_and_size() {
        let words = [
            "serve",
            "--pool",
            "img:1:restrictive=3",
            "--pool",
            "other=0",
        ];
        let Command::Serve(config) = parse_words(&words).unwrap() else {
            panic!("expected serve");
        };
        let keys = config.pool_keys();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].0.image, "img:1");
        assert_eq!(keys[0].0.profile, Profile::Restrictive);
        assert_eq!(keys[0].1, 3);
        assert_eq!((keys[1].0.image.as_str(), keys[1].1), ("other", 0));
        let Command::Serve(config) = parse_words(&["serve"]).unwrap() else {
            panic!("expected serve");
        };
        assert_eq!(config.pool_keys()[0].1, 4);
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        assert!(parse_words(&[]).is_err());
        assert!(parse_words(&["serve", "--port", "x"]).is_err());
        assert!(parse_words(&["serve", "--workers", "0"])
            .unwrap_err()
            .message
            .contains("--workers"));
        assert!(parse_words(&["serve", "--bogus"]).is_err());
        assert!(parse_words(&["frobnicate"])
            .unwrap_err()
            .message
            .contains("frobnicate"));
        assert!(parse_words(&["serve", "--namespace", "Bad_NS"]).is_err());
        assert!(parse_words(&["serve", "--pool", "img"]).is_err());
        assert!(parse_words(&["serve", "--pool", "img=x"]).is_err());
        let error = parse_words(&["run", "-e", "BAD KEY=1", "--", "true"]).unwrap_err();
        assert!(error.message.contains("BAD KEY=1"), "{}", error.message);
    }

    struct Vars(Vec<(&'static str, &'static str)>);
    impl Environment for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    /// The action and whether it goes to a server, for a client command line.
    fn client(words: &[&str], env: &dyn Environment) -> (Action, Option<String>) {
        match parse(words.iter().map(OsString::from), env).unwrap() {
            Command::Client {
                action,
                target: Target::Remote { url, .. },
                ..
            } => (action, Some(url)),
            Command::Client { action, .. } => (action, None),
            other => panic!("expected a client command, got {other:?}"),
        }
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    #[test]
    fn run_takes_its_flags_and_the_command_verbatim() {
        let words = [
            "run",
            "--image",
            "img:1",
            "--profile",
            "restrictive",
            "--no-fast",
            "--timeout",
            "1.5",
            "-e",
            "A=1",
            "--env=B=x=y",
            "-w",
            "/tmp",
            "--json",
            "--",
            "sh",
            "-c",
            "echo hi",
            "--json",
            "-e",
        ];
        let (action, server) = client(&words, &NoEnvironment);
        assert_eq!(server, None);
        assert_eq!(
            action,
            Action::Run {
                image: Some("img:1".into()),
                profile: Some("restrictive".into()),
                fast: false,
                command: CommandArgs {
                    argv: strings(&["sh", "-c", "echo hi", "--json", "-e"]),
                    env: strings(&["A=1", "B=x=y"]),
                    workdir: Some("/tmp".into()),
                    timeout_ms: Some(1500),
                    json: true,
                },
            }
        );
        // Without `--`, the first word starts the command and the rest is its own.
        let (action, _) = client(&["run", "echo", "-n", "--image", "x"], &NoEnvironment);
        let Action::Run { image, command, .. } = action else {
            panic!("expected run");
        };
        assert_eq!(image, None);
        assert_eq!(command.argv, strings(&["echo", "-n", "--image", "x"]));
    }

    #[test]
    fn exec_takes_a_name_then_the_command() {
        let (action, _) = client(
            &["exec", "-e", "A=1", "box", "-w", "/w", "--", "ls", "-l"],
            &NoEnvironment,
        );
        assert_eq!(
            action,
            Action::Exec {
                name: "box".into(),
                command: CommandArgs {
                    argv: strings(&["ls", "-l"]),
                    env: strings(&["A=1"]),
                    workdir: Some("/w".into()),
                    ..CommandArgs::default()
                },
            }
        );
    }

    #[test]
    fn env_without_a_value_passes_ours_or_nothing() {
        let env = Vars(vec![("HOME", "/root")]);
        let (action, _) = client(&["run", "-e", "HOME", "-e", "UNSET", "env"], &env);
        let Action::Run { command, .. } = action else {
            panic!("expected run");
        };
        assert_eq!(command.env, strings(&["HOME=/root"]));
    }

    #[test]
    fn sandbox_subcommands_parse() {
        let cases: [(&[&str], Action); 8] = [
            (
                &[
                    "sandbox",
                    "create",
                    "b",
                    "--image",
                    "i",
                    "--memory-mb",
                    "256",
                    "--vcpus",
                    "2",
                ],
                Action::Create {
                    name: "b".into(),
                    image: Some("i".into()),
                    profile: None,
                    memory_mb: Some(256),
                    vcpus: Some(2),
                    pids: None,
                    json: false,
                },
            ),
            (&["sandbox", "list"], Action::List { json: false }),
            (&["sandbox", "list", "--json"], Action::List { json: true }),
            (
                &["sandbox", "info", "b", "--json"],
                Action::Info {
                    name: "b".into(),
                    json: true,
                },
            ),
            (
                &["sandbox", "start", "b"],
                Action::Change {
                    verb: Verb::Start,
                    name: "b".into(),
                    json: false,
                },
            ),
            (
                &["sandbox", "stop", "b"],
                Action::Change {
                    verb: Verb::Stop,
                    name: "b".into(),
                    json: false,
                },
            ),
            (
                &["sandbox", "remove", "b"],
                Action::Change {
                    verb: Verb::Remove,
                    name: "b".into(),
                    json: false,
                },
            ),
            (&["health"], Action::Health),
        ];
        for (words, expected) in cases {
            assert_eq!(client(words, &NoEnvironment).0, expected, "{words:?}");
        }
    }

    #[test]
    fn server_comes_from_the_flag_anywhere_or_the_environment() {
        let url = Some("http://h:1".to_string());
        let flag_first = client(
            &["--server", "http://h:1", "sandbox", "list"],
            &NoEnvironment,
        );
        assert_eq!(flag_first.1, url);
        let flag_last = client(&["sandbox", "list", "--server=http://h:1"], &NoEnvironment);
        assert_eq!(flag_last.1, url);
        let env = Vars(vec![
            ("AGENTKERNEL_URL", "http://h:1"),
            ("AGENTKERNEL_API_KEY", "k"),
        ]);
        let Command::Client { target, .. } =
            parse(["health"].iter().map(OsString::from), &env).unwrap()
        else {
            panic!("expected a client command");
        };
        let Target::Remote { url, api_key } = target else {
            panic!("expected remote");
        };
        assert_eq!(
            (url.as_str(), api_key.as_deref()),
            ("http://h:1", Some("k"))
        );
    }

    #[test]
    fn usage_errors_name_the_commands_usage() {
        let cases: [(&[&str], Topic, &str); 10] = [
            (&["run"], RUN, "no command"),
            (&["run", "--timeout", "0", "true"], RUN, "--timeout"),
            (&["run", "--bogus", "true"], RUN, "--bogus"),
            (&["exec", "box"], EXEC, "no command"),
            (&["exec"], EXEC, "no sandbox name"),
            (&["sandbox"], SANDBOX, "no sandbox command"),
            (&["sandbox", "frob"], SANDBOX, "frob"),
            (&["sandbox", "create"], SANDBOX_CREATE, "no sandbox name"),
            (
                &["sandbox", "create", "b", "--vcpus", "x"],
                SANDBOX_CREATE,
                "x",
            ),
            (&["--server", "https://h", "health"], HEALTH, "http://"),
        ];
        for (words, topic, needle) in cases {
            let error = parse_words(words).unwrap_err();
            assert_eq!(error.usage, topic.usage, "{words:?}");
            assert!(
                error.message.contains(needle),
                "{words:?}: {}",
                error.message
            );
        }
        assert!(parse_words(&["sandbox", "list", "extra"]).is_err());
        assert!(parse_words(&["sandbox", "info", "a", "b"]).is_err());
        assert!(parse_words(&["sandbox", "info", "a", "--memory-mb", "1"]).is_err());
    }

    #[test]
    fn help_on_every_level() {
        let cases: [(&[&str], Topic); 8] = [
            (&["--help"], MAIN),
            (&["run", "--help"], RUN),
            (&["exec", "-h"], EXEC),
            (&["sandbox", "--help"], SANDBOX),
            (&["sandbox", "create", "--help"], SANDBOX_CREATE),
            (&["sandbox", "stop", "-h"], SANDBOX_CHANGE),
            (&["health", "--help"], HEALTH),
            (&["serve", "--help"], SERVE),
        ];
        for (words, topic) in cases {
            match parse_words(words) {
                Ok(Command::Help(found)) => assert_eq!(found, topic, "{words:?}"),
                other => panic!("{words:?}: {other:?}"),
            }
        }
        assert!(matches!(parse_words(&["--version"]), Ok(Command::Version)));
    }

    #[test]
    fn actions_become_the_api_requests_the_server_documents() {
        let (run, _) = client(
            &[
                "run",
                "--no-fast",
                "--timeout",
                "2",
                "-e",
                "A=1",
                "--",
                "echo",
                "hi",
            ],
            &NoEnvironment,
        );
        assert_eq!(
            run.call(Some("input".into())),
            Call {
                method: "POST",
                path: "/run".into(),
                body: Some(json!({
                    "command": ["echo", "hi"],
                    "env": ["A=1"],
                    "timeout_ms": 2000,
                    "fast": false,
                    "stdin": "input",
                })),
            }
        );
        let (run, _) = client(&["run", "true"], &NoEnvironment);
        assert_eq!(run.call(None).body, Some(json!({"command": ["true"]})));
        let (exec, _) = client(&["exec", "b", "-w", "/w", "pwd"], &NoEnvironment);
        let call = exec.call(None);
        assert_eq!(call.path, "/sandboxes/b/exec");
        assert_eq!(
            call.body,
            Some(json!({"command": ["pwd"], "workdir": "/w"}))
        );
        let (create, _) = client(&["sandbox", "create", "b", "--pids", "64"], &NoEnvironment);
        assert_eq!(
            create.call(None).body,
            Some(json!({"name": "b", "pids": 64}))
        );
        let routes = [
            (&["sandbox", "list"][..], "GET", "/sandboxes"),
            (&["sandbox", "info", "b"], "GET", "/sandboxes/b"),
            (&["sandbox", "start", "b"], "POST", "/sandboxes/b/start"),
            (&["sandbox", "stop", "b"], "POST", "/sandboxes/b/stop"),
            (&["sandbox", "remove", "b"], "DELETE", "/sandboxes/b"),
            (&["health"], "GET", "/health"),
        ];
        for (words, method, path) in routes {
            let call = client(words, &NoEnvironment).0.call(None);
            assert_eq!((call.method, call.path.as_str()), (method, path));
        }
    }

    #[test]
    fn exit_codes_follow_docker_run() {
        let data = |status: &str, code: Value, signal: Value| json!({"status": status, "exit_code": code, "signal": signal});
        assert_eq!(exit_code_of(&data("exited", json!(0), json!(null))), 0);
        assert_eq!(exit_code_of(&data("exited", json!(42), json!(null))), 42);
        assert_eq!(
            exit_code_of(&data("timeout", json!(null), json!(null))),
            124
        );
        assert_eq!(exit_code_of(&data("signaled", json!(143), json!(15))), 143);
        assert_eq!(exit_code_of(&data("signaled", json!(null), json!(9))), 137);
        assert_eq!(
            exit_code_of(&data("oom_killed", json!(null), json!(null))),
            137
        );
        assert_eq!(
            exit_code_of(&data("output_truncated", json!(3), json!(null))),
            3
        );
        assert_eq!(exit_code_of(&data("exited", json!(300), json!(null))), 125);
        assert_eq!(exit_code_of(&json!({})), 125);
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(parse_timeout("2"), Ok(2000));
        assert_eq!(parse_timeout("0.0001"), Ok(1));
        for bad in ["0", "-1", "x", "inf", "NaN", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_align_and_info_lists_fields_in_order() {
        let data = json!([
            {"name": "a", "status": "running", "image": "busybox", "profile": "moderate",
             "created_at": "2026-01-01T00:00:00Z", "id": "1"},
            {"name": "longer-name", "status": "stopped", "image": "i", "profile": "p",
             "created_at": null},
        ]);
        assert_eq!(
            sandbox_table(&data),
            "NAME         STATUS   IMAGE    PROFILE   CREATED\n\
             a            running  busybox  moderate  2026-01-01T00:00:00Z\n\
             longer-name  stopped  i        p         -\n"
        );
        assert_eq!(
            sandbox_table(&json!([])),
            "NAME  STATUS  IMAGE  PROFILE  CREATED\n"
        );
        let info = json!({"vcpus": 1, "name": "a", "limits": {"pids": 64}, "id": "x"});
        assert_eq!(
            sandbox_fields(&info),
            "name         a\nid           x\nvcpus        1\nlimits.pids  64\n"
        );
    }

    #[test]
    fn log_level_from_the_environment_moved_by_flags() {
        let command = |words: &[&str]| parse_words(words).unwrap();
        let quiet = Vars(vec![]);
        assert_eq!(
            command(&["health"]).log_level(&quiet),
            log::LevelFilter::Warn
        );
        assert_eq!(
            command(&["-v", "health"]).log_level(&quiet),
            log::LevelFilter::Info
        );
        assert_eq!(
            command(&["health", "-vv"]).log_level(&quiet),
            log::LevelFilter::Debug
        );
        assert_eq!(
            command(&["-q", "health"]).log_level(&quiet),
            log::LevelFilter::Error
        );
        assert_eq!(
            command(&["serve"]).log_level(&quiet),
            log::LevelFilter::Info
        );
        let debug = Vars(vec![("AGENTKERNEL_LOG", "debug")]);
        assert_eq!(
            command(&["-q", "health"]).log_level(&debug),
            log::LevelFilter::Info
        );
    }
}
