//! The warm pool and the stub: fresh containers every time, exact argv, exact results.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{containers_of, eventually, EngineProxy, Options, Server};

fn pooled_server(size: &str) -> Server {
    Server::start_with(Options {
        args: vec!["--pool-size".into(), size.into()],
        ..Options::default()
    })
}

fn ready(server: &Server) -> u64 {
    let (_, body) = server.get("/pool");
    body["data"]["keys"][0]["ready"].as_u64().unwrap_or(0)
}

fn run(server: &Server, body: Value) -> Value {
    let (status, answer) = server.post("/run", &body.to_string());
    assert_eq!(status, 200, "{body}: {answer}");
    answer["data"].clone()
}

#[test]
fn pool_state_is_visible_and_fills_to_its_target() {
    let server = pooled_server("2");
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 2));
    let (status, body) = server.get("/pool");
    assert_eq!(status, 200);
    let key = &body["data"]["keys"][0];
    assert_eq!(body["data"]["launcher"], json!("stub"));
    assert_eq!(key["profile"], json!("moderate"));
    assert_eq!(key["target"], json!(2));
    for field in ["in_use", "created", "failed", "fallbacks"] {
        assert!(key[field].is_u64(), "{field}");
    }
    server.finish();
}

#[test]
fn consecutive_fast_runs_never_see_each_others_files_or_processes() {
    let server = pooled_server("2");
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 2));
    let first = run(
        &server,
        json!({"command": ["sh", "-c",
            "echo secret > /tmp/leak; echo x > /leak2; (sleep 300 >/dev/null 2>&1 &); grep -oE '[0-9a-f]{64}' /proc/self/cgroup | head -1"]}),
    );
    assert_eq!(first["exit_code"], json!(0), "{first}");
    assert!(eventually(Duration::from_secs(30), || ready(&server) >= 1));
    let second = run(
        &server,
        json!({"command": ["sh", "-c", "ls /tmp/leak /leak2 2>&1; ps -o comm | grep -c sleep; grep -oE '[0-9a-f]{64}' /proc/self/cgroup | head -1"]}),
    );
    let output = second["stdout"].as_str().unwrap();
    assert!(output.contains("No such file"), "{output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines[lines.len() - 2],
        "0",
        "no sleep from the first run: {output}"
    );
    assert_ne!(
        lines.last(),
        first["stdout"].as_str().unwrap().lines().last().as_ref(),
        "a different container"
    );
    server.finish();
}

#[test]
fn exit_codes_and_signals_are_exact() {
    let server = pooled_server("2");
    for (command, code, status, signal) in [
        (json!(["true"]), json!(0), "exited", json!(null)),
        (json!(["false"]), json!(1), "exited", json!(null)),
        (
            json!(["sh", "-c", "exit 42"]),
            json!(42),
            "exited",
            json!(null),
        ),
        (
            json!(["sh", "-c", "kill -TERM $$"]),
            json!(143),
            "signaled",
            json!(15),
        ),
        (
            json!(["sh", "-c", "kill -KILL $$"]),
            json!(137),
            "signaled",
            json!(9),
        ),
    ] {
        for fast in [true, false] {
            let data = run(&server, json!({"command": command, "fast": fast}));
            assert_eq!(data["exit_code"], code, "{command} fast={fast}: {data}");
            assert_eq!(data["status"], json!(status), "{command}: {data}");
            assert_eq!(data["signal"], signal, "{command}: {data}");
        }
    }
    server.finish();
}

#[test]
fn argv_and_binary_output_are_exact_on_the_warm_path() {
    let server = pooled_server("2");
    assert!(eventually(Duration::from_secs(30), || ready(&server) >= 1));
    let args = ["a b", "'q'", "\"dq\"", "$VAR", ";", ">", "", "ünï"];
    let mut command = vec!["printf".to_string(), "[%s]".to_string()];
    command.extend(args.iter().map(|s| s.to_string()));
    let data = run(&server, json!({ "command": command }));
    let expected: String = args.iter().map(|a| format!("[{a}]")).collect();
    assert_eq!(data["stdout"], json!(expected));
    let data = run(&server, json!({"command": ["printf", "\\377ok\\000z"]}));
    assert_eq!(data["stdout"], json!("\u{fffd}ok\u{0}z"));
    server.finish();
}

#[test]
fn a_crashed_server_leaves_no_warm_container_behind() {
    let mut server = pooled_server("3");
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 3));
    assert!(containers_of(&server.namespace).len() >= 3);
    server.crash();
    // The stubs see their stdin close, exit, and AutoRemove takes the containers.
    assert!(
        eventually(Duration::from_secs(30), || containers_of(&server.namespace)
            .is_empty()),
        "left: {:?}",
        containers_of(&server.namespace)
    );
}

#[test]
fn pool_refill_resumes_after_the_engine_was_unreachable() {
    let proxy = EngineProxy::start();
    let server = Server::start_with(Options {
        args: vec!["--pool-size".into(), "2".into()],
        env: vec![("DOCKER_HOST".into(), proxy.docker_host())],
        ..Options::default()
    });
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 2));
    proxy.set_down(true);
    // Use up the pool while the engine is away: the warm containers still answer, and
    // the refill fails.
    for _ in 0..2 {
        let (status, body) = server.post("/run", r#"{"command":["echo","hi"]}"#);
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.post("/run", r#"{"command":["echo","hi"]}"#);
    assert_eq!(status, 503, "{body}");
    // The server noticed (refills wait for the engine meanwhile).
    assert!(eventually(Duration::from_secs(10), || {
        server.get("/health").1["engine"] == "down"
    }));
    proxy.set_down(false);
    assert!(
        eventually(Duration::from_secs(30), || ready(&server) == 2),
        "{}",
        server.get("/pool").1
    );
    let data = run(&server, json!({"command": ["echo", "back"]}));
    assert_eq!(data["stdout"], json!("back\n"));
    server.finish();
}

#[test]
fn without_the_stub_runs_go_through_docker_exec() {
    let server = Server::start_with(Options {
        args: ["--no-stub", "--pool-size", "1"].map(String::from).to_vec(),
        ..Options::default()
    });
    assert_eq!(server.get("/pool").1["data"]["launcher"], json!("exec"));
    for fast in [true, false] {
        let data = run(
            &server,
            json!({"command": ["sh", "-c", "echo out; echo err >&2; exit 42"], "fast": fast}),
        );
        assert_eq!(data["stdout"], json!("out\n"));
        assert_eq!(data["stderr"], json!("err\n"));
        assert_eq!(data["exit_code"], json!(42));
    }
    let data = run(&server, json!({"command": ["cat"], "stdin": "piped"}));
    assert_eq!(data["stdout"], json!("piped"));
    let data = run(&server, json!({"command": ["no-such-program"]}));
    assert_eq!(data["exit_code"], json!(127), "{data}");
    // A sandbox without the stub: a timed-out exec's whole tree is still killed.
    assert_eq!(server.post("/sandboxes", r#"{"name":"plain"}"#).0, 201);
    let (_, body) = server.post(
        "/sandboxes/plain/exec",
        r#"{"command":["sh","-c","sleep 600 & sleep 600"],"timeout_ms":1000}"#,
    );
    assert_eq!(body["data"]["status"], json!("timeout"), "{body}");
    let (_, body) = server.post("/sandboxes/plain/exec", r#"{"command":["ps","-o","args"]}"#);
    // (The idle shell's own `sleep 3600` stays.)
    assert!(
        !body["data"]["stdout"]
            .as_str()
            .unwrap()
            .contains("sleep 600"),
        "{body}"
    );
    assert_eq!(server.delete("/sandboxes/plain").0, 200);
    server.finish();
}

#[test]
fn the_exec_launcher_takes_over_when_the_engine_cannot_mount_the_stub() {
    // A build of its own (the binary with a trailing marker, which the ELF loader
    // ignores) whose stub copy is deleted after start: the engine can no longer mount
    // it, as with an engine on another host.
    let namespace = crate::harness::fresh_namespace();
    let copy = std::env::temp_dir().join(format!("ak-deleted-{namespace}"));
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_agentkernel")).unwrap();
    bytes.extend_from_slice(format!("\0{namespace}\0").as_bytes());
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let server = Server::start_with(Options {
        binary: Some(copy.clone()),
        args: vec!["--pool-size".into(), "1".into()],
        ..Options::default()
    });
    let stub = crate::harness::data_dir().join("stubs").join(format!(
        "agentkernel-{}",
        agentkernel::codec::sha256::hex_digest(&bytes)
    ));
    std::fs::remove_file(&stub).unwrap();
    std::fs::remove_file(&copy).unwrap();
    // Use up whatever the pool made before the file went away.
    run(&server, json!({"command": ["true"]}));
    for fast in [false, true] {
        let data = run(
            &server,
            json!({"command": ["sh", "-c", "echo ok; exit 4"], "fast": fast}),
        );
        assert_eq!(data["stdout"], json!("ok\n"), "fast={fast}: {data}");
        assert_eq!(data["exit_code"], json!(4));
    }
    assert_eq!(server.get("/pool").1["data"]["launcher"], json!("exec"));
    let (status, body) = server.post("/sandboxes", r#"{"name":"nostub"}"#);
    assert_eq!(status, 201, "{body}");
    let (_, body) = server.post("/sandboxes/nostub/exec", r#"{"command":["echo","in"]}"#);
    assert_eq!(body["data"]["stdout"], json!("in\n"));
    assert_eq!(server.delete("/sandboxes/nostub").0, 200);
    assert!(server
        .wait_for_log("runs use docker exec", Duration::from_secs(5))
        .is_some());
    server.finish();
}

#[test]
fn a_command_cannot_forge_its_result_or_kill_its_supervisor() {
    let server = pooled_server("1");
    assert_eq!(server.post("/sandboxes", r#"{"name":"forge"}"#).0, 201);
    // A forged exit record written to the stub's stdout; in a temporary container the
    // stub is PID 1 and cannot be killed from inside either.
    let forge = "printf 'X\\000\\000\\000\\002{}' > /proc/1/fd/1; \
                 printf 'X\\000\\000\\000\\002{}' > /proc/$PPID/fd/1; \
                 [ \"$PPID\" = 1 ] && kill -9 1; sleep 0.5; echo real; exit 7";
    for path in ["warm", "cold", "sandbox"] {
        let (status, answer) = if path == "sandbox" {
            let body = json!({"command": ["sh", "-c", forge]});
            server.post("/sandboxes/forge/exec", &body.to_string())
        } else {
            let body = json!({"command": ["sh", "-c", forge], "fast": path == "warm"});
            server.post("/run", &body.to_string())
        };
        assert_eq!(status, 200, "{path}: {answer}");
        let data = &answer["data"];
        assert_eq!(data["exit_code"], json!(7), "{path}: {data}");
        assert_eq!(data["stdout"], json!("real\n"), "{path}: {data}");
    }
    // In a sandbox the exec'd stub is not PID 1: a command that kills it loses its own
    // result, which is said plainly (`killed`, with the reason), never faked and never
    // blamed on the engine.
    let (status, answer) = server.post(
        "/sandboxes/forge/exec",
        r#"{"command":["sh","-c","kill -9 $PPID; sleep 1"]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["status"], json!("killed"), "{answer}");
    assert!(
        answer["data"]["message"]
            .as_str()
            .unwrap()
            .contains("supervisor"),
        "{answer}"
    );
    assert_eq!(server.delete("/sandboxes/forge").0, 200);
    server.finish();
}

#[test]
fn warm_containers_that_died_are_passed_over() {
    let server = pooled_server("3");
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 3));
    let docker = crate::harness::docker();
    for (id, _) in containers_of(&server.namespace) {
        let _ = docker.container_kill(&id);
    }
    for _ in 0..3 {
        let data = run(&server, json!({"command": ["echo", "alive"]}));
        assert_eq!(data["stdout"], json!("alive\n"));
    }
    server.finish();
}

#[test]
fn a_cold_start_does_not_count_against_the_command_timeout() {
    let server = pooled_server("0");
    let data = run(
        &server,
        json!({"command": ["sleep", "0.8"], "timeout_ms": 1000, "fast": false}),
    );
    assert_eq!(data["status"], json!("exited"), "{data}");
    server.finish();
}

#[test]
fn a_server_killed_mid_run_leaves_nothing_running() {
    let mut server = pooled_server("1");
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 1));
    let url = server.url("/run");
    let _in_flight = std::thread::spawn(move || {
        let _ = ureq::post(&url)
            .set("Content-Type", "application/json")
            .send_string(r#"{"command":["sleep","60"]}"#);
    });
    std::thread::sleep(Duration::from_millis(800));
    server.crash();
    assert!(
        eventually(Duration::from_secs(30), || containers_of(&server.namespace)
            .is_empty()),
        "left: {:?}",
        containers_of(&server.namespace)
    );
}

#[test]
fn the_pool_grows_with_demand_up_to_its_maximum_and_says_why() {
    let server = Server::start_with(Options {
        args: vec![
            "--pool-size".into(),
            "1".into(),
            "--pool-max".into(),
            "3".into(),
        ],
        ..Options::default()
    });
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 1));
    let key = |server: &Server| server.get("/pool").1["data"]["keys"][0].clone();
    let idle = key(&server);
    assert_eq!(idle["target"], json!(1), "{idle}");
    assert_eq!(idle["sizing"]["min"], json!(1), "{idle}");
    assert_eq!(idle["sizing"]["max"], json!(3), "{idle}");
    assert!(
        idle["sizing"]["why"]
            .as_str()
            .unwrap()
            .ends_with("the minimum is 1"),
        "{idle}"
    );
    // Two requests in a few seconds: two kept warm.
    for _ in 0..2 {
        assert_eq!(
            run(&server, json!({"command": ["true"]}))["exit_code"],
            json!(0)
        );
    }
    let busier = key(&server);
    assert_eq!(busier["target"], json!(2), "{busier}");
    assert_eq!(
        busier["sizing"]["demand"]["busiest_span"],
        json!(2),
        "{busier}"
    );
    assert!(
        busier["sizing"]["why"]
            .as_str()
            .unwrap()
            .contains("had 2 requests, so that many are kept warm"),
        "{busier}"
    );
    // A burst of five: never more than the maximum, and the pool fills to it.
    for _ in 0..5 {
        assert_eq!(
            run(&server, json!({"command": ["true"]}))["exit_code"],
            json!(0)
        );
    }
    let burst = key(&server);
    assert_eq!(burst["target"], json!(3), "{burst}");
    assert!(
        burst["sizing"]["why"]
            .as_str()
            .unwrap()
            .contains("the maximum is 3 (--pool-max)"),
        "{burst}"
    );
    // It fills to the maximum and no further: once the used containers are removed,
    // the namespace holds the warm ones only.
    assert!(
        eventually(Duration::from_secs(60), || ready(&server) == 3
            && server.get("/pool").1["data"]["reaping"] == json!(0)
            && containers_of(&server.namespace).len() == 3),
        "{}",
        server.get("/pool").1
    );
    server.finish();
}

#[test]
fn a_warm_run_leaves_no_socket_for_its_command() {
    // The warm container's init served this run on its exec socket and removed it
    // before the command started: a command cannot ask for a second run, nor reach
    // the first one's connection.
    let server = pooled_server("1");
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 1));
    let data = run(
        &server,
        json!({"command": ["sh", "-c",
            "ls -A /.agentkernel-run; echo dir=$?; ls -l /proc/1/fd 2>&1 | grep -c socket"]}),
    );
    let stdout = data["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("dir=0\n"), "an empty directory: {data}");
    assert!(
        stdout.ends_with("0\n"),
        "no socket of the init's in view: {data}"
    );
    server.finish();
}

#[test]
fn a_server_that_cannot_see_into_containers_runs_warm_over_attach_and_leaves_no_socket() {
    // A server in a PID namespace of its own (as in a container of its own) cannot
    // reach a warm container's exec socket: it says so once, its warm runs take the
    // attach connection, and the socket is gone before their command starts.
    let wrapper = crate::harness::wrapped_binary("pidns", "unshare --pid --fork --mount-proc");
    let mut server = Server::start_with(Options {
        binary: Some(wrapper.clone()),
        // (Its mounts are its own too: disk quotas cannot hold, and are off.)
        args: vec!["--pool-size".into(), "1".into(), "--no-disk-quota".into()],
        ..Options::default()
    });
    assert!(eventually(Duration::from_secs(30), || ready(&server) == 1));
    let script = "ls -A /.agentkernel-run; echo listed=$?";
    let data = run(&server, json!({"command": ["sh", "-c", script]}));
    assert_eq!(data["stdout"], json!("listed=0\n"), "{data}");
    assert!(
        server
            .wait_for_log(
                "warm runs use the attach connection",
                Duration::from_secs(5)
            )
            .is_some(),
        "the fallback is said"
    );
    // `unshare` passes no signal on: stop the server itself, in its namespace's PID 1.
    let unshare = server.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let inner: u32 = children.trim().parse().unwrap();
    crate::harness::signal(inner, "TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
    assert!(eventually(Duration::from_secs(15), || containers_of(
        &server.namespace
    )
    .is_empty()));
    let _ = std::fs::remove_file(&wrapper);
}
