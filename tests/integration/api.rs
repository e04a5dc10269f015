//! The HTTP surface: envelope, auth, body limits, queue bound. (What the router and the
//! request parser refuse, 400, 404 and 405, is unit-tested in `server::routes` and
//! `server::request`, with no engine.)

use std::time::Duration;

use serde_json::json;

use crate::harness::{Options, Server};

#[test]
fn health_answers_both_documented_and_sdk_shapes() {
    let server = Server::start();
    let (status, body) = server.get("/health");
    assert_eq!(status, 200);
    assert_eq!(body["success"], json!(true));
    assert_eq!(body["data"], json!("ok"));
    assert_eq!(body["status"], json!("ok"));
    assert_eq!(body["workers"], json!({"configured": 8, "alive": 8}));
    assert!(body["connections"]["open"].as_u64().unwrap() >= 1);
    assert!(body["connections"]["max"].as_u64().unwrap() >= 16);
    // The document describes exactly these fields (its schema allows no others).
    let (status, document) = server.get("/openapi.json");
    assert_eq!(status, 200);
    assert_same_fields(&document["components"]["schemas"]["HealthEnvelope"], &body);
    server.finish();
}

/// `value` has the fields `schema` lists, all of them and no other, at every level.
fn assert_same_fields(schema: &serde_json::Value, value: &serde_json::Value) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    let mut documented: Vec<&String> = properties.keys().collect();
    let mut answered: Vec<&String> = value.as_object().expect("an object").keys().collect();
    documented.sort();
    answered.sort();
    assert_eq!(answered, documented, "{value} against {schema}");
    let required = schema["required"].as_array().map_or(0, Vec::len);
    assert_eq!(
        required,
        documented.len(),
        "every field is always there: {schema}"
    );
    for (name, property) in properties {
        assert_same_fields(property, &value[name]);
    }
}

#[test]
fn api_key_is_required_when_set_in_either_header() {
    let server = Server::start_with(Options {
        env: vec![("AGENTKERNEL_API_KEY".into(), "s3cret".into())],
        ..Options::default()
    });
    let (status, body) = server.get("/health");
    assert_eq!(status, 401);
    assert_eq!(body["success"], json!(false));
    assert!(body["error"].as_str().unwrap().contains("X-API-Key"));
    let (status, _) = server.request("GET", "/health", None, &[("X-API-Key", "s3cret")]);
    assert_eq!(status, 200);
    let (status, _) = server.request(
        "GET",
        "/sandboxes",
        None,
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200);
    for wrong in [
        ("X-API-Key", "s3cre"),
        ("X-API-Key", "s3cret2"),
        ("Authorization", "s3cret"),
    ] {
        let (status, _) = server.request("GET", "/sandboxes", None, &[wrong]);
        assert_eq!(status, 401, "{wrong:?}");
    }
    // A wrong key never reaches the handler: no container is made.
    let (status, _) = server.request(
        "POST",
        "/run",
        Some(r#"{"command":["true"]}"#),
        &[("X-API-Key", "nope")],
    );
    assert_eq!(status, 401);
    server.finish();
}

#[test]
fn api_key_is_not_needed_when_unset() {
    let server = Server::start();
    let (status, _) = server.request("GET", "/sandboxes", None, &[("X-API-Key", "anything")]);
    assert_eq!(status, 200);
    server.finish();
}

#[test]
fn oversized_bodies_are_refused_from_content_length_before_reading() {
    let server = Server::start();
    // Declares 100 MiB and sends none of it: the answer must come anyway.
    let raw = server.raw(
        b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
Content-Length: 104857600\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("\"success\":false"), "{raw}");
    // A chunked body over the limit is refused once read past the limit.
    let big = format!(r#"{{"command":["echo","{}"]}}"#, "x".repeat(1_100_000));
    let (status, body) = server.post("/run", &big);
    assert_eq!(status, 413);
    assert!(body["error"].as_str().unwrap().contains("1048576"));
    server.finish();
}

#[test]
fn a_full_queue_answers_503_at_once() {
    let server = Server::start_with(Options {
        args: ["--workers", "1", "--queue", "1"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    });
    let slow = r#"{"command":["sleep","3"]}"#;
    let url = server.url("/run");
    let threads: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let status = match ureq::post(&url)
                    .set("Content-Type", "application/json")
                    .send_string(slow)
                {
                    Ok(response) => response.status(),
                    Err(ureq::Error::Status(code, _)) => code,
                    Err(error) => panic!("{error}"),
                };
                (status, started.elapsed())
            })
        })
        .collect();
    let results: Vec<(u16, Duration)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        !busy.is_empty() && results.iter().any(|(s, _)| *s == 200),
        "{results:?}"
    );
    for (_, elapsed) in busy {
        assert!(
            *elapsed < Duration::from_secs(2),
            "503 must not wait: {elapsed:?}"
        );
    }
    server.finish();
}

#[test]
fn an_unreachable_engine_is_a_503_naming_the_socket() {
    let server = Server::start_with(Options {
        env: vec![(
            "DOCKER_HOST".into(),
            "unix:///nonexistent/docker.sock".into(),
        )],
        ..Options::default()
    });
    let (status, body) = server.post("/run", r#"{"command":["true"]}"#);
    assert_eq!(status, 503);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/docker.sock"),
        "{body}"
    );
    let (status, _) = server.get("/sandboxes");
    assert_eq!(status, 503);
    let (status, _) = server.get("/health");
    assert_eq!(status, 200);
    server.finish();
}

#[test]
fn a_client_that_stalls_mid_body_cannot_hold_a_worker() {
    let server = Server::start_with(Options {
        args: ["--workers", "1", "--client-timeout-secs", "2"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    });
    // Promises a body and sends none of it.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::io::Write::write_all(
        &mut stalled,
        b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"comm",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (status, _) = server.get("/health");
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
    server.finish();
}

/// `GET /metrics`: Prometheus text, behind the API key like every route, counting what
/// was answered by route template (never by raw path) and the state now.
#[test]
fn metrics_are_prometheus_text_behind_the_key() {
    let server = Server::start_with(Options {
        env: vec![("AGENTKERNEL_API_KEY".into(), "s3cret".into())],
        ..Options::default()
    });
    let key = [("X-API-Key", "s3cret")];
    assert_eq!(server.request("GET", "/metrics", None, &[]).0, 401);
    let (status, answer) = server.request("POST", "/run", Some(r#"{"command":["true"]}"#), &key);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(server.request("GET", "/sandboxes/nope", None, &key).0, 404);
    assert_eq!(server.request("GET", "/no/such/path", None, &key).0, 404);
    let (status, answer) = server.request("POST", "/sandboxes", Some(r#"{"name":"m"}"#), &key);
    assert_eq!(status, 201, "{answer}");
    let raw = server
        .raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-API-Key: s3cret\r\nConnection: close\r\n\r\n");
    let (head, text) = raw.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for line in [
        "agentkernel_requests_total{method=\"POST\",route=\"/run\",status=\"200\"} 1",
        "agentkernel_requests_total{method=\"GET\",route=\"/sandboxes/{name}\",status=\"404\"} 1",
        "agentkernel_requests_total{method=\"GET\",route=\"unrouted\",status=\"404\"} 1",
        "agentkernel_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"} 1",
        "agentkernel_request_duration_seconds_count{method=\"POST\",route=\"/run\"} 1",
        "agentkernel_engine_up 1",
        "agentkernel_sandboxes{status=\"running\"} 1",
        "agentkernel_sandboxes_expired_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("agentkernel_pool_ready{image=")),
        "{text}"
    );
    assert_eq!(server.request("DELETE", "/sandboxes/m", None, &key).0, 200);
    server.finish();
}
