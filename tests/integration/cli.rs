//! The command line, run as the built binary: exit codes, streaming, stdin, the sandbox
//! commands in local mode and through a server (which must answer alike), and usage
//! errors. Local-mode runs get their own namespace, like servers do.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{containers_of, data_dir, fresh_namespace, image, remove_namespace};
use crate::harness::{Options, Server};

/// How the CLI reaches the engine: in process, or through a server.
#[derive(Clone, Copy)]
enum Mode<'a> {
    Local,
    Remote(&'a Server),
}

/// A namespace for CLI runs, emptied when dropped (also when a test fails).
struct Scope {
    namespace: String,
}

impl Scope {
    fn new() -> Scope {
        Scope {
            namespace: fresh_namespace(),
        }
    }

    /// The CLI, ready to run in this namespace, in `mode`.
    fn command(&self, mode: Mode, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentkernel"));
        if let Mode::Remote(server) = mode {
            command.args(["--server", &server.url("")]);
        }
        command
            .args(args)
            .env("AGENTKERNEL_NAMESPACE", &self.namespace)
            .env("AGENTKERNEL_DEFAULT_IMAGE", image())
            .env("AGENTKERNEL_DATA_DIR", data_dir())
            .env_remove("AGENTKERNEL_URL")
            .env_remove("AGENTKERNEL_API_KEY")
            .env_remove("AGENTKERNEL_LOG");
        command
    }

    fn run(&self, mode: Mode, args: &[&str]) -> Ran {
        Ran::from(self.command(mode, args).output().expect("run agentkernel"))
    }

    fn run_with_stdin(&self, mode: Mode, args: &[&str], input: &str) -> Ran {
        let mut child = self
            .command(mode, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run agentkernel");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        Ran::from(child.wait_with_output().unwrap())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        remove_namespace(&self.namespace);
        let _ = std::fs::remove_file(data_dir().join(format!("{}.history.jsonl", self.namespace)));
    }
}

/// What one CLI run did.
#[derive(Debug, PartialEq)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Ran {
        Ran {
            code: output
                .status
                .code()
                .expect("the CLI exits, it is not killed"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

fn both_modes(server: &Server) -> [(&'static str, Mode<'_>); 2] {
    [("local", Mode::Local), ("server", Mode::Remote(server))]
}

#[test]
fn exit_codes_are_the_commands_own() {
    let scope = Scope::new();
    let server = Server::start_with(Options {
        namespace: Some(scope.namespace.clone()),
        ..Options::default()
    });
    let cases: [(&[&str], i32); 6] = [
        (&["run", "--", "true"], 0),
        (&["run", "--", "sh", "-c", "exit 3"], 3),
        (&["run", "sh", "-c", "exit 42"], 42),
        (&["run", "--timeout", "1", "--", "sleep", "30"], 124),
        (&["run", "--", "sh", "-c", "kill -TERM $$"], 143),
        (&["run", "--", "sh", "-c", "kill -KILL $$"], 137),
    ];
    for (mode_name, mode) in both_modes(&server) {
        for (args, code) in cases {
            let started = Instant::now();
            let ran = scope.run(mode, args);
            assert_eq!(ran.code, code, "{mode_name} {args:?}: {ran:?}");
            if code == 124 {
                assert!(started.elapsed() < Duration::from_secs(15), "{mode_name}");
            }
        }
        if let Mode::Local = mode {
            // The CLI removed each of its containers before exiting (the server's warm
            // one aside).
            let left = containers_of(&scope.namespace);
            assert!(left.iter().all(|(_, kind)| kind == "pool"), "{left:?}");
        }
    }
    // agentkernel's own failure: 125, one line on stderr, the same in both modes.
    let missing = ["run", "--image", "agentkernel/missing:0", "--", "true"];
    let local = scope.run(Mode::Local, &missing);
    assert_eq!(local.code, 125, "{local:?}");
    assert_eq!(
        local.stderr,
        "agentkernel: image 'agentkernel/missing:0' is not present in the local engine \
         (nothing is pulled: load or build it first)\n"
    );
    assert_eq!(scope.run(Mode::Remote(&server), &missing), local);
    server.finish();
}

#[test]
fn output_streams_as_it_is_produced() {
    let scope = Scope::new();
    let server = Server::start_with(Options {
        namespace: Some(scope.namespace.clone()),
        ..Options::default()
    });
    let script = "echo first; echo oops >&2; sleep 2; echo second";
    for (mode_name, mode) in both_modes(&server) {
        let started = Instant::now();
        let mut child = scope
            .command(mode, &["run", "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            lines.push((line.unwrap(), started.elapsed()));
        }
        let output = child.wait_with_output().unwrap();
        let ended = started.elapsed();
        assert_eq!(output.status.code(), Some(0), "{mode_name}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "oops\n",
            "{mode_name}"
        );
        let texts: Vec<&str> = lines.iter().map(|(text, _)| text.as_str()).collect();
        assert_eq!(texts, ["first", "second"], "{mode_name}");
        let (first, second) = (lines[0].1, lines[1].1);
        // The command sleeps 2 s between its lines: the first must not wait for it.
        assert!(
            second - first >= Duration::from_millis(1500),
            "{mode_name}: first at {first:?}, second at {second:?}"
        );
        assert!(
            ended - first >= Duration::from_millis(1500),
            "{mode_name}: first at {first:?}, exit at {ended:?}"
        );
    }
    server.finish();
}

#[test]
fn stdin_is_passed_through() {
    let scope = Scope::new();
    let server = Server::start_with(Options {
        namespace: Some(scope.namespace.clone()),
        ..Options::default()
    });
    let input = "line one\nline two\n";
    for (mode_name, mode) in both_modes(&server) {
        let ran = scope.run_with_stdin(mode, &["run", "--", "cat"], input);
        assert_eq!((ran.code, ran.stdout.as_str()), (0, input), "{mode_name}");
        // Without input (stdin is /dev/null here), the command reads end-of-file.
        let ran = scope.run(mode, &["run", "--", "sh", "-c", "cat; echo end"]);
        assert_eq!(ran.stdout, "end\n", "{mode_name}");
    }
    server.finish();
}

#[test]
fn json_prints_the_apis_data() {
    let scope = Scope::new();
    let server = Server::start_with(Options {
        namespace: Some(scope.namespace.clone()),
        ..Options::default()
    });
    let args = [
        "run",
        "--json",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ];
    let mut answers = Vec::new();
    for (mode_name, mode) in both_modes(&server) {
        let ran = scope.run(mode, &args);
        assert_eq!(ran.code, 3, "{mode_name}: {ran:?}");
        assert_eq!(ran.stderr, "", "{mode_name}");
        assert_eq!(
            ran.stdout.lines().count(),
            1,
            "{mode_name}: one line of JSON"
        );
        let mut data: Value = serde_json::from_str(&ran.stdout).unwrap();
        assert!(data["duration_ms"].is_u64(), "{mode_name}");
        data.as_object_mut().unwrap().remove("duration_ms");
        // stdout and stderr are relayed by two threads: their interleaving in `output`
        // is the order of arrival, which no run promises to repeat.
        let output = data.as_object_mut().unwrap().remove("output").unwrap();
        let output = output.as_str().unwrap();
        assert!(
            output == "out\nerr\n" || output == "err\nout\n",
            "{mode_name}: {output:?}"
        );
        answers.push(data);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0]["stdout"], "out\n");
    assert_eq!(answers[0]["stderr"], "err\n");
    assert_eq!(answers[0]["status"], "exited");
    server.finish();
}

#[test]
fn sandbox_commands_answer_alike_locally_and_through_a_server() {
    let scope = Scope::new();
    let server = Server::start_with(Options {
        namespace: Some(scope.namespace.clone()),
        ..Options::default()
    });
    let remote = Mode::Remote(&server);
    // Runs a command line in both modes; asserts they said the same; returns it.
    let alike = |args: &[&str]| {
        let local = scope.run(Mode::Local, args);
        let through_server = scope.run(remote, args);
        assert_eq!(local, through_server, "{args:?}");
        local
    };

    let empty = alike(&["sandbox", "list"]);
    assert_eq!(empty.stdout, "NAME  STATUS  IMAGE  PROFILE  CREATED\n");
    assert_eq!(alike(&["sandbox", "list", "--json"]).stdout, "[]\n");

    let created = scope.run(
        Mode::Local,
        &["sandbox", "create", "box", "--memory-mb", "64"],
    );
    assert_eq!(
        (created.code, created.stdout.as_str()),
        (0, "box\n"),
        "{created:?}"
    );
    let duplicate = alike(&["sandbox", "create", "box"]);
    assert_eq!(duplicate.code, 1);
    assert_eq!(
        duplicate.stderr,
        "agentkernel: Sandbox 'box' already exists\n"
    );

    let list = alike(&["sandbox", "list"]);
    let rows: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{list:?}");
    assert!(rows[0].starts_with("NAME  STATUS   IMAGE"), "{list:?}");
    assert!(rows[1].starts_with("box   running  "), "{list:?}");
    let listed: Value =
        serde_json::from_str(&alike(&["sandbox", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["name"], "box");

    let info = alike(&["sandbox", "info", "box"]);
    let fields: Vec<Vec<&str>> = info
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(fields[0], ["name", "box"], "{info:?}");
    assert!(fields.contains(&vec!["memory_mb", "64"]), "{info:?}");
    let data: Value =
        serde_json::from_str(&alike(&["sandbox", "info", "box", "--json"]).stdout).unwrap();
    assert_eq!(
        (data["status"].as_str(), data["memory_mb"].as_u64()),
        (Some("running"), Some(64))
    );

    let exec = alike(&[
        "exec",
        "box",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $FOO; pwd; echo err >&2; exit 5",
    ]);
    assert_eq!(
        (exec.code, exec.stdout.as_str(), exec.stderr.as_str()),
        (5, "bar\n/tmp\n", "err\n")
    );
    let written = scope.run_with_stdin(
        remote,
        &["exec", "box", "--", "sh", "-c", "cat > /kept"],
        "kept\n",
    );
    assert_eq!(written.code, 0, "{written:?}");
    assert_eq!(alike(&["exec", "box", "cat", "/kept"]).stdout, "kept\n");

    let stopped = scope.run(remote, &["sandbox", "stop", "box"]);
    assert_eq!(
        (stopped.code, stopped.stdout.as_str()),
        (0, "box\n"),
        "{stopped:?}"
    );
    let info = alike(&["sandbox", "info", "box"]);
    assert!(
        info.stdout
            .lines()
            .any(|line| line.split_whitespace().eq(["status", "stopped"])),
        "{info:?}"
    );

    let refused = alike(&["exec", "box", "true"]);
    assert_eq!(refused.code, 125);
    assert_eq!(
        refused.stderr,
        "agentkernel: Sandbox 'box' is stopped: start it before exec\n"
    );

    let started = scope.run(Mode::Local, &["sandbox", "start", "box"]);
    assert_eq!(
        (started.code, started.stdout.as_str()),
        (0, "box\n"),
        "{started:?}"
    );
    assert_eq!(alike(&["exec", "box", "cat", "/kept"]).stdout, "kept\n");

    let paused = scope.run(remote, &["sandbox", "pause", "box"]);
    assert_eq!(
        (paused.code, paused.stdout.as_str()),
        (0, "box\n"),
        "{paused:?}"
    );
    let refused = alike(&["exec", "box", "true"]);
    assert_eq!(
        (refused.code, refused.stderr.as_str()),
        (
            125,
            "agentkernel: Sandbox 'box' is paused: resume it first\n"
        )
    );
    let resumed = scope.run(Mode::Local, &["sandbox", "resume", "box"]);
    assert_eq!(
        (resumed.code, resumed.stdout.as_str()),
        (0, "box\n"),
        "{resumed:?}"
    );
    assert_eq!(alike(&["exec", "box", "cat", "/kept"]).stdout, "kept\n");

    let removed = scope.run(remote, &["sandbox", "remove", "box"]);
    assert_eq!(
        (removed.code, removed.stdout.as_str()),
        (0, "box\n"),
        "{removed:?}"
    );
    for args in [
        &["sandbox", "info", "box"][..],
        &["sandbox", "remove", "box"],
        &["sandbox", "stop", "box"],
    ] {
        let missing = alike(args);
        assert_eq!(missing.code, 1, "{args:?}");
        assert_eq!(
            missing.stderr, "agentkernel: Sandbox 'box' not found\n",
            "{args:?}"
        );
    }
    let missing = alike(&["exec", "box", "true"]);
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (125, "agentkernel: Sandbox 'box' not found\n")
    );
    let invalid = alike(&["sandbox", "info", ".."]);
    assert_eq!(invalid.code, 1);
    assert!(
        invalid
            .stderr
            .starts_with("agentkernel: invalid sandbox name '..'"),
        "{invalid:?}"
    );
    let bad_limit = alike(&["sandbox", "create", "box", "--memory-mb", "1"]);
    assert_eq!(bad_limit.code, 1);
    assert!(bad_limit.stderr.contains("memory_mb"), "{bad_limit:?}");

    // Created through the server, removed locally: the same sandboxes either way.
    let created = scope.run(
        remote,
        &[
            "sandbox",
            "create",
            "box2",
            "--profile",
            "restrictive",
            "--json",
        ],
    );
    assert_eq!(created.code, 0, "{created:?}");
    let data: Value = serde_json::from_str(&created.stdout).unwrap();
    assert_eq!(
        (data["name"].as_str(), data["profile"].as_str()),
        (Some("box2"), Some("restrictive"))
    );
    assert_eq!(
        scope
            .run(Mode::Local, &["sandbox", "remove", "box2"])
            .stdout,
        "box2\n"
    );

    assert_eq!(alike(&["health"]).stdout, "ok\n");
    assert_eq!(alike(&["sandbox", "list", "--json"]).stdout, "[]\n");
    server.finish();
}

#[test]
fn snapshot_extend_and_stats_commands_in_both_modes() {
    let scope = Scope::new();
    let server = Server::start_with(Options {
        namespace: Some(scope.namespace.clone()),
        ..Options::default()
    });
    let remote = Mode::Remote(&server);
    let alike = |args: &[&str]| {
        let local = scope.run(Mode::Local, args);
        let through_server = scope.run(remote, args);
        assert_eq!(local, through_server, "{args:?}");
        local
    };
    let created = scope.run(Mode::Local, &["sandbox", "create", "box", "--ttl", "1h"]);
    assert_eq!(
        (created.code, created.stdout.as_str()),
        (0, "box\n"),
        "{created:?}"
    );
    for mode in [Mode::Local, remote] {
        let extended = scope.run(mode, &["sandbox", "extend", "box", "2h"]);
        assert_eq!(extended.code, 0, "{extended:?}");
        assert!(extended.stdout.ends_with("Z\n"), "{extended:?}");
    }
    let stats = scope.run(remote, &["sandbox", "stats", "box"]);
    assert_eq!(stats.code, 0, "{stats:?}");
    assert!(
        stats.stdout.lines().any(|line| line.starts_with("pids")),
        "{stats:?}"
    );
    let bad = alike(&["sandbox", "extend", "box", "soon"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.starts_with("agentkernel: by: "), "{bad:?}");

    scope.run(
        remote,
        &["exec", "box", "--", "sh", "-c", "echo kept > /kept"],
    );
    let taken = scope.run(remote, &["snapshot", "create", "box", "--name", "s1"]);
    assert_eq!(
        (taken.code, taken.stdout.as_str()),
        (0, "s1\n"),
        "{taken:?}"
    );
    let list = alike(&["snapshot", "list"]);
    let rows: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{list:?}");
    assert!(rows[0].starts_with("NAME  SANDBOX  BASE IMAGE"), "{list:?}");
    assert!(rows[1].starts_with("s1    box      "), "{list:?}");
    let info = alike(&["snapshot", "info", "s1"]);
    assert!(
        info.stdout
            .lines()
            .any(|line| line.split_whitespace().eq(["sandbox", "box"])),
        "{info:?}"
    );
    let restored = scope.run(Mode::Local, &["snapshot", "restore", "s1", "--as", "box2"]);
    assert_eq!(
        (restored.code, restored.stdout.as_str()),
        (0, "box2\n"),
        "{restored:?}"
    );
    assert_eq!(alike(&["exec", "box2", "cat", "/kept"]).stdout, "kept\n");
    let in_use = alike(&["snapshot", "remove", "s1"]);
    assert_eq!(in_use.code, 1, "{in_use:?}");
    assert!(in_use.stderr.contains("in use"), "{in_use:?}");
    for name in ["box", "box2"] {
        assert_eq!(scope.run(remote, &["sandbox", "remove", name]).code, 0);
    }
    let removed = scope.run(remote, &["snapshot", "remove", "s1"]);
    assert_eq!(
        (removed.code, removed.stdout.as_str()),
        (0, "s1\n"),
        "{removed:?}"
    );
    let missing = alike(&["snapshot", "info", "s1"]);
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (1, "agentkernel: Snapshot 's1' not found\n")
    );
    let invalid = alike(&["snapshot", "info", ".."]);
    assert_eq!(invalid.code, 1);
    assert!(
        invalid
            .stderr
            .starts_with("agentkernel: invalid snapshot name"),
        "{invalid:?}"
    );
    server.finish();
}

#[test]
fn cp_copies_directories_both_ways_in_both_modes() {
    let scope = Scope::new();
    let server = Server::start_with(Options {
        namespace: Some(scope.namespace.clone()),
        ..Options::default()
    });
    let remote = Mode::Remote(&server);
    assert_eq!(scope.run(remote, &["sandbox", "create", "box"]).code, 0);
    let local = std::env::temp_dir().join(format!("ak-cp-{}", scope.namespace));
    let up = local.join("up");
    std::fs::create_dir_all(up.join("sub")).unwrap();
    std::fs::write(up.join("a.txt"), "a\n").unwrap();
    std::fs::write(up.join("sub/b.bin"), [0u8, 1, 2, 255]).unwrap();
    scope.run(remote, &["exec", "box", "mkdir", "-p", "/work/in"]);
    let up_text = up.to_str().unwrap();
    for (mode, dir) in [(Mode::Local, "/work/in"), (remote, "/work")] {
        let sent = scope.run(mode, &["cp", up_text, &format!("box:{dir}")]);
        assert_eq!(sent.code, 0, "{sent:?}");
        assert!(sent.stdout.starts_with("2 files copied into "), "{sent:?}");
    }
    let listed = scope.run(
        remote,
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "cat /work/in/up/a.txt; od -An -tu1 /work/up/sub/b.bin",
        ],
    );
    assert_eq!(listed.stdout, "a\n   0   1   2 255\n", "{listed:?}");
    // A link out of the directory (here to /, then one that climbs back through a
    // chain) is left out of a download, and said; the rest comes.
    scope.run(
        remote,
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "cd /work/up && ln -s / abs && ln -s . s && ln -s s/s/../.. t",
        ],
    );
    for (mode, into) in [(Mode::Local, "down-local"), (remote, "down-remote")] {
        let into = local.join(into);
        std::fs::create_dir_all(&into).unwrap();
        let got = scope.run(mode, &["cp", "box:/work/up", into.to_str().unwrap()]);
        assert_eq!(got.code, 0, "{got:?}");
        assert!(got.stderr.contains("\"up/abs\" left out"), "{got:?}");
        assert!(got.stderr.contains("\"up/t\" left out"), "{got:?}");
        assert!(std::fs::symlink_metadata(into.join("up/abs")).is_err());
        assert!(std::fs::symlink_metadata(into.join("up/t")).is_err());
        assert_eq!(std::fs::read(into.join("up/a.txt")).unwrap(), b"a\n");
        assert_eq!(
            std::fs::read(into.join("up/sub/b.bin")).unwrap(),
            [0u8, 1, 2, 255]
        );
    }
    // Nothing is written through a symlink already here.
    let trap = local.join("trap");
    std::fs::create_dir_all(&trap).unwrap();
    std::os::unix::fs::symlink("/nonexistent-target", trap.join("up")).unwrap();
    let refused = scope.run(remote, &["cp", "box:/work/up", trap.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("symlink is in the way"),
        "{refused:?}"
    );
    let missing = scope.run(remote, &["cp", "box:/work/nope", local.to_str().unwrap()]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{missing:?}");
    let _ = std::fs::remove_dir_all(&local);
    assert_eq!(scope.run(remote, &["sandbox", "remove", "box"]).code, 0);
    server.finish();
}

#[test]
fn the_api_key_goes_to_the_server() {
    let scope = Scope::new();
    let server = Server::start_with(Options {
        namespace: Some(scope.namespace.clone()),
        env: vec![("AGENTKERNEL_API_KEY".into(), "s3cret".into())],
        ..Options::default()
    });
    let refused = scope.run(Mode::Remote(&server), &["sandbox", "list"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.starts_with("agentkernel: Unauthorized"),
        "{refused:?}"
    );
    let allowed = Ran::from(
        scope
            .command(Mode::Local, &["sandbox", "list", "--json"])
            .env("AGENTKERNEL_URL", server.url(""))
            .env("AGENTKERNEL_API_KEY", "s3cret")
            .output()
            .unwrap(),
    );
    assert_eq!(
        (allowed.code, allowed.stdout.as_str()),
        (0, "[]\n"),
        "{allowed:?}"
    );
    server.finish();
}

#[test]
fn an_unreachable_server_is_a_one_line_error() {
    let scope = Scope::new();
    let server_gone = "http://127.0.0.1:9";
    let ran = scope.run(Mode::Local, &["--server", server_gone, "sandbox", "list"]);
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr
            .starts_with("agentkernel: cannot reach the server at http://127.0.0.1:9"),
        "{ran:?}"
    );
    assert_eq!(ran.stderr.lines().count(), 1, "{ran:?}");
    let ran = scope.run(Mode::Local, &["--server", server_gone, "run", "true"]);
    assert_eq!(ran.code, 125, "{ran:?}");
}

#[test]
fn usage_errors_exit_2_with_the_usage_line() {
    let scope = Scope::new();
    let cases: [(&[&str], &str); 7] = [
        (&[], "Usage: agentkernel [--server URL]"),
        (&["run"], "Usage: agentkernel run [--image I]"),
        (
            &["run", "--timeout", "soon", "true"],
            "Usage: agentkernel run ",
        ),
        (&["exec", "box"], "Usage: agentkernel exec "),
        (
            &["sandbox", "frob"],
            "Usage: agentkernel sandbox create|list|info|start|stop|pause|resume|remove",
        ),
        (
            &["sandbox", "create"],
            "Usage: agentkernel sandbox create NAME",
        ),
        (&["frobnicate"], "Usage: agentkernel [--server URL]"),
    ];
    for (args, usage) in cases {
        let ran = scope.run(Mode::Local, args);
        assert_eq!(ran.code, 2, "{args:?}: {ran:?}");
        assert_eq!(ran.stdout, "", "{args:?}");
        assert!(ran.stderr.starts_with("agentkernel: "), "{args:?}: {ran:?}");
        assert!(ran.stderr.contains(usage), "{args:?}: {ran:?}");
    }
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["sandbox", "info", "-h"],
        &["exec", "--help"],
    ] {
        let ran = scope.run(Mode::Local, args);
        assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{args:?}");
        assert!(
            ran.stdout.starts_with("Usage: agentkernel"),
            "{args:?}: {ran:?}"
        );
    }
    let version = scope.run(Mode::Local, &["--version"]);
    assert_eq!(
        version.stdout,
        format!("agentkernel {}\n", env!("CARGO_PKG_VERSION"))
    );
}
