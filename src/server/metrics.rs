//! `GET /metrics`: what the server has answered and how fast, in the Prometheus text
//! format (version 0.0.4), with the pool's, the sandboxes' and the engine's state read
//! at scrape time.
//!
//! Invariants: every label value is from a bounded set: route templates (never a raw
//! path), the methods we route (any other is `other`), three-digit statuses, and the
//! pool's keys (an image a request named can be one, but there are at most
//! `containers::pool::MAX_KEYS`), so the series are bounded; counters only grow.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 13] = [
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Counts per bucket (not cumulative), and one past the last bound.
    counts: [u64; BUCKETS.len() + 1],
    sum_seconds: f64,
}

/// (method, route template, status) → answers; (method, route template) → latency.
#[derive(Debug, Default)]
pub struct Metrics {
    answered: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    latency: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    /// Answers that were the engine's failure (a 502 or 503 naming it).
    pub engine_errors: AtomicU64,
}

/// The methods we route; any other is counted as `other`.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "other",
    }
}

impl Metrics {
    /// Counts one answer. `route` is the route's template (`/sandboxes/{name}/exec`), or
    /// `None` for a request no route took.
    pub fn record(&self, method: &str, route: Option<&'static str>, status: u16, took: Duration) {
        let (method, route) = (method_label(method), route.unwrap_or("unrouted"));
        // A status is three digits: at most 900 of them, whatever a handler returns.
        let status = status.clamp(100, 999);
        *lock(&self.answered)
            .entry((method, route, status))
            .or_default() += 1;
        let seconds = took.as_secs_f64();
        let mut latency = lock(&self.latency);
        let histogram = latency.entry((method, route)).or_default();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        histogram.counts[bucket] += 1;
        histogram.sum_seconds += seconds;
    }

    /// The text of a scrape: these counters, then `state`'s gauges (see `State`).
    pub fn render(&self, state: &State) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "agentkernel_requests_total",
            "counter",
            "Requests answered, by method, route and status.",
        );
        for ((method, route, status), count) in lock(&self.answered).iter() {
            let _ = writeln!(
                out,
                "agentkernel_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        header(
            &mut out,
            "agentkernel_request_duration_seconds",
            "histogram",
            "Time from a request's head to its answer (to a stream's end for streams).",
        );
        for ((method, route), histogram) in lock(&self.latency).iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\"");
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(histogram.counts) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "agentkernel_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += histogram.counts[BUCKETS.len()];
            let _ = writeln!(
                out,
                "agentkernel_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "agentkernel_request_duration_seconds_sum{{{labels}}} {}",
                histogram.sum_seconds
            );
            let _ = writeln!(
                out,
                "agentkernel_request_duration_seconds_count{{{labels}}} {cumulative}"
            );
        }
        let counters = [
            (
                "agentkernel_engine_errors_total",
                "Answers that were the Docker Engine's failure (502 or 503 naming it).",
                self.engine_errors.load(Ordering::Relaxed),
            ),
            (
                "agentkernel_sandboxes_expired_total",
                "Sandboxes removed for their ttl or idle timeout.",
                state.expired,
            ),
            (
                "agentkernel_pool_reaped_total",
                "Warm containers removed after their run, or as surplus.",
                state.pool["reaped"].as_u64().unwrap_or(0),
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "agentkernel_engine_up",
            "gauge",
            "Whether the Docker Engine answered the last look (1) or not (0).",
        );
        let _ = writeln!(out, "agentkernel_engine_up {}", u8::from(state.engine_up));
        header(
            &mut out,
            "agentkernel_sandboxes",
            "gauge",
            "Sandboxes of the namespaces this server serves (its own and its tenants'), by status (absent when the engine does not answer).",
        );
        if let Some(by_status) = &state.sandboxes {
            for status in ["running", "paused", "stopped"] {
                let count = by_status.get(status).copied().unwrap_or(0);
                let _ = writeln!(out, "agentkernel_sandboxes{{status=\"{status}\"}} {count}");
            }
        }
        let per_key = [
            ("ready", "gauge", "Warm containers ready, per pool key."),
            (
                "creating",
                "gauge",
                "Warm containers being made, per pool key.",
            ),
            (
                "in_use",
                "gauge",
                "Warm containers running a command, per pool key.",
            ),
            (
                "target",
                "gauge",
                "How many warm containers the pool keeps, per key.",
            ),
            (
                "fallbacks",
                "counter",
                "Fast runs that found no warm container and started a cold one, per key.",
            ),
            ("created", "counter", "Warm containers made, per pool key."),
            (
                "failed",
                "counter",
                "Warm containers that could not be made, per key.",
            ),
        ];
        let keys = state.pool["keys"].as_array().cloned().unwrap_or_default();
        for (field, kind, help) in per_key {
            let name = if kind == "counter" {
                format!("agentkernel_pool_{field}_total")
            } else {
                format!("agentkernel_pool_{field}")
            };
            header(&mut out, &name, kind, help);
            for key in &keys {
                let _ = writeln!(
                    out,
                    "{name}{{image=\"{}\",profile=\"{}\",network=\"{}\",runtime=\"{}\"}} {}",
                    escape(key["image"].as_str().unwrap_or_default()),
                    escape(key["profile"].as_str().unwrap_or_default()),
                    escape(key["network"].as_str().unwrap_or_default()),
                    escape(key["runtime"].as_str().unwrap_or("default")),
                    key[field].as_u64().unwrap_or(0)
                );
            }
        }
        let gauges = [
            (
                "agentkernel_connections_open",
                "Client connections open.",
                state.connections,
            ),
            (
                "agentkernel_output_memory_used_bytes",
                "Command output and file content held for answers in progress.",
                state.output_memory_used,
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

/// What a scrape reads besides the counters.
#[derive(Debug, Default)]
pub struct State {
    /// `Pool::stats`.
    pub pool: Value,
    pub engine_up: bool,
    /// Sandboxes by status, if the engine answered.
    pub sandboxes: Option<BTreeMap<&'static str, u64>>,
    pub expired: u64,
    pub connections: u64,
    pub output_memory_used: u64,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_scrape_is_prometheus_text_with_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record("POST", Some("/run"), 200, Duration::from_millis(3));
        metrics.record("POST", Some("/run"), 200, Duration::from_millis(40));
        metrics.record("POST", Some("/run"), 400, Duration::from_secs(100));
        metrics.record("BREW", None, 404, Duration::from_millis(1));
        metrics.engine_errors.fetch_add(2, Ordering::Relaxed);
        let state = State {
            pool: json!({"reaped": 7, "keys": [{"image": "a\"b", "profile": "moderate", "network": "public",
                "ready": 2, "creating": 1, "in_use": 0, "target": 3, "fallbacks": 4,
                "created": 9, "failed": 0}]}),
            engine_up: true,
            sandboxes: Some(BTreeMap::from([("running", 2)])),
            expired: 1,
            connections: 3,
            output_memory_used: 0,
        };
        let text = metrics.render(&state);
        for line in [
            "agentkernel_requests_total{method=\"POST\",route=\"/run\",status=\"200\"} 2",
            "agentkernel_requests_total{method=\"POST\",route=\"/run\",status=\"400\"} 1",
            "agentkernel_requests_total{method=\"other\",route=\"unrouted\",status=\"404\"} 1",
            "agentkernel_request_duration_seconds_bucket{method=\"POST\",route=\"/run\",le=\"0.002\"} 0",
            "agentkernel_request_duration_seconds_bucket{method=\"POST\",route=\"/run\",le=\"0.005\"} 1",
            "agentkernel_request_duration_seconds_bucket{method=\"POST\",route=\"/run\",le=\"0.05\"} 2",
            "agentkernel_request_duration_seconds_bucket{method=\"POST\",route=\"/run\",le=\"30\"} 2",
            "agentkernel_request_duration_seconds_bucket{method=\"POST\",route=\"/run\",le=\"+Inf\"} 3",
            "agentkernel_request_duration_seconds_count{method=\"POST\",route=\"/run\"} 3",
            "agentkernel_engine_errors_total 2",
            "agentkernel_sandboxes_expired_total 1",
            "agentkernel_pool_reaped_total 7",
            "agentkernel_engine_up 1",
            "agentkernel_sandboxes{status=\"running\"} 2",
            "agentkernel_sandboxes{status=\"paused\"} 0",
            "agentkernel_pool_ready{image=\"a\\\"b\",profile=\"moderate\",network=\"public\",runtime=\"default\"} 2",
            "agentkernel_pool_fallbacks_total{image=\"a\\\"b\",profile=\"moderate\",network=\"public\",runtime=\"default\"} 4",
            "# TYPE agentkernel_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit_once(' ').expect("a value").1;
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
