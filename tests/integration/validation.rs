//! Hostile clients: what the client got wrong is a 4xx from our own validation, never an
//! engine error passed through (the checks that need no engine are unit tests of
//! `server::request`; here, limits above the engine's host); an exec racing its
//! sandbox's delete is a 404 or 409; and no request waits for another one.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{docker, Server};

/// A request from any thread (`Server` itself stays on the test's thread).
fn send(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    crate::harness::request_url(method, url, body, &[])
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[test]
fn limits_above_the_engines_host_are_400s_naming_the_host() {
    let server = Server::start();
    let host = docker().host_resources().expect("engine info");
    if host.cpus < 16 {
        let (status, body) = server.post("/sandboxes", r#"{"name":"cpus","vcpus":16}"#);
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            error_of(&body),
            format!(
                "vcpus 16 exceeds the {} CPUs of the engine's host",
                host.cpus
            )
        );
    }
    let host_mb = host.memory_bytes / (1024 * 1024);
    if host_mb < 16 * 1024 {
        let (status, body) = server.post("/sandboxes", r#"{"name":"mem","memory_mb":16384}"#);
        assert_eq!(status, 400, "{body}");
        assert!(error_of(&body).contains("of the engine's host"), "{body}");
    }
    // Within the host's limits, the override is honoured.
    let (status, body) = server.post("/sandboxes", r#"{"name":"one-cpu","vcpus":1}"#);
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.delete("/sandboxes/one-cpu").0, 200);
    server.finish();
}

#[test]
fn execs_racing_a_delete_answer_200_404_or_409() {
    let server = Server::start();
    for round in 0..3 {
        let name = format!("race-{round}");
        let (status, body) = server.post("/sandboxes", &json!({"name": name}).to_string());
        assert_eq!(status, 201, "{body}");
        let path = format!("/sandboxes/{name}/exec");
        let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let execs: Vec<_> = (0..10)
                .map(|index| {
                    let url = server.url(&path);
                    scope.spawn(move || {
                        std::thread::sleep(Duration::from_millis(15 * index));
                        send("POST", &url, Some(r#"{"command":["sh","-c","echo hi"]}"#))
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(60));
            let (status, body) = server.delete(&format!("/sandboxes/{name}"));
            assert_eq!(status, 200, "{body}");
            execs.into_iter().map(|exec| exec.join().unwrap()).collect()
        });
        for (status, body) in &answers {
            assert!(
                matches!(status, 200 | 404 | 409),
                "round {round}: {status} {body}"
            );
            if *status == 200 {
                assert_eq!(body["data"]["stdout"], json!("hi\n"), "{body}");
            } else {
                assert!(error_of(body).contains(&format!("'{name}'")), "{body}");
            }
        }
    }
    server.finish();
}

/// Execs, detached execs and tmpfs writes that meet a stop of their sandbox: each
/// either ran (200) or is a 409 saying that the sandbox is stopped, never a 502; once
/// it is stopped, each is a 409.
#[test]
fn execs_detaches_and_file_writes_racing_a_stop_answer_200_or_409() {
    let server = Server::start();
    let requests: [(&str, &str, &str); 3] = [
        ("POST", "exec", r#"{"command":["sh","-c","echo hi"]}"#),
        ("POST", "exec/detach", r#"{"command":["true"]}"#),
        // On a tmpfs (`/dev/shm`): only the running container can write it.
        ("PUT", "files/dev/shm/f", r#"{"content":"x"}"#),
    ];
    for round in 0..3 {
        let name = format!("halt-{round}");
        let (status, body) = server.post("/sandboxes", &json!({"name": name}).to_string());
        assert_eq!(status, 201, "{body}");
        let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let calls: Vec<_> = (0..12)
                .map(|index| {
                    let (method, route, body) = requests[index % requests.len()];
                    let url = server.url(&format!("/sandboxes/{name}/{route}"));
                    scope.spawn(move || {
                        std::thread::sleep(Duration::from_millis(15 * index as u64));
                        crate::harness::request_url(method, &url, Some(body), &[])
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(60));
            let (status, body) = server.post(&format!("/sandboxes/{name}/stop"), "");
            assert_eq!(status, 200, "{body}");
            calls.into_iter().map(|call| call.join().unwrap()).collect()
        });
        for (status, body) in &answers {
            assert!(
                matches!(status, 200 | 409),
                "round {round}: {status} {body}"
            );
            if *status == 409 {
                let error = error_of(body);
                assert!(
                    error.contains(&format!("'{name}' is stopped")),
                    "round {round}: {body}"
                );
            }
        }
        for (method, route, body) in requests {
            let path = format!("/sandboxes/{name}/{route}");
            let (status, answer) = server.request(method, &path, Some(body), &[]);
            assert_eq!(status, 409, "{method} {path}: {answer}");
            assert!(
                error_of(&answer).contains(&format!("'{name}' is stopped")),
                "{answer}"
            );
        }
        assert_eq!(server.delete(&format!("/sandboxes/{name}")).0, 200);
    }
    server.finish();
}

/// Two runs at once on an idle server each take their own time, not the other's too:
/// with a pool of one, the second goes cold, and must not wait for the first.
#[test]
fn two_concurrent_runs_never_wait_for_each_other() {
    // Times runs against the engine's pace.
    let _serial = crate::harness::exclusive();
    let server = Server::start_with(crate::harness::Options {
        args: ["--pool-size", "1"].map(String::from).to_vec(),
        ..Default::default()
    });
    // The pool's one container is ready: the server is idle.
    assert!(crate::harness::eventually(Duration::from_secs(30), || {
        server.get("/pool").1["data"]["keys"][0]["ready"] == json!(1)
    }));
    const SLEEP: Duration = Duration::from_secs(4);
    // What a cold start costs on this machine now (it is shared and busy), measured
    // with a command that ends at once, plus 3.5 s: still less than a SLEEP, which is
    // what waiting for the other run would put on top.
    let cold = (0..2)
        .map(|_| {
            let started = Instant::now();
            let (status, body) = server.post("/run", r#"{"command":["true"],"fast":false}"#);
            assert_eq!(status, 200, "{body}");
            started.elapsed()
        })
        .max()
        .unwrap();
    let margin = cold + Duration::from_millis(3500);
    assert!(crate::harness::eventually(Duration::from_secs(30), || {
        server.get("/pool").1["data"]["keys"][0]["ready"] == json!(1)
    }));
    for trial in 0..3 {
        let took: Vec<(Duration, u16, Value)> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    let url = server.url("/run");
                    scope.spawn(move || {
                        let started = Instant::now();
                        let (status, body) =
                            send("POST", &url, Some(r#"{"command":["sleep","4"]}"#));
                        (started.elapsed(), status, body)
                    })
                })
                .collect();
            runs.into_iter().map(|run| run.join().unwrap()).collect()
        });
        if took.iter().any(|t| t.0 > SLEEP + margin) {
            while let Ok(line) = server.log.lock().unwrap().try_recv() {
                eprintln!("LOG {line}");
            }
        }
        for (elapsed, status, body) in &took {
            assert_eq!(*status, 200, "trial {trial}: {body}");
            assert!(
                *elapsed < SLEEP + margin,
                "trial {trial}: a run took {elapsed:?} (cold start {cold:?}): {:?}",
                took.iter().map(|t| t.0).collect::<Vec<_>>()
            );
        }
    }
    server.finish();
}
