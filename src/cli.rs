//! The command line: `main` calls `run(parse(args))`. The parser takes explicit
//! arguments so it is unit-testable; errors are printed once, by `main`.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error.

use std::ffi::OsString;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lexopt::prelude::*;

use crate::config::{Config, Environment, ImageTable, Namespace, ProcessEnvironment};
use crate::pool::PoolKey;
use crate::profile::Profile;

pub const USAGE: &str = "\
agentkernel: run untrusted commands in isolated Docker containers

Usage:
  agentkernel serve [--host ADDR] [--port N] [--workers N] [--queue N]
                    [--namespace NS] [--default-image IMAGE] [--image RUNTIME=IMAGE]...
                    [--default-profile P] [--max-body-bytes N]
                    [--pool IMAGE[:PROFILE]=N]... [--pool-size N] [--pool-dynamic-size N]
                    [--no-stub] [--default-timeout-ms N] [--max-timeout-ms N]
                    [--max-output-bytes N] [--max-file-bytes N]
  agentkernel --help | --version

Environment:
  AGENTKERNEL_API_KEY        require this key (X-API-Key or Authorization: Bearer)
  AGENTKERNEL_NAMESPACE      namespace of our containers (default: default)
  AGENTKERNEL_DEFAULT_IMAGE  image for commands of no known runtime (default: alpine:3.20)
  AGENTKERNEL_IMAGE_<RUNTIME> image for a runtime, e.g. AGENTKERNEL_IMAGE_PYTHON
  AGENTKERNEL_STUB=off       never use the in-container stub (docker exec instead)
  AGENTKERNEL_LOG            log level: error, warn, info, debug, trace (default: info)
  DOCKER_HOST                unix:///path/to/docker.sock (default: /var/run/docker.sock)
";

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
    Help,
    Version,
}

/// A usage error: exit code 2.
#[derive(Debug, PartialEq)]
pub struct UsageError(pub String);

impl From<lexopt::Error> for UsageError {
    fn from(error: lexopt::Error) -> UsageError {
        UsageError(error.to_string())
    }
}

pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Environment,
) -> Result<Command, UsageError> {
    let mut parser = lexopt::Parser::from_args(args);
    match parser.next()? {
        Some(Long("help") | Short('h')) => Ok(Command::Help),
        Some(Long("version") | Short('V')) => Ok(Command::Version),
        Some(Value(word)) if word == "serve" => parse_serve(&mut parser, env),
        Some(Value(word)) if word == "stub" => {
            let flag = match parser.next()? {
                None => return Ok(Command::Stub { idle: false }),
                Some(Long(flag)) => flag.to_string(),
                Some(other) => return Err(other.unexpected().into()),
            };
            match flag.as_str() {
                "idle" => Ok(Command::Stub { idle: true }),
                "cat" | "untar" | "rm" => parse_stub_file(&flag, &mut parser),
                _ => Err(UsageError(format!("invalid option '--{flag}'"))),
            }
        }
        Some(Value(word)) => Err(UsageError(format!(
            "unknown command '{}'",
            word.to_string_lossy()
        ))),
        Some(other) => Err(other.unexpected().into()),
        None => Err(UsageError("no command given".into())),
    }
}

/// `--cat PATH MAX`, `--untar DIR MAX` or `--rm PATH`, and nothing after.
fn parse_stub_file(op: &str, parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
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
    if !op_path(&op).starts_with('/') {
        return Err(UsageError(format!(
            "stub file operations take absolute paths, got '{}'",
            op_path(&op)
        )));
    }
    match parser.next()? {
        None => Ok(Command::StubFile(op)),
        Some(other) => Err(other.unexpected().into()),
    }
}

fn op_path(op: &crate::stub::FileOp) -> &str {
    use crate::stub::FileOp;
    match op {
        FileOp::Cat { path, .. } | FileOp::Rm { path } => path,
        FileOp::Untar { dir, .. } => dir,
    }
}

fn parse_serve(parser: &mut lexopt::Parser, env: &dyn Environment) -> Result<Command, UsageError> {
    let mut config = Config::from_env(env).map_err(UsageError)?;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("host") => config.host = parser.value()?.string()?,
            Long("port") => config.port = parser.value()?.parse()?,
            Long("workers") => config.workers = positive(parser.value()?.parse()?, "--workers")?,
            Long("queue") => config.queue = positive(parser.value()?.parse()?, "--queue")?,
            Long("namespace") => {
                config.namespace =
                    Namespace::parse(&parser.value()?.string()?).map_err(UsageError)?
            }
            Long("default-image") => config.images.default_image = parser.value()?.string()?,
            Long("image") => set_image(&mut config.images, &parser.value()?.string()?)?,
            Long("default-profile") => {
                config.default_profile =
                    Profile::parse(&parser.value()?.string()?).map_err(UsageError)?
            }
            Long("max-body-bytes") => config.max_body_bytes = parser.value()?.parse()?,
            Long("max-file-bytes") => {
                config.max_file_bytes = positive_u64(parser.value()?.parse()?, "--max-file-bytes")?
            }
            Long("pool") => {
                let text = parser.value()?.string()?;
                let entry = parse_pool(&text, config.default_profile)?;
                config.pool.get_or_insert_with(Vec::new).push(entry);
            }
            Long("pool-size") => config.pool_default_size = parser.value()?.parse()?,
            Long("pool-dynamic-size") => config.pool_dynamic_size = parser.value()?.parse()?,
            Long("no-stub") => config.stub = false,
            Long("default-timeout-ms") => config.default_timeout_ms = parser.value()?.parse()?,
            Long("max-timeout-ms") => config.max_timeout_ms = parser.value()?.parse()?,
            Long("max-output-bytes") => config.max_output_bytes_limit = parser.value()?.parse()?,
            Long("help") | Short('h') => return Ok(Command::Help),
            _ => return Err(arg.unexpected().into()),
        }
    }
    if config.default_timeout_ms == 0 || config.max_timeout_ms == 0 {
        return Err(UsageError("timeouts must be at least 1 ms".into()));
    }
    // A lower maximum lowers the default with it.
    config.default_timeout_ms = config.default_timeout_ms.min(config.max_timeout_ms);
    config.default_max_output_bytes = config
        .default_max_output_bytes
        .min(config.max_output_bytes_limit);
    Ok(Command::Serve(Box::new(config)))
}

/// `image[:profile]=N`; `N` may be 0 to keep no warm containers for that key.
fn parse_pool(text: &str, default_profile: Profile) -> Result<(PoolKey, usize), UsageError> {
    let (key, size) = text
        .rsplit_once('=')
        .ok_or_else(|| UsageError(format!("--pool expects IMAGE[:PROFILE]=N, got '{text}'")))?;
    let size = size
        .parse()
        .map_err(|_| UsageError(format!("--pool size '{size}' is not a number")))?;
    let key = PoolKey::parse(key, default_profile).map_err(UsageError)?;
    Ok((key, size))
}

fn positive(value: usize, flag: &str) -> Result<usize, UsageError> {
    if value == 0 {
        Err(UsageError(format!("{flag} must be at least 1")))
    } else {
        Ok(value)
    }
}

fn positive_u64(value: u64, flag: &str) -> Result<u64, UsageError> {
    if value == 0 {
        Err(UsageError(format!("{flag} must be at least 1")))
    } else {
        Ok(value)
    }
}

fn set_image(images: &mut ImageTable, assignment: &str) -> Result<(), UsageError> {
    let (runtime, image) = assignment
        .split_once('=')
        .ok_or_else(|| UsageError(format!("--image expects RUNTIME=IMAGE, got '{assignment}'")))?;
    images.set(runtime, image).map_err(UsageError)
}

/// Runs the command; returns the process exit code.
pub fn run(command: Command) -> i32 {
    match command {
        Command::Help => {
            print!("{USAGE}");
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
    let docker = crate::docker::Docker::new(config.docker_socket.clone(), config.docker_timeout);
    match docker.ping() {
        Ok(version) => {
            log::info!(
                "Docker Engine API {version} at {}",
                docker.socket().display()
            );
            crate::sweep::remove_temporary(&docker, &config);
        }
        Err(error) => log::warn!("{error}; requests will answer 503 until it is reachable"),
    }
    let launcher = crate::pool::Launcher::detect(config.stub);
    let pool = crate::pool::Pool::new(launcher, &config.pool_keys(), config.pool_dynamic_size);
    let context = Arc::new(crate::api::Context::new(config, docker, pool));
    match crate::api::serve(context, shutdown) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            1
        }
    }
}

/// Sets up logging to stderr, level from `AGENTKERNEL_LOG`.
pub fn init_logging() {
    let level = ProcessEnvironment
        .var("AGENTKERNEL_LOG")
        .and_then(|text| text.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
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
        let Command::Serve(config) = parse_words(&["serve", "--max-file-bytes", "1000"]).unwrap()
        else {
            panic!("expected serve");
        };
        assert_eq!(config.max_file_bytes, 1000);
        assert!(parse_words(&["serve", "--max-file-bytes", "0"]).is_err());
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        assert!(parse_words(&[]).is_err());
        assert!(parse_words(&["serve", "--port", "x"]).is_err());
        assert!(parse_words(&["serve", "--workers", "0"])
            .unwrap_err()
            .0
            .contains("--workers"));
        assert!(parse_words(&["serve", "--bogus"]).is_err());
        assert!(parse_words(&["frobnicate"])
            .unwrap_err()
            .0
            .contains("frobnicate"));
        assert!(parse_words(&["serve", "--namespace", "Bad_NS"]).is_err());
        assert!(parse_words(&["serve", "--pool", "img"]).is_err());
        assert!(parse_words(&["serve", "--pool", "img=x"]).is_err());
    }
}
