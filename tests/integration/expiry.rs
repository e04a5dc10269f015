//! A sandbox's lifecycle beyond create and delete: ttl, idle timeout, extend, pause.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{docker, eventually, Options, Server};

fn create(server: &Server, body: Value) -> Value {
    let (status, answer) = server.post("/sandboxes", &body.to_string());
    assert_eq!(status, 201, "{body}: {answer}");
    answer["data"].clone()
}

fn exists(server: &Server, name: &str) -> bool {
    server.get(&format!("/sandboxes/{name}")).0 == 200
}

#[test]
fn a_sandbox_is_removed_within_5_s_of_its_ttl_and_its_history_says_expired() {
    let server = Server::start();
    let created = Instant::now();
    let data = create(&server, json!({"name": "brief", "ttl": "2s"}));
    assert!(data["expires_at"].is_string(), "{data}");
    assert_eq!(data["idle_timeout"], Value::Null, "{data}");
    // Whole seconds are a ttl too; a sandbox without one shows nulls.
    let data = create(&server, json!({"name": "numeric", "ttl": 3600}));
    assert!(data["expires_at"].is_string(), "{data}");
    let data = create(&server, json!({"name": "forever"}));
    assert_eq!(data["expires_at"], Value::Null, "{data}");
    assert!(eventually(Duration::from_secs(10), || !exists(
        &server, "brief"
    )));
    let lived = created.elapsed();
    assert!(
        lived >= Duration::from_secs(1) && lived < Duration::from_secs(2 + 5 + 2),
        "removed after {lived:?}"
    );
    let (status, logs) = server.get("/sandboxes/brief/logs");
    assert_eq!(status, 200, "{logs}");
    let events: Vec<&str> = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry["event"].as_str())
        .collect();
    assert!(events.contains(&"expired"), "{logs}");
    assert!(exists(&server, "numeric") && exists(&server, "forever"));
    for name in ["numeric", "forever"] {
        assert_eq!(server.delete(&format!("/sandboxes/{name}")).0, 200);
    }
    server.finish();
}

#[test]
fn an_idle_sandbox_expires_but_not_while_a_command_runs_in_it() {
    let server = Server::start();
    // A server up for longer than the idle timeout: a new sandbox is idle from its
    // creation, not from the server's start.
    std::thread::sleep(Duration::from_millis(2500));
    create(&server, json!({"name": "idle", "idle_timeout": "2s"}));
    std::thread::sleep(Duration::from_millis(1200));
    assert!(exists(&server, "idle"), "removed at once");
    let data = server.get("/sandboxes/idle").1["data"].clone();
    assert_eq!(data["idle_timeout"], json!(2), "{data}");
    // A command that lasts longer than the idle timeout keeps it, and its own
    // activity counts from its end.
    let (status, answer) = server.post(
        "/sandboxes/idle/exec",
        r#"{"command":["sh","-c","sleep 4; echo done"]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["stdout"], json!("done\n"), "{answer}");
    assert!(exists(&server, "idle"));
    let quiet = Instant::now();
    assert!(eventually(Duration::from_secs(10), || !exists(
        &server, "idle"
    )));
    assert!(
        quiet.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        quiet.elapsed()
    );
    server.finish();
}

#[test]
fn extend_moves_the_expiry_and_the_move_survives_a_restart() {
    let namespace = crate::harness::fresh_namespace();
    let options = || Options {
        namespace: Some(namespace.clone()),
        ..Options::default()
    };
    let mut server = Server::start_with(options());
    let data = create(&server, json!({"name": "kept", "ttl": "1h"}));
    let first = data["expires_at"].as_str().unwrap().to_string();
    let (status, answer) = server.post("/sandboxes/kept/extend", r#"{"by":"2h"}"#);
    assert_eq!(status, 200, "{answer}");
    let moved = answer["data"]["expires_at"].as_str().unwrap().to_string();
    assert!(moved > first, "{first} -> {moved}");
    assert_eq!(
        server.get("/sandboxes/kept").1["data"]["expires_at"],
        json!(moved)
    );
    // A sandbox without a ttl keeps none.
    create(&server, json!({"name": "endless"}));
    let (status, answer) = server.post("/sandboxes/endless/extend", r#"{"by":"1h"}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["expires_at"], Value::Null, "{answer}");
    // Bad durations are a 400 naming the field.
    for (path, body) in [
        ("/sandboxes/kept/extend", r#"{"by":"soon"}"#),
        ("/sandboxes/kept/extend", r#"{}"#),
        ("/sandboxes", r#"{"name":"bad","ttl":"0s"}"#),
        ("/sandboxes", r#"{"name":"bad","ttl":-5}"#),
        ("/sandboxes", r#"{"name":"bad","idle_timeout":true}"#),
        ("/sandboxes", r#"{"name":"bad","ttl":"400d"}"#),
    ] {
        let (status, answer) = server.post(path, body);
        assert_eq!(status, 400, "{path} {body}: {answer}");
    }
    assert!(!exists(&server, "bad"));
    // Another server in the namespace sees the extension.
    server.cleanup = false;
    server.terminate();
    let server = Server::start_with(options());
    assert_eq!(
        server.get("/sandboxes/kept").1["data"]["expires_at"],
        json!(moved)
    );
    for name in ["kept", "endless"] {
        assert_eq!(server.delete(&format!("/sandboxes/{name}")).0, 200);
    }
    server.finish();
}

#[test]
fn the_servers_default_ttl_applies_to_sandboxes_without_one() {
    let server = Server::start_with(Options {
        args: vec!["--sandbox-ttl".into(), "2s".into()],
        ..Options::default()
    });
    let data = create(&server, json!({"name": "defaulted"}));
    assert!(data["expires_at"].is_string(), "{data}");
    assert!(eventually(Duration::from_secs(10), || !exists(
        &server,
        "defaulted"
    )));
    server.finish();
}

#[test]
fn a_paused_sandbox_keeps_its_processes_frozen_and_refuses_execs_until_resumed() {
    let mut server = Server::start();
    create(&server, json!({"name": "frozen"}));
    // A counter that runs on its own, detached.
    let (status, answer) = server.post(
        "/sandboxes/frozen/exec",
        r#"{"command":["sh","-c","(i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done) >/dev/null 2>&1 &"]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server.post("/sandboxes/frozen/pause", "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["status"], json!("paused"), "{answer}");
    for (method, path, body) in [
        ("POST", "/sandboxes/frozen/exec", r#"{"command":["true"]}"#),
        (
            "POST",
            "/sandboxes/frozen/exec/stream",
            r#"{"command":["true"]}"#,
        ),
        ("GET", "/sandboxes/frozen/files/tmp/count", ""),
        ("PUT", "/sandboxes/frozen/files/tmp/x", r#"{"content":"x"}"#),
        ("POST", "/sandboxes/frozen/start", ""),
    ] {
        let body = (!body.is_empty()).then_some(body);
        let (status, answer) = server.request(method, path, body, &[]);
        assert_eq!(status, 409, "{method} {path}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("is paused"),
            "{method} {path}: {answer}"
        );
    }
    // Paused through a restart of the server: the engine keeps it so.
    server.cleanup = false;
    let namespace = server.namespace.clone();
    server.terminate();
    let server = Server::start_with(Options {
        namespace: Some(namespace),
        ..Options::default()
    });
    assert_eq!(
        server.get("/sandboxes/frozen").1["data"]["status"],
        json!("paused")
    );
    let (status, answer) = server.post("/sandboxes/frozen/resume", "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["status"], json!("running"), "{answer}");
    // The counter went on from where it was frozen.
    let read = |server: &Server| -> u64 {
        let (_, answer) = server.post(
            "/sandboxes/frozen/exec",
            r#"{"command":["cat","/tmp/count"]}"#,
        );
        answer["data"]["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let first = read(&server);
    std::thread::sleep(Duration::from_millis(500));
    assert!(read(&server) > first);
    // Pausing a stopped sandbox is a 409; resuming a running one changes nothing.
    assert_eq!(server.post("/sandboxes/frozen/resume", "").0, 200);
    assert_eq!(server.post("/sandboxes/frozen/stop", "").0, 200);
    assert_eq!(server.post("/sandboxes/frozen/pause", "").0, 409);
    assert_eq!(server.delete("/sandboxes/frozen").0, 200);
    let events: Vec<String> = server.get("/sandboxes/frozen/logs").1["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry["event"].as_str().map(String::from))
        .collect();
    assert!(
        events.contains(&"paused".to_string()) && events.contains(&"resumed".to_string()),
        "{events:?}"
    );
    server.finish();
}

#[test]
fn stats_read_what_a_sandbox_uses() {
    let server = Server::start();
    create(&server, json!({"name": "busy", "memory_mb": 256}));
    // A process that keeps a CPU busy, and 8 MiB written to the sandbox's disk.
    let (status, answer) = server.post(
        "/sandboxes/busy/exec",
        r#"{"command":["sh","-c","(while :; do :; done) >/dev/null 2>&1 & dd if=/dev/zero of=/data bs=1M count=8 2>/dev/null; sync"]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server.get("/sandboxes/busy/stats");
    assert_eq!(status, 200, "{answer}");
    let stats = &answer["data"];
    assert_eq!(
        stats["memory"]["limit_bytes"],
        json!(256 * 1024 * 1024),
        "{stats}"
    );
    assert!(
        stats["memory"]["used_bytes"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats["pids"].as_u64().unwrap() >= 2,
        "the init and the loop: {stats}"
    );
    // A busy loop: well above nothing, whatever else the machine does.
    assert!(stats["cpu_percent"].as_f64().unwrap() > 10.0, "{stats}");
    for field in ["rx_bytes", "tx_bytes"] {
        assert!(stats["network"][field].is_u64(), "{stats}");
    }
    for field in ["read_bytes", "write_bytes"] {
        assert!(stats["block_io"][field].is_u64(), "{stats}");
    }
    // A stopped sandbox has nothing to read: 409; a missing one 404.
    assert_eq!(server.post("/sandboxes/busy/stop", "").0, 200);
    assert_eq!(server.get("/sandboxes/busy/stats").0, 409);
    assert_eq!(server.get("/sandboxes/nothing/stats").0, 404);
    assert_eq!(server.delete("/sandboxes/busy").0, 200);
    server.finish();
}

/// The engine samples for a second and answers 200 with an empty body when the
/// container stops or goes meanwhile (measured): a 409 or 404, never a 502.
#[test]
fn a_sandbox_that_stops_or_goes_while_its_stats_are_read_is_a_409_or_404() {
    let server = Server::start();
    for (name, end, expected) in [("stopping", "stop", 409), ("going", "remove", 404)] {
        create(&server, json!({ "name": name }));
        let id = server.get(&format!("/sandboxes/{name}")).1["data"]["uuid"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("/sandboxes/{name}/stats");
        let (status, answer) = std::thread::scope(|scope| {
            let reading = std::thread::Builder::new()
                .name("stats-reader".into())
                .spawn_scoped(scope, || server.get(&path))
                .unwrap();
            // (Before the engine's sample ends, a second after it began: or, on a slow
            // machine, before the reading began, which tells the same.)
            std::thread::sleep(Duration::from_millis(200));
            // Behind the server's back, as the expiry thread or another client would.
            match end {
                "stop" => docker().container_kill(&id).unwrap(),
                _ => docker().container_remove(&id).unwrap(),
            }
            reading.join().unwrap()
        });
        assert_eq!(status, expected, "{name}: {answer}");
        if end == "stop" {
            assert_eq!(server.delete(&format!("/sandboxes/{name}")).0, 200);
        }
    }
    server.finish();
}

/// A sandbox removed or restarted while a command runs in it (by another client, the
/// expiry thread, its restart policy or at the engine): the command's answer is the
/// client's 404 or 409, never the server's 5xx.
#[test]
fn a_sandbox_removed_or_restarted_while_a_command_runs_is_a_404_or_409() {
    let server = Server::start();
    let cases = [
        ("restarted", "restart", 409),
        ("doomed", "remove", 404),
        // Without the exec socket (by `docker exec` of the stub).
        ("older", "restart", 409),
    ];
    for (name, end, expected) in cases {
        if name == "older" {
            crate::harness::sandbox_without_socket(&server, name);
        } else {
            create(&server, json!({ "name": name }));
        }
        let id = server.get(&format!("/sandboxes/{name}")).1["data"]["uuid"]
            .as_str()
            .unwrap()
            .to_string();
        let client = &server;
        let (status, answer) = std::thread::scope(|scope| {
            let exec = std::thread::Builder::new()
                .name(format!("{name}-exec"))
                .spawn_scoped(scope, || {
                    let body = r#"{"command":["sleep","5"],"timeout_ms":20000}"#;
                    client.post(&format!("/sandboxes/{name}/exec"), body)
                })
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            match end {
                "restart" => {
                    let restarted = std::process::Command::new("docker")
                        .args(["restart", "-t", "0", &id])
                        .output()
                        .unwrap();
                    assert!(restarted.status.success(), "{restarted:?}");
                }
                _ => docker().container_remove(&id).unwrap(),
            }
            exec.join().unwrap()
        });
        // (A restart may also be told as the command's own end, when the stub saw it:
        // killed from outside, every process with it. Which one depends on whether the
        // connection broke before the stub's word: never a 502 lost run.)
        let killed = status == 200 && answer["data"]["status"] == "killed";
        assert!(
            status == expected || (end == "restart" && killed),
            "{name}: {status} {answer}"
        );
        if end == "restart" {
            assert_eq!(server.delete(&format!("/sandboxes/{name}")).0, 200);
        }
    }
    server.finish();
}

#[test]
fn a_sandbox_paused_behind_our_back_is_a_prompt_409_never_a_stalled_exec() {
    let server = Server::start();
    create(&server, json!({"name": "behind"}));
    // Seen running (and so remembered) by one exec, then paused through the engine.
    let (status, _) = server.post("/sandboxes/behind/exec", r#"{"command":["true"]}"#);
    assert_eq!(status, 200);
    let id = server.get("/sandboxes/behind").1["data"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    crate::harness::docker().container_pause(&id).unwrap();
    for path in ["/sandboxes/behind/exec", "/sandboxes/behind/exec/stream"] {
        let started = Instant::now();
        let (status, answer) = server.post(path, r#"{"command":["true"]}"#);
        assert_eq!(status, 409, "{path}: {answer}");
        // Well under the 5 s an exec would wait for a frozen init's hello.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    crate::harness::docker().container_unpause(&id).unwrap();
    let (status, _) = server.post("/sandboxes/behind/exec", r#"{"command":["true"]}"#);
    assert_eq!(status, 200);
    assert_eq!(server.delete("/sandboxes/behind").0, 200);
    server.finish();
}

/// Thaws a container's processes through its cgroup (v1 freezer or v2), as a last
/// resort: a container frozen while `runc exec` set a process up in it is wedged, and
/// even its removal hangs.
fn thaw(id: &str) {
    let _ = std::fs::write(
        format!("/sys/fs/cgroup/freezer/docker/{id}/freezer.state"),
        "THAWED",
    );
    let _ = std::fs::write(
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cgroup.freeze"),
        "0",
    );
}

/// Pauses racing commands' starts, each a `docker exec`: detached commands, and the
/// execs and file reads of a sandbox without the exec socket. Never a frozen half-made
/// exec that wedges the sandbox (before `exec::gate`, within seconds: every later call
/// on it hung for the engine timeout), every answer prompt and no 5xx, and a steady
/// stream of starts does not keep the pauses out.
#[test]
fn pauses_racing_command_starts_never_wedge_the_sandbox() {
    // Six clients at once: alone, so that their load is no other test's, and no other
    // test's load makes a pause here slow.
    let _serial = crate::harness::exclusive();
    let server = Server::start();
    create(&server, json!({"name": "racy"}));
    let racy = server.get("/sandboxes/racy").1["data"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let older = crate::harness::sandbox_without_socket(&server, "older");
    let until = std::time::Instant::now() + Duration::from_secs(12);
    // (sandbox, its id, what each worker does)
    let workers = [
        ("racy", &racy, "pause"),
        ("racy", &racy, "detach"),
        ("racy", &racy, "detach"),
        ("older", &older, "pause"),
        ("older", &older, "exec"),
        ("older", &older, "read"),
    ];
    let slow: Vec<String> = std::thread::scope(|scope| {
        let client = &server;
        let running: Vec<_> = workers
            .iter()
            .enumerate()
            .map(|(n, &(sandbox, id, what))| {
                std::thread::Builder::new()
                    .name(format!("racy-{n}"))
                    .spawn_scoped(scope, move || {
                        let mut slow = Vec::new();
                        let mut pauses = 0;
                        while std::time::Instant::now() < until {
                            let asked = std::time::Instant::now();
                            let path = |rest: &str| format!("/sandboxes/{sandbox}/{rest}");
                            let (status, answer) = match what {
                                "pause" => {
                                    let paused = client.post(&path("pause"), "");
                                    pauses += u32::from(paused.0 == 200);
                                    client.post(&path("resume"), "");
                                    paused
                                }
                                "detach" => {
                                    client.post(&path("exec/detach"), r#"{"command":["true"]}"#)
                                }
                                "exec" => client.post(&path("exec"), r#"{"command":["true"]}"#),
                                _ => client.get(&path("files/etc/hostname")),
                            };
                            // A wedge holds every call for the engine's timeout (60 s);
                            // the gate's own waits end within 10 s.
                            if status >= 500 || asked.elapsed() > Duration::from_secs(20) {
                                let took = asked.elapsed();
                                slow.push(format!("{sandbox} {what}: {status} {answer} {took:?}"));
                                thaw(id);
                            }
                        }
                        if what == "pause" && pauses < 3 {
                            slow.push(format!("{sandbox}: only {pauses} pauses got in"));
                        }
                        slow
                    })
                    .unwrap()
            })
            .collect();
        running
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect()
    });
    assert!(slow.is_empty(), "{slow:#?}");
    for sandbox in ["racy", "older"] {
        assert_eq!(server.delete(&format!("/sandboxes/{sandbox}")).0, 200);
    }
    server.finish();
}
