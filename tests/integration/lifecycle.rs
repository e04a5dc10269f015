//! The server's life: restarts, the startup sweep, namespaces, graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use agentkernel::config::Namespace;
use agentkernel::containers::labels::{self, Kind, SandboxName};
use agentkernel::engine::ContainerSpec;
use serde_json::json;

use crate::harness::{containers_of, docker, fresh_namespace, image, Options, Server};

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
    let (_, body) = second.get("/sandboxes");
    let listed: BTreeMap<String, String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
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

/// Creates a container labelled as ours, as a crashed server would have left it.
fn leave_container(namespace: &str, kind: Kind, sandbox: Option<&str>) -> String {
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
    let docker = docker();
    let id = docker.container_create(&spec).unwrap();
    docker.container_start(&id).unwrap();
    id
}

#[test]
fn startup_sweep_removes_temporary_containers_and_keeps_sandboxes() {
    let namespace = fresh_namespace();
    let run = leave_container(&namespace, Kind::Run, None);
    let pool = leave_container(&namespace, Kind::Pool, None);
    let sandbox = leave_container(&namespace, Kind::Sandbox, Some("kept"));
    let other_namespace = fresh_namespace();
    let foreign = leave_container(&other_namespace, Kind::Run, None);

    let server = Server::start_with(Options {
        namespace: Some(namespace.clone()),
        ..Options::default()
    });
    let left: Vec<String> = containers_of(&namespace)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![sandbox.clone()]);
    assert!(!left.contains(&run) && !left.contains(&pool));
    assert_eq!(
        containers_of(&other_namespace).len(),
        1,
        "other namespaces are untouched"
    );
    assert_eq!(status_of(&server, "kept"), "running");
    assert_eq!(server.delete("/sandboxes/kept").0, 200);
    docker().container_remove(&foreign).unwrap();
    server.finish();
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
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut server = Server::start();
    let url = server.url("/run");
    let in_flight = std::thread::spawn(move || {
        ureq::post(&url)
            .set("Content-Type", "application/json")
            .send_string(r#"{"command":["sh","-c","sleep 2; echo done"]}"#)
            .map(|r| r.into_string().unwrap())
            .map_err(|error| error.to_string())
    });
    // Let the request reach a worker and its container start.
    std::thread::sleep(Duration::from_millis(800));
    let status = server.terminate();
    assert!(status.success(), "{status}");
    let answer = in_flight
        .join()
        .unwrap()
        .expect("in-flight request answered");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["data"]["output"], json!("done\n"));
    assert!(containers_of(&server.namespace).is_empty());
}
