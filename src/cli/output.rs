//! What client commands print: streamed output, tables, `key  value` lines, all
//! computed from the API's `data` alone.

use std::io::{self, Write};

use serde_json::Value;

use crate::engine::frames::StreamKind;
use crate::exec::{Keep, Observer};

/// Writes a command's output to our own stdout and stderr as it arrives.
#[derive(Default)]
pub(super) struct Console {
    pub(super) broken_pipe: bool,
}

impl Observer for Console {
    fn output(&mut self, kind: StreamKind, bytes: &[u8]) -> io::Result<()> {
        // Flushed at once: output must arrive as it is produced, not when a buffer fills.
        let written = match kind {
            StreamKind::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            StreamKind::Stderr => {
                let mut err = io::stderr().lock();
                err.write_all(bytes).and_then(|()| err.flush())
            }
            StreamKind::Stdin => Ok(()),
        };
        if let Err(error) = &written {
            self.broken_pipe = error.kind() == io::ErrorKind::BrokenPipe;
        }
        written
    }

    /// Printed as it came: the result keeps none of it.
    fn keep(&self) -> Keep {
        Keep::Nothing
    }
}

/// `sandbox list`: an aligned table, one sandbox a line, header first.
pub(super) fn sandbox_table(data: &Value) -> String {
    let columns = [
        ("NAME", "name"),
        ("STATUS", "status"),
        ("IMAGE", "image"),
        ("PROFILE", "profile"),
        ("CREATED", "created_at"),
    ];
    let mut rows = vec![columns.iter().map(|(title, _)| title.to_string()).collect()];
    for sandbox in data.as_array().into_iter().flatten() {
        rows.push(
            columns
                .iter()
                .map(|(_, key)| scalar(&sandbox[*key]))
                .collect(),
        );
    }
    table(&rows)
}

pub(super) fn snapshot_table(data: &Value) -> String {
    let columns = [
        ("NAME", "name"),
        ("SANDBOX", "sandbox"),
        ("BASE IMAGE", "base_image"),
        ("CREATED", "created_at"),
        ("SIZE", "size_bytes"),
    ];
    let mut rows = vec![columns.iter().map(|(title, _)| title.to_string()).collect()];
    for snapshot in data.as_array().into_iter().flatten() {
        rows.push(
            columns
                .iter()
                .map(|(_, key)| scalar(&snapshot[*key]))
                .collect(),
        );
    }
    table(&rows)
}

/// Columns padded to their widest cell plus two spaces; the last is not padded.
pub(super) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 < columns {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            } else {
                line.push_str(cell);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `sandbox info`: `key  value` lines, the usual fields first, nested ones dotted.
pub(super) fn sandbox_fields(data: &Value) -> String {
    let first = [
        "name",
        "id",
        "status",
        "backend",
        "image",
        "profile",
        "created_at",
        "memory_mb",
        "vcpus",
    ];
    let mut pairs = Vec::new();
    flatten("", data, &mut pairs);
    pairs.sort_by_key(|(key, _)| {
        (
            first.iter().position(|f| f == key).unwrap_or(first.len()),
            key.clone(),
        )
    });
    let rows: Vec<Vec<String>> = pairs.into_iter().map(|(k, v)| vec![k, v]).collect();
    table(&rows)
}

pub(super) fn flatten(prefix: &str, value: &Value, pairs: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, pairs);
            }
        }
        other => pairs.push((prefix.to_string(), scalar(other))),
    }
}

/// A JSON scalar as a table cell: strings bare, null as `-`.
pub(super) fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
