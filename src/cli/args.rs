//! Parsing the command line (lexopt) into a `Command`. The parser takes explicit
//! arguments and environment, so it is unit-testable.

use std::ffi::OsString;

use lexopt::prelude::*;

use super::help::*;
use super::*;
use crate::config::PoolKey;
use crate::config::{Config, Environment, ImageTable, Namespace};
use crate::containers::profile::Profile;

/// What a sub-parser found wrong; the caller knows which usage to attach.
#[derive(Debug, PartialEq)]
pub(super) struct Misuse(String);

impl From<lexopt::Error> for Misuse {
    fn from(error: lexopt::Error) -> Misuse {
        Misuse(error.to_string())
    }
}

impl Misuse {
    fn of(self, topic: Topic) -> UsageError {
        UsageError {
            message: self.0,
            usage: topic.usage(),
        }
    }
}

/// Options every client command takes, before or after its name.
#[derive(Debug, Default)]
pub(super) struct Globals {
    server: Option<String>,
    verbosity: i32,
}

/// A global option, recognised apart from its value so that the parser is free to
/// read that value (a lexopt `Arg` borrows the parser).
#[derive(Debug, Clone, Copy)]
pub(super) enum GlobalFlag {
    Server,
    Verbose,
    Quiet,
}

pub(super) fn global_flag(arg: &lexopt::Arg) -> Option<GlobalFlag> {
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
            "egress" => {
                return match parser.next().map_err(|e| Misuse::from(e).of(EGRESS))? {
                    None => Ok(Command::Egress),
                    Some(Long("help") | Short('h')) => Ok(Command::Help(EGRESS)),
                    Some(other) => Err(Misuse(other.unexpected().to_string()).of(EGRESS)),
                }
            }
            "run" => (RUN, parse_run(&mut parser, &mut globals, env)),
            "exec" => (EXEC, parse_exec(&mut parser, &mut globals, env)),
            "sandbox" => match parse_sandbox(&mut parser, &mut globals) {
                Ok(parsed) => parsed,
                Err((topic, misuse)) => return Err(misuse.of(topic)),
            },
            "snapshot" => match parse_snapshot(&mut parser, &mut globals) {
                Ok(parsed) => parsed,
                Err((topic, misuse)) => return Err(misuse.of(topic)),
            },
            "cp" => (CP, parse_cp(&mut parser, &mut globals)),
            "health" => (HEALTH, parse_health(&mut parser, &mut globals)),
            other => return Err(Misuse(format!("unknown command '{other}'")).of(MAIN)),
        };
        let action = match action.map_err(|e| e.of(topic))? {
            Parsed::Help => return Ok(Command::Help(topic)),
            Parsed::Action(action) => *action,
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
pub(super) enum Parsed {
    Action(Box<Action>),
    Help,
}

impl Parsed {
    fn action(action: Action) -> Parsed {
        Parsed::Action(Box::new(action))
    }
}

pub(super) fn parse_stub(parser: &mut lexopt::Parser) -> Result<Command, Misuse> {
    let flag = match parser.next()? {
        None => return Ok(Command::Stub { idle: false }),
        Some(Long(flag)) => flag.to_string(),
        Some(other) => return Err(other.unexpected().into()),
    };
    match flag.as_str() {
        "idle" => Ok(Command::Stub { idle: true }),
        "spare" => match parser.next()? {
            None => Ok(Command::StubSpare),
            Some(other) => Err(other.unexpected().into()),
        },
        "cat" | "untar" | "rm" => parse_stub_file(&flag, parser),
        "supervise" | "detached-wait" | "detached-status" | "detached-list" | "detached-kill"
        | "detached-logs" => parse_stub_detached(&flag, parser),
        "kill-exec" => {
            let pid = parser.value()?.parse()?;
            let start = parser.value()?.parse()?;
            match parser.next()? {
                None => Ok(Command::StubKillExec { pid, start }),
                Some(other) => Err(other.unexpected().into()),
            }
        }
        _ => Err(Misuse(format!("invalid option '--{flag}'"))),
    }
}

/// `--supervise ID [--workdir DIR] -- ARGV...`, `--detached-list`, or
/// `--detached-wait|status|kill|logs ID`.
pub(super) fn parse_stub_detached(
    op: &str,
    parser: &mut lexopt::Parser,
) -> Result<Command, Misuse> {
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
        "supervise" => {
            let mut raw = parser.raw_args()?;
            let workdir = match raw.next_if(|arg| arg == "--workdir") {
                None => None,
                Some(_) => match raw.next() {
                    Some(dir) if dir.to_string_lossy().starts_with('/') => {
                        Some(dir.to_string_lossy().into_owned())
                    }
                    _ => return Err(Misuse("--workdir needs an absolute path".into())),
                },
            };
            // Exactly one separator: the command itself may begin with "--".
            if raw.next_if(|arg| arg == "--").is_none() {
                return Err(Misuse("a detached command comes after '--'".into()));
            }
            let argv: Vec<String> = raw.map(|arg| arg.to_string_lossy().into_owned()).collect();
            if argv.is_empty() {
                return Err(Misuse("a detached command needs a program".into()));
            }
            DetachedOp::Supervise { id, workdir, argv }
        }
        "detached-wait" => DetachedOp::Wait { id },
        "detached-status" => DetachedOp::Status { id },
        "detached-kill" => DetachedOp::Kill { id },
        _ => DetachedOp::Logs { id },
    };
    Ok(Command::StubDetached(op))
}

/// `--cat PATH MAX`, `--untar DIR MAX` or `--rm PATH`, and nothing after.
pub(super) fn parse_stub_file(op: &str, parser: &mut lexopt::Parser) -> Result<Command, Misuse> {
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
pub(super) fn target(globals: &Globals, env: &dyn Environment) -> Result<Target, Misuse> {
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
pub(super) fn parse_timeout(text: &str) -> Result<u64, Misuse> {
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
pub(super) fn env_entry(text: String, env: &dyn Environment) -> Option<String> {
    if text.contains('=') {
        return Some(text);
    }
    env.var(&text).map(|value| format!("{text}={value}"))
}

/// The options `run` and `exec` share, recognised apart from their values.
#[derive(Debug, Clone, Copy)]
pub(super) enum CommandFlag {
    Env,
    Workdir,
    Timeout,
    Json,
}

pub(super) fn command_flag(arg: &lexopt::Arg) -> Option<CommandFlag> {
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
pub(super) fn rest_of_command(
    first: OsString,
    parser: &mut lexopt::Parser,
) -> Result<Vec<String>, Misuse> {
    let mut argv = vec![first.string()?];
    for arg in parser.raw_args()? {
        argv.push(arg.string()?);
    }
    Ok(argv)
}

pub(super) fn parse_run(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
    env: &dyn Environment,
) -> Result<Parsed, Misuse> {
    let (mut image, mut profile, mut network, mut fast) = (None, None, None, true);
    let (mut disk_mb, mut runtime) = (None, None);
    let mut command = CommandArgs::default();
    while let Some(arg) = parser.next()? {
        if let Some(flag) = global_flag(&arg) {
            globals.apply(flag, parser)?;
            continue;
        }
        if !RUN.accepts(&arg) {
            return Err(arg.unexpected().into());
        }
        if let Some(flag) = command_flag(&arg) {
            command.apply(flag, parser, env)?;
            continue;
        }
        match arg {
            Long("image") => image = Some(parser.value()?.string()?),
            Long("profile") => profile = Some(parser.value()?.string()?),
            Long("network") => network = Some(parser.value()?.string()?),
            Long("disk-mb") => disk_mb = Some(parser.value()?.parse()?),
            Long("runtime") => runtime = Some(parser.value()?.string()?),
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
    Ok(Parsed::action(Action::Run {
        image,
        profile,
        network,
        disk_mb,
        runtime,
        fast,
        command,
    }))
}

pub(super) fn parse_exec(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
    env: &dyn Environment,
) -> Result<Parsed, Misuse> {
    let mut name = None;
    let mut command = CommandArgs::default();
    while let Some(arg) = parser.next()? {
        if let Some(flag) = global_flag(&arg) {
            globals.apply(flag, parser)?;
            continue;
        }
        if !EXEC.accepts(&arg) {
            return Err(arg.unexpected().into());
        }
        if let Some(flag) = command_flag(&arg) {
            command.apply(flag, parser, env)?;
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
    Ok(Parsed::action(Action::Exec { name, command }))
}

pub(super) fn parse_health(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
) -> Result<Parsed, Misuse> {
    while let Some(arg) = parser.next()? {
        if let Some(flag) = global_flag(&arg) {
            globals.apply(flag, parser)?;
            continue;
        }
        if !HEALTH.accepts(&arg) {
            return Err(arg.unexpected().into());
        }
        match arg {
            Long("help") | Short('h') => return Ok(Parsed::Help),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(Parsed::action(Action::Health))
}

/// `cp SRC DST`.
pub(super) fn parse_cp(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
) -> Result<Parsed, Misuse> {
    let mut places = Vec::new();
    while let Some(arg) = parser.next()? {
        if let Some(flag) = global_flag(&arg) {
            globals.apply(flag, parser)?;
            continue;
        }
        if !CP.accepts(&arg) {
            return Err(arg.unexpected().into());
        }
        match arg {
            Long("help") | Short('h') => return Ok(Parsed::Help),
            Value(word) if places.len() < 2 => places.push(word.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let [from, to] = <[String; 2]>::try_from(places)
        .map_err(|_| Misuse("cp takes a source and a destination".into()))?;
    let (from, to) = (
        super::copy::Place::parse(&from),
        super::copy::Place::parse(&to),
    );
    let sandboxes = [&from, &to]
        .iter()
        .filter(|place| matches!(place, super::copy::Place::Sandbox { .. }))
        .count();
    if sandboxes != 1 {
        return Err(Misuse(
            "one of cp's paths is a sandbox's (NAME:/path), the other a local one".into(),
        ));
    }
    Ok(Parsed::action(Action::Copy { from, to }))
}

/// The subcommand word after `sandbox` or `snapshot` (`topic`), global flags applied on
/// the way; `None` when help was asked for.
fn subcommand_word(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
    topic: Topic,
    what: &str,
) -> Result<Option<String>, (Topic, Misuse)> {
    loop {
        match parser.next().map_err(|e| (topic, e.into()))? {
            Some(Long("help") | Short('h')) => return Ok(None),
            Some(Value(word)) => return Ok(Some(word.to_string_lossy().into_owned())),
            Some(other) => match global_flag(&other) {
                Some(flag) => globals.apply(flag, parser).map_err(|e| (topic, e))?,
                None => return Err((topic, Misuse(other.unexpected().to_string()))),
            },
            None => return Err((topic, Misuse(format!("no {what} command given")))),
        }
    }
}

/// `sandbox SUBCOMMAND ...`; an error carries the usage of the subcommand it concerns.
pub(super) fn parse_sandbox(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
) -> Result<(Topic, Result<Parsed, Misuse>), (Topic, Misuse)> {
    let Some(word) = subcommand_word(parser, globals, SANDBOX, "sandbox")? else {
        return Ok((SANDBOX, Ok(Parsed::Help)));
    };
    let (topic, verb) = match word.as_str() {
        "create" => (SANDBOX_CREATE, None),
        "list" | "ls" => (SANDBOX_LIST, None),
        "info" | "inspect" => (SANDBOX_INFO, None),
        "start" => (SANDBOX_CHANGE, Some(Verb::Start)),
        "stop" => (SANDBOX_CHANGE, Some(Verb::Stop)),
        "pause" => (SANDBOX_CHANGE, Some(Verb::Pause)),
        "resume" => (SANDBOX_CHANGE, Some(Verb::Resume)),
        "remove" | "rm" => (SANDBOX_CHANGE, Some(Verb::Remove)),
        "extend" => (SANDBOX_EXTEND, None),
        "stats" => (SANDBOX_STATS, None),
        other => {
            return Err((
                SANDBOX,
                Misuse(format!("unknown sandbox command '{other}'")),
            ))
        }
    };
    let mut name: Option<String> = None;
    let mut json = false;
    let (mut image, mut profile, mut network, mut runtime) = (None, None, None, None);
    let (mut memory_mb, mut vcpus, mut pids, mut disk_mb) = (None, None, None, None);
    let (mut ttl, mut idle_timeout) = (None, None);
    let creating = topic == SANDBOX_CREATE;
    let extending = topic == SANDBOX_EXTEND;
    let mut by: Option<String> = None;
    let takes_name = topic != SANDBOX_LIST;
    let parsed = (|| {
        while let Some(arg) = parser.next()? {
            if let Some(flag) = global_flag(&arg) {
                globals.apply(flag, parser)?;
                continue;
            }
            if !topic.accepts(&arg) {
                return Err(arg.unexpected().into());
            }
            match arg {
                Long("help") | Short('h') => return Ok(Parsed::Help),
                Long("json") => json = true,
                Long("image") if creating => image = Some(parser.value()?.string()?),
                Long("profile") if creating => profile = Some(parser.value()?.string()?),
                Long("network") if creating => network = Some(parser.value()?.string()?),
                Long("memory-mb") if creating => memory_mb = Some(parser.value()?.parse()?),
                Long("vcpus") if creating => vcpus = Some(parser.value()?.parse()?),
                Long("pids") if creating => pids = Some(parser.value()?.parse()?),
                Long("disk-mb") if creating => disk_mb = Some(parser.value()?.parse()?),
                Long("runtime") if creating => runtime = Some(parser.value()?.string()?),
                Long("ttl") if creating => ttl = Some(parser.value()?.string()?),
                Long("idle-timeout") if creating => idle_timeout = Some(parser.value()?.string()?),
                Value(word) if takes_name && name.is_none() => name = Some(word.string()?),
                Value(word) if extending && by.is_none() => by = Some(word.string()?),
                _ => return Err(arg.unexpected().into()),
            }
        }
        if !takes_name {
            return Ok(Parsed::action(Action::List { json }));
        }
        let name = name.ok_or_else(|| Misuse("no sandbox name given".into()))?;
        if extending {
            let by = by.ok_or_else(|| Misuse("no duration given (like 30m, 2h or 1d)".into()))?;
            return Ok(Parsed::action(Action::Extend { name, by, json }));
        }
        if topic == SANDBOX_STATS {
            return Ok(Parsed::action(Action::Stats { name, json }));
        }
        Ok(Parsed::action(match verb {
            Some(verb) => Action::Change { verb, name, json },
            None if creating => Action::Create {
                name,
                image,
                profile,
                network,
                memory_mb,
                vcpus,
                pids,
                disk_mb,
                runtime,
                ttl,
                idle_timeout,
                json,
            },
            None => Action::Info { name, json },
        }))
    })();
    Ok((topic, parsed))
}

/// `snapshot SUBCOMMAND ...`; an error carries the usage of the subcommand it concerns.
pub(super) fn parse_snapshot(
    parser: &mut lexopt::Parser,
    globals: &mut Globals,
) -> Result<(Topic, Result<Parsed, Misuse>), (Topic, Misuse)> {
    let Some(word) = subcommand_word(parser, globals, SNAPSHOT, "snapshot")? else {
        return Ok((SNAPSHOT, Ok(Parsed::Help)));
    };
    let topic = match word.as_str() {
        "create" => SNAPSHOT_CREATE,
        "list" | "ls" => SNAPSHOT_LIST,
        "info" | "inspect" => SNAPSHOT_INFO,
        "remove" | "rm" => SNAPSHOT_REMOVE,
        "restore" => SNAPSHOT_RESTORE,
        other => {
            return Err((
                SNAPSHOT,
                Misuse(format!("unknown snapshot command '{other}'")),
            ))
        }
    };
    let (mut operand, mut option, mut json) = (None::<String>, None::<String>, false);
    let parsed = (|| {
        while let Some(arg) = parser.next()? {
            if let Some(flag) = global_flag(&arg) {
                globals.apply(flag, parser)?;
                continue;
            }
            if !topic.accepts(&arg) {
                return Err(arg.unexpected().into());
            }
            match arg {
                Long("help") | Short('h') => return Ok(Parsed::Help),
                Long("json") => json = true,
                Long("name" | "as") => option = Some(parser.value()?.string()?),
                Value(word) if topic != SNAPSHOT_LIST && operand.is_none() => {
                    operand = Some(word.string()?)
                }
                _ => return Err(arg.unexpected().into()),
            }
        }
        if topic == SNAPSHOT_LIST {
            return Ok(Parsed::action(Action::Snapshot {
                op: SnapshotOp::List,
                json,
            }));
        }
        let what = if topic == SNAPSHOT_CREATE {
            "sandbox"
        } else {
            "snapshot"
        };
        let operand = operand.ok_or_else(|| Misuse(format!("no {what} name given")))?;
        let op = match topic {
            SNAPSHOT_CREATE => SnapshotOp::Create {
                sandbox: operand,
                name: option,
            },
            SNAPSHOT_INFO => SnapshotOp::Info { name: operand },
            SNAPSHOT_REMOVE => SnapshotOp::Remove { name: operand },
            _ => SnapshotOp::Restore {
                name: operand,
                sandbox: option,
            },
        };
        Ok(Parsed::action(Action::Snapshot { op, json }))
    })();
    Ok((topic, parsed))
}

pub(super) fn parse_serve(
    parser: &mut lexopt::Parser,
    env: &dyn Environment,
) -> Result<Command, Misuse> {
    let mut config = Config::from_env(env).map_err(Misuse)?;
    let mut cluster = false;
    while let Some(arg) = parser.next()? {
        if !SERVE.accepts(&arg) {
            return Err(arg.unexpected().into());
        }
        match arg {
            Long("host") => config.host = parser.value()?.string()?,
            Long("port") => config.port = parser.value()?.parse()?,
            Long("workers") => config.workers = positive(parser.value()?.parse()?, "--workers")?,
            Long("queue") => config.queue = positive(parser.value()?.parse()?, "--queue")?,
            Long("batch-concurrency") => {
                config.batch_concurrency =
                    positive(parser.value()?.parse()?, "--batch-concurrency")?
            }
            Long("engine-timeout-secs") => {
                config.docker_timeout =
                    seconds(parser.value()?.parse()?, "--engine-timeout-secs", 5)?
            }
            Long("namespace") => {
                config.namespace = Namespace::parse(&parser.value()?.string()?).map_err(Misuse)?
            }
            Long("default-image") => config
                .images
                .set_default(&parser.value()?.string()?)
                .map_err(Misuse)?,
            Long("image") => set_image(&mut config.images, &parser.value()?.string()?)?,
            Long("default-profile") => {
                config.default_profile =
                    Profile::parse(&parser.value()?.string()?).map_err(Misuse)?
            }
            Long("max-body-bytes") => config.max_body_bytes = parser.value()?.parse()?,
            Long("max-body-memory-bytes") => {
                config.max_body_memory_bytes = parser.value()?.parse()?
            }
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
            Long("pool-max") => config.pool_max = parser.value()?.parse()?,
            Long("sandbox-ttl") => {
                config.sandbox_ttl = Some(duration_flag(parser, "--sandbox-ttl")?)
            }
            Long("sandbox-idle-timeout") => {
                config.sandbox_idle_timeout = Some(duration_flag(parser, "--sandbox-idle-timeout")?)
            }
            Long("no-stub") => config.stub = false,
            Long("max-network") => {
                let text = parser.value()?.string()?;
                config.max_network = crate::containers::profile::Network::parse(&text)
                    .map_err(|error| Misuse(format!("--max-network: {error}")))?;
            }
            Long("max-disk-mb") => {
                config.max_disk_mb = parser.value()?.parse()?;
                if config.max_disk_mb < crate::containers::profile::DISK_MB_RANGE.0 {
                    return Err(Misuse("--max-disk-mb must be at least 16".into()));
                }
            }
            Long("no-disk-quota") => config.disk_quota = false,
            Long("cluster") => cluster = true,
            Long("nodes") => {
                let text = parser.value()?.string()?;
                config.cluster = Some(crate::config::ClusterSource::nodes(&text).map_err(Misuse)?);
            }
            Long("discover") => {
                let text = parser.value()?.string()?;
                config.cluster =
                    Some(crate::config::ClusterSource::discover(&text).map_err(Misuse)?);
            }
            Long("runtimes") => {
                let text = parser.value()?.string()?;
                config.runtimes = Some(
                    crate::config::parse_runtimes(&text)
                        .map_err(|error| Misuse(format!("--runtimes: {error}")))?,
                );
            }
            Long("egress-resolver") => {
                let text = parser.value()?.string()?;
                let resolver = crate::config::parse_resolver(&text)
                    .map_err(|error| Misuse(format!("--egress-resolver: {error}")))?;
                config.egress_resolvers.push(resolver);
            }
            Long("default-runtime") => {
                let runtime = parser.value()?.string()?;
                if !crate::containers::runtime::valid_name(&runtime) {
                    return Err(Misuse(format!(
                        "--default-runtime: invalid runtime name '{runtime}'"
                    )));
                }
                config.default_runtime = Some(runtime);
            }
            Long("default-network") => {
                let text = parser.value()?.string()?;
                config.default_network = Some(
                    crate::containers::profile::Network::parse(&text)
                        .and_then(crate::containers::profile::default_policy)
                        .map_err(|error| Misuse(format!("--default-network: {error}")))?,
                );
            }
            Long("keys") => config.keys_file = Some(parser.value()?.into()),
            Long("client-timeout-secs") => {
                config.client_timeout =
                    seconds(parser.value()?.parse()?, "--client-timeout-secs", 1)?
            }
            Long("max-connections") => {
                config.max_connections = positive(parser.value()?.parse()?, "--max-connections")?
            }
            Long("idle-timeout-secs") => {
                config.idle_timeout = seconds(parser.value()?.parse()?, "--idle-timeout-secs", 1)?
            }
            Long("drain-timeout-secs") => {
                config.shutdown_grace =
                    seconds(parser.value()?.parse()?, "--drain-timeout-secs", 0)?
            }
            Long("head-timeout-secs") => {
                config.head_timeout = seconds(parser.value()?.parse()?, "--head-timeout-secs", 1)?
            }
            Long("default-timeout-ms") => config.default_timeout_ms = parser.value()?.parse()?,
            Long("max-timeout-ms") => config.max_timeout_ms = parser.value()?.parse()?,
            Long("max-output-bytes") => config.max_output_bytes_limit = parser.value()?.parse()?,
            Long("max-request-output-bytes") => {
                config.max_request_output_bytes = parser.value()?.parse()?
            }
            Long("max-output-memory-bytes") => {
                config.max_output_memory_bytes = parser.value()?.parse()?
            }
            Long("help") | Short('h') => return Ok(Command::Help(SERVE)),
            _ => return Err(arg.unexpected().into()),
        }
    }
    match (cluster, &config.cluster) {
        (true, None) => {
            return Err(Misuse(
                "--cluster needs its agents: --nodes HOST:PORT,... or --discover NAME:PORT".into(),
            ))
        }
        (false, Some(_)) => return Err(Misuse("--nodes and --discover are for --cluster".into())),
        _ => {}
    }
    if config.max_timeout_ms > MAX_COMMAND_TIMEOUT_MS {
        return Err(Misuse(format!(
            "--max-timeout-ms must be at most {MAX_COMMAND_TIMEOUT_MS} (7 days)"
        )));
    }
    if config.pool_max > MAX_POOL {
        return Err(Misuse(format!("--pool-max must be at most {MAX_POOL}")));
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
pub(super) fn parse_pool(text: &str, default_profile: Profile) -> Result<(PoolKey, usize), Misuse> {
    let (key, size) = text
        .rsplit_once('=')
        .ok_or_else(|| Misuse(format!("--pool expects IMAGE[:PROFILE]=N, got '{text}'")))?;
    let size = size
        .parse()
        .map_err(|_| Misuse(format!("--pool size '{size}' is not a number")))?;
    let key = PoolKey::parse(key, default_profile).map_err(Misuse)?;
    Ok((key, size))
}

/// A duration flag's value (`90s`, `30m`, `2h`, `1d`, or seconds).
fn duration_flag(parser: &mut lexopt::Parser, flag: &str) -> Result<std::time::Duration, Misuse> {
    let text = parser.value()?.string()?;
    crate::config::parse_duration(&text).map_err(|error| Misuse(format!("{flag}: {error}")))
}

/// Largest `--pool-max`: more warm containers than a host can hold open.
const MAX_POOL: usize = 1024;
/// The longest server timeout a flag may set: a day (a bound, so that no deadline
/// computed from it can overflow).
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// The longest command timeout `--max-timeout-ms` may allow: 7 days.
const MAX_COMMAND_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

/// A timeout flag's value: whole seconds from `least` to a day.
fn seconds(value: u64, flag: &str, least: u64) -> Result<std::time::Duration, Misuse> {
    if value < least || value > MAX_TIMEOUT_SECS {
        return Err(Misuse(format!(
            "{flag} must be between {least} and {MAX_TIMEOUT_SECS} seconds"
        )));
    }
    Ok(std::time::Duration::from_secs(value))
}

pub(super) fn positive(value: usize, flag: &str) -> Result<usize, Misuse> {
    if value == 0 {
        Err(Misuse(format!("{flag} must be at least 1")))
    } else {
        Ok(value)
    }
}

pub(super) fn set_image(images: &mut ImageTable, assignment: &str) -> Result<(), Misuse> {
    let (runtime, image) = assignment
        .split_once('=')
        .ok_or_else(|| Misuse(format!("--image expects RUNTIME=IMAGE, got '{assignment}'")))?;
    images.set(runtime, image).map_err(Misuse)
}
