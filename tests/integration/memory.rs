//! Output memory: whatever commands print, a request keeps at most its output budget
//! (`--max-request-output-bytes`, shared by a batch's commands), everything held for
//! answers stays within the output memory (`--max-output-memory-bytes`, 503 past it),
//! streams keep nothing, detached logs and file reads are bounded the same way; and the
//! server's peak RSS (measured from after start-up) stays under 64 MiB throughout.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, exclusive, Options, Server};

const MIB: u64 = 1024 * 1024;
/// The bound on the server's peak RSS (VmHWM) under endless output.
const PEAK_RSS_KIB: u64 = 64 * 1024;

fn output_memory_used(server: &Server) -> u64 {
    server.get("/health").1["output_memory"]["used"]
        .as_u64()
        .expect("health reports output memory")
}

fn assert_all_given_back(server: &Server) {
    assert!(
        eventually(Duration::from_secs(5), || output_memory_used(server) == 0),
        "output memory still held: {}",
        server.get("/health").1["output_memory"]
    );
}

fn text_len(value: &Value) -> u64 {
    value.as_str().map_or(0, |text| text.len() as u64)
}

#[test]
fn a_batch_of_endless_printers_shares_one_budget_and_little_memory() {
    // Endless printers keep the cores busy.
    let _serial = exclusive();
    // Sixteen of the 64 at once (four by default): more printers held at a time, and
    // a quarter of the rounds of cold starts.
    let server = Server::start_with(Options {
        args: ["--batch-concurrency", "16"].map(String::from).to_vec(),
        ..Options::default()
    });
    server.reset_peak_rss();
    // Large writes: a command fills its 1 MiB cap in a fraction of its half second, so
    // the budget runs out early in the batch whatever the machine's load.
    let printer = "tr '\\0' y </dev/zero";
    let entry = json!({"command": ["sh", "-c", printer], "timeout_ms": 500});
    let body = json!({ "commands": vec![entry; 64] }).to_string();
    let (status, answer) = server.post("/batch/run", &body);
    assert_eq!(status, 200, "{}", answer["error"]);
    let results = answer["data"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 64);
    let mut kept = 0;
    let mut cut_by_budget = 0;
    for result in results {
        assert_eq!(result["error"], Value::Null, "{}", result["error"]);
        assert_eq!(result["status"], json!("timeout"));
        let stdout = text_len(&result["stdout"]);
        assert!(stdout <= MIB, "a command's own cap holds: {stdout}");
        assert_eq!(
            result["output"], result["stdout"],
            "only stdout was printed"
        );
        assert_eq!(result["stderr"], json!(""));
        assert_eq!(result["truncated"]["stderr"], Value::Null);
        let cut = &result["truncated"]["stdout"];
        if cut == &json!("request_budget") {
            cut_by_budget += 1;
        } else if cut == &json!("max_output_bytes") {
            assert_eq!(stdout, MIB);
        } else {
            // A printer that a busy machine let print no more than its cap in its
            // time (what the stub had relayed by the deadline: output still on its way
            // when the deadline struck is not part of a timed-out result).
            assert_eq!(cut, &Value::Null);
            assert!(stdout <= MIB);
        }
        kept += stdout;
    }
    // One 16 MiB budget for all 64: it ran out (and once out, it stays out: nothing is
    // given back while the batch runs), so it was used to its last few bytes.
    assert!(cut_by_budget >= 1, "the budget never ran out");
    assert!(
        kept <= 16 * MIB && kept > 15 * MIB,
        "{kept} bytes kept in all"
    );
    let rss = server.peak_rss_kib();
    assert!(
        rss > 0 && rss < PEAK_RSS_KIB,
        "server peak RSS {rss} KiB for a batch of 64 endless printers"
    );
    eprintln!("batch of 64 `yes`: server peak RSS {} MiB", rss / 1024);
    assert_all_given_back(&server);
    server.finish();
}

/// Posts to `/run/stream` and reads the events as they come, keeping only the count of
/// output bytes and the `done` event.
fn stream_to_the_end(port: u16, body: &str) -> (u64, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /run/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let (mut name, mut output) = (String::new(), 0);
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let text = line.trim_end();
        if let Some(event) = text.strip_prefix("event: ") {
            name = event.to_string();
        } else if let Some(data) = text.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap();
            match name.as_str() {
                "output" => output += text_len(&data["data"]),
                "done" | "error" => return (output, data),
                _ => {}
            }
        }
        line.clear();
    }
    panic!("the stream ended without done or error")
}

#[test]
fn endless_streams_and_runs_at_once_keep_memory_flat() {
    // Endless printers keep the cores busy.
    let _serial = exclusive();
    let server = Server::start_with(Options {
        args: ["--workers", "16"].map(String::from).to_vec(),
        ..Options::default()
    });
    let port = server.port;
    let url = server.url("/run");
    server.reset_peak_rss();
    // Streams may ask for the largest cap: they keep nothing of it. The printer is
    // `yes` with large writes: busybox's `yes` writes two bytes at a time, each its own
    // record and event, so eight such streams carry little in their time, and on two
    // cores leave a long tail of records behind the exit record at the deadline; the
    // runs fill their 1 MiB caps early, whatever the load.
    let stream_body = r#"{"command":["sh","-c","tr '\\0' y </dev/zero"],"timeout_ms":4000,"max_output_bytes":16777216}"#;
    let run_body = r#"{"command":["sh","-c","tr '\\0' y </dev/zero"],"timeout_ms":4000}"#;
    let (streams, runs) = std::thread::scope(|scope| {
        let streams: Vec<_> = (0..8)
            .map(|_| scope.spawn(move || stream_to_the_end(port, stream_body)))
            .collect();
        let runs: Vec<_> = (0..8)
            .map(|_| {
                let url = &url;
                scope.spawn(move || crate::harness::request_url("POST", url, Some(run_body), &[]))
            })
            .collect();
        (
            streams
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect::<Vec<_>>(),
            runs.into_iter()
                .map(|handle| handle.join().unwrap())
                .collect::<Vec<_>>(),
        )
    });
    // Sixteen endless printers share two cores here: how much each stream carries in
    // its time depends on the machine, but never more than its cap.
    let carried: u64 = streams.iter().map(|(output, _)| output).sum();
    for (output, done) in &streams {
        // Sixteen endless printers on two cores can starve a stub past its backstop
        // after the deadline kill: then the stream ends with an honest error event
        // (no exit record in time) instead of `timeout`. Either way it ended, and the
        // memory bound below is what this test is about.
        if done["status"] != json!("timeout") {
            let message = done["message"].as_str().unwrap_or_default();
            assert!(message.contains("no exit record"), "{done}");
            continue;
        }
        assert!(
            *output <= 16 * MIB,
            "a stream carries up to its cap: {output}"
        );
        let cut = if *output == 16 * MIB {
            json!("max_output_bytes")
        } else {
            Value::Null
        };
        assert_eq!(done["truncated"]["stdout"], cut, "{output} bytes carried");
    }
    assert!(carried > 8 * MIB, "{carried} bytes carried by all streams");
    for (status, body) in &runs {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(text_len(&body["data"]["stdout"]), MIB);
        assert_eq!(
            body["data"]["truncated"]["stdout"],
            json!("max_output_bytes")
        );
    }
    let rss = server.peak_rss_kib();
    assert!(
        rss > 0 && rss < PEAK_RSS_KIB,
        "server peak RSS {rss} KiB for 8 endless streams and 8 endless runs"
    );
    eprintln!(
        "8 streams ({} MiB carried) and 8 runs of `yes`: server peak RSS {} MiB",
        carried / MIB,
        rss / 1024
    );
    assert_all_given_back(&server);
    server.finish();
}

#[test]
fn concurrent_requests_cannot_multiply_the_output_memory() {
    // Endless printers keep the cores busy.
    let _serial = exclusive();
    // Eight runs that each fill the largest cap on both streams, at once, with the
    // defaults: 16 MiB kept per request, 48 MiB over all of them.
    let server = Server::start();
    let url = server.url("/run");
    server.reset_peak_rss();
    let script =
        "tr '\\0' o </dev/zero | head -c 20000000; tr '\\0' e </dev/zero | head -c 20000000 >&2";
    let body = json!({"command": ["sh", "-c", script], "max_output_bytes": 16777216,
                      "timeout_ms": 60000})
    .to_string();
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| crate::harness::request_url("POST", &url, Some(&body), &[])))
            .collect();
        runs.into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    let served: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| &body["data"])
        .collect();
    let refused = answers.iter().filter(|(status, _)| *status == 503).count();
    assert_eq!(served.len() + refused, 8, "only 200s and 503s");
    assert!(
        !served.is_empty() && refused > 0,
        "{} served, {refused} refused",
        served.len()
    );
    for data in served {
        // The budget ends 8 bytes (the run's bookkeeping) before stdout's cap.
        assert_eq!(
            text_len(&data["stdout"]),
            16 * MIB - agentkernel::exec::RUN_BYTES
        );
        assert_eq!(data["stderr"], json!(""));
        assert_eq!(
            data["truncated"],
            json!({"stdout": "request_budget", "stderr": "request_budget"})
        );
    }
    let rss = server.peak_rss_kib();
    assert!(
        rss > 0 && rss < PEAK_RSS_KIB,
        "server peak RSS {rss} KiB for 8 requests filling their budgets at once"
    );
    eprintln!(
        "8 runs filling 16 MiB at once ({refused} refused): server peak RSS {} MiB",
        rss / 1024
    );
    assert_all_given_back(&server);
    server.finish();
}

#[test]
fn the_output_memory_is_shared_by_every_request_and_refuses_past_it() {
    // Endless printers keep the cores busy.
    let _serial = exclusive();
    // A small server: 10 MiB of output memory, as much for one request, 1 MiB files.
    let server = Server::start_with(Options {
        args: [
            "--max-output-memory-bytes",
            "10485760",
            "--max-request-output-bytes",
            "10485760",
            "--max-file-bytes",
            "1048576",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    });
    assert_eq!(
        server.get("/health").1["output_memory"],
        json!({"used": 0, "max": 10 * MIB})
    );
    assert_eq!(server.post("/sandboxes", r#"{"name":"mem"}"#).0, 201);
    let write = r#"{"files":{"/root/f.txt":"on the root","/tmp/f.txt":"on the tmpfs"}}"#;
    assert_eq!(server.post("/sandboxes/mem/files", write).0, 200);
    let (status, body) = server.post(
        "/sandboxes/mem/exec/detach",
        r#"{"command":["sh","-c","echo detached"]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let logs = format!(
        "/sandboxes/mem/exec/detached/{}/logs",
        body["data"]["id"].as_str().unwrap()
    );

    // One exec that may keep 4 MiB per stream takes all of it while it runs: its need
    // (both streams and room for their interleaving) is more than a request's budget.
    let url = server.url("/sandboxes/mem/exec");
    let holder = std::thread::spawn(move || {
        let body = r#"{"command":["sleep","8"],"max_output_bytes":4194304}"#;
        crate::harness::request_url("POST", &url, Some(body), &[])
    });
    assert!(
        eventually(Duration::from_secs(10), || output_memory_used(&server)
            == 10 * MIB),
        "the exec's reservation did not show"
    );
    let refused = |(status, body): (u16, Value), what: &str| {
        assert_eq!(status, 503, "{what}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("--max-output-memory-bytes"),
            "{what}: {message}"
        );
    };
    refused(server.post("/run", r#"{"command":["echo","hi"]}"#), "a run");
    refused(
        server.post("/run/stream", r#"{"command":["echo","hi"]}"#),
        "a stream",
    );
    refused(
        server.post("/batch/run", r#"{"commands":[{"command":["true"]}]}"#),
        "a batch",
    );
    refused(
        server.get("/sandboxes/mem/files/root/f.txt"),
        "a file read through the archive",
    );
    refused(
        server.get("/sandboxes/mem/files/tmp/f.txt"),
        "a file read through the stub",
    );
    refused(server.get(&logs), "detached logs");

    let (status, body) = holder.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_all_given_back(&server);
    // With the room back, all of them work.
    let (status, body) = server.post("/run", r#"{"command":["echo","hi"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["stdout"], json!("hi\n"));
    let (status, body) = server.get("/sandboxes/mem/files/root/f.txt");
    assert_eq!(
        (status, &body["data"]["content"]),
        (200, &json!("on the root"))
    );
    let (status, body) = server.get("/sandboxes/mem/files/tmp/f.txt");
    assert_eq!(
        (status, &body["data"]["content"]),
        (200, &json!("on the tmpfs"))
    );
    let (status, body) = server.get(&logs);
    assert_eq!(
        (status, &body["data"]["stdout"]),
        (200, &json!("detached\n"))
    );
    // A run that prints more than the request's budget is cut by it: stdout whole,
    // stderr up to the budget's end.
    let script =
        "tr '\\0' o </dev/zero | head -c 6000000; tr '\\0' e </dev/zero | head -c 6000000 >&2";
    let body = json!({"command": ["sh", "-c", script], "max_output_bytes": 8388608});
    let (status, body) = server.post("/run", &body.to_string());
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["status"], json!("output_truncated"));
    assert_eq!(
        data["truncated"],
        json!({"stdout": null, "stderr": "request_budget"})
    );
    assert_eq!(text_len(&data["stdout"]), 6_000_000);
    let stderr = text_len(&data["stderr"]);
    assert!(
        stderr <= 10 * MIB - 6_000_000 && stderr > 4_000_000,
        "{stderr}"
    );
    assert_eq!(text_len(&data["output"]), 6_000_000 + stderr);
    assert_all_given_back(&server);
    assert_eq!(server.delete("/sandboxes/mem").0, 200);
    server.finish();
}

#[test]
fn detached_logs_larger_than_the_cap_are_cut_never_a_502() {
    // Endless printers keep the cores busy.
    let _serial = exclusive();
    let server = Server::start();
    assert_eq!(server.post("/sandboxes", r#"{"name":"logs"}"#).0, 201);
    // 3 MB of NUL bytes on stdout (six bytes each in JSON), 3 MB of text on stderr.
    server.reset_peak_rss();
    let (status, body) = server.post(
        "/sandboxes/logs/exec/detach",
        r#"{"command":["sh","-c","head -c 3000000 /dev/zero; yes | head -c 3000000 >&2"]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let path = format!(
        "/sandboxes/logs/exec/detached/{}",
        body["data"]["id"].as_str().unwrap()
    );
    assert!(eventually(Duration::from_secs(20), || {
        server.get(&path).1["data"]["status"] == json!("completed")
    }));
    let (status, body) = server.get(&format!("{path}/logs"));
    assert_eq!(status, 200, "{}", body["error"]);
    let logs = &body["data"];
    // The newest bytes: a megabyte of text, and as many NULs as fit 2 MiB escaped.
    let stdout = logs["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), 2 * MIB as usize / 6);
    assert!(stdout.bytes().all(|byte| byte == 0));
    let stderr = logs["stderr"].as_str().unwrap();
    assert_eq!(stderr.len() as u64, MIB);
    assert!(stderr.ends_with("y\ny\n"));
    assert_eq!(
        logs["truncated"],
        json!({"stdout": "max_log_bytes", "stderr": "max_log_bytes"})
    );
    let (status, body) = server.get(&format!("{path}/logs?stream=stderr"));
    assert_eq!(status, 200);
    assert_eq!(body["data"]["stdout"], Value::Null);
    assert_eq!(
        body["data"]["truncated"],
        json!({"stdout": null, "stderr": "max_log_bytes"})
    );
    let rss = server.peak_rss_kib();
    assert!(rss < PEAK_RSS_KIB, "server peak RSS {rss} KiB");
    eprintln!("detached logs of 6 MB: server peak RSS {} MiB", rss / 1024);
    assert_all_given_back(&server);
    assert_eq!(server.delete("/sandboxes/logs").0, 200);
    server.finish();
}
