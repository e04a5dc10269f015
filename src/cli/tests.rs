//! Unit tests of the command line: parsing, help, requests, exit codes, output.

use std::ffi::OsString;

use serde_json::{json, Value};

use super::args::*;
use super::commands::*;
use super::help::*;
use super::output::*;
use super::*;
use crate::containers::profile::Profile;

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
    use crate::server::output_memory_limit;
    let words = [
        "serve",
        "--max-request-output-bytes",
        "5000000",
        "--max-output-memory-bytes",
        "6000000",
        "--max-file-bytes",
        "1000",
    ];
    let Command::Serve(config) = parse_words(&words).unwrap() else {
        panic!("expected serve");
    };
    assert_eq!(config.max_request_output_bytes, 5_000_000);
    assert_eq!(output_memory_limit(&config), 8 * 1024 * 1024 + 128 * 1024);
    let words = ["serve", "--max-output-memory-bytes", "60000000"];
    let Command::Serve(config) = parse_words(&words).unwrap() else {
        panic!("expected serve");
    };
    assert_eq!(output_memory_limit(&config), 60_000_000);
    let words = ["serve", "--max-output-memory-bytes", "1"];
    let Command::Serve(config) = parse_words(&words).unwrap() else {
        panic!("expected serve");
    };
    assert_eq!(
        output_memory_limit(&config),
        33 * 1024 * 1024 + 64 * 1024,
        "room for one largest file read at least"
    );
}

#[test]
fn stub_detached_starts_take_a_workdir_and_one_separator() {
    use crate::detached::DetachedOp;
    let parsed = |words: &[&str]| match parse_words(words) {
        Ok(Command::StubDetached(op)) => Ok(op),
        Ok(other) => panic!("{words:?} parsed as {other:?}"),
        Err(error) => Err(error),
    };
    let id = "0123456789abcdef";
    let argv = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    assert_eq!(
        parsed(&["stub", "--supervise", id, "--", "echo", "hi"]),
        Ok(DetachedOp::Supervise {
            id: id.into(),
            workdir: None,
            argv: argv(&["echo", "hi"]),
        })
    );
    assert_eq!(
        parsed(&["stub", "--detached-wait", id]),
        Ok(DetachedOp::Wait { id: id.into() })
    );
    assert_eq!(
        parsed(&[
            "stub",
            "--supervise",
            id,
            "--workdir",
            "/w d",
            "--",
            "--",
            "x"
        ]),
        Ok(DetachedOp::Supervise {
            id: id.into(),
            workdir: Some("/w d".into()),
            argv: argv(&["--", "x"]),
        })
    );
    for bad in [
        &["stub", "--supervise", id, "--workdir", "rel", "--", "x"][..],
        &["stub", "--supervise", id, "--workdir"],
        &["stub", "--supervise", id, "echo"],
        &["stub", "--supervise", id, "--"],
        &["stub", "--supervise", "nothex", "--", "x"],
        &["stub", "--detach", id, "--", "x"],
        &["stub", "--detached-wait", "nothex"],
    ] {
        assert!(parsed(bad).is_err(), "{bad:?}");
    }
    assert!(matches!(
        parse_words(&["stub", "--kill-exec", "42", "123456"]),
        Ok(Command::StubKillExec {
            pid: 42,
            start: 123456
        })
    ));
    assert!(parse_words(&["stub", "--kill-exec", "42"]).is_err());
    assert!(parse_words(&["stub", "--kill-exec", "42", "1", "x"]).is_err());
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
        "--drain-timeout-secs",
        "2",
        "--batch-concurrency",
        "16",
        "--engine-timeout-secs",
        "20",
    ];
    let Command::Serve(config) = parse_words(&words).unwrap() else {
        panic!("expected serve");
    };
    assert_eq!(config.shutdown_grace, std::time::Duration::from_secs(2));
    assert_eq!(config.batch_concurrency, 16);
    assert_eq!(config.docker_timeout, std::time::Duration::from_secs(20));
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
    for (flag, value) in [("--batch-concurrency", "0"), ("--engine-timeout-secs", "4")] {
        let error = parse_words(&["serve", flag, value]).unwrap_err();
        assert!(error.message.contains(flag), "{}", error.message);
    }
    assert!(parse_words(&["frobnicate"])
        .unwrap_err()
        .message
        .contains("frobnicate"));
    assert!(parse_words(&["serve", "--namespace", "Bad_NS"]).is_err());
    assert!(parse_words(&["serve", "--pool", "img"]).is_err());
    assert!(parse_words(&["serve", "--pool", "img=x"]).is_err());
    let error = parse_words(&["run", "-e", "BAD KEY=1", "--", "true"]).unwrap_err();
    assert!(error.message.contains("BAD KEY=1"), "{}", error.message);
    for words in [
        &["cp", "a", "b"][..],
        &["cp", "b:/x", "c:/y"],
        &["cp", "b:/x"],
        &["cp", "b:/x", "out", "more"],
    ] {
        let error = parse_words(words).unwrap_err();
        assert!(
            error.usage.contains("agentkernel cp"),
            "{words:?}: {error:?}"
        );
    }
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
            network: None,
            disk_mb: None,
            runtime: None,
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
    let cases: [(&[&str], Action); 19] = [
        (
            &[
                "sandbox",
                "create",
                "b",
                "--image",
                "i",
                "--network",
                "none",
                "--memory-mb",
                "256",
                "--vcpus",
                "2",
                "--ttl",
                "2h",
            ],
            Action::Create {
                name: "b".into(),
                image: Some("i".into()),
                profile: None,
                network: Some("none".into()),
                memory_mb: Some(256),
                vcpus: Some(2),
                pids: None,
                disk_mb: None,
                runtime: None,
                ttl: Some("2h".into()),
                idle_timeout: None,
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
            &["sandbox", "pause", "b"],
            Action::Change {
                verb: Verb::Pause,
                name: "b".into(),
                json: false,
            },
        ),
        (
            &["sandbox", "resume", "b"],
            Action::Change {
                verb: Verb::Resume,
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
        (
            &["sandbox", "extend", "b", "2h"],
            Action::Extend {
                name: "b".into(),
                by: "2h".into(),
                json: false,
            },
        ),
        (
            &["sandbox", "stats", "b", "--json"],
            Action::Stats {
                name: "b".into(),
                json: true,
            },
        ),
        (
            &["snapshot", "create", "b", "--name", "s1"],
            Action::Snapshot {
                op: SnapshotOp::Create {
                    sandbox: "b".into(),
                    name: Some("s1".into()),
                },
                json: false,
            },
        ),
        (
            &["snapshot", "ls"],
            Action::Snapshot {
                op: SnapshotOp::List,
                json: false,
            },
        ),
        (
            &["snapshot", "info", "s1", "--json"],
            Action::Snapshot {
                op: SnapshotOp::Info { name: "s1".into() },
                json: true,
            },
        ),
        (
            &["snapshot", "rm", "s1"],
            Action::Snapshot {
                op: SnapshotOp::Remove { name: "s1".into() },
                json: false,
            },
        ),
        (
            &["snapshot", "restore", "s1", "--as", "b2"],
            Action::Snapshot {
                op: SnapshotOp::Restore {
                    name: "s1".into(),
                    sandbox: Some("b2".into()),
                },
                json: false,
            },
        ),
        (
            &["cp", "b:/work/x", "out"],
            Action::Copy {
                from: super::copy::Place::Sandbox {
                    name: "b".into(),
                    path: "/work/x".into(),
                },
                to: super::copy::Place::Local("out".into()),
            },
        ),
        (
            &["cp", "./a:b", "b:/work"],
            Action::Copy {
                from: super::copy::Place::Local("./a:b".into()),
                to: super::copy::Place::Sandbox {
                    name: "b".into(),
                    path: "/work".into(),
                },
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
        assert_eq!(error.usage, topic.usage(), "{words:?}");
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

/// What remote mode sends for an action: method, path and body (as JSON); and the
/// server parses that body back into the very request local mode dispatches.
fn sent(action: &Action, stdin: Option<String>) -> (&'static str, String, Option<Value>) {
    use crate::server::{request::Request, routes};
    let request = action.request(stdin).expect("a valid request");
    let (method, path) = request.route().target();
    let body = request.body();
    let route = routes::parse(method, &path).expect("a routed path");
    let parsed = Request::parse(route, body.as_deref().unwrap_or_default());
    assert_eq!(parsed.ok(), Some(request), "{method} {path}");
    let body = body.map(|bytes| serde_json::from_slice(&bytes).expect("JSON"));
    (method, path, body)
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
        sent(&run, Some("input".into())),
        (
            "POST",
            "/run".into(),
            Some(json!({
                "command": ["echo", "hi"],
                "env": ["A=1"],
                "timeout_ms": 2000,
                "fast": false,
                "stdin": "input",
            })),
        )
    );
    let (run, _) = client(&["run", "true"], &NoEnvironment);
    assert_eq!(sent(&run, None).2, Some(json!({"command": ["true"]})));
    let (exec, _) = client(&["exec", "b", "-w", "/w", "pwd"], &NoEnvironment);
    let (_, path, body) = sent(&exec, None);
    assert_eq!(path, "/sandboxes/b/exec");
    assert_eq!(body, Some(json!({"command": ["pwd"], "workdir": "/w"})));
    let (create, _) = client(&["sandbox", "create", "b", "--pids", "64"], &NoEnvironment);
    assert_eq!(
        sent(&create, None).2,
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
        let (sent_method, sent_path, body) = sent(&client(words, &NoEnvironment).0, None);
        assert_eq!((sent_method, sent_path.as_str()), (method, path));
        assert_eq!(body, None, "{words:?}");
    }
    let info = Action::Info {
        name: "-bad".into(),
        json: false,
    };
    assert!(info.request(None).is_err());
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
    assert_eq!(exit_code_of(&data("killed", json!(null), json!(null))), 137);
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

#[test]
fn every_flag_in_the_help_is_one_the_parser_takes() {
    let sample = |placeholder: &str| match placeholder {
        "I" | "IMAGE" => "busybox",
        "P" => "moderate",
        "SECS" | "N" => "8",
        "MIB" => "64",
        "LIST" => "runc,runsc",
        "DURATION" => "2h",
        "K=V" => "A=1",
        "DIR" => "/tmp",
        "NET" => "none",
        "FILE" => "/dev/null",
        "ADDR" => "127.0.0.1",
        "ADDRS" => "127.0.0.1:8081,127.0.0.1:8082",
        "NAME:PORT" => "tasks.agent:8080",
        "NS" => "ns",
        "NAME" | "SANDBOX" => "box",
        "RUNTIME=IMAGE" => "python=busybox",
        "IMAGE[:PROFILE]=N" => "busybox=1",
        other => panic!("no sample value for {other}"),
    };
    let topics: [(Topic, &[&str], &[&str]); 14] = [
        (RUN, &["run"], &["true"]),
        (EXEC, &["exec"], &["box", "true"]),
        (SANDBOX_CREATE, &["sandbox", "create"], &["box"]),
        (SANDBOX_LIST, &["sandbox", "list"], &[]),
        (SANDBOX_INFO, &["sandbox", "info"], &["box"]),
        (SANDBOX_CHANGE, &["sandbox", "start"], &["box"]),
        (SANDBOX_EXTEND, &["sandbox", "extend"], &["box", "1h"]),
        (SANDBOX_STATS, &["sandbox", "stats"], &["box"]),
        (SNAPSHOT_CREATE, &["snapshot", "create"], &["box"]),
        (SNAPSHOT_LIST, &["snapshot", "list"], &[]),
        (SNAPSHOT_INFO, &["snapshot", "info"], &["s"]),
        (SNAPSHOT_REMOVE, &["snapshot", "remove"], &["s"]),
        (SNAPSHOT_RESTORE, &["snapshot", "restore"], &["s"]),
        (SERVE, &["serve"], &[]),
    ];
    for (topic, command, operands) in topics {
        assert!(topic.help().contains(&topic.usage()));
        for flag in topic.flags {
            let long = format!("--{}", flag.long);
            let short = flag.short.map(|c| format!("-{c}"));
            for name in std::iter::once(long).chain(short) {
                assert!(
                    topic.usage().contains(&name) || topic.help().contains(&name),
                    "{name} missing from the help of {}",
                    topic.command
                );
                let mut words: Vec<&str> = command.to_vec();
                words.push(&name);
                if let Some(value) = flag.value {
                    words.push(sample(value));
                }
                // Cluster mode's flags come together: the router and its agents.
                match flag.long {
                    "cluster" => words.extend(["--nodes", "127.0.0.1:8081"]),
                    "nodes" | "discover" => words.push("--cluster"),
                    _ => {}
                }
                words.extend_from_slice(operands);
                let parsed = parse_words(&words);
                assert!(parsed.is_ok(), "{words:?}: {:?}", parsed.err());
            }
        }
        // And nothing else: an option no table lists is refused.
        let mut words: Vec<&str> = command.to_vec();
        words.push("--no-such-flag");
        words.extend_from_slice(operands);
        assert!(parse_words(&words).is_err(), "{words:?}");
    }
}

#[test]
fn usage_lines_wrap_under_the_command() {
    let usage = SERVE.usage();
    assert!(usage.starts_with("agentkernel serve [--host ADDR] [--port N]"));
    for line in usage.lines() {
        assert!(line.len() <= 88, "{line}");
    }
    assert!(usage
        .lines()
        .skip(1)
        .all(|line| line.starts_with("                  [")));
    assert_eq!(
        RUN.usage(),
        "agentkernel run [--image I] [--profile P] [--network NET] [--disk-mb MIB]\n                [--runtime NAME] [--no-fast] [--timeout SECS] [-e K=V]... [-w DIR]\n                [--json] [--] CMD [ARGS...]"
    );
}

#[test]
fn timeouts_are_bounded_so_that_no_deadline_overflows() {
    for flag in [
        "--client-timeout-secs",
        "--idle-timeout-secs",
        "--head-timeout-secs",
        "--drain-timeout-secs",
    ] {
        assert!(parse_words(&["serve", flag, "86400"]).is_ok(), "{flag}");
        assert!(parse_words(&["serve", flag, "86401"]).is_err(), "{flag}");
        assert!(
            parse_words(&["serve", flag, "18446744073709551615"]).is_err(),
            "{flag}"
        );
    }
    assert!(parse_words(&["serve", "--client-timeout-secs", "0"]).is_err());
    assert!(parse_words(&["serve", "--drain-timeout-secs", "0"]).is_ok());
    assert!(parse_words(&["serve", "--max-timeout-ms", "604800000"]).is_ok());
    assert!(parse_words(&["serve", "--max-timeout-ms", "604800001"]).is_err());
}
