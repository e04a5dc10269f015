//! `POST /run`: one-shot commands in fresh containers. Most tests share one server
//! (`harness::shared`): a run leaves nothing behind.

use serde_json::json;

use crate::harness::{image, shared, Server};

#[test]
fn run_returns_output_streams_exit_code_and_duration() {
    let server = shared();
    let (status, body) = server.post(
        "/run",
        r#"{"command":["sh","-c","echo out; echo err >&2; exit 3"]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(body["success"], json!(true));
    assert_eq!(data["stdout"], json!("out\n"));
    assert_eq!(data["stderr"], json!("err\n"));
    assert_eq!(data["exit_code"], json!(3));
    assert_eq!(data["status"], json!("exited"));
    let output = data["output"].as_str().unwrap();
    assert!(
        output.contains("out\n") && output.contains("err\n"),
        "{output}"
    );
    assert!(data["duration_ms"].as_u64().unwrap() > 0);
}

#[test]
fn arguments_arrive_exactly_without_a_shell() {
    let server = shared();
    let args = ["a b", "'q'", "\"dq\"", "$HOME", ";", ">", "*", "\\", "ünï"];
    let mut command = vec!["printf".to_string(), "[%s]".to_string()];
    command.extend(args.iter().map(|s| s.to_string()));
    let (status, body) = server.post("/run", &json!({ "command": command }).to_string());
    assert_eq!(status, 200, "{body}");
    let expected: String = args.iter().map(|a| format!("[{a}]")).collect();
    assert_eq!(body["data"]["stdout"], json!(expected));
}

#[test]
fn sdk_style_nulls_mean_not_given() {
    let server = shared();
    let (status, body) = server.post(
        "/run",
        r#"{"command":["echo","hi"],"image":null,"profile":null,"fast":true,"env":null}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["output"], json!("hi\n"));
    let (status, body) = server.post("/run", r#"{"command":["echo","cold"],"fast":false}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["output"], json!("cold\n"));
}

#[test]
fn non_zero_exits_are_still_200_and_not_found_programs_are_127() {
    let server = shared();
    let (status, body) = server.post("/run", r#"{"command":["false"]}"#);
    assert_eq!(status, 200);
    assert_eq!(body["data"]["exit_code"], json!(1));
    let (status, body) = server.post("/run", r#"{"command":["no-such-program"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["exit_code"], json!(127));
}

#[test]
fn env_workdir_and_stdin_reach_the_command() {
    let server = shared();
    let body = json!({
        "command": ["sh", "-c", "echo $GREETING; pwd; cat"],
        "env": ["GREETING=hello there"],
        "workdir": "/tmp",
        "stdin": "from stdin\n",
    });
    let (status, answer) = server.post("/run", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["data"]["stdout"],
        json!("hello there\n/tmp\nfrom stdin\n")
    );
}

#[test]
fn output_that_is_not_utf8_never_breaks_the_response() {
    let server = shared();
    let (status, body) = server.post("/run", r#"{"command":["printf","ok\\377\\376end"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["stdout"], json!("ok\u{fffd}\u{fffd}end"));
}

#[test]
fn missing_images_are_404_naming_the_image_and_never_pulled() {
    let server = shared();
    // Auto-detected from the program name.
    let (status, body) = server.post("/run", r#"{"command":["python3","-c","print(1)"]}"#);
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("'python:3.12-alpine'"),
        "{body}"
    );
    let (status, body) = server.post(
        "/run",
        r#"{"command":["true"],"image":"agentkernel-test/nope:1"}"#,
    );
    assert_eq!(status, 404);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("'agentkernel-test/nope:1'"));
    // A sandbox of a missing image, likewise.
    let (status, body) = server.post(
        "/sandboxes",
        r#"{"name":"ok","image":"agentkernel-test/none:0"}"#,
    );
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("'agentkernel-test/none:0'"));
    let pulled = crate::harness::docker()
        .image_exists("agentkernel-test/nope:1")
        .unwrap();
    assert!(!pulled);
}

#[test]
fn runtime_images_are_overridable() {
    let server = Server::start_with(crate::harness::Options {
        args: vec!["--image".into(), format!("python={}", image())],
        ..Default::default()
    });
    // `python3` now maps to the busybox image, where it does not exist: 127, not 404.
    let (status, body) = server.post("/run", r#"{"command":["python3","-V"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["exit_code"], json!(127));
    server.finish();
}

#[test]
fn a_timeout_is_reported_and_the_container_removed() {
    let server = Server::start();
    let started = std::time::Instant::now();
    let (status, body) = server.post("/run", r#"{"command":["sleep","600"],"timeout_ms":1000}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], json!("timeout"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    server.finish();
}

#[test]
fn every_profile_runs() {
    let server = shared();
    for profile in ["permissive", "moderate", "restrictive"] {
        let body = json!({"command": ["id", "-u"], "profile": profile});
        let (status, answer) = server.post("/run", &body.to_string());
        assert_eq!(status, 200, "{profile}: {answer}");
        let uid = answer["data"]["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .to_string();
        if profile == "restrictive" {
            assert_eq!(uid, "65534");
        } else {
            assert_eq!(uid, "0");
        }
    }
}
