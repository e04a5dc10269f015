//! Sandbox execs through the init's exec socket (`exec::socket`): no `docker exec` for
//! any of them, the same results, through server and container restarts; and the socket
//! is no new way in: no token, no command; a listener that is not the init never gets
//! the token (the exec goes by `docker exec`).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{data_dir, Options, Server};

fn inspect(server: &Server, sandbox: &str, format: &str) -> String {
    let output = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            format,
            &format!("ak_{}_{sandbox}", server.namespace),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Seconds since the epoch, as the engine's events count them.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How many `docker exec`s the engine created in the sandbox's container since `since`
/// (its events, which outlive the execs).
fn docker_execs(server: &Server, sandbox: &str, since: u64) -> usize {
    let output = std::process::Command::new("docker")
        .args([
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &(now() + 1).to_string(),
            "--filter",
            &format!("container=ak_{}_{sandbox}", server.namespace),
            "--filter",
            "event=exec_create",
            "--format",
            "{{.Action}}",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// A sandbox's exec socket as the host reaches it (through its init's root), and its
/// token file.
fn socket_files(server: &Server, sandbox: &str) -> (PathBuf, PathBuf) {
    let key = inspect(
        server,
        sandbox,
        r#"{{index .Config.Labels "agentkernel.exec-socket"}}"#,
    );
    assert_eq!(key.len(), 16, "no exec socket: {key:?}");
    let pid = inspect(server, sandbox, "{{.State.Pid}}");
    let socket = PathBuf::from(format!("/proc/{pid}/root/.agentkernel-run/exec.sock"));
    (socket, data_dir().join("run").join(format!("{key}.token")))
}

fn exec(server: &Server, sandbox: &str, body: Value) -> Value {
    let (status, answer) = server.post(&format!("/sandboxes/{sandbox}/exec"), &body.to_string());
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

fn echo_works(server: &Server, sandbox: &str) {
    let data = exec(server, sandbox, json!({"command": ["echo", "hi"]}));
    assert_eq!(data["stdout"], json!("hi\n"), "{data}");
}

#[test]
fn sandbox_execs_go_through_the_init_not_docker_exec() {
    let server = Server::start();
    let since = now();
    assert_eq!(server.post("/sandboxes", r#"{"name":"fast"}"#).0, 201);
    let (socket, token) = socket_files(&server, "fast");
    assert!(socket.exists() && token.exists());
    echo_works(&server, "fast");

    // Stdin, environment, working directory, exit codes and signals.
    let data = exec(
        &server,
        "fast",
        json!({"command": ["sh", "-c", "cat; echo $A; pwd; exit 3"], "stdin": "in\n",
               "env": ["A=1"], "workdir": "/tmp"}),
    );
    assert_eq!(data["stdout"], json!("in\n1\n/tmp\n"), "{data}");
    assert_eq!(data["exit_code"], json!(3));
    let data = exec(
        &server,
        "fast",
        json!({"command": ["sh", "-c", "kill -9 $$"]}),
    );
    assert_eq!(
        (&data["status"], &data["signal"]),
        (&json!("signaled"), &json!(9))
    );
    // A deadline kills the whole tree, on time.
    let started = Instant::now();
    let data = exec(
        &server,
        "fast",
        json!({"command": ["sh", "-c", "setsid sleep 97 & sleep 98"], "timeout_ms": 500}),
    );
    assert_eq!(data["status"], json!("timeout"), "{data}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let data = exec(&server, "fast", json!({"command": ["ps", "-o", "args"]}));
    assert!(
        !data["stdout"].as_str().unwrap().contains("sleep 9"),
        "{data}"
    );
    // Output caps.
    let data = exec(
        &server,
        "fast",
        json!({"command": ["sh", "-c", "yes | head -c 100000"], "max_output_bytes": 1000}),
    );
    assert_eq!(data["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(data["status"], json!("output_truncated"));

    // Eight at once, each with its own output.
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..8)
            .map(|i| {
                let server = &server;
                scope.spawn(move || {
                    let command = json!(["sh", "-c", "sleep 0.2; echo $0", format!("n{i}")]);
                    (i, exec(server, "fast", json!({ "command": command })))
                })
            })
            .collect();
        for run in runs {
            let (i, data) = run.join().unwrap();
            assert_eq!(data["stdout"], json!(format!("n{i}\n")), "{data}");
        }
    });
    // A streamed exec takes the same way.
    let events = ureq::post(&server.url("/sandboxes/fast/exec/stream"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"command":["echo","streamed"]}"#)
        .unwrap()
        .into_string()
        .unwrap();
    assert!(events.contains(r#""data":"streamed\n""#), "{events}");
    assert!(events.contains("event: done"), "{events}");
    assert_eq!(
        docker_execs(&server, "fast", since),
        0,
        "an exec used docker exec"
    );

    // The stub's own operations take it too: files on a tmpfs (which only the running
    // container sees: `/dev/shm` here), deletes, and a detached command's status and
    // logs; only a detached command's supervisor, which outlives its request, is a
    // `docker exec`.
    let (status, body) = server.request(
        "PUT",
        "/sandboxes/fast/files/dev/shm/note.txt",
        Some(r#"{"content":"on the tmpfs"}"#),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get("/sandboxes/fast/files/dev/shm/note.txt");
    assert_eq!(
        (status, &body["data"]["content"]),
        (200, &json!("on the tmpfs"))
    );
    assert_eq!(
        server.delete("/sandboxes/fast/files/dev/shm/note.txt").0,
        200
    );
    assert_eq!(
        docker_execs(&server, "fast", since),
        0,
        "a file operation used docker exec"
    );
    let (status, body) = server.post(
        "/sandboxes/fast/exec/detach",
        r#"{"command":["echo","detached"]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let logs = format!("/sandboxes/fast/exec/detached/{id}/logs");
    assert!(crate::harness::eventually(Duration::from_secs(5), || {
        server.get(&logs).1["data"]["stdout"] == json!("detached\n")
    }));
    assert_eq!(
        server.get(&format!("/sandboxes/fast/exec/detached/{id}")).0,
        200
    );
    assert_eq!(
        docker_execs(&server, "fast", since),
        1,
        "only the supervisor's start"
    );

    assert_eq!(server.delete("/sandboxes/fast").0, 200);
    assert!(!token.exists(), "the token stays");
    server.finish();
}

#[test]
fn the_socket_survives_restarts_of_the_server_and_of_the_container() {
    let namespace = crate::harness::fresh_namespace();
    let options = || Options {
        namespace: Some(namespace.clone()),
        ..Options::default()
    };
    let mut first = Server::start_with(options());
    first.cleanup = false;
    assert_eq!(first.post("/sandboxes", r#"{"name":"kept"}"#).0, 201);
    echo_works(&first, "kept");
    assert!(first.terminate().success());

    let server = Server::start_with(options());
    let since = now();
    echo_works(&server, "kept");
    // Restarted behind the server's back, the init has lost its token: the next exec
    // gives it again.
    let status = std::process::Command::new("docker")
        .args(["restart", "-t", "1", &format!("ak_{namespace}_kept")])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    echo_works(&server, "kept");
    // Stopped and started through the API.
    assert_eq!(server.post("/sandboxes/kept/stop", "").0, 200);
    assert_eq!(server.post("/sandboxes/kept/start", "").0, 200);
    echo_works(&server, "kept");
    assert_eq!(
        docker_execs(&server, "kept", since),
        0,
        "an exec used docker exec"
    );
    assert_eq!(server.delete("/sandboxes/kept").0, 200);
    server.finish();
}

/// Whether the other end closes `stream` without a byte (within the init's 5 s wait
/// for a token).
fn closed_unanswered(mut stream: UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut byte = [0u8; 1];
    // A close with our bytes unread is a reset.
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut record = vec![kind];
    record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    record.extend_from_slice(payload);
    record
}

#[test]
fn the_socket_is_no_way_in() {
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"guarded"}"#).0, 201);
    echo_works(&server, "guarded");
    let (path, _) = socket_files(&server, "guarded");

    // Without the token (a spec straight away, nothing, or a wrong token), the init
    // closes the connection and starts nothing.
    let spec = json!({"argv": ["touch", "/tmp/forged"], "env": [], "workdir": null,
                      "timeout_ms": 1000, "max_output_bytes": 10, "stdin": false});
    let mut straight = UnixStream::connect(&path).unwrap();
    straight
        .write_all(&record(b'S', spec.to_string().as_bytes()))
        .unwrap();
    assert!(closed_unanswered(straight));
    assert!(closed_unanswered(UnixStream::connect(&path).unwrap()));
    let mut wrong = UnixStream::connect(&path).unwrap();
    wrong.write_all(&record(b'A', &[7u8; 32])).unwrap();
    // The init may have closed already: the spec finds a broken pipe.
    let _ = wrong.write_all(&record(b'S', spec.to_string().as_bytes()));
    assert!(closed_unanswered(wrong));
    let data = exec(&server, "guarded", json!({"command": ["ls", "/tmp"]}));
    assert_eq!(data["stdout"], json!(""), "a command ran: {data}");

    // Inside, the token is nowhere: not beside the socket, not in the init's
    // environment or stdin.
    let data = exec(
        &server,
        "guarded",
        json!({"command": ["ls", "-A", "/.agentkernel-run"]}),
    );
    assert_eq!(data["stdout"], json!("exec.sock\n"));
    for file in ["/proc/1/environ", "/proc/1/fd/0"] {
        let data = exec(
            &server,
            "guarded",
            json!({"command": ["head", "-c", "1", file]}),
        );
        assert_ne!(data["exit_code"], json!(0), "{file} is readable: {data}");
    }

    // The socket's directory is a small tmpfs of the sandbox's: nothing of it reaches
    // the host's disk, and nothing there runs.
    let data = exec(
        &server,
        "guarded",
        json!({"command": ["sh", "-c", "dd if=/dev/zero of=/.agentkernel-run/f bs=64k count=4; cp /bin/busybox /.agentkernel-run/b; /.agentkernel-run/b true"]}),
    );
    assert_ne!(data["exit_code"], json!(0), "{data}");
    let data = exec(
        &server,
        "guarded",
        json!({"command": ["df", "-k", "/.agentkernel-run"]}),
    );
    assert!(data["stdout"].as_str().unwrap().contains("tmpfs"), "{data}");
    let _ = exec(
        &server,
        "guarded",
        json!({"command": ["rm", "-f", "/.agentkernel-run/f", "/.agentkernel-run/b"]}),
    );

    // A link in the socket's place is never followed: a listener of the host's that
    // it points to is never connected to.
    let host = std::env::temp_dir().join(format!("ak-host-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&host);
    let host_listener = UnixListener::bind(&host).unwrap();
    host_listener.set_nonblocking(true).unwrap();
    let (_, body) = server.post(
        "/sandboxes/guarded/exec",
        &json!({"command": ["sh", "-c", format!("mv /.agentkernel-run/exec.sock /.agentkernel-run/real; ln -s {} /.agentkernel-run/exec.sock", host.display())]}).to_string(),
    );
    assert_eq!(body["data"]["exit_code"], json!(0), "{body}");
    let data = exec(&server, "guarded", json!({"command": ["echo", "linked"]}));
    assert_eq!(data["stdout"], json!("linked\n"));
    assert!(
        host_listener.accept().is_err(),
        "the server connected to the link's target"
    );
    let _ = std::fs::remove_file(&host);
    let _ = exec(
        &server,
        "guarded",
        json!({"command": ["sh", "-c", "rm /.agentkernel-run/exec.sock; mv /.agentkernel-run/real /.agentkernel-run/exec.sock"]}),
    );

    // A listener in the socket's place that is not the init gets nothing: the exec
    // goes by `docker exec`, with the same result.
    std::fs::remove_file(&path).unwrap();
    let rogue = UnixListener::bind(&path).unwrap();
    let since = now();
    rogue.set_nonblocking(true).unwrap();
    let data = exec(&server, "guarded", json!({"command": ["echo", "still"]}));
    assert_eq!(data["stdout"], json!("still\n"));
    assert!(
        docker_execs(&server, "guarded", since) > 0,
        "no docker exec"
    );
    let mut received = Vec::new();
    if let Ok((mut connection, _)) = rogue.accept() {
        connection
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = connection.read_to_end(&mut received);
    }
    assert!(received.is_empty(), "the rogue listener got {received:?}");
    assert!(server
        .wait_for_log("not the container's init", Duration::from_secs(2))
        .is_some());
    drop(rogue);
    assert_eq!(server.delete("/sandboxes/guarded").0, 200);
    server.finish();
}

#[test]
fn a_sandbox_made_before_the_socket_is_exec_d_into_by_docker_exec_and_the_log_says_so() {
    let server = Server::start();
    crate::harness::sandbox_without_socket(&server, "older");

    let since = now();
    echo_works(&server, "older");
    echo_works(&server, "older");
    assert_eq!(docker_execs(&server, "older", since), 2);
    assert!(server
        .wait_for_log("predates the exec socket", Duration::from_secs(2))
        .is_some());
    assert_eq!(server.delete("/sandboxes/older").0, 200);
    server.finish();
}

#[test]
fn an_orphan_that_poses_as_a_supervisor_is_killed_all_the_same() {
    // The command starts the real stub as a poser (same argv as the init's
    // supervisors, waiting on a fifo it holds open), kills its own supervisor, and
    // sleeps: nothing of it may be left 1 s past the answer.
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"poser"}"#).0, 201);
    let script = "mkfifo /tmp/f; /.agentkernel/agentkernel stub </tmp/f >/dev/null & \
                  exec 3>/tmp/f; sleep 0.2; kill -9 $PPID; exec sleep 9876";
    let data = exec(
        &server,
        "poser",
        json!({"command": ["sh", "-c", script], "timeout_ms": 5000}),
    );
    assert_eq!(data["status"], json!("killed"), "{data}");
    let container = format!("ak_{}_poser", server.namespace);
    let mut left = String::new();
    let gone = crate::harness::eventually(Duration::from_secs(1), || {
        let output = std::process::Command::new("docker")
            .args(["top", &container, "-o", "pid,args"])
            .output()
            .unwrap();
        left = String::from_utf8_lossy(&output.stdout).to_string();
        !left.contains("sleep 9876")
            && !left
                .lines()
                .any(|l| l.trim_end().ends_with("agentkernel stub"))
    });
    assert!(gone, "left 1 s past the answer:\n{left}");
    assert_eq!(server.delete("/sandboxes/poser").0, 200);
    server.finish();
}

#[test]
fn a_flood_of_silent_connections_does_not_take_the_socket_down() {
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"flood"}"#).0, 201);
    echo_works(&server, "flood");
    let (path, _) = socket_files(&server, "flood");
    // Far more than the init lets wait for a token at once, all silent.
    let held: Vec<UnixStream> = (0..64)
        .filter_map(|_| UnixStream::connect(&path).ok())
        .collect();
    assert!(!held.is_empty());
    // Meanwhile an exec still answers (by docker exec if it must).
    echo_works(&server, "flood");
    // Once their 5 s are up, the socket serves again.
    std::thread::sleep(Duration::from_secs(6));
    let since = now();
    echo_works(&server, "flood");
    assert_eq!(
        docker_execs(&server, "flood", since),
        0,
        "the socket did not come back"
    );
    drop(held);
    assert_eq!(server.delete("/sandboxes/flood").0, 200);
    server.finish();
}

/// A command that stops the spare supervisor waiting for the next exec gets nothing: the
/// init passes a stopped spare over (and kills it, so that stopped spares never pile
/// up), and the exec is served all the same.
#[test]
fn a_stopped_spare_is_passed_over_and_killed() {
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"spare"}"#).0, 201);
    let exec = |script: &str| {
        let body = json!({ "command": ["sh", "-c", script] }).to_string();
        let (status, answer) = server.post("/sandboxes/spare/exec", &body);
        assert_eq!(status, 200, "{answer}");
        answer["data"]["stdout"].as_str().unwrap().to_string()
    };
    // Spares show as `stub --spare`, state T once stopped.
    let stopped = "for p in /proc/[0-9]*; do grep -q -- --spare $p/cmdline 2>/dev/null \
                   && grep -q '^State:.*T' $p/status && echo x; done | wc -l";
    for round in 0..4 {
        // Wait for the next spare to be there, then stop every spare.
        let stopping = "for i in $(seq 50); do pkill -STOP -f 'stub --spare' && break; \
                        sleep 0.1; done; echo stopped";
        assert_eq!(exec(stopping), "stopped\n", "round {round}");
        assert_eq!(exec("echo served"), "served\n", "round {round}");
    }
    assert!(
        crate::harness::eventually(Duration::from_secs(5), || exec(stopped).trim() == "0"),
        "stopped spares piled up"
    );
    assert_eq!(server.delete("/sandboxes/spare").0, 200);
    server.finish();
}
