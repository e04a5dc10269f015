//! The server's life: restarts, the startup sweep, namespaces, graceful shutdown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentkernel::config::Namespace;
use agentkernel::containers::labels::{self, Kind, SandboxName};
use agentkernel::containers::owner::Owner;
use agentkernel::engine::ContainerSpec;
use serde_json::{json, Value};

use crate::harness::{
    containers_of, containers_owned_by, data_dir, docker, eventually, fresh_namespace, image,
    remove_namespace, request_url, signal, temporary_containers, Options, Server,
};

fn status_of(server: &Server, name: &str) -> String {
    let (status, body) = server.get(&format!("/sandboxes/{name}"));
    assert_eq!(status, 200, "{body}");
    body["data"]["status"].as_str().unwrap().to_string()
}

#[test]
fn a_restarted_server_sees_its_sandboxes_with_their_status() {
    let namespace = fresh_namespace();
    let mut first = Server::start_with(Options {
        namespace: Some(namespace.clone()),
        ..Options::default()
    });
    first.cleanup = false;
    assert_eq!(first.post("/sandboxes", r#"{"name":"keep-up"}"#).0, 201);
    assert_eq!(first.post("/sandboxes", r#"{"name":"keep-down"}"#).0, 201);
    assert_eq!(first.post("/sandboxes/keep-down/stop", "").0, 200);
    assert!(first.terminate().success());

    let second = Server::start_with(Options {
        namespace: Some(namespace),
        ..Options::default()
    });
    assert_eq!(
        second.sandboxes(),
        BTreeMap::from([
            ("keep-down".to_string(), "stopped".to_string()),
            ("keep-up".to_string(), "running".to_string()),
        ])
    );
    assert_eq!(status_of(&second, "keep-up"), "running");
    assert_eq!(second.delete("/sandboxes/keep-up").0, 200);
    assert_eq!(second.delete("/sandboxes/keep-down").0, 200);
    second.finish();
}

#[test]
fn a_crashed_server_is_also_found_again() {
    let namespace = fresh_namespace();
    let mut first = Server::start_with(Options {
        namespace: Some(namespace.clone()),
        ..Options::default()
    });
    first.cleanup = false;
    assert_eq!(first.post("/sandboxes", r#"{"name":"survivor"}"#).0, 201);
    first.crash();
    let second = Server::start_with(Options {
        namespace: Some(namespace),
        ..Options::default()
    });
    assert_eq!(status_of(&second, "survivor"), "running");
    assert_eq!(second.delete("/sandboxes/survivor").0, 200);
    second.finish();
}

/// Creates a container labelled as ours, as a crashed server would have left it, with
/// `owner` as its owner label (`None`: made by a build from before owners were marked).
fn leave_container(
    namespace: &str,
    kind: Kind,
    sandbox: Option<&str>,
    owner: Option<&str>,
) -> String {
    let namespace = Namespace::parse(namespace).unwrap();
    let sandbox = sandbox.map(|s| SandboxName::parse(s).unwrap());
    let mut labels = labels::labels(&namespace, kind, &image(), "moderate", sandbox.as_ref());
    if let Some(owner) = owner {
        labels.insert(labels::OWNER.to_string(), owner.to_string());
    }
    let spec = ContainerSpec {
        name: sandbox
            .as_ref()
            .map(|s| labels::container_name(&namespace, s)),
        image: image(),
        labels,
        entrypoint: Some(vec!["sleep".into(), "600".into()]),
        ..ContainerSpec::default()
    };
    let docker = docker();
    let id = docker.container_create(&spec).unwrap();
    docker.container_start(&id).unwrap();
    id
}

/// The owner label of a process that has ended: this test process's, with the PID of
/// a child that has exited and been reaped.
fn gone_owner() -> String {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let me = Owner::this().label();
    let (_, rest) = me.split_once('.').unwrap();
    format!("{}.{rest}", child.id())
}

#[test]
fn startup_sweep_removes_leftovers_and_keeps_sandboxes_and_live_owners() {
    let namespace = fresh_namespace();
    let legacy = leave_container(&namespace, Kind::Run, None, None);
    let pool = leave_container(&namespace, Kind::Pool, None, Some(&gone_owner()));
    let run = leave_container(&namespace, Kind::Run, None, Some(&gone_owner()));
    // This test process runs: its containers are not the server's to remove.
    let alive = leave_container(&namespace, Kind::Run, None, Some(&Owner::this().label()));
    let sandbox = leave_container(&namespace, Kind::Sandbox, Some("kept"), None);
    let other_namespace = fresh_namespace();
    let foreign = leave_container(&other_namespace, Kind::Run, None, None);

    let server = Server::start_with(Options {
        namespace: Some(namespace.clone()),
        ..Options::default()
    });
    let mut left: Vec<String> = containers_of(&namespace)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    left.sort();
    let mut expected = vec![sandbox.clone(), alive.clone()];
    expected.sort();
    assert_eq!(left, expected);
    for swept in [&legacy, &pool, &run] {
        assert!(!left.contains(swept));
    }
    assert_eq!(
        containers_of(&other_namespace).len(),
        1,
        "other namespaces are untouched"
    );
    assert_eq!(status_of(&server, "kept"), "running");
    assert_eq!(server.delete("/sandboxes/kept").0, 200);
    docker().container_remove(&foreign).unwrap();
    docker().container_remove(&alive).unwrap();
    server.finish();
}

/// Asserts that no container of the namespace is left after its servers exited, given
/// the moment that stub containers of a cut-short clean-up take to end by themselves
/// (see `Server::finish`).
fn assert_all_gone(namespace: &str) {
    let gone = eventually(Duration::from_secs(15), || {
        containers_of(namespace).is_empty()
    });
    assert!(gone, "left: {:?}", containers_of(namespace));
}

fn pool_ready(server: &Server) -> u64 {
    server.get("/pool").1["data"]["keys"][0]["ready"]
        .as_u64()
        .unwrap_or(0)
}

fn server_in(namespace: &str, args: &[&str]) -> Server {
    let mut server = Server::start_with(Options {
        namespace: Some(namespace.to_string()),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Options::default()
    });
    // The namespace is shared: the test cleans it up once, at its end.
    server.cleanup = false;
    server
}

/// Empties a namespace when dropped, also when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_namespace(&self.0);
    }
}

#[test]
fn restarting_one_server_spares_another_servers_pool_and_runs_and_a_cli_run() {
    let namespace = fresh_namespace();
    let _cleanup = Cleanup(namespace.clone());
    let mut first = server_in(&namespace, &["--pool-size", "2"]);
    let mut second = server_in(&namespace, &["--pool-size", "2"]);
    assert!(eventually(Duration::from_secs(30), || pool_ready(&first)
        == 2
        && pool_ready(&second) == 2));
    let second_pool = containers_owned_by(&namespace, second.pid());
    assert_eq!(second_pool.len(), 2);

    // In flight while the first server stops and starts again: a run on the second
    // server, and a local CLI run in the same namespace.
    let url = second.url("/run");
    let in_flight = std::thread::spawn(move || {
        request_url(
            "POST",
            &url,
            Some(r#"{"command":["sh","-c","sleep 6; echo done"],"fast":false}"#),
            &[],
        )
    });
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(["run", "--", "sh", "-c", "sleep 6; echo cli"])
        .env("AGENTKERNEL_NAMESPACE", &namespace)
        .env("AGENTKERNEL_DEFAULT_IMAGE", image())
        .env("AGENTKERNEL_DATA_DIR", data_dir())
        .env_remove("AGENTKERNEL_URL")
        .env_remove("AGENTKERNEL_API_KEY")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            containers_owned_by(&namespace, cli.id()).len() == 1
                && containers_owned_by(&namespace, second.pid()).len() == 3
        }),
        "{:?}",
        temporary_containers(&namespace)
    );
    let spared: Vec<String> = temporary_containers(&namespace)
        .into_iter()
        .filter(|c| c.owner_pid() != Some(first.pid()))
        .map(|c| c.id)
        .collect();

    assert!(first.terminate().success());
    let restarted = server_in(&namespace, &["--pool-size", "2"]);
    assert!(eventually(Duration::from_secs(30), || pool_ready(
        &restarted
    ) == 2));

    let now: Vec<String> = temporary_containers(&namespace)
        .into_iter()
        .map(|c| c.id)
        .collect();
    for id in &spared {
        assert!(now.contains(id), "{id} was removed; left: {now:?}");
    }
    let (status, answer) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["stdout"], json!("done\n"), "{answer}");
    let output = cli.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "cli\n");
    // The second server's pool was never touched: still its two, ready.
    assert_eq!(pool_ready(&second), 2);
    for id in &second_pool {
        assert!(temporary_containers(&namespace).iter().any(|c| &c.id == id));
    }
    let mut restarted = restarted;
    assert!(restarted.terminate().success());
    assert!(second.terminate().success());
    assert!(
        eventually(Duration::from_secs(10), || containers_of(&namespace)
            .is_empty()),
        "{:?}",
        temporary_containers(&namespace)
    );
}

#[test]
fn without_the_stub_a_killed_servers_containers_and_commands_end_by_themselves() {
    // Under the exec launcher, a temporary container's init is an idle shell reading
    // the stdin that its server holds: when the server is killed, the engine closes
    // it, and the container ends with every command `docker exec` started in it.
    let namespace = fresh_namespace();
    let _cleanup = Cleanup(namespace.clone());
    let mut crashed = server_in(&namespace, &["--pool-size", "2", "--no-stub"]);
    let mut bystander = server_in(&namespace, &["--pool-size", "1", "--no-stub"]);
    assert!(eventually(Duration::from_secs(30), || pool_ready(&crashed)
        == 2
        && pool_ready(&bystander) == 1));
    // One of the crashed server's warm containers runs a command when it dies; the
    // command tries to stop and kill the idle shell first (its PID 1: in vain).
    let url = crashed.url("/run");
    let run = std::thread::spawn(move || {
        let _ = ureq::post(&url)
            .set("Content-Type", "application/json")
            .send_string(
                r#"{"command":["sh","-c","kill -STOP 1; kill -KILL 1; exec sleep 600"],
                    "timeout_ms":900000}"#,
            );
    });
    assert!(
        eventually(Duration::from_secs(30), || {
            crashed.get("/pool").1["data"]["keys"][0]["in_use"].as_u64() == Some(1)
        }),
        "the run did not start"
    );
    let orphans = containers_owned_by(&namespace, crashed.pid());
    let kept = containers_owned_by(&namespace, bystander.pid());
    assert_eq!(kept.len(), 1);
    assert!(orphans.len() >= 2, "{orphans:?}");
    // `in_use` counts from the take; the exec that starts the command comes after.
    assert!(
        eventually(Duration::from_secs(10), || orphans
            .iter()
            .any(|id| runs_a_sleep(id))),
        "no command ran"
    );
    let leases = data_dir().join("owners").join(&namespace);
    assert_eq!(std::fs::read_dir(&leases).unwrap().count(), 2);
    let crashed_pid = crashed.pid();
    crashed.crash();
    run.join().unwrap();
    // 5 s later nothing of the crashed server's runs: its containers have ended (and
    // removed themselves), with no start-up sweep to do it.
    let mut left = Vec::new();
    let ended = eventually(Duration::from_secs(5), || {
        left = containers_owned_by(&namespace, crashed_pid)
            .into_iter()
            .filter(|id| runs_a_sleep(id))
            .collect();
        left.is_empty()
    });
    assert!(ended, "still running a command: {left:?}");
    // None of them runs any more. (One the refill had created but not yet started when
    // the server died runs nothing; the next start-up sweep removes it.)
    assert!(
        eventually(Duration::from_secs(10), || {
            temporary_containers(&namespace)
                .iter()
                .all(|c| c.owner_pid() != Some(crashed_pid) || c.state == "created")
        }),
        "{:?}",
        temporary_containers(&namespace)
    );
    assert_eq!(containers_owned_by(&namespace, bystander.pid()), kept);
    assert_eq!(pool_ready(&bystander), 1);

    // The next start sweeps what is left and lets the crashed server's lease go; the
    // live one stays.
    let mut next = server_in(&namespace, &[]);
    assert!(
        containers_owned_by(&namespace, crashed_pid).is_empty(),
        "{:?}",
        temporary_containers(&namespace)
    );
    assert_eq!(std::fs::read_dir(&leases).unwrap().count(), 2);
    assert!(next.terminate().success());
    assert!(bystander.terminate().success());
    assert_all_gone(&namespace);
}

#[test]
fn namespaces_do_not_see_each_other() {
    let one = Server::start();
    let two = Server::start();
    assert_eq!(one.post("/sandboxes", r#"{"name":"same"}"#).0, 201);
    assert_eq!(two.post("/sandboxes", r#"{"name":"same"}"#).0, 201);
    assert_eq!(one.get("/sandboxes").1["data"].as_array().unwrap().len(), 1);
    assert_eq!(one.delete("/sandboxes/same").0, 200);
    assert_eq!(two.get("/sandboxes/same").0, 200);
    assert_eq!(two.delete("/sandboxes/same").0, 200);
    assert_eq!(two.get("/sandboxes/same").0, 404);
    one.finish();
    two.finish();
}

#[test]
fn sigterm_finishes_in_flight_requests_answers_new_ones_503_and_removes_the_pool() {
    let mut server = Server::start_with(Options {
        args: ["--pool-size", "2"].map(String::from).to_vec(),
        ..Options::default()
    });
    assert!(eventually(Duration::from_secs(30), || pool_ready(&server) == 2));
    let url = server.url("/run");
    let in_flight = std::thread::spawn(move || {
        request_url(
            "POST",
            &url,
            Some(r#"{"command":["sh","-c","sleep 2; echo done"]}"#),
            &[],
        )
    });
    // Let the request reach a worker and its command start.
    std::thread::sleep(Duration::from_millis(800));
    let sent = Instant::now();
    signal(server.pid(), "TERM");
    assert!(server
        .wait_for_log("shutting down", Duration::from_secs(5))
        .is_some());
    // New requests, on new connections, while the one in flight finishes.
    let (status, body) = server.post("/run", r#"{"command":["echo","late"]}"#);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    assert_eq!(server.get("/health").0, 503);
    let (status, answer) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["stdout"], json!("done\n"));
    let exit = server
        .wait_exit(Duration::from_secs(10))
        .expect("exit within 10 s");
    assert!(exit.success(), "{exit}");
    assert!(sent.elapsed() < Duration::from_secs(10));
    // The pool and the run's container went with it.
    assert_all_gone(&server.namespace);
}

#[test]
fn sigterm_exits_within_10_s_even_with_a_request_that_outlasts_the_drain() {
    let mut server = Server::start_with(Options {
        args: ["--pool-size", "1"].map(String::from).to_vec(),
        ..Options::default()
    });
    assert!(eventually(Duration::from_secs(30), || pool_ready(&server) == 1));
    let url = server.url("/run");
    let _in_flight = std::thread::spawn(move || {
        let _ = ureq::post(&url)
            .set("Content-Type", "application/json")
            .send_string(r#"{"command":["sleep","60"],"timeout_ms":120000}"#);
    });
    std::thread::sleep(Duration::from_millis(800));
    let sent = Instant::now();
    signal(server.pid(), "TERM");
    let exit = server
        .wait_exit(Duration::from_secs(10))
        .expect("exit within 10 s of SIGTERM");
    assert!(exit.success(), "{exit}");
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(5), || containers_of(&server.namespace)
            .is_empty()),
        "{:?}",
        temporary_containers(&server.namespace)
    );
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let mut server = Server::start_with(Options {
        args: ["--drain-timeout-secs", "60"].map(String::from).to_vec(),
        ..Options::default()
    });
    let url = server.url("/run");
    let _in_flight = std::thread::spawn(move || {
        let _ = ureq::post(&url)
            .set("Content-Type", "application/json")
            .send_string(r#"{"command":["sleep","60"],"timeout_ms":120000}"#);
    });
    std::thread::sleep(Duration::from_millis(800));
    signal(server.pid(), "TERM");
    assert!(server
        .wait_for_log("shutting down", Duration::from_secs(5))
        .is_some());
    // Still draining: the run takes a minute, the drain waits for it.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    signal(server.pid(), "TERM");
    let exit = server
        .wait_exit(Duration::from_secs(2))
        .expect("exit at once on a second SIGTERM");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(exit.code(), Some(143), "{exit}");
    // Its run's stub saw the connection close: nothing keeps running.
    assert!(
        eventually(Duration::from_secs(5), || temporary_containers(
            &server.namespace
        )
        .iter()
        .all(|c| c.state != "running")),
        "{:?}",
        temporary_containers(&server.namespace)
    );
}

#[test]
fn a_server_killed_during_runs_leaves_no_command_running_and_loses_no_sandbox() {
    let namespace = fresh_namespace();
    let _cleanup = Cleanup(namespace.clone());
    // More workers than runs, so that the test can still ask the server how it goes.
    let mut first = server_in(&namespace, &["--pool-size", "2", "--workers", "12"]);
    assert!(eventually(Duration::from_secs(30), || pool_ready(&first) == 2));
    for name in ["alpha", "beta"] {
        let (status, body) = first.post("/sandboxes", &format!(r#"{{"name":"{name}"}}"#));
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = first.request(
        "PUT",
        "/sandboxes/alpha/files/root/data.txt",
        Some(r#"{"content":"precious\n"}"#),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = first.post("/sandboxes/beta/exec", r#"{"command":["echo","one"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(first.post("/sandboxes/beta/stop", "").0, 200);

    let url = first.url("/run");
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let _ = ureq::post(&url)
                    .set("Content-Type", "application/json")
                    .send_string(r#"{"command":["sleep","600"],"timeout_ms":900000}"#);
            })
        })
        .collect();
    // Eight commands running: the two warm containers in use, six started cold.
    assert!(
        eventually(Duration::from_secs(60), || {
            let cold = temporary_containers(&namespace)
                .iter()
                .filter(|c| c.kind == "run" && c.state == "running")
                .count();
            first.get("/pool").1["data"]["keys"][0]["in_use"].as_u64() == Some(2) && cold == 6
        }),
        "{:?}",
        temporary_containers(&namespace)
    );
    std::thread::sleep(Duration::from_secs(1));
    first.crash();
    std::thread::sleep(Duration::from_secs(5));
    // No command left: every container has stopped, or (the engine is slow to say so
    // on a busy host) none still runs a `sleep`.
    let running: Vec<_> = temporary_containers(&namespace)
        .into_iter()
        .filter(|c| c.state == "running" && runs_a_sleep(&c.id))
        .collect();
    assert!(running.is_empty(), "still running a command: {running:?}");
    for run in runs {
        run.join().unwrap();
    }

    let mut second = server_in(&namespace, &[]);
    assert_eq!(
        second.sandboxes(),
        BTreeMap::from([
            ("alpha".to_string(), "running".to_string()),
            ("beta".to_string(), "stopped".to_string())
        ])
    );
    let (status, body) = second.get("/sandboxes/alpha/files/root/data.txt");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["content"], json!("precious\n"), "{body}");
    assert_eq!(second.post("/sandboxes/beta/start", "").0, 200);
    for name in ["alpha", "beta"] {
        let (status, body) = second.post(
            &format!("/sandboxes/{name}/exec"),
            r#"{"command":["echo","two"]}"#,
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["stdout"], json!("two\n"));
    }
    let (_, logs) = second.get("/sandboxes/beta/logs");
    let commands: Vec<&Value> = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["event"] == "exec")
        .map(|entry| &entry["command"])
        .collect();
    assert_eq!(commands, [&json!(["echo", "one"]), &json!(["echo", "two"])]);
    for name in ["alpha", "beta"] {
        assert_eq!(second.delete(&format!("/sandboxes/{name}")).0, 200);
    }
    assert!(second.terminate().success());
    assert_all_gone(&namespace);
    let _ = std::fs::remove_file(data_dir().join(format!("{namespace}.history.jsonl")));
}

/// Whether the engine's process list of a container (`docker top`) shows a `sleep`.
fn runs_a_sleep(id: &str) -> bool {
    let output = std::process::Command::new("docker")
        .args(["top", id])
        .output()
        .unwrap();
    // A container that stopped meanwhile has no process list: nothing runs.
    output.status.success() && String::from_utf8_lossy(&output.stdout).contains("sleep")
}

/// A sandbox's restart policy, as the engine has it.
fn restart_policy(namespace: &str, sandbox: &str) -> String {
    let output = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.RestartPolicy.Name}}",
            &format!("ak_{namespace}_{sandbox}"),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn docker_update_restart(namespace: &str, sandbox: &str, policy: &str) {
    let status = std::process::Command::new("docker")
        .args([
            "update",
            "--restart",
            policy,
            &format!("ak_{namespace}_{sandbox}"),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The host path a container mounts its stub from.
fn stub_source(namespace: &str, sandbox: &str) -> String {
    let name = format!("ak_{namespace}_{sandbox}");
    let output = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            r#"{{range .Mounts}}{{if eq .Destination "/.agentkernel/agentkernel"}}{{.Source}}{{end}}{{end}}"#,
            &name,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn a_sandbox_made_by_an_older_build_starts_and_execs_after_an_upgrade() {
    // The older build: a copy of the binary with other bytes (a trailing marker, which
    // an ELF loader ignores), so its stub is another version with a path of its own.
    let dir = std::env::temp_dir().join(format!("ak-upgrade-{}", fresh_namespace()));
    std::fs::create_dir_all(&dir).unwrap();
    let older = dir.join("agentkernel");
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_agentkernel")).unwrap();
    bytes.extend_from_slice(b"\0an older build\0");
    std::fs::write(&older, &bytes).unwrap();
    std::fs::set_permissions(&older, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let namespace = fresh_namespace();
    let _cleanup = Cleanup(namespace.clone());
    let mut first = Server::start_with(Options {
        namespace: Some(namespace.clone()),
        binary: Some(older.clone()),
        ..Options::default()
    });
    first.cleanup = false;
    for name in ["up", "down"] {
        let (status, body) = first.post("/sandboxes", &format!(r#"{{"name":"{name}"}}"#));
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = first.post(
        "/sandboxes/up/exec",
        r#"{"command":["sh","-c","echo kept > /root/note"]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(first.post("/sandboxes/down/stop", "").0, 200);
    let old_stub = stub_source(&namespace, "up");
    assert!(
        old_stub.starts_with(data_dir().join("stubs").to_str().unwrap()),
        "the stub is mounted from the data dir, not the executable: {old_stub}"
    );
    assert_eq!(stub_source(&namespace, "down"), old_stub);
    assert!(first.terminate().success());
    // The upgrade: the older executable is gone. A release before restart policies
    // left its running sandboxes without one.
    std::fs::remove_dir_all(&dir).unwrap();
    docker_update_restart(&namespace, "up", "no");
    assert_eq!(restart_policy(&namespace, "up"), "no");

    let mut second = Server::start_with(Options {
        namespace: Some(namespace.clone()),
        ..Options::default()
    });
    second.cleanup = false;
    // The running one now comes back with the engine; the stopped one stays stopped.
    assert_eq!(restart_policy(&namespace, "up"), "always");
    assert_eq!(restart_policy(&namespace, "down"), "no");
    let (status, body) = second.post("/sandboxes/down/start", "");
    assert_eq!(status, 200, "{body}");
    for name in ["up", "down"] {
        let (status, body) = second.post(
            &format!("/sandboxes/{name}/exec"),
            r#"{"command":["sh","-c","echo hi from $0"]}"#,
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["stdout"], json!("hi from sh\n"), "{body}");
        // Still the stub it was made with.
        assert_eq!(stub_source(&namespace, name), old_stub);
    }
    let (_, body) = second.post("/sandboxes/up/exec", r#"{"command":["cat","/root/note"]}"#);
    assert_eq!(body["data"]["stdout"], json!("kept\n"), "{body}");
    // New sandboxes get the new build's stub.
    assert_eq!(second.post("/sandboxes", r#"{"name":"new"}"#).0, 201);
    let new_stub = stub_source(&namespace, "new");
    assert_ne!(new_stub, old_stub);
    assert!(new_stub.starts_with(data_dir().join("stubs").to_str().unwrap()));
    for name in ["up", "down", "new"] {
        assert_eq!(second.delete(&format!("/sandboxes/{name}")).0, 200);
    }
    assert!(second.terminate().success());
    assert_all_gone(&namespace);
    // Our copy of the older build's stub is of no use to anyone now.
    let _ = std::fs::remove_file(&old_stub);
}
