//! Sandbox history: an append-only JSONL file per namespace under the server's data
//! directory (`<data-dir>/<namespace>.history.jsonl`), one line per lifecycle event
//! (created, started, stopped, removed) and per exec (command, exit code, status,
//! duration). It lives on disk, so it survives restarts.
//!
//! Invariants: bounded: when the file passes its size limit it becomes `.1` (replacing
//! the previous one) and a new file starts, so at most twice the limit is kept; appends
//! are serialized by a lock and written as whole lines; failures to write are logged,
//! never turned into request failures (history is a record, not a precondition).

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::config::Namespace;
use crate::containers::labels::{rfc3339, SandboxName};
use crate::exec::CommandResult;

/// Most entries one read returns (the newest ones).
pub const MAX_ENTRIES: usize = 1000;

/// Every namespace's history, each in its own file.
pub struct History {
    dir: Option<PathBuf>,
    max_bytes: u64,
    lock: Mutex<()>,
}

impl History {
    /// `dir` is created if missing; `None` keeps no history (reads return nothing).
    pub fn new(dir: Option<PathBuf>, max_bytes: u64) -> History {
        if let Some(dir) = &dir {
            if let Err(error) = fs::create_dir_all(dir) {
                log::warn!("history: cannot create {}: {error}", dir.display());
            }
        }
        History {
            dir,
            max_bytes,
            lock: Mutex::new(()),
        }
    }

    /// The namespace's file, and the one it was rotated to.
    fn paths(&self, namespace: &Namespace) -> Option<(PathBuf, PathBuf)> {
        let path = self
            .dir
            .as_ref()?
            .join(format!("{}.history.jsonl", namespace.as_str()));
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        Some((path, PathBuf::from(rotated)))
    }

    fn append(&self, namespace: &Namespace, mut entry: Value) {
        let Some((path, rotated)) = self.paths(namespace) else {
            return;
        };
        entry["time"] = json!(rfc3339(SystemTime::now()));
        let mut line = entry.to_string();
        line.push('\n');
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size + line.len() as u64 > self.max_bytes && size > 0 {
            if let Err(error) = fs::rename(&path, rotated) {
                log::warn!("history: cannot rotate {}: {error}", path.display());
            }
        }
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            log::warn!("history: cannot append to {}: {error}", path.display());
        }
    }

    /// A lifecycle event: `created`, `started`, `stopped`, `removed`.
    pub fn event(&self, namespace: &Namespace, sandbox: &SandboxName, event: &str) {
        self.append(
            namespace,
            json!({ "sandbox": sandbox.as_str(), "event": event }),
        );
    }

    pub fn exec(
        &self,
        namespace: &Namespace,
        sandbox: &SandboxName,
        command: &[String],
        result: &CommandResult,
    ) {
        self.append(
            namespace,
            json!({
                "sandbox": sandbox.as_str(),
                "event": "exec",
                "command": shortened(command),
                "exit_code": result.exit_code,
                "status": result.status.name(),
                "duration_ms": result.duration.as_millis() as u64,
            }),
        );
    }

    /// A detached exec started (its end is not recorded: it happens without us).
    pub fn append_detached(
        &self,
        namespace: &Namespace,
        sandbox: &SandboxName,
        command: &[String],
        record: &Value,
    ) {
        self.append(
            namespace,
            json!({
                "sandbox": sandbox.as_str(),
                "event": "exec_detached",
                "command": shortened(command),
                "id": record["id"],
            }),
        );
    }

    /// The newest entries of one sandbox, oldest first. Reads take no lock: appends are
    /// whole lines, so a reader sees a line entirely or not at all, and a read never
    /// stalls the execs that are recording meanwhile.
    pub fn read(&self, namespace: &Namespace, sandbox: &SandboxName) -> Vec<Value> {
        let Some((path, rotated)) = self.paths(namespace) else {
            return Vec::new();
        };
        let mut entries = std::collections::VecDeque::new();
        for path in [rotated, path] {
            let Ok(file) = fs::File::open(&path) else {
                continue;
            };
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["sandbox"] == json!(sandbox.as_str()) {
                    if entries.len() == MAX_ENTRIES {
                        entries.pop_front();
                    }
                    entries.push_back(entry);
                }
            }
        }
        entries.into_iter().collect()
    }

    /// The history of the sandbox that exists now under that name: entries from its
    /// last `created` on, so a name used again does not inherit an old sandbox's past.
    pub fn read_current(&self, namespace: &Namespace, sandbox: &SandboxName) -> Vec<Value> {
        let mut entries = self.read(namespace, sandbox);
        if let Some(start) = entries.iter().rposition(|e| e["event"] == json!("created")) {
            entries.drain(..start);
        }
        entries
    }
}

/// Most bytes of a command kept in one history entry: a command's arguments may be
/// up to a megabyte, and history is for reading, not for replaying.
const MAX_COMMAND_BYTES: usize = 1024;

/// The command as recorded: whole arguments while they fit, then a marker.
fn shortened(command: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut used = 0;
    for argument in command {
        if used + argument.len() > MAX_COMMAND_BYTES {
            kept.push(format!(
                "... ({} more bytes)",
                command.iter().map(String::len).sum::<usize>() - used
            ));
            break;
        }
        used += argument.len();
        kept.push(argument.clone());
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Status;
    use std::time::Duration;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ak-history-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_and_reads_back_per_sandbox() {
        let dir = temp_dir("basic");
        let namespace = Namespace::parse("ns").unwrap();
        let history = History::new(Some(dir.clone()), 1 << 20);
        let one = SandboxName::parse("one").unwrap();
        let two = SandboxName::parse("two").unwrap();
        history.event(&namespace, &one, "created");
        history.event(&namespace, &two, "created");
        let result = CommandResult {
            output: Default::default(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code: Some(3),
            signal: None,
            status: Status::Exited,
            duration: Duration::from_millis(12),
            message: None,
        };
        history.exec(&namespace, &one, &["ls".to_string()], &result);
        let entries = history.read(&namespace, &one);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["event"], json!("created"));
        assert_eq!(entries[1]["command"], json!(["ls"]));
        assert_eq!(entries[1]["exit_code"], json!(3));
        assert!(entries[1]["time"].as_str().unwrap().ends_with('Z'));
        // A new History on the same directory (a restart) sees the same entries.
        let again = History::new(Some(dir.clone()), 1 << 20);
        assert_eq!(again.read(&namespace, &one).len(), 2);
        // Another namespace's sandbox of the same name has a history of its own.
        let other = Namespace::parse("other").unwrap();
        assert!(again.read(&other, &one).is_empty());
        again.event(&other, &one, "created");
        assert_eq!(again.read(&other, &one).len(), 1);
        assert_eq!(again.read(&namespace, &one).len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_name_used_again_starts_a_new_history() {
        let dir = temp_dir("again");
        let history = History::new(Some(dir.clone()), 1 << 20);
        let namespace = Namespace::parse("ns").unwrap();
        let name = SandboxName::parse("re").unwrap();
        for event in ["created", "stopped", "removed", "created", "started"] {
            history.event(&namespace, &name, event);
        }
        let events = |entries: Vec<Value>| -> Vec<String> {
            entries
                .iter()
                .map(|e| e["event"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            events(history.read_current(&namespace, &name)),
            ["created", "started"]
        );
        assert_eq!(events(history.read(&namespace, &name)).len(), 5);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn long_commands_are_shortened() {
        let long = vec!["sh".to_string(), "-c".to_string(), "x".repeat(5000)];
        assert_eq!(shortened(&long), ["sh", "-c", "... (5000 more bytes)"]);
        let short = vec!["ls".to_string(), "-l".to_string()];
        assert_eq!(shortened(&short), short);
    }

    #[test]
    fn stays_within_twice_its_limit() {
        let dir = temp_dir("bound");
        let namespace = Namespace::parse("ns").unwrap();
        let history = History::new(Some(dir.clone()), 2000);
        let name = SandboxName::parse("busy").unwrap();
        for _ in 0..200 {
            history.event(&namespace, &name, "started");
        }
        let total: u64 = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 4000, "{total}");
        let entries = history.read(&namespace, &name);
        assert!(!entries.is_empty() && entries.len() < 200);
        let _ = fs::remove_dir_all(&dir);
    }
}
