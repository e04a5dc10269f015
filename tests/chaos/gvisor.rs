//! gVisor (`runsc`): the server against a private engine that has it registered, as it
//! runs on these machines (`--platform=ptrace --network=none --file-access=shared`).
//! What works under runc works under runsc: the stub, runs (output, exit codes, stdin,
//! timeouts that kill the whole tree), streams, every profile, sandboxes (execs, files,
//! stop and start), disk quotas; the network is `none` (gVisor's own stack is off) and
//! another policy is a 400. The same server runs runc beside it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::engine::PrivateEngine;
use crate::harness::{Options, Server};

/// A server of the engine's, whose containers run under `runsc` unless a request
/// names another runtime.
fn serve(engine: &PrivateEngine) -> Server {
    let mut server = Server::start_with(Options {
        // The private engine has no bridge (nor packet filter) of its own: runc
        // containers beside gVisor's get no network either.
        args: [
            "--default-runtime",
            "runsc",
            "--default-network",
            "none",
            // runc beside it, for the comparisons (by default a gVisor server allows
            // no weaker runtime).
            "--runtimes",
            "runsc,runc",
        ]
        .map(String::from)
        .to_vec(),
        env: engine.server_env(),
        ..Options::default()
    });
    // Its containers are the private engine's: they go with it.
    server.cleanup = false;
    server
}

fn run(server: &Server, body: Value) -> Value {
    let (status, answer) = server.post("/run", &body.to_string());
    assert_eq!(status, 200, "{body}: {answer}");
    answer["data"].clone()
}

fn exec(server: &Server, sandbox: &str, body: Value) -> Value {
    let (status, answer) = server.post(&format!("/sandboxes/{sandbox}/exec"), &body.to_string());
    assert_eq!(status, 200, "{body}: {answer}");
    answer["data"].clone()
}

/// gVisor says so in the kernel log it makes up.
const WHICH_KERNEL: &str = "dmesg 2>/dev/null | grep -q gVisor && echo gvisor || echo host";

#[test]
fn everything_runs_under_gvisor_as_under_runc() {
    let engine = PrivateEngine::start_with_runsc();
    let server = serve(&engine);

    // The engine's runtimes, and the server's default.
    let (_, answer) = server.get("/backends");
    let backend = &answer["data"]["backends"][0];
    let runtimes = backend["runtimes"].to_string();
    assert!(
        runtimes.contains("\"runsc\"") && runtimes.contains("\"runc\""),
        "{answer}"
    );
    assert_eq!(backend["default_runtime"], "runsc", "{answer}");

    // Runs: under gVisor by default, under runc when asked, on the same server.
    let under = |runtime: Option<&str>| {
        let mut body = json!({"command": ["sh", "-c", WHICH_KERNEL]});
        if let Some(runtime) = runtime {
            body["runtime"] = json!(runtime);
        }
        run(&server, body)["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(under(None), "gvisor\n");
    assert_eq!(under(Some("runc")), "host\n");

    // Output, exit codes, stdin, for every profile (each with its user and root).
    for (profile, uid) in [
        ("permissive", "0"),
        ("moderate", "0"),
        ("restrictive", "65534"),
    ] {
        let result = run(
            &server,
            json!({
                "profile": profile,
                "command": ["sh", "-c", "id -u; cat; echo err >&2; exit 3"],
                "stdin": "in\n",
            }),
        );
        assert_eq!(
            result["stdout"],
            format!("{uid}\nin\n"),
            "{profile}: {result}"
        );
        assert_eq!(result["stderr"], "err\n", "{profile}: {result}");
        assert_eq!(result["exit_code"], 3, "{profile}: {result}");
        assert_eq!(result["status"], "exited", "{profile}: {result}");
        // A command that forks (gVisor's own threads count against the pids limit).
        let forks = run(
            &server,
            json!({"profile": profile, "command": ["sh", "-c", "for i in 1 2 3 4 5; do (true) & done; wait; echo ok"]}),
        );
        assert_eq!(forks["stdout"], "ok\n", "{profile}: {forks}");
    }
    let read_only = run(
        &server,
        json!({"profile": "restrictive", "command": ["sh", "-c", "touch /x 2>/dev/null || echo refused"]}),
    );
    assert_eq!(read_only["stdout"], "refused\n", "{read_only}");

    // A timeout kills the whole tree, and the answer comes at the deadline.
    let started = Instant::now();
    let result = run(
        &server,
        json!({"command": ["sh", "-c", "setsid sleep 60 & sleep 60"], "timeout_ms": 1000}),
    );
    assert_eq!(result["status"], "timeout", "{result}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Streams.
    let events = ureq::post(&server.url("/run/stream"))
        .send_string(&json!({"command": ["sh", "-c", "echo one; echo two >&2"]}).to_string())
        .expect("stream")
        .into_string()
        .unwrap();
    for needle in ["event: started", "\"one\\n\"", "\"two\\n\"", "event: done"] {
        assert!(events.contains(needle), "{needle} in {events}");
    }

    // The network: none, and only none.
    let (status, answer) = server.post(
        "/run",
        &json!({"command": ["true"], "network": "public"}).to_string(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("runsc"),
        "{answer}"
    );
    let interfaces = run(
        &server,
        json!({"command": ["sh", "-c", "ls /sys/class/net 2>/dev/null; ip -o link 2>/dev/null | wc -l"]}),
    );
    assert!(
        !interfaces["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("eth0"),
        "{interfaces}"
    );

    // Disk quotas hold (its root filesystem is the engine's layer, through gVisor's
    // gofer).
    let full = run(
        &server,
        json!({"command": ["dd", "if=/dev/zero", "of=/big", "bs=1M", "count=100"], "disk_mb": 32, "timeout_ms": 120000}),
    );
    assert_eq!(full["status"], "disk_quota_exceeded", "{full}");

    // A sandbox: execs, files (on its root and its /tmp), stop and start.
    let (status, answer) = server.post("/sandboxes", r#"{"name":"g"}"#);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["runtime"], "runsc", "{answer}");
    assert_eq!(answer["data"]["network"], "none", "{answer}");
    assert_eq!(
        exec(&server, "g", json!({"command": ["sh", "-c", WHICH_KERNEL]}))["stdout"],
        "gvisor\n"
    );
    for path in ["/root/a.txt", "/tmp/b.txt"] {
        let (status, answer) = server.request(
            "PUT",
            &format!("/sandboxes/g/files{path}"),
            Some(&json!({"content": "hello\n"}).to_string()),
            &[],
        );
        assert_eq!(status, 200, "{path}: {answer}");
        let result = exec(&server, "g", json!({"command": ["cat", path]}));
        assert_eq!(result["stdout"], "hello\n", "{path}: {result}");
        let (status, answer) = server.get(&format!("/sandboxes/g/files{path}"));
        assert_eq!(
            (status, &answer["data"]["content"]),
            (200, &json!("hello\n")),
            "{path}"
        );
    }
    let started = Instant::now();
    let result = exec(
        &server,
        "g",
        json!({"command": ["sh", "-c", "sleep 60 & sleep 60"], "timeout_ms": 1000}),
    );
    assert_eq!(result["status"], "timeout", "{result}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let left = exec(
        &server,
        "g",
        json!({"command": ["sh", "-c", "ps | grep -c '[s]leep 60'"]}),
    );
    assert_eq!(left["stdout"], "0\n", "{left}");
    for step in ["stop", "start"] {
        let (status, answer) = server.post(&format!("/sandboxes/g/{step}"), "");
        assert_eq!(status, 200, "{step}: {answer}");
    }
    let result = exec(&server, "g", json!({"command": ["cat", "/root/a.txt"]}));
    assert_eq!(result["stdout"], "hello\n", "{result}");
    // Its limits read back as asked (gVisor's threads are the server's addition), and
    // it is left running as it is: the server's looks (disks every 30 s) neither stop
    // nor restart it (its /tmp, a tmpfs, would be empty after a restart).
    let (_, answer) = server.get("/sandboxes/g");
    assert_eq!(answer["data"]["limits"]["pids"], 256, "{answer}");
    let marker = exec(
        &server,
        "g",
        json!({"command": ["sh", "-c", "echo kept > /tmp/marker"]}),
    );
    assert_eq!(marker["exit_code"], 0, "{marker}");
    std::thread::sleep(Duration::from_secs(35));
    let kept = exec(&server, "g", json!({"command": ["cat", "/tmp/marker"]}));
    assert_eq!(kept["stdout"], "kept\n", "{kept}");
    // A fork stays under gVisor, with the same limits.
    let (status, answer) = server.post("/snapshots", r#"{"sandbox":"g","name":"gs"}"#);
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = server.post("/sandboxes", r#"{"name":"gf","snapshot":"gs"}"#);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["runtime"], "runsc", "{answer}");
    assert_eq!(answer["data"]["limits"]["pids"], 256, "{answer}");
    assert_eq!(server.delete("/sandboxes/gf").0, 200);
    assert_eq!(server.delete("/snapshots/gs").0, 200);
    assert_eq!(server.delete("/sandboxes/g").0, 200);
    server.finish();
}
