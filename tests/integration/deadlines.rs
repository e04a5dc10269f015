//! Deadlines, disconnects and killed supervisors hold on every path: whatever a command
//! does to get away (a session of its own, a double fork, killing or stopping its
//! supervisor, a cleared environment, ignoring SIGTERM), nothing of it is left in the
//! container's process list, as the engine's `top` shows it, 1 s past the answer.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{containers_of, docker, eventually, Options, Server};

/// The ways a command tries to outlive its deadline. `{A}` and `{B}` become `sleep`
/// arguments unique to the case, which is how its processes are told apart in `top`.
const ESCAPES: [(&str, &str); 6] = [
    ("setsid", "setsid sleep {A} & sleep {B}"),
    (
        "double fork",
        "(sleep {A} &); (sh -c 'sleep {B} &' &); sleep {B}",
    ),
    (
        "kill $PPID",
        "kill -9 $PPID; setsid sleep {A} & (sleep {B} &); exec sleep {B}",
    ),
    (
        "env -u",
        "env -u AGENTKERNEL_RUN setsid sleep {A} & exec env -i /bin/sleep {B}",
    ),
    (
        "trap '' TERM",
        "trap '' TERM; setsid sh -c \"trap '' TERM; sleep {A}\" & sleep {B}",
    ),
    (
        "kill -STOP $PPID",
        "kill -STOP $PPID; setsid sleep {A} & sleep {B}",
    ),
];

/// The case's command, with its own `sleep` arguments.
fn escape(case: usize, path: usize) -> (String, String) {
    let marker = format!("9{path}{case}");
    let script = ESCAPES[case]
        .1
        .replace("{A}", &format!("{marker}01"))
        .replace("{B}", &format!("{marker}02"));
    (marker, script)
}

/// The container's processes (the engine's `top`) whose command line holds `marker`;
/// a container already gone has none.
fn processes_with(container: &str, marker: &str) -> Vec<String> {
    match docker().container_top(container) {
        Ok(processes) => processes
            .into_iter()
            .filter_map(|process| process.get("CMD").cloned())
            .filter(|command| command.contains(&format!("sleep {marker}")))
            .collect(),
        // Gone, stopped, or being removed (a used one-shot container): nothing runs.
        Err(error) => match docker().container_inspect(container) {
            Err(gone) if gone.is_not_found() => Vec::new(),
            Ok(inspect) if !inspect.state.running || inspect.state.status != "running" => {
                Vec::new()
            }
            _ => panic!("top {container}: {error}"),
        },
    }
}

/// Asserts that nothing with `marker` runs in any of `containers` within 1 s.
fn nothing_left(containers: &[String], marker: &str, what: &str) {
    let mut left = Vec::new();
    let gone = eventually(Duration::from_secs(1), || {
        left = containers
            .iter()
            .flat_map(|container| processes_with(container, marker))
            .collect();
        left.is_empty()
    });
    assert!(gone, "{what}: still running 1 s past the answer: {left:?}");
}

fn sandbox_id(server: &Server, name: &str) -> String {
    let (status, body) = server.get(&format!("/sandboxes/{name}"));
    assert_eq!(status, 200, "{body}");
    body["data"]["uuid"].as_str().unwrap().to_string()
}

fn command(script: &str, timeout_ms: u64) -> String {
    json!({"command": ["sh", "-c", script], "timeout_ms": timeout_ms}).to_string()
}

/// The result (`data`) of `script` posted to `path` with a 1 s timeout.
fn answer(server: &Server, path: &str, script: &str) -> Value {
    let (status, body) = server.post(path, &command(script, 1000));
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// The ids of every container of the namespace.
fn container_ids(namespace: &str) -> Vec<String> {
    containers_of(namespace)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Runs every escape through `run` (which answers the result's `data`), all at once,
/// and checks the containers `containers` names after each answer: each case's
/// processes carry its own marker, so the cases cannot see each other's.
fn every_escape(
    path: usize,
    what: &str,
    run: impl Fn(&str) -> Value + Sync,
    containers: impl Fn() -> Vec<String> + Sync,
    expect: impl Fn(&str, &Value) + Sync,
) {
    let (run, containers, expect) = (&run, &containers, &expect);
    std::thread::scope(|scope| {
        let cases: Vec<_> = ESCAPES
            .iter()
            .enumerate()
            .map(|(case, (name, _))| {
                scope.spawn(move || {
                    let (marker, script) = escape(case, path);
                    let data = run(&script);
                    expect(name, &data);
                    nothing_left(&containers(), &marker, &format!("{what}, {name}"));
                })
            })
            .collect();
        for case in cases {
            if let Err(panic) = case.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// The honest ending of a sandbox exec whose stub was killed, else a timeout.
fn stub_exec_ending(case: &str, data: &Value) {
    if case == "kill $PPID" {
        assert_eq!(data["status"], json!("killed"), "{case}: {data}");
        assert_eq!(data["exit_code"], json!(null), "{case}: {data}");
        assert!(
            data["message"].as_str().unwrap().contains("supervisor"),
            "{case}: {data}"
        );
    } else {
        assert_eq!(data["status"], json!("timeout"), "{case}: {data}");
    }
}

#[test]
fn nothing_a_command_starts_outlives_its_deadline_on_any_path() {
    let server = Server::start();
    // One-shot runs: the stub is the container's init.
    every_escape(
        1,
        "one-shot run",
        |script| answer(&server, "/run", script),
        || container_ids(&server.namespace),
        // As PID 1, the stub can be neither killed nor stopped from inside.
        |case, data| assert_eq!(data["status"], json!("timeout"), "{case}: {data}"),
    );
    // Sandbox execs: the stub is an exec'd supervisor, which the command can kill.
    assert_eq!(server.post("/sandboxes", r#"{"name":"held"}"#).0, 201);
    let held = vec![sandbox_id(&server, "held")];
    every_escape(
        2,
        "sandbox exec",
        |script| {
            let started = Instant::now();
            let data = answer(&server, "/sandboxes/held/exec", script);
            // A stopped stub is killed from outside past its backstop (5 s).
            assert!(started.elapsed() < Duration::from_secs(8), "{data}");
            data
        },
        || held.clone(),
        stub_exec_ending,
    );
    // The sandbox's own processes are untouched: it still serves.
    let (_, body) = server.post("/sandboxes/held/exec", r#"{"command":["echo","ok"]}"#);
    assert_eq!(body["data"]["stdout"], json!("ok\n"), "{body}");
    assert_eq!(server.delete("/sandboxes/held").0, 200);
    server.finish();
}

#[test]
fn without_the_stub_docker_execs_are_killed_by_a_mark_they_cannot_remove() {
    let server = Server::start_with(Options {
        args: vec!["--no-stub".into()],
        ..Options::default()
    });
    // Without a supervisor, `kill $PPID` is `kill 0`: the command's own group.
    let ending = |case: &str, data: &Value| {
        if !case.starts_with("kill") {
            assert_eq!(data["status"], json!("timeout"), "{case}: {data}");
        }
    };
    every_escape(
        3,
        "one-shot run by docker exec",
        |script| answer(&server, "/run", script),
        || container_ids(&server.namespace),
        ending,
    );
    assert_eq!(server.post("/sandboxes", r#"{"name":"plain"}"#).0, 201);
    let plain = vec![sandbox_id(&server, "plain")];
    every_escape(
        4,
        "sandbox exec by docker exec",
        |script| answer(&server, "/sandboxes/plain/exec", script),
        || plain.clone(),
        ending,
    );
    // The mark leaves the command's environment and argv as they were.
    let (_, body) = server.post(
        "/sandboxes/plain/exec",
        r#"{"command":["env"],"env":["A=1"]}"#,
    );
    let env = body["data"]["stdout"].as_str().unwrap();
    assert!(env.contains("A=1\n"), "{env}");
    assert!(!env.contains("SHLVL=") && !env.contains("PWD="), "{env}");
    assert!(
        server
            .wait_for_log("killed by an environment token only", Duration::ZERO)
            .is_none(),
        "this engine's processes could not be marked"
    );
    assert_eq!(server.delete("/sandboxes/plain").0, 200);
    server.finish();
}

#[test]
fn a_detached_exec_leaves_nothing_once_deleted() {
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"bg"}"#).0, 201);
    let container = sandbox_id(&server, "bg");
    for (case, &(name, _)) in ESCAPES.iter().enumerate() {
        let (marker, script) = escape(case, 5);
        let body = json!({"command": ["sh", "-c", script]}).to_string();
        let (status, answer) = server.post("/sandboxes/bg/exec/detach", &body);
        assert_eq!(status, 200, "{name}: {answer}");
        let id = answer["data"]["id"].as_str().unwrap().to_string();
        // Running, unless it killed its own supervisor: then the sandbox's init has
        // killed what it left, without a DELETE.
        if name != "kill $PPID" {
            assert!(
                eventually(Duration::from_secs(5), || {
                    processes_with(&container, &marker).len() >= 2
                }),
                "{name}: {:?}",
                processes_with(&container, &marker)
            );
        }
        let (status, answer) = server.delete(&format!("/sandboxes/bg/exec/detached/{id}"));
        assert_eq!(status, 200, "{name}: {answer}");
        nothing_left(
            std::slice::from_ref(&container),
            &marker,
            &format!("detached, {name}"),
        );
        let (_, answer) = server.get(&format!("/sandboxes/bg/exec/detached/{id}"));
        assert_eq!(
            answer["data"]["status"],
            json!("failed"),
            "{name}: {answer}"
        );
    }
    // Deleting the sandbox takes what runs there with it.
    let (marker, script) = escape(0, 6);
    let body = json!({"command": ["sh", "-c", script]}).to_string();
    assert_eq!(server.post("/sandboxes/bg/exec/detach", &body).0, 200);
    assert!(eventually(Duration::from_secs(5), || !processes_with(
        &container, &marker
    )
    .is_empty()));
    assert_eq!(server.delete("/sandboxes/bg").0, 200);
    nothing_left(&[container], &marker, "detached, sandbox deleted");
    server.finish();
}

#[test]
fn background_processes_of_an_exec_die_with_its_supervisor() {
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"kept"}"#).0, 201);
    let container = sandbox_id(&server, "kept");
    // An exec that ends on its own leaves its background processes running...
    let (_, body) = server.post(
        "/sandboxes/kept/exec",
        &command("setsid sleep 970001 & (sleep 970002 &); echo done", 5000),
    );
    assert_eq!(body["data"]["status"], json!("exited"), "{body}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(processes_with(&container, "97000").len(), 2);
    // ... below its stub; when that is killed, they go with it.
    let (_, body) = server.post(
        "/sandboxes/kept/exec",
        &command(
            "for p in $(pidof sleep); do kill -9 $(cut -d' ' -f4 /proc/$p/stat); done",
            5000,
        ),
    );
    assert_eq!(body["data"]["status"], json!("exited"), "{body}");
    nothing_left(std::slice::from_ref(&container), "97000", "killed stub");
    assert_eq!(server.delete("/sandboxes/kept").0, 200);
    server.finish();
}

/// Starts a streamed exec, waits `settle` (or for its first output), then drops the
/// connection.
fn disconnect_from(server: &Server, path: &str, body: &str, settle: Option<Duration>) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    match settle {
        Some(settle) => std::thread::sleep(settle),
        None => {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut seen = String::new();
            while !seen.contains("started\\n") {
                let mut line = String::new();
                assert!(reader.read_line(&mut line).unwrap() > 0, "{seen}");
                seen.push_str(&line);
            }
        }
    }
    drop(stream);
}

#[test]
fn a_client_that_disconnects_leaves_nothing_of_its_command() {
    for args in [vec![], vec!["--no-stub".to_string()]] {
        let server = Server::start_with(Options {
            args: args.clone(),
            ..Options::default()
        });
        assert_eq!(server.post("/sandboxes", r#"{"name":"left"}"#).0, 201);
        let container = sandbox_id(&server, "left");
        let script = "setsid sleep 980001 & (sleep 980002 &); env -i /bin/sleep 980003 & \
                      echo started; exec sleep 980004";
        let body = command(script, 600_000);
        disconnect_from(&server, "/sandboxes/left/exec/stream", &body, None);
        // The stream notices a departed client within a heartbeat (1 s).
        assert!(
            eventually(Duration::from_secs(5), || processes_with(
                &container, "98000"
            )
            .is_empty()),
            "{args:?}: {:?}",
            processes_with(&container, "98000")
        );
        // A stub stopped by its command cannot notice: it is killed from outside.
        if args.is_empty() {
            let script = "kill -STOP $PPID; setsid sleep 980011 & exec sleep 980012";
            let body = command(script, 600_000);
            let settle = Some(Duration::from_millis(1500));
            disconnect_from(&server, "/sandboxes/left/exec/stream", &body, settle);
            assert!(
                eventually(Duration::from_secs(5), || processes_with(
                    &container, "98001"
                )
                .is_empty()),
                "{:?}",
                processes_with(&container, "98001")
            );
        }
        assert_eq!(server.delete("/sandboxes/left").0, 200);
        server.finish();
    }
}
