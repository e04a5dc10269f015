//! The JSON shapes of the API's `data`, shared by the server and the CLI (whose
//! `--json` prints exactly these), so that both always say the same thing.

use serde_json::{json, Value};

use crate::exec::{text, CommandResult};
use crate::sandbox::Sandbox;

/// `data` of `/run` and exec answers.
pub fn command_data(result: &CommandResult) -> Value {
    let mut data = json!({
        "output": text(&result.output),
        "stdout": text(&result.stdout),
        "stderr": text(&result.stderr),
        "exit_code": result.exit_code,
        "signal": result.signal,
        "status": result.status.name(),
        "duration_ms": result.duration.as_millis() as u64,
    });
    if let Some(message) = &result.message {
        data["message"] = json!(message);
    }
    data
}

/// `data` of a sandbox answer.
pub fn sandbox_data(sandbox: &Sandbox) -> Value {
    let mut data = json!({
        "name": sandbox.name,
        "id": sandbox.id,
        "uuid": sandbox.uuid,
        "status": sandbox.status.name(),
        "backend": "docker",
        "image": sandbox.image,
        "profile": sandbox.profile,
        "created_at": sandbox.created_at,
    });
    if let Some(limits) = sandbox.limits {
        data["memory_mb"] = json!(limits.memory_mb);
        // The SDKs type `vcpus` as an integer: give it only when it is one.
        if limits.millicpus % 1000 == 0 {
            data["vcpus"] = json!(limits.millicpus / 1000);
        }
        data["limits"] = json!({
            "memory_mb": limits.memory_mb,
            "cpus": limits.millicpus as f64 / 1000.0,
            "pids": limits.pids,
        });
    }
    data
}
