//! Persistent sandboxes: create, list, get, exec, stop, start, delete, and their errors.

use serde_json::json;

use crate::harness::Server;

#[test]
fn sandbox_lifecycle_end_to_end() {
    let server = Server::start();
    let (status, body) = server.post("/sandboxes", r#"{"name":"life"}"#);
    assert_eq!(status, 201, "{body}");
    let data = &body["data"];
    assert_eq!(data["name"], json!("life"));
    assert_eq!(data["status"], json!("running"));
    assert_eq!(data["backend"], json!("docker"));
    assert_eq!(data["profile"], json!("moderate"));
    assert!(data["created_at"].as_str().unwrap().ends_with('Z'));

    let (status, body) = server.post("/sandboxes", r#"{"name":"life"}"#);
    assert_eq!(status, 409);
    assert_eq!(body["error"], json!("Sandbox 'life' already exists"));

    let (status, body) = server.get("/sandboxes");
    assert_eq!(status, 200);
    let names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["life"]);

    let (status, body) = server.post(
        "/sandboxes/life/exec",
        r#"{"command":["sh","-c","echo $A > /root/kept; cat /root/kept; exit 4"],"env":["A=1"]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["output"], json!("1\n"));
    assert_eq!(body["data"]["exit_code"], json!(4));

    let (status, body) = server.post("/sandboxes/life/stop", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], json!("stopped"));
    let (status, body) = server.get("/sandboxes/life");
    assert_eq!((status, &body["data"]["status"]), (200, &json!("stopped")));

    let (status, body) = server.post("/sandboxes/life/exec", r#"{"command":["true"]}"#);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("'life'"));

    let (status, body) = server.post("/sandboxes/life/start", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], json!("running"));
    let (status, body) = server.post(
        "/sandboxes/life/exec",
        r#"{"command":["cat","/root/kept"]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]["output"],
        json!("1\n"),
        "files survive stop/start"
    );

    let (status, body) = server.delete("/sandboxes/life");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], json!(true));
    let (status, body) = server.get("/sandboxes/life");
    assert_eq!(status, 404);
    assert_eq!(body["error"], json!("Sandbox 'life' not found"));
    server.finish();
}

#[test]
fn missing_sandboxes_are_404_everywhere() {
    let server = Server::start();
    for (method, path) in [
        ("GET", "/sandboxes/ghost"),
        ("DELETE", "/sandboxes/ghost"),
        ("POST", "/sandboxes/ghost/stop"),
        ("POST", "/sandboxes/ghost/start"),
    ] {
        let (status, body) = server.request(method, path, None, &[]);
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(body["error"], json!("Sandbox 'ghost' not found"));
    }
    let (status, _) = server.post("/sandboxes/ghost/exec", r#"{"command":["true"]}"#);
    assert_eq!(status, 404);
    server.finish();
}

#[test]
fn sdk_create_with_nulls_and_limit_overrides_read_back_from_the_engine() {
    let server = Server::start();
    let body = r#"{"name":"lim","backend":null,"image":null,"vcpus":2,"memory_mb":128,
        "profile":null,"source_url":null,"source_ref":null,"volumes":null,"pids":100}"#;
    let (status, answer) = server.post("/sandboxes", body);
    assert_eq!(status, 201, "{answer}");
    let (_, answer) = server.get("/sandboxes/lim");
    let data = &answer["data"];
    assert_eq!(data["memory_mb"], json!(128));
    assert_eq!(data["vcpus"], json!(2));
    assert_eq!(
        data["limits"],
        json!({"memory_mb": 128, "cpus": 2.0, "pids": 100, "disk_mb": 2048})
    );
    server.delete("/sandboxes/lim");
    server.finish();
}

#[test]
fn detached_execs_run_on_and_report_status_logs_and_kill() {
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"bg"}"#).0, 201);
    let (status, body) = server.post(
        "/sandboxes/bg/exec/detach",
        r#"{"command":["sh","-c","echo $X; echo e >&2; sleep 1; exit 3"],"env":["X=out"]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(body["data"]["status"], json!("running"));
    assert_eq!(body["data"]["sandbox"], json!("bg"));
    let path = format!("/sandboxes/bg/exec/detached/{id}");
    assert!(crate::harness::eventually(
        std::time::Duration::from_secs(10),
        || { server.get(&path).1["data"]["status"] != json!("running") }
    ));
    let (_, body) = server.get(&path);
    assert_eq!(body["data"]["status"], json!("failed"));
    assert_eq!(body["data"]["exit_code"], json!(3));
    let (_, body) = server.get(&format!("{path}/logs"));
    assert_eq!(
        body["data"],
        json!({"stdout": "out\n", "stderr": "e\n",
               "truncated": {"stdout": null, "stderr": null}})
    );
    let (_, body) = server.get(&format!("{path}/logs?stream=stderr"));
    assert_eq!(body["data"]["stdout"], json!(null));
    let (_, body) = server.get("/sandboxes/bg/exec/detached");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);

    let (_, body) = server.post(
        "/sandboxes/bg/exec/detach",
        r#"{"command":["sleep","600"]}"#,
    );
    let sleeper = body["data"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("detach answered {body}"))
        .to_string();
    let (status, _) = server.delete(&format!("/sandboxes/bg/exec/detached/{sleeper}"));
    assert_eq!(status, 200);
    assert!(crate::harness::eventually(
        std::time::Duration::from_secs(5),
        || {
            server
                .get(&format!("/sandboxes/bg/exec/detached/{sleeper}"))
                .1["data"]["exit_code"]
                == json!(137)
        }
    ));
    let (status, _) = server.get("/sandboxes/bg/exec/detached/0123456789abcdef");
    assert_eq!(status, 404);
    let (status, _) = server.get("/sandboxes/bg/exec/detached/nothex");
    assert_eq!(status, 400);
    assert_eq!(server.delete("/sandboxes/bg").0, 200);
    server.finish();
}

/// A workdir is made if missing, as for an exec; one that cannot be used is the
/// command's failure (126, the reason on its stderr), never a 502 (schemathesis found
/// that a missing workdir, given to the engine, failed the exec before our stub ran).
#[test]
fn detached_execs_make_their_workdir_or_fail_as_commands() {
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"bgw"}"#).0, 201);
    let finished = |body: &serde_json::Value| {
        let id = body["data"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("detach answered {body}"))
            .to_string();
        let path = format!("/sandboxes/bgw/exec/detached/{id}");
        assert!(crate::harness::eventually(
            std::time::Duration::from_secs(10),
            || server.get(&path).1["data"]["status"] != json!("running")
        ));
        (server.get(&path).1, server.get(&format!("{path}/logs")).1)
    };

    let (status, body) = server.post(
        "/sandboxes/bgw/exec/detach",
        r#"{"command":["sh","-c","pwd"],"workdir":"/new/dir"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (record, logs) = finished(&body);
    assert_eq!(record["data"]["exit_code"], json!(0), "{record}");
    assert_eq!(logs["data"]["stdout"], json!("/new/dir\n"));

    let (status, body) = server.post(
        "/sandboxes/bgw/exec/detach",
        r#"{"command":["pwd"],"workdir":"/etc/passwd"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (record, logs) = finished(&body);
    assert_eq!(record["data"]["status"], json!("failed"));
    assert_eq!(record["data"]["exit_code"], json!(126));
    let stderr = logs["data"]["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("cannot use workdir '/etc/passwd'"),
        "{stderr}"
    );
    assert_eq!(server.delete("/sandboxes/bgw").0, 200);
    server.finish();
}
