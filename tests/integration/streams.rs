//! Event streams, batch runs and sandbox history.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{containers_of, eventually, Server};

/// Posts to a streaming endpoint and returns each event with its arrival time.
fn events(server: &Server, path: &str, body: &str) -> (String, Vec<(Duration, String, Value)>) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let mut found = Vec::new();
    let mut name = String::new();
    let mut line = String::new();
    // The body is chunked; chunk-size lines are skipped, event lines parsed.
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let text = line.trim_end().to_string();
        line.clear();
        if let Some(event) = text.strip_prefix("event: ") {
            name = event.to_string();
        } else if let Some(data) = text.strip_prefix("data: ") {
            found.push((
                started.elapsed(),
                name.clone(),
                serde_json::from_str(data).unwrap(),
            ));
            if name == "done" || name == "error" {
                break;
            }
        }
    }
    (head, found)
}

#[test]
fn run_stream_delivers_output_as_it_is_produced() {
    let server = Server::start();
    let body = r#"{"command":["sh","-c","echo first; sleep 1; echo second >&2; exit 5"]}"#;
    let (head, found) = events(&server, "/run/stream", body);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let names: Vec<&str> = found.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, ["started", "output", "output", "done"], "{found:?}");
    assert_eq!(found[0].2["command"][0], json!("sh"));
    assert_eq!(found[1].2, json!({"stream": "stdout", "data": "first\n"}));
    assert_eq!(found[2].2, json!({"stream": "stderr", "data": "second\n"}));
    assert_eq!(found[3].2["exit_code"], json!(5));
    assert_eq!(found[3].2["status"], json!("exited"));
    // The first line came before the sleep ended, the second after it.
    let (first, second) = (found[1].0, found[2].0);
    assert!(
        second - first >= Duration::from_millis(800),
        "{first:?} {second:?}"
    );
    assert!(
        second - first < Duration::from_millis(1500),
        "{first:?} {second:?}"
    );
    server.finish();
}

#[test]
fn exec_stream_streams_from_a_sandbox() {
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"s"}"#).0, 201);
    let (_, found) = events(
        &server,
        "/sandboxes/s/exec/stream",
        r#"{"command":["sh","-c","echo a; sleep 1; echo b"],"env":["X=1"]}"#,
    );
    let outputs: Vec<&Value> = found
        .iter()
        .filter(|(_, n, _)| n == "output")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(outputs.len(), 2, "{found:?}");
    assert!(found[2].0 - found[1].0 >= Duration::from_millis(800));
    assert_eq!(found.last().unwrap().1, "done");
    let (_, logs) = server.get("/sandboxes/s/logs");
    let execs: Vec<&Value> = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "exec")
        .collect();
    assert_eq!(execs.len(), 1, "{logs}");
    assert_eq!(server.delete("/sandboxes/s").0, 200);
    server.finish();
}

#[test]
fn stream_errors_before_the_stream_are_plain_json() {
    let server = Server::start();
    let cases = [
        ("/run/stream", r#"{"command":[]}"#, 400),
        (
            "/run/stream",
            r#"{"command":["x"],"image":"agentkernel-test/none:1"}"#,
            404,
        ),
        (
            "/sandboxes/ghost/exec/stream",
            r#"{"command":["true"]}"#,
            404,
        ),
    ];
    for (path, body, status) in cases {
        let (got, answer) = server.post(path, body);
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert_eq!(answer["success"], json!(false));
    }
    assert_eq!(server.post("/sandboxes", r#"{"name":"off"}"#).0, 201);
    assert_eq!(server.post("/sandboxes/off/stop", "").0, 200);
    let (status, _) = server.post("/sandboxes/off/exec/stream", r#"{"command":["true"]}"#);
    assert_eq!(status, 409);
    assert_eq!(server.delete("/sandboxes/off").0, 200);
    server.finish();
}

#[test]
fn a_client_that_disconnects_gets_its_command_killed_and_container_removed() {
    let server = Server::start_with(crate::harness::Options {
        args: vec!["--pool-size".into(), "0".into()],
        ..Default::default()
    });
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let body = r#"{"command":["sh","-c","echo started; sleep 600"]}"#;
    write!(
        stream,
        "POST /run/stream HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut seen = String::new();
    while !seen.contains("started\\n") {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0);
        seen.push_str(&line);
    }
    assert_eq!(containers_of(&server.namespace).len(), 1);
    drop(reader);
    drop(stream);
    assert!(
        eventually(Duration::from_secs(15), || containers_of(&server.namespace)
            .is_empty()),
        "the command's container outlived its client"
    );
    assert_eq!(server.get("/health").0, 200);
    server.finish();
}

/// The same in a sandbox, through the stub and through plain `docker exec` (whose
/// processes outlive their connection, so they are killed from outside).
#[test]
fn a_sandbox_exec_stream_client_that_disconnects_gets_its_command_killed() {
    for args in [vec![], vec!["--no-stub".to_string()]] {
        let server = Server::start_with(crate::harness::Options {
            args: [args.clone(), vec!["--pool-size".into(), "0".into()]].concat(),
            ..Default::default()
        });
        assert_eq!(server.post("/sandboxes", r#"{"name":"gone"}"#).0, 201);
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        let body = r#"{"command":["sh","-c","echo started; sleep 617"],"timeout_ms":600000}"#;
        write!(
            stream,
            "POST /sandboxes/gone/exec/stream HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut seen = String::new();
        while !seen.contains("started\\n") {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "{args:?}: {seen}");
            seen.push_str(&line);
        }
        let sleeping = || {
            let (status, body) = server.post(
                "/sandboxes/gone/exec",
                r#"{"command":["sh","-c","ps -o args | grep -c '^sleep 617' || true"]}"#,
            );
            assert_eq!(status, 200, "{body}");
            body["data"]["stdout"] != json!("0\n")
        };
        // The `sleep` follows the echo a moment later.
        assert!(eventually(Duration::from_secs(5), sleeping), "{args:?}");
        drop(reader);
        drop(stream);
        assert!(
            eventually(Duration::from_secs(15), || !sleeping()),
            "{args:?}: the command outlived its client"
        );
        assert_eq!(server.delete("/sandboxes/gone").0, 200);
        server.finish();
    }
}

#[test]
fn batch_runs_in_input_order_and_one_failure_does_not_fail_the_batch() {
    let server = Server::start();
    let body = json!({"commands": [
        {"command": ["sh", "-c", "sleep 1; echo one"]},
        {"command": ["echo", "two"]},
        {"command": ["true"], "image": "agentkernel-test/none:1"},
        {"command": ["sh", "-c", "exit 7"]},
    ]});
    let started = Instant::now();
    let (status, answer) = server.post("/batch/run", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    let results = answer["data"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["output"], json!("one\n"));
    assert_eq!(results[1]["output"], json!("two\n"));
    assert_eq!(results[2]["output"], json!(null));
    assert!(results[2]["error"]
        .as_str()
        .unwrap()
        .contains("agentkernel-test/none:1"));
    assert_eq!(results[3]["exit_code"], json!(7));
    assert_eq!(results[0]["error"], json!(null));
    assert!(started.elapsed() < Duration::from_secs(10));

    let too_many = json!({"commands": vec![json!({"command": ["true"]}); 65]});
    let (status, answer) = server.post("/batch/run", &too_many.to_string());
    assert_eq!(status, 400);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("between 1 and 64"));
    let (status, _) = server.post("/batch/run", r#"{"commands":[]}"#);
    assert_eq!(status, 400);
    // An entry that does not validate fails alone.
    let (status, answer) = server.post(
        "/batch/run",
        r#"{"commands":[{"command":[]},{"command":["echo","fine"]},{"command":["true"],"profile":"x"}]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let results = answer["data"]["results"].as_array().unwrap();
    assert_eq!(results[0]["output"], json!(null));
    assert!(
        results[0]["error"].as_str().unwrap().contains("non-empty"),
        "{answer}"
    );
    assert_eq!(results[1]["output"], json!("fine\n"));
    assert!(results[2]["error"]
        .as_str()
        .unwrap()
        .contains("unknown profile 'x'"));
    server.finish();
}

#[test]
fn sandbox_history_is_recorded_and_survives_a_restart() {
    let namespace = crate::harness::fresh_namespace();
    let mut first = Server::start_with(crate::harness::Options {
        namespace: Some(namespace.clone()),
        ..Default::default()
    });
    first.cleanup = false;
    assert_eq!(first.post("/sandboxes", r#"{"name":"h"}"#).0, 201);
    assert_eq!(
        first
            .post("/sandboxes/h/exec", r#"{"command":["sh","-c","exit 3"]}"#)
            .0,
        200
    );
    assert_eq!(first.post("/sandboxes/h/stop", "").0, 200);
    assert_eq!(first.post("/sandboxes/h/start", "").0, 200);
    assert!(first.terminate().success());
    let second = Server::start_with(crate::harness::Options {
        namespace: Some(namespace),
        ..Default::default()
    });
    let (status, logs) = second.get("/sandboxes/h/logs");
    assert_eq!(status, 200);
    let entries = logs["data"].as_array().unwrap();
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "exec", "stopped", "started"]);
    assert_eq!(entries[1]["command"], json!(["sh", "-c", "exit 3"]));
    assert_eq!(entries[1]["exit_code"], json!(3));
    assert!(entries[1]["duration_ms"].is_u64());
    let (status, _) = second.get("/sandboxes/nohistory/logs");
    assert_eq!(status, 404);
    assert_eq!(second.delete("/sandboxes/h").0, 200);
    second.finish();
}

#[test]
fn a_client_that_stops_reading_cannot_keep_its_command_running() {
    let server = Server::start_with(crate::harness::Options {
        args: ["--pool-size", "0", "--client-timeout-secs", "2"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let body = r#"{"command":["yes"],"timeout_ms":60000,"max_output_bytes":16777216}"#;
    write!(
        stream,
        "POST /run/stream HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(15), || !containers_of(
        &server.namespace
    )
    .is_empty()));
    // Never read: the server's writes fill the socket, time out, and the command is cut.
    assert!(
        eventually(Duration::from_secs(30), || containers_of(&server.namespace)
            .is_empty()
            && server.get("/health").0 == 200),
        "a stalled client kept its command: {:?}",
        containers_of(&server.namespace)
    );
    drop(stream);
    server.finish();
}

#[test]
fn an_idle_server_keeps_accepting() {
    let server = Server::start_with(crate::harness::Options {
        args: ["--pool-size", "0", "--client-timeout-secs", "1"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.get("/health").0, 200);
    server.finish();
}
