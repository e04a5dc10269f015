//! Disk quotas across a restart of the engine: an engine that stops unmounts every
//! layer's binds (its storage driver's clean-up), then starts sandboxes again (restart
//! policy `always`) on the bare layer directories. The server finds them running
//! without their disk and gives it back: the quota holds again, with the files written
//! before the restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::PrivateEngine;
use crate::harness::{eventually, Options, Server};

fn exec(server: &Server, sandbox: &str, command: Value) -> Value {
    let (status, answer) = server.post(
        &format!("/sandboxes/{sandbox}/exec"),
        &json!({ "command": command }).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

/// The size of the sandbox's root filesystem, in MiB, as `df` inside says.
fn root_size_mb(server: &Server, sandbox: &str) -> u64 {
    let (status, answer) = server.post(
        &format!("/sandboxes/{sandbox}/exec"),
        &json!({ "command": ["df", "-m", "/"] }).to_string(),
    );
    if status != 200 {
        return 0;
    }
    answer["data"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|size| size.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sandboxes_get_their_disk_back_after_the_engine_restarts() {
    let mut engine = PrivateEngine::start();
    let mut server = Server::start_with(Options {
        args: ["--default-network", "none"].map(String::from).to_vec(),
        env: vec![
            ("DOCKER_HOST".into(), engine.docker_host()),
            (
                "AGENTKERNEL_DATA_DIR".into(),
                engine.dir.join("data").display().to_string(),
            ),
        ],
        ..Options::default()
    });
    server.cleanup = false;
    let (status, answer) = server.post("/sandboxes", r#"{"name":"kept","disk_mb":24}"#);
    assert_eq!(status, 201, "{answer}");
    let written = exec(
        &server,
        "kept",
        json!(["sh", "-c", "echo before > /root/before"]),
    );
    assert_eq!(written["exit_code"], 0, "{written}");
    let size = root_size_mb(&server, "kept");
    assert!((1..=24).contains(&size), "{size} MiB");

    // The engine stops (its clean-up unmounts the binds) and comes back, starting the
    // sandbox again by itself.
    engine.stop();
    engine.start_again();
    // Within the server's looks (the engine's return, then every 30 s): its disk again,
    // with what it held.
    let back = eventually(Duration::from_secs(90), || {
        let size = root_size_mb(&server, "kept");
        size > 0 && size <= 24
    });
    assert!(
        back,
        "the sandbox runs without its disk after the engine's restart"
    );
    let kept = exec(&server, "kept", json!(["cat", "/root/before"]));
    assert_eq!(kept["stdout"], "before\n", "{kept}");
    let full = exec(
        &server,
        "kept",
        json!(["dd", "if=/dev/zero", "of=/big", "bs=1M", "count=100"]),
    );
    assert_eq!(full["status"], "disk_quota_exceeded", "{full}");
    assert_eq!(server.delete("/sandboxes/kept").0, 200);
    server.finish();
}
