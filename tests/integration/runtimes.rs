//! Engine runtimes on the machine's engine (which has `runc` only): `GET /backends`
//! lists them, a request naming one the engine lacks is a 400 naming those it has, and
//! one naming the default runs as any other. (gVisor itself: `tests/chaos/gvisor.rs`,
//! against a private engine that has `runsc`.)

use serde_json::json;

use crate::harness::{shared, Server};

#[test]
fn backends_list_the_engines_runtimes() {
    let (status, answer) = shared().get("/backends");
    assert_eq!(status, 200, "{answer}");
    let backend = &answer["data"]["backends"][0];
    let runtimes: Vec<&str> = backend["runtimes"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .filter_map(|name| name.as_str())
        .collect();
    // Only what requests may name: the default (and runsc, where the engine has it).
    assert!(runtimes.contains(&"runc"), "{answer}");
    assert!(!runtimes.contains(&"io.containerd.runc.v2"), "{answer}");
    assert_eq!(backend["default_runtime"], "runc", "{answer}");
}

#[test]
fn only_the_runtimes_the_operator_allows_may_be_named() {
    // The engine has it, the server does not let requests have it.
    let (status, answer) = shared().post(
        "/run",
        r#"{"command":["true"],"runtime":"io.containerd.runc.v2"}"#,
    );
    assert_eq!(status, 403, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("not allowed") && error.contains("runc"),
        "{error}"
    );
    let server = Server::start_with(crate::harness::Options {
        args: ["--runtimes", "runc,io.containerd.runc.v2"]
            .map(String::from)
            .to_vec(),
        ..crate::harness::Options::default()
    });
    let (status, answer) = server.post(
        "/run",
        r#"{"command":["echo","ok"],"runtime":"io.containerd.runc.v2"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["stdout"], "ok\n", "{answer}");
    server.finish();
}

#[test]
fn a_runtime_the_engine_lacks_is_a_400_naming_those_it_has() {
    let server = shared();
    for body in [
        json!({ "command": ["true"], "runtime": "kata" }),
        json!({ "commands": [{ "command": ["true"], "runtime": "kata" }] }),
    ] {
        let path = if body.get("commands").is_some() {
            "/batch/run"
        } else {
            "/run"
        };
        let (status, answer) = server.post(path, &body.to_string());
        let error = if path == "/run" {
            assert_eq!(status, 400, "{answer}");
            answer["error"].clone()
        } else {
            assert_eq!(status, 200, "{answer}");
            answer["data"]["results"][0]["error"].clone()
        };
        let error = error.as_str().unwrap_or_default().to_string();
        assert!(
            error.contains("runtime 'kata' is not available") && error.contains("runc"),
            "{error}"
        );
    }
    let (status, answer) = server.post("/run", r#"{"command":["true"],"runtime":"run c"}"#);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("invalid runtime"));
}

#[test]
fn a_sandbox_under_the_named_runtime_says_which() {
    let server = Server::start();
    let (status, answer) = server.post("/sandboxes", r#"{"name":"k","runtime":"kata"}"#);
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = server.post("/sandboxes", r#"{"name":"r","runtime":"runc"}"#);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["runtime"], "runc", "{answer}");
    let (status, answer) = server.post("/run", r#"{"command":["echo","ok"],"runtime":"runc"}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["stdout"], "ok\n", "{answer}");
    assert_eq!(server.delete("/sandboxes/r").0, 200);
    server.finish();
}
