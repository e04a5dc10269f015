//! The command line: `main` calls `run(parse(args))`. The parser takes explicit
//! arguments and environment so it is unit-testable; errors are printed once.
//!
//! Client commands (`run`, `exec`, `sandbox ...`, `health`) become the server's own
//! typed API request (`server::request::Request`), built here and sent through a
//! `backend::Backend`, local or remote; what they print is computed from the API's
//! `data` alone, so both modes print the same thing. `serve` and `stub` are the server and its in-container helper.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error. `run` and `exec` exit with the
//! command's own code instead: 124 on timeout, 128+N when killed by signal N, and 125
//! when agentkernel itself failed (as `docker run` does).

mod args;
pub mod backend;
mod commands;
pub mod copy;
pub mod help;
mod output;
mod serve;
#[cfg(test)]
mod tests;

use crate::config::{Config, Environment};

pub use self::args::parse;
use self::backend::Backend;
pub use self::commands::exit_code_of;
pub use self::help::Topic;

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    /// The in-container stub (internal: the server runs it inside containers).
    Stub {
        idle: bool,
    },
    /// A sandbox's supervisor started ahead of its exec (internal, like `Stub`).
    StubSpare,
    /// A file operation of the in-container stub (internal, like `Stub`).
    StubFile(crate::stub::FileOp),
    /// A detached-exec operation of the stub (internal).
    StubDetached(crate::detached::DetachedOp),
    /// The server's kill of an exec from outside (internal): its stub's pid and start.
    StubKillExec {
        pid: u32,
        start: u64,
    },
    /// Makes the public egress policy's host rules (and network, where the engine
    /// answers): what a server does before its first public container, for a unit that
    /// runs before the engine starts sandboxes at boot.
    Egress,
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
        network: Option<String>,
        disk_mb: Option<u64>,
        runtime: Option<String>,
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
        network: Option<String>,
        memory_mb: Option<u64>,
        vcpus: Option<u64>,
        pids: Option<u64>,
        disk_mb: Option<u64>,
        runtime: Option<String>,
        ttl: Option<String>,
        idle_timeout: Option<String>,
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
    Extend {
        name: String,
        by: String,
        json: bool,
    },
    Stats {
        name: String,
        json: bool,
    },
    Snapshot {
        op: SnapshotOp,
        json: bool,
    },
    /// `cp SRC DST`: one side a sandbox's path.
    Copy {
        from: copy::Place,
        to: copy::Place,
    },
    Health,
}

/// What `snapshot` does.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotOp {
    Create {
        sandbox: String,
        name: Option<String>,
    },
    List,
    Info {
        name: String,
    },
    Remove {
        name: String,
    },
    Restore {
        name: String,
        sandbox: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Pause,
    Resume,
    Remove,
}

/// A usage error: exit code 2, with the usage of the command it concerns.
#[derive(Debug, PartialEq)]
pub struct UsageError {
    pub message: String,
    pub usage: String,
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
        Command::Serve(config) => serve::serve(*config),
        Command::Egress => serve::egress(),
        Command::Stub { idle: false } => crate::stub::main(),
        Command::Stub { idle: true } => crate::stub::idle(),
        Command::StubSpare => crate::stub::spare(),
        Command::StubFile(op) => crate::stub::file_op(op),
        Command::StubDetached(op) => crate::detached::run_op(op),
        Command::StubKillExec { pid, start } => crate::stub::reap::kill_exec(pid, start),
        Command::Client { target, action, .. } => {
            let backend = match target {
                Target::Local(config) => Backend::local(*config),
                Target::Remote { url, api_key } => Backend::remote(&url, api_key),
            };
            commands::run_client(&backend, &action)
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
