//! The JSON shapes of the API's `data`, shared by the server and the CLI (whose
//! `--json` prints exactly these), so that both always say the same thing.
//!
//! Command results are written rather than built: their texts (`output`, `stdout`,
//! `stderr`) are escaped straight from the result's buffers as the answer goes out, so
//! an answer never holds a second copy of a command's output.

use std::io::{self, Write};

use serde_json::{json, Value};

use crate::codec::json::write_text;
use crate::exec::{CommandResult, Cut};
use crate::sandbox::Sandbox;

/// Writes `data` of `/run` and exec answers: the keys in the order serde_json keeps
/// them (sorted), like every other answer. A batch entry also says `error: null`; a
/// result with a message (`killed`) says it.
pub fn write_command_data(
    out: &mut dyn Write,
    result: &CommandResult,
    batch_entry: bool,
) -> io::Result<()> {
    let (stdout_cut, stderr_cut) = result.output.cut_streams();
    let truncated = json!({
        "stdout": stdout_cut.map(Cut::name),
        "stderr": stderr_cut.map(Cut::name),
    });
    write!(
        out,
        "{{\"duration_ms\":{}",
        result.duration.as_millis() as u64
    )?;
    if batch_entry {
        out.write_all(b",\"error\":null")?;
    }
    out.write_all(b",\"exit_code\":")?;
    serde_json::to_writer(&mut *out, &result.exit_code)?;
    // What happened, where the status alone does not say (`killed`).
    if let Some(message) = &result.message {
        out.write_all(b",\"message\":")?;
        serde_json::to_writer(&mut *out, message)?;
    }
    out.write_all(b",\"output\":")?;
    write_text(out, result.output_pieces())?;
    out.write_all(b",\"signal\":")?;
    serde_json::to_writer(&mut *out, &result.signal)?;
    out.write_all(b",\"status\":")?;
    serde_json::to_writer(&mut *out, result.status.name())?;
    out.write_all(b",\"stderr\":")?;
    write_text(out, [result.stderr.as_slice()])?;
    out.write_all(b",\"stdout\":")?;
    write_text(out, [result.stdout.as_slice()])?;
    out.write_all(b",\"truncated\":")?;
    serde_json::to_writer(&mut *out, &truncated)?;
    out.write_all(b"}")
}

/// Writes `data` of `/batch/run`: one entry per command, in order; a command that could
/// not run is its error.
pub fn write_batch_data(
    out: &mut dyn Write,
    results: &[Result<CommandResult, String>],
) -> io::Result<()> {
    out.write_all(b"{\"results\":[")?;
    for (index, entry) in results.iter().enumerate() {
        if index > 0 {
            out.write_all(b",")?;
        }
        match entry {
            Ok(result) => write_command_data(out, result, true)?,
            Err(message) => {
                serde_json::to_writer(&mut *out, &json!({ "output": null, "error": message }))?
            }
        }
    }
    out.write_all(b"]}")
}

/// `data` of `/run` and exec answers as a value (the CLI's streamed commands).
pub fn command_data(result: &CommandResult) -> Value {
    let mut bytes = Vec::new();
    write_command_data(&mut bytes, result, false).expect("writing to memory never fails");
    serde_json::from_slice(&bytes).expect("command data is JSON")
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
        "network": network_view(sandbox),
        "created_at": sandbox.created_at,
    });
    if let Some(limits) = sandbox.limits {
        add_limits(&mut data, limits);
    } else if let Some(memory_mb) = sandbox
        .labels
        .get(crate::containers::labels::MEMORY_MB)
        .and_then(|value| value.parse::<u64>().ok())
    {
        // Lists read no limits from the engine, but the memory it was given, which
        // its label says (a cluster's router counts it against a tenant's quota).
        data["memory_mb"] = json!(memory_mb);
    }
    if let Some(runtime) = &sandbox.runtime {
        data["runtime"] = json!(runtime);
    }
    if let Some(disk) = &sandbox.disk {
        data["disk"] = json!({
            "quota_mb": disk.quota_mb,
            "used_mb": disk.used_mb,
            "enforced_by": disk.enforced_by,
        });
    }
    data
}

/// A sandbox's egress policy as the API shows it: a name, or `{"allow": [...]}`.
fn network_view(sandbox: &Sandbox) -> Value {
    match network_of(sandbox) {
        "allow" => json!({
            "allow": crate::containers::allow::list_of(&sandbox.labels)
                .map(|list| list.texts())
                .unwrap_or_default(),
        }),
        name => json!(name),
    }
}

/// A sandbox's egress policy: its label, or for one made before policies were
/// labelled, what its profile then gave (restrictive: none; else the default bridge).
fn network_of(sandbox: &Sandbox) -> &str {
    match sandbox.labels.get(crate::containers::labels::NETWORK) {
        Some(network) => network,
        None if sandbox.profile == "restrictive" => "none",
        None => "full",
    }
}

/// `memory_mb`, `vcpus` (the SDKs type it as an integer: given only when it is one) and
/// `limits`, of a sandbox or a snapshot.
fn add_limits(data: &mut Value, limits: crate::containers::profile::Limits) {
    data["memory_mb"] = json!(limits.memory_mb);
    if limits.millicpus.is_multiple_of(1000) {
        data["vcpus"] = json!(limits.millicpus / 1000);
    }
    data["limits"] = json!({
        "memory_mb": limits.memory_mb,
        "cpus": limits.millicpus as f64 / 1000.0,
        "pids": limits.pids,
        "disk_mb": limits.disk_mb,
    });
}

/// A snapshot as the API shows it: the SDKs' `SnapshotMeta`, and its profile, limits
/// and size.
pub fn snapshot_data(snapshot: &crate::snapshot::Snapshot) -> Value {
    let mut data = json!({
        "name": snapshot.name,
        "sandbox": snapshot.sandbox,
        "image_tag": snapshot.image_tag,
        "backend": "docker",
        "base_image": snapshot.base_image,
        "profile": snapshot.profile,
        "created_at": snapshot.created_at,
        "size_bytes": snapshot.size_bytes,
    });
    if let Some(limits) = snapshot.limits {
        add_limits(&mut data, limits);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::frames::StreamKind;
    use crate::exec::{Collected, Keep, OutputBudget, Status};

    fn result(pushes: &[(StreamKind, &[u8])], keep: Keep) -> CommandResult {
        let mut collected = Collected::new(keep);
        for (kind, bytes) in pushes {
            collected.push(*kind, bytes, 8);
        }
        CommandResult {
            output: collected.output,
            stdout: collected.stdout,
            stderr: collected.stderr,
            exit_code: Some(1),
            signal: None,
            status: Status::OutputTruncated,
            duration: std::time::Duration::from_millis(7),
            message: None,
        }
    }

    #[test]
    fn command_data_is_what_json_would_build_from_copies() {
        let split = "é".as_bytes();
        let result = result(
            &[
                (StreamKind::Stdout, &[b'a', split[0]]),
                (StreamKind::Stderr, b"E\"\n"),
                (StreamKind::Stdout, &[split[1], 0xff]),
                (StreamKind::Stdout, b"123456789"),
            ],
            Keep::All,
        );
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let expected = json!({
            "duration_ms": 7,
            "exit_code": 1,
            "output": text(&result.output_bytes()),
            "signal": null,
            "status": "output_truncated",
            "stderr": "E\"\n",
            "stdout": text(&result.stdout),
            "truncated": {"stdout": "max_output_bytes", "stderr": null},
        });
        let mut written = Vec::new();
        write_command_data(&mut written, &result, false).unwrap();
        assert_eq!(written, serde_json::to_vec(&expected).unwrap());
        assert_eq!(command_data(&result), expected);
        let said = CommandResult {
            message: Some("killed \"from outside\"".into()),
            ..result.clone()
        };
        let mut expected_said = expected.clone();
        expected_said["message"] = json!("killed \"from outside\"");
        let mut written = Vec::new();
        write_command_data(&mut written, &said, false).unwrap();
        assert_eq!(written, serde_json::to_vec(&expected_said).unwrap());
        // The stdout piece that held half of "é" and the one that held the rest are
        // joined in stdout, and cut apart by stderr in the interleaving.
        assert_eq!(expected["stdout"], json!("aé\u{fffd}1234"));
        assert_eq!(
            expected["output"],
            json!("a\u{fffd}E\"\n\u{fffd}\u{fffd}1234")
        );
    }

    #[test]
    fn batch_entries_are_results_or_errors() {
        let budget = OutputBudget::new(crate::exec::RUN_BYTES + 2);
        let kept = result(&[(StreamKind::Stdout, b"abc")], Keep::Within(budget));
        let mut written = Vec::new();
        write_batch_data(&mut written, &[Ok(kept), Err("no such image".into())]).unwrap();
        let data: Value = serde_json::from_slice(&written).unwrap();
        let results = data["results"].as_array().unwrap();
        assert_eq!(results[0]["stdout"], json!("ab"));
        assert_eq!(results[0]["error"], Value::Null);
        assert_eq!(results[0]["truncated"]["stdout"], json!("request_budget"));
        assert_eq!(
            results[1],
            json!({"output": null, "error": "no such image"})
        );
    }
}
