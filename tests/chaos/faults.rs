//! The engine goes away and comes back: killed under load, frozen, absent when the
//! server starts, lost with the host, cut off between two calls of a request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentkernel::config::Namespace;
use agentkernel::containers::labels::{self, Kind, SandboxName};
use agentkernel::containers::sweep;
use agentkernel::engine::ContainerSpec;
use serde_json::{json, Value};

use crate::engine::{image, PrivateEngine};
use crate::harness::{eventually, fresh_namespace, request_url, Options, Server};
use crate::link::Link;

/// A server of `engine`'s, reaching it at `docker_host` (the engine's socket or a link
/// in front of it). Its containers are the private engine's and its history is kept in
/// the engine's dir, so both go with the engine (the harness's clean-up, which asks the
/// host engine, is off).
fn serve(
    engine: &PrivateEngine,
    docker_host: &str,
    namespace: Option<String>,
    args: &[&str],
) -> Server {
    // The private engine lives in a network namespace of its own, with no packet
    // filter of its own: the public policy cannot hold there (and is not what these
    // tests are about).
    let args = ["--default-network", "full"].iter().chain(args);
    let mut server = Server::start_with(Options {
        namespace,
        args: args.map(|arg| arg.to_string()).collect(),
        env: vec![
            ("DOCKER_HOST".into(), docker_host.into()),
            (
                "AGENTKERNEL_DATA_DIR".into(),
                engine.dir.join("data").display().to_string(),
            ),
        ],
        ..Options::default()
    });
    server.cleanup = false;
    server
}

/// One answer, and how long it took.
#[derive(Debug, Clone)]
struct Outcome {
    what: &'static str,
    started: Instant,
    took: Duration,
    status: u16,
    body: Value,
}

impl Outcome {
    /// An answer that has just come, to a request sent at `started`.
    fn now(what: &'static str, started: Instant, status: u16, body: Value) -> Outcome {
        Outcome {
            what,
            started,
            took: started.elapsed(),
            status,
            body,
        }
    }
}

fn timed(what: &'static str, method: &str, url: &str, body: Option<&str>) -> Outcome {
    let started = Instant::now();
    let (status, body) = request_url(method, url, body, &[]);
    Outcome::now(what, started, status, body)
}

/// A `POST` to an event stream: a plain answer (before the stream started) as `timed`
/// has it, else status 200 and, as the body, the stream's last event's data with its
/// name as `event` (`done` or `error`; `cut` when the stream ended without either).
fn timed_stream(what: &'static str, url: &str, body: &str) -> Outcome {
    use std::io::{BufRead, BufReader};
    let started = Instant::now();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let response = match agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("POST {url}: {error}"),
    };
    let status = response.status();
    let json = response.content_type() == "application/json";
    let mut reader = BufReader::new(response.into_reader());
    let body = if json {
        serde_json::from_reader(reader).unwrap_or(Value::Null)
    } else {
        let (mut name, mut last) = (String::new(), json!({"event": "cut"}));
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let text = line.trim_end();
            if let Some(event) = text.strip_prefix("event: ") {
                name = event.to_string();
            } else if let Some(data) = text.strip_prefix("data: ") {
                if name == "done" || name == "error" {
                    last = serde_json::from_str(data).unwrap_or(Value::Null);
                    last["event"] = json!(name);
                }
            }
            line.clear();
        }
        last
    };
    Outcome::now(what, started, status, body)
}

fn error_of(outcome: &Outcome) -> &str {
    outcome.body["error"].as_str().unwrap_or_default()
}

/// A stream that ended with an error event naming the engine.
fn is_engine_error_event(outcome: &Outcome) -> bool {
    outcome.status == 200
        && outcome.body["event"] == "error"
        && outcome.body["message"]
            .as_str()
            .is_some_and(|message| message.contains("Docker Engine"))
}

/// A request that went through: a plain 200, or a stream that ended with `done`.
fn succeeded(outcome: &Outcome) -> bool {
    outcome.status == 200 && (outcome.what != "stream" || outcome.body["event"] == "done")
}

/// A 503 that names the engine.
fn is_engine_503(outcome: &Outcome) -> bool {
    outcome.status == 503 && error_of(outcome).contains("Docker Engine")
}

/// A sum over the pool's keys of one of their counters.
fn pool_count(server: &Server, counter: &str) -> u64 {
    let (_, body) = server.get("/pool");
    body["data"]["keys"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|k| k[counter].as_u64()).sum())
        .unwrap_or(0)
}

fn ready_in_pool(server: &Server) -> u64 {
    pool_count(server, "ready")
}

fn engine_field(server: &Server) -> String {
    let (status, body) = server.get("/health");
    assert_eq!(status, 200, "{body}");
    body["engine"].as_str().unwrap_or_default().to_string()
}

fn exec_output(server: &Server, sandbox: &str, command: Value) -> (u16, String) {
    let body = json!({ "command": command }).to_string();
    let (status, answer) = server.post(&format!("/sandboxes/{sandbox}/exec"), &body);
    let output = answer["data"]["stdout"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| answer.to_string());
    (status, output)
}

/// Sandboxes `up` (running, with a file on its root filesystem) and `down` (stopped).
fn make_sandboxes(server: &Server) {
    assert_eq!(server.post("/sandboxes", r#"{"name":"up"}"#).0, 201);
    let (status, _) = exec_output(server, "up", json!(["sh", "-c", "echo kept > /kept"]));
    assert_eq!(status, 200);
    assert_eq!(server.post("/sandboxes", r#"{"name":"down"}"#).0, 201);
    assert_eq!(server.post("/sandboxes/down/stop", "").0, 200);
}

/// `up` runs again with its file, `down` stays stopped: asserted within `within`.
fn sandboxes_came_back(server: &Server, within: Duration) {
    assert!(
        eventually(within, || server.sandboxes().get("up").map(String::as_str)
            == Some("running")),
        "sandbox 'up' is not running again: {:?}",
        server.sandboxes()
    );
    assert_eq!(
        exec_output(server, "up", json!(["cat", "/kept"])),
        (200, "kept\n".to_string())
    );
    let expected: BTreeMap<String, String> = [("down", "stopped"), ("up", "running")]
        .iter()
        .map(|(name, status)| (name.to_string(), status.to_string()))
        .collect();
    assert_eq!(server.sandboxes(), expected);
}

/// After the server's graceful stop, the engine holds exactly the sandboxes named,
/// besides what it lost itself (see `sweep::lost_by_engine`).
fn only_sandboxes_left(engine: &PrivateEngine, names: &[&str]) {
    let docker = engine.docker();
    let mut left = Vec::new();
    let settled = eventually(Duration::from_secs(10), || {
        left = engine.containers();
        let lost: Vec<String> = docker
            .container_list(&[])
            .unwrap()
            .iter()
            .filter(|c| sweep::lost_by_engine(&docker, c))
            .map(|c| c.names.join(","))
            .collect();
        if !lost.is_empty() {
            eprintln!("lost by the engine (listed dead, not found): {lost:?}");
        }
        left.retain(|(name, _, _)| !lost.contains(name));
        left.iter().all(|(_, _, kind)| kind == "sandbox") && left.len() == names.len()
    });
    assert!(settled, "containers left on the engine: {left:?}");
    for name in names {
        assert!(
            left.iter()
                .any(|(names, _, _)| names.ends_with(&format!("_{name}"))),
            "sandbox {name} missing from {left:?}"
        );
    }
}

#[test]
fn a_killed_engine_is_a_503_and_everything_comes_back() {
    let mut engine = PrivateEngine::start();
    let mut server = serve(&engine, &engine.docker_host(), None, &["--pool-size", "2"]);
    make_sandboxes(&server);
    assert!(
        eventually(Duration::from_secs(30), || ready_in_pool(&server) == 2),
        "the pool did not fill: {}",
        server.get("/pool").1
    );

    // A stream of pooled runs (three at a time), a sandbox exec and health checks; the
    // engine is killed in the middle of it.
    let stop = AtomicBool::new(false);
    let outcomes = Mutex::new(Vec::<Outcome>::new());
    let killed_at = Mutex::new(None::<Instant>);
    let created_before_kill = Mutex::new(0);
    let run_url = server.url("/run");
    let exec_url = server.url("/sandboxes/up/exec");
    let stream_url = server.url("/sandboxes/up/exec/stream");
    let detach_url = server.url("/sandboxes/up/exec/detach");
    let root_file_url = server.url("/sandboxes/up/files/root/f.txt");
    let tmp_file_url = server.url("/sandboxes/up/files/tmp/f.txt");
    let health_url = server.url("/health");
    // Cold runs: each needs the engine from start to end (a warm run's exec socket
    // does not, and may well finish with its 200 after the kill).
    let run_body =
        r#"{"command":["sh","-c","sleep 0.5; echo hi"],"timeout_ms":10000,"fast":false}"#;
    // Long enough that the first exec is still running when the engine is killed.
    let exec_body = r#"{"command":["sh","-c","sleep 5; echo x"],"timeout_ms":10000}"#;
    let stream_body = r#"{"command":["sh","-c","echo a; sleep 1; echo b"],"timeout_ms":10000}"#;
    let file_body = json!({ "content": "x".repeat(64 * 1024) }).to_string();
    let record = |outcome: Outcome| outcomes.lock().unwrap().push(outcome);
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    record(timed("run", "POST", &run_url, Some(run_body)));
                }
            });
        }
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                record(timed("exec", "POST", &exec_url, Some(exec_body)));
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                record(timed_stream("stream", &stream_url, stream_body));
            }
        });
        // Files through the archive (the root) and through the stub (a tmpfs), and
        // detached commands with their logs.
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                for url in [&root_file_url, &tmp_file_url] {
                    record(timed("file", "PUT", url, Some(&file_body)));
                    record(timed("file", "GET", url, None));
                }
                let detached = timed(
                    "detached",
                    "POST",
                    &detach_url,
                    Some(r#"{"command":["echo","bg"]}"#),
                );
                let id = detached.body["data"]["id"].as_str().map(str::to_string);
                record(detached);
                if let Some(id) = id {
                    let logs = server.url(&format!("/sandboxes/up/exec/detached/{id}/logs"));
                    record(timed("detached", "GET", &logs, None));
                }
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                record(timed("health", "GET", &health_url, None));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_millis(2500));
        *killed_at.lock().unwrap() = Some(engine.kill());
        *created_before_kill.lock().unwrap() = pool_count(&server, "created");
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, Ordering::SeqCst);
    });
    let killed_at = killed_at.into_inner().unwrap().unwrap();
    let outcomes = outcomes.into_inner().unwrap();
    assert!(
        server
            .wait_for_log("Docker Engine not answering", Duration::from_secs(1))
            .is_some(),
        "the log does not say the engine went away"
    );

    let mut in_flight_503 = BTreeMap::<&str, usize>::new();
    let mut seen = BTreeMap::<&str, usize>::new();
    for outcome in outcomes.iter().filter(|o| o.what != "health") {
        let ended = outcome.started + outcome.took;
        if ended < killed_at {
            assert!(succeeded(outcome), "before the kill: {outcome:?}");
            continue;
        }
        *seen.entry(outcome.what).or_default() += 1;
        // Each answers within its deadline (10 s) + 5 s, and names the engine (one in
        // flight may also have finished just before the engine went). A stream that
        // had begun can only end with an error event naming it.
        assert!(outcome.took <= Duration::from_secs(15), "{outcome:?}");
        if outcome.started >= killed_at {
            // An exec into a sandbox the server saw running, whose init is still the
            // same process, needs no engine (`sandbox::running`): it may succeed.
            let engine_free = matches!(outcome.what, "exec" | "stream") && succeeded(outcome);
            assert!(
                is_engine_503(outcome) || engine_free,
                "arriving: {outcome:?}"
            );
        } else {
            assert!(
                is_engine_503(outcome) || is_engine_error_event(outcome) || succeeded(outcome),
                "in flight: {outcome:?}"
            );
            if is_engine_503(outcome) || is_engine_error_event(outcome) {
                *in_flight_503.entry(outcome.what).or_default() += 1;
            }
        }
    }
    // A sandbox exec in flight goes through the init's exec socket, which does not
    // need the engine once it is connected: it may well finish with its 200.
    assert!(
        in_flight_503.contains_key("run"),
        "no run was caught in flight by the kill: {in_flight_503:?}"
    );
    for what in ["stream", "file", "detached"] {
        assert!(
            seen.contains_key(what),
            "no {what} request after the kill: {seen:?}"
        );
    }
    eprintln!("after the kill: {seen:?}; caught in flight: {in_flight_503:?}");
    let health: Vec<&Outcome> = outcomes.iter().filter(|o| o.what == "health").collect();
    for outcome in &health {
        assert_eq!(outcome.status, 200, "{outcome:?}");
        assert!(outcome.took < Duration::from_secs(1), "{outcome:?}");
    }
    assert!(
        health
            .iter()
            .any(|o| o.started > killed_at + Duration::from_secs(2) && o.body["engine"] == "down"),
        "/health never said the engine is down: {health:?}"
    );
    // The sandboxes are not reported missing (or present) while the engine cannot say.
    let (status, body) = server.get("/sandboxes");
    assert!(status == 503 && body["error"].as_str().unwrap().contains("Docker Engine"));

    // Warm and run containers (their stub, as init, ignores SIGTERM) hold up the
    // engine's restart by their 1 s stop timeout only, not the default 10 s.
    let restart_took = engine.start_again();
    assert!(restart_took < Duration::from_secs(8), "{restart_took:?}");
    let back = Instant::now();
    assert!(
        server
            .wait_for_log("answers again", Duration::from_secs(3))
            .is_some(),
        "the log does not say the engine is back"
    );
    // The pool is renewed by itself (no run has taken the dead containers out yet).
    let created_before_kill = created_before_kill.into_inner().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || ready_in_pool(&server) == 2
            && pool_count(&server, "created") >= created_before_kill + 2),
        "the pool did not refill within 5 s: {}",
        server.get("/pool").1
    );
    let pool_full = back.elapsed();
    let run = || {
        let (status, body) = server.post("/run", r#"{"command":["echo","hi"]}"#);
        status == 200 && body["data"]["stdout"] == "hi\n"
    };
    assert!(
        eventually(Duration::from_secs(5).saturating_sub(back.elapsed()), run),
        "/run did not work within 5 s"
    );
    let run_works = back.elapsed();
    assert!(eventually(Duration::from_secs(3), || engine_field(&server) == "up"));
    eprintln!(
        "engine restart {restart_took:?}; after it: /run works in {run_works:?}, pool full in \
         {pool_full:?}"
    );
    sandboxes_came_back(&server, Duration::from_secs(5));

    // No worker hangs: every one of them serves a run at once.
    let url = server.url("/run");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    timed(
                        "run",
                        "POST",
                        &url,
                        Some(r#"{"command":["echo","ok"],"fast":false}"#),
                    )
                })
            })
            .collect();
        for handle in handles {
            let outcome = handle.join().unwrap();
            assert_eq!(outcome.status, 200, "{outcome:?}");
        }
    });
    let (_, health) = server.get("/health");
    assert_eq!(health["workers"]["alive"], health["workers"]["configured"]);

    // A second outage, with no request at all to find the warm containers dead: the
    // pool replaces them by itself once the engine is back.
    assert!(eventually(Duration::from_secs(10), || ready_in_pool(
        &server
    ) == 2));
    let created = pool_count(&server, "created");
    engine.kill();
    assert!(eventually(Duration::from_secs(5), || engine_field(&server) == "down"));
    engine.start_again();
    assert!(
        eventually(Duration::from_secs(5), || ready_in_pool(&server) == 2
            && pool_count(&server, "created") >= created + 2),
        "the pool did not renew itself within 5 s: {}",
        server.get("/pool").1
    );

    assert!(server.terminate().success());
    only_sandboxes_left(&engine, &["up", "down"]);
}

#[test]
fn a_frozen_engine_bounds_every_request_and_work_resumes() {
    let mut engine = PrivateEngine::start();
    let server = serve(&engine, &engine.docker_host(), None, &["--pool-size", "1"]);
    assert_eq!(server.post("/sandboxes", r#"{"name":"box"}"#).0, 201);
    assert!(eventually(Duration::from_secs(30), || ready_in_pool(
        &server
    ) == 1));

    let frozen_for = Duration::from_secs(10);
    let run_url = server.url("/run");
    let exec_url = server.url("/sandboxes/box/exec");
    let health_url = server.url("/health");
    engine.freeze();
    let frozen_at = Instant::now();
    let (pooled, exec, cold, health) = std::thread::scope(|scope| {
        // A warm container's run takes its exec socket: no engine needed.
        let pooled = scope.spawn(|| {
            let body = r#"{"command":["echo","hi"],"timeout_ms":1000}"#;
            timed("pooled run", "POST", &run_url, Some(body))
        });
        let exec = scope.spawn(|| {
            let body = r#"{"command":["echo","resumed"]}"#;
            timed("exec", "POST", &exec_url, Some(body))
        });
        let cold = scope.spawn(|| {
            let body = r#"{"command":["echo","cold"],"fast":false}"#;
            timed("cold run", "POST", &run_url, Some(body))
        });
        // The watch has given up on the engine by then (a 2 s probe, every 500 ms).
        let health = scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(4));
            timed("health", "GET", &health_url, None)
        });
        std::thread::sleep(frozen_for);
        engine.thaw();
        (
            pooled.join().unwrap(),
            exec.join().unwrap(),
            cold.join().unwrap(),
            health.join().unwrap(),
        )
    });
    let thawed_at = frozen_at + frozen_for;

    // The warm run was served while the engine was frozen (its exec socket, not the
    // engine, carried it), long before the thaw.
    assert_eq!(pooled.status, 200, "{pooled:?}");
    assert_eq!(pooled.body["data"]["stdout"], "hi\n", "{pooled:?}");
    assert!(pooled.started + pooled.took < thawed_at, "{pooled:?}");
    assert!(pooled.took < Duration::from_secs(2), "{pooled:?}");
    // /health never waits for the engine, and says it is down.
    assert_eq!(health.status, 200);
    assert!(health.took < Duration::from_secs(1), "{health:?}");
    assert_eq!(health.body["engine"], "down", "{health:?}");
    // The rest waited for the engine and finished once it was back.
    for (outcome, output) in [(&exec, "resumed\n"), (&cold, "cold\n")] {
        assert_eq!(outcome.status, 200, "{outcome:?}");
        assert_eq!(outcome.body["data"]["stdout"], output, "{outcome:?}");
        assert!(
            outcome.took <= frozen_for + Duration::from_secs(10),
            "{outcome:?}"
        );
    }

    assert!(eventually(Duration::from_secs(5), || {
        let (status, body) = server.post("/run", r#"{"command":["echo","hi"]}"#);
        status == 200 && body["data"]["stdout"] == "hi\n"
    }));
    assert!(eventually(Duration::from_secs(3), || engine_field(&server) == "up"));
    assert!(
        eventually(Duration::from_secs(10), || ready_in_pool(&server) == 1),
        "{}",
        server.get("/pool").1
    );
    assert_eq!(server.delete("/sandboxes/box").0, 200);
    let mut server = server;
    assert!(server.terminate().success());
    only_sandboxes_left(&engine, &[]);
}

/// Leaves a container labelled as ours in `namespace`, as a crashed server would.
fn leave_container(engine: &PrivateEngine, namespace: &str, kind: Kind, sandbox: Option<&str>) {
    let namespace = Namespace::parse(namespace).unwrap();
    let sandbox = sandbox.map(|s| SandboxName::parse(s).unwrap());
    let spec = ContainerSpec {
        name: sandbox
            .as_ref()
            .map(|s| labels::container_name(&namespace, s)),
        image: image(),
        labels: labels::labels(&namespace, kind, &image(), "moderate", sandbox.as_ref()),
        entrypoint: Some(vec!["sleep".into(), "600".into()]),
        ..ContainerSpec::default()
    };
    engine.docker().container_create(&spec).unwrap();
}

/// Lets the engine's clock (whole seconds in container lists) pass a second, so that a
/// server started next is younger than the containers left so far.
fn let_a_second_pass() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn a_server_started_before_its_engine_serves_once_the_engine_appears() {
    let mut engine = PrivateEngine::start();
    let namespace = fresh_namespace();
    leave_container(&engine, &namespace, Kind::Run, None);
    leave_container(&engine, &namespace, Kind::Sandbox, Some("old"));
    let_a_second_pass();
    engine.stop();

    // It starts, and says the engine is down.
    let mut server = serve(&engine, &engine.docker_host(), Some(namespace), &[]);
    assert_eq!(engine_field(&server), "down");
    let (status, body) = server.post("/run", r#"{"command":["echo","hi"]}"#);
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Docker Engine"));

    engine.start_again();
    assert!(
        eventually(Duration::from_secs(5), || {
            let (status, body) = server.post("/run", r#"{"command":["echo","hi"]}"#);
            status == 200 && body["data"]["stdout"] == "hi\n"
        }),
        "/run did not work within 5 s of the engine's start"
    );
    // The start-up sweep it skipped ran: the crashed server's run container is gone,
    // the sandbox is kept.
    assert!(server
        .wait_for_log("answers again", Duration::from_secs(5))
        .is_some());
    assert!(
        server
            .wait_for_log(
                "sweep: removed 1 temporary containers",
                Duration::from_secs(5)
            )
            .is_some(),
        "no start-up sweep once the engine appeared"
    );
    assert!(eventually(Duration::from_secs(3), || engine_field(&server) == "up"));
    assert_eq!(
        server.sandboxes().into_iter().collect::<Vec<_>>(),
        [("old".to_string(), "stopped".to_string())]
    );
    assert!(server.terminate().success());
    only_sandboxes_left(&engine, &["old"]);
}

#[test]
fn the_deferred_sweep_spares_what_the_server_made_since_it_started() {
    let engine = PrivateEngine::start();
    let namespace = fresh_namespace();
    leave_container(&engine, &namespace, Kind::Run, None);
    let_a_second_pass();
    // Only the server's watch finds the engine silent: the start-up sweep waits, while
    // requests are served and make containers of their own.
    let link = Link::start(&engine.socket(), engine.dir.join("link.sock"));
    link.refuse(Some("HEAD /_ping"));
    let mut server = serve(&engine, &link.docker_host(), Some(namespace), &[]);
    assert_eq!(engine_field(&server), "down");
    let url = server.url("/run");
    let runs = || {
        engine
            .containers()
            .iter()
            .filter(|(_, _, kind)| kind == "run")
            .count()
    };
    let outcome = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            let body = r#"{"command":["sh","-c","sleep 3; echo survived"],"fast":false}"#;
            timed("run", "POST", &url, Some(body))
        });
        assert!(eventually(Duration::from_secs(5), || runs() == 2));
        link.refuse(None);
        assert!(
            server
                .wait_for_log(
                    "sweep: removed 1 temporary containers",
                    Duration::from_secs(5)
                )
                .is_some(),
            "no start-up sweep once the engine answered"
        );
        run.join().unwrap()
    });
    assert_eq!(outcome.status, 200, "{outcome:?}");
    assert_eq!(outcome.body["data"]["stdout"], "survived\n", "{outcome:?}");
    assert!(server.terminate().success());
    only_sandboxes_left(&engine, &[]);
}

#[test]
fn sandboxes_come_back_as_they_were_after_the_host_loses_power() {
    let mut engine = PrivateEngine::start();
    let namespace = fresh_namespace();
    let mut server = serve(&engine, &engine.docker_host(), Some(namespace.clone()), &[]);
    make_sandboxes(&server);
    assert!(server.terminate().success());

    // Everything dies at once; the engine comes back with no server running: it starts
    // the sandbox that was running by itself (its restart policy).
    engine.kill_everything();
    engine.start_again();
    let docker = engine.docker();
    let state = |name: &str| {
        docker
            .container_inspect(&format!("ak_{namespace}_{name}"))
            .map(|inspect| inspect.state.status)
            .unwrap_or_else(|error| error.to_string())
    };
    assert!(
        eventually(Duration::from_secs(5), || state("up") == "running"),
        "{}",
        state("up")
    );
    assert_eq!(state("down"), "exited");

    let server = serve(&engine, &engine.docker_host(), Some(namespace), &[]);
    sandboxes_came_back(&server, Duration::from_secs(1));
    let mut server = server;
    assert!(server.terminate().success());
    only_sandboxes_left(&engine, &["up", "down"]);
}

#[test]
fn removals_the_engine_could_not_do_are_done_once_it_is_back() {
    let mut engine = PrivateEngine::start();
    let link = Link::start(&engine.socket(), engine.dir.join("link.sock"));
    let mut server = serve(&engine, &link.docker_host(), None, &["--no-stub"]);

    // A sandbox create the engine carried out, but whose next call found the engine
    // gone: the client hears 503, and once the engine is back the container goes.
    link.cut_after("/containers/create");
    let (status, body) = server.post("/sandboxes", r#"{"name":"ghost"}"#);
    assert!(link.is_down());
    assert_eq!(status, 503, "{body}");
    let ghost = format!("ak_{}_ghost", server.namespace);
    assert!(engine.docker().container_inspect(&ghost).is_ok());
    link.set_down(false);
    assert!(
        eventually(Duration::from_secs(5), || engine
            .docker()
            .container_inspect(&ghost)
            .is_err_and(|e| e.is_not_found())),
        "the failed create's container is still there"
    );
    assert_eq!(server.get("/sandboxes/ghost").0, 404);
    assert!(server.sandboxes().is_empty());

    // A run in flight when the engine is killed: its container cannot be removed then,
    // and is removed once the engine is back (by the engine itself, for an `AutoRemove`
    // container; the removal owed is settled either way).
    let url = server.url("/run");
    let outcome = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            let body = r#"{"command":["sleep","5"],"fast":false}"#;
            timed("run", "POST", &url, Some(body))
        });
        std::thread::sleep(Duration::from_secs(2));
        engine.kill();
        run.join().unwrap()
    });
    assert!(is_engine_503(&outcome), "{outcome:?}");
    assert!(
        eventually(Duration::from_secs(5), || {
            server.get("/pool").1["data"]["owed_removals"] == 1
        }),
        "{}",
        server.get("/pool").1
    );
    engine.start_again();
    assert!(
        eventually(Duration::from_secs(5), || engine.containers().is_empty()),
        "left on the engine: {:?}",
        engine.containers()
    );
    assert!(
        eventually(Duration::from_secs(2), || {
            server.get("/pool").1["data"]["owed_removals"] == 0
        }),
        "{}",
        server.get("/pool").1
    );
    assert!(server.terminate().success());
}
