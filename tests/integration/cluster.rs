//! Cluster mode on one engine: three agents (servers of their own namespaces) behind a
//! router (`serve --cluster --nodes`). Runs and streams go through; sandboxes spread
//! by their names and are found again; a killed agent's sandboxes are a 503 naming it
//! within 3 s while runs go on elsewhere; restarted, its sandboxes are back with their
//! files.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{eventually, free_port, Options, Server};

fn agent(namespace: &str, port: u16) -> Server {
    Server::start_with(Options {
        namespace: Some(namespace.to_string()),
        args: vec!["--port".into(), port.to_string()],
        ..Options::default()
    })
}

fn router(nodes: &[u16]) -> Server {
    let nodes: Vec<String> = nodes.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    Server::start_with(Options {
        args: vec!["--cluster".into(), "--nodes".into(), nodes.join(",")],
        ..Options::default()
    })
}

fn agents_up(router: &Server) -> u64 {
    router.get("/health").1["agents_up"].as_u64().unwrap_or(0)
}

/// The node a request about `name` went to.
fn node_of(router: &Server, name: &str) -> String {
    let url = router.url(&format!("/sandboxes/{name}"));
    let output = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", &url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("x-agentkernel-node: "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_router_spreads_sandboxes_routes_by_name_and_names_a_lost_node() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let namespaces: Vec<String> = (0..3).map(|_| crate::harness::fresh_namespace()).collect();
    let mut agents: Vec<Server> = ports
        .iter()
        .zip(&namespaces)
        .map(|(port, namespace)| agent(namespace, *port))
        .collect();
    let router = router(&ports);
    assert!(
        eventually(Duration::from_secs(10), || agents_up(&router) == 3),
        "{}",
        router.get("/health").1
    );
    let health = router.get("/health").1;
    assert_eq!(health["data"], "ok");
    assert_eq!(health["agents"].as_array().unwrap().len(), 3);

    // One-shot runs and their streams go through.
    let (status, body) = router.post("/run", r#"{"command":["echo","hi"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["stdout"], "hi\n");
    let output = std::process::Command::new("curl")
        .args(["-sN", "-X", "POST", "--data-binary"])
        .arg(r#"{"command":["sh","-c","echo one; sleep 1; echo two >&2"]}"#)
        .arg(router.url("/run/stream"))
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&output.stdout);
    for part in [
        "event: started",
        r#""data":"one\n""#,
        r#""data":"two\n""#,
        "event: done",
    ] {
        assert!(events.contains(part), "{part} not in {events}");
    }

    // Sandboxes spread by their names; each is found again by name; the list merges.
    let names: Vec<String> = (0..9).map(|i| format!("spread-{i}")).collect();
    for name in &names {
        let body = json!({"name": name, "network": "none"}).to_string();
        let (status, answer) = router.post("/sandboxes", &body);
        assert_eq!(status, 201, "{answer}");
    }
    let placed: Vec<String> = names.iter().map(|name| node_of(&router, name)).collect();
    let distinct: std::collections::BTreeSet<&String> = placed.iter().collect();
    assert!(distinct.len() >= 2, "all on one node: {placed:?}");
    let listed = router.sandboxes();
    for name in &names {
        assert!(listed.contains_key(name), "{name} not in {listed:?}");
    }
    // A duplicate name is still a 409, from the node that has it.
    let (status, answer) = router.post("/sandboxes", r#"{"name":"spread-0","network":"none"}"#);
    assert_eq!(status, 409, "{answer}");

    // What every agent holds, merged: the pool by node, metrics labelled by agent.
    let pool = router.get("/pool").1;
    assert_eq!(
        pool["data"]["nodes"].as_object().unwrap().len(),
        3,
        "{pool}"
    );
    let metrics = std::process::Command::new("curl")
        .args(["-s", &router.url("/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert_eq!(metrics.matches("agentkernel_cluster_agent_up{").count(), 3);
    assert!(
        metrics.contains(&format!("{{agent=\"{}\"", placed[0])),
        "{metrics}"
    );
    // A sandbox by its uuid, asked of each agent.
    let uuid = router.get("/sandboxes/spread-2").1["data"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, answer) = router.get(&format!("/sandboxes/by-uuid/{uuid}"));
    assert_eq!((status, &answer["data"]["name"]), (200, &json!("spread-2")));
    // A 404 about a file in a sandbox goes back as the agent said it.
    let (status, answer) = router.get("/sandboxes/spread-2/files/tmp/nothing-here");
    assert_eq!(status, 404, "{answer}");
    assert!(
        !answer["error"].as_str().unwrap().contains("node"),
        "{answer}"
    );
    // A sandbox made from a snapshot is made where the snapshot is.
    let (status, answer) = router.post("/snapshots", r#"{"sandbox":"spread-2","name":"snap"}"#);
    assert_eq!(status, 201, "{answer}");
    let body = r#"{"name":"from-snap","snapshot":"snap","network":"none"}"#;
    let (status, answer) = router.post("/sandboxes", body);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(node_of(&router, "from-snap"), placed[2]);
    assert_eq!(router.delete("/sandboxes/from-snap").0, 200);
    assert_eq!(router.delete("/snapshots/snap").0, 200);

    // A relayed answer keeps its client's connection: three requests, pipelined on
    // one connection (an agent's answer with a length, one chunked, a router's own),
    // are all answered on it; HTTP/1.0 gets one answer, then the close.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", router.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let exec = r#"{"command":["echo","one"]}"#;
        write!(
            stream,
            "GET /sandboxes/spread-0 HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /sandboxes/spread-0/exec/stream HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{exec}\
             GET /sandboxes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            exec.len()
        )
        .unwrap();
        let mut answers = String::new();
        stream.read_to_string(&mut answers).unwrap();
        assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 3, "{answers}");
        assert!(answers.contains("connection: keep-alive"), "{answers}");
        assert!(answers.contains("event: done"), "{answers}");
        let answer = router.raw(b"GET /sandboxes/spread-0 HTTP/1.0\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("connection: close"),
            "{answer}"
        );
    }

    // Exec, files and a second router (no shared state) agree.
    let (status, answer) = router.request(
        "PUT",
        "/sandboxes/spread-1/files/tmp/note",
        Some(r#"{"content":"kept"}"#),
        &[],
    );
    assert!(status == 200 || status == 201, "{answer}");
    let second = self::router(&ports);
    assert!(eventually(Duration::from_secs(10), || agents_up(&second) == 3));
    let (status, answer) = second.post(
        "/sandboxes/spread-1/exec",
        r#"{"command":["cat","/tmp/note"]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["stdout"], "kept");
    assert_eq!(node_of(&second, "spread-1"), placed[1]);
    second.finish();

    // An agent dies: within 3 s runs no longer go there, and its sandboxes are a 503
    // naming it (never another node's answer, never a hang).
    let lost = placed[1].clone();
    let lost_index = ports
        .iter()
        .position(|port| lost.ends_with(&format!(":{port}")))
        .unwrap();
    agents[lost_index].crash();
    let died = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || agents_up(&router) == 2),
        "{}",
        router.get("/health").1
    );
    assert!(died.elapsed() < Duration::from_secs(3) + Duration::from_millis(500));
    for (name, node) in names.iter().zip(&placed) {
        let started = Instant::now();
        let (status, answer) = router.get(&format!("/sandboxes/{name}"));
        assert!(started.elapsed() < Duration::from_secs(2), "{name}");
        if *node == lost {
            assert_eq!(status, 503, "{name}: {answer}");
            let error = answer["error"].as_str().unwrap();
            assert!(error.contains(&lost), "{error}");
        } else {
            assert_eq!(status, 200, "{name}: {answer}");
        }
    }
    for _ in 0..4 {
        let (status, body) = router.post("/run", r#"{"command":["true"]}"#);
        assert_eq!(status, 200, "{body}");
    }
    let (status, answer) = router.post("/sandboxes/spread-1/exec", r#"{"command":["true"]}"#);
    assert_eq!(status, 503, "{answer}");
    let listed: Value = router.get("/sandboxes").1;
    assert!(listed["data"].as_array().unwrap().len() < names.len());
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            &router.url("/sandboxes"),
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(
        head.contains(&format!("x-agentkernel-missing-nodes: {lost}")),
        "{head}"
    );
    // A new name that hashes to the lost agent may be there: a 503 naming it; others
    // are made elsewhere.
    let mut refused = 0;
    for i in 0..20 {
        let body = json!({"name": format!("probe-{i}"), "network": "none"}).to_string();
        let (status, answer) = router.post("/sandboxes", &body);
        match status {
            201 => assert_eq!(router.delete(&format!("/sandboxes/probe-{i}")).0, 200),
            503 => {
                assert!(
                    answer["error"].as_str().unwrap().contains(&lost),
                    "{answer}"
                );
                refused += 1;
            }
            other => panic!("probe-{i}: {other} {answer}"),
        }
    }
    assert!(refused > 0, "no name of 20 hashed to the lost agent");

    // It comes back: its sandboxes are reachable again, with their files.
    // The restarted agent takes its namespace over: the crashed one, dropped here,
    // must not remove it (every other drop does, so a failing test leaves nothing).
    agents[lost_index].cleanup = false;
    agents[lost_index] = agent(&namespaces[lost_index], ports[lost_index]);
    assert!(eventually(Duration::from_secs(10), || agents_up(&router) == 3));
    let (status, answer) = router.post(
        "/sandboxes/spread-1/exec",
        r#"{"command":["cat","/tmp/note"]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["stdout"], "kept");

    // Frozen (as one cut off by a partition looks: connections open, nothing comes
    // back): out of rotation within 3 s, a request in flight there and a new one for
    // its sandbox a 503 naming it, never a hang; thawed, it is back.
    let frozen = placed[0].clone();
    let frozen_index = ports
        .iter()
        .position(|port| frozen.ends_with(&format!(":{port}")))
        .unwrap();
    let url = router.url("/sandboxes/spread-0/exec");
    let in_flight = std::thread::spawn(move || {
        let started = Instant::now();
        let body = r#"{"command":["sleep","2"]}"#;
        let answer = crate::harness::request_url("POST", &url, Some(body), &[]);
        (answer, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    crate::harness::signal(agents[frozen_index].pid(), "STOP");
    assert!(
        eventually(Duration::from_secs(3), || agents_up(&router) == 2),
        "{}",
        router.get("/health").1
    );
    let ((status, answer), took) = in_flight.join().unwrap();
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains(&frozen),
        "{answer}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let started = Instant::now();
    let (status, answer) = router.get("/sandboxes/spread-0");
    assert_eq!(status, 503, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));
    crate::harness::signal(agents[frozen_index].pid(), "CONT");
    assert!(eventually(Duration::from_secs(5), || agents_up(&router) == 3));
    assert_eq!(router.get("/sandboxes/spread-0").0, 200);

    for name in &names {
        let (status, answer) = router.delete(&format!("/sandboxes/{name}"));
        assert_eq!(status, 200, "{name}: {answer}");
    }
    router.finish();
    for agent in agents {
        agent.finish();
    }
}

/// `curl` with `args`: the status, and the answer's JSON.
fn curl(args: &[&str]) -> (u16, Value) {
    let output = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or_default();
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn sha256_in(router: &Server, sandbox: &str, path: &str) -> String {
    let (status, answer) = router.post(
        &format!("/sandboxes/{sandbox}/exec"),
        &json!({ "command": ["sha256sum", path] }).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    answer["data"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn uploads_flow_through_the_router_and_a_broken_one_leaves_nothing() {
    use agentkernel::codec::{base64, sha256};
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let agents: Vec<Server> = ports
        .iter()
        .map(|port| agent(&crate::harness::fresh_namespace(), *port))
        .collect();
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let routed = |extra: &[&str]| {
        let mut args = vec!["--cluster".into(), "--nodes".into(), nodes.join(",")];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        Server::start_with(Options {
            args,
            ..Options::default()
        })
    };
    let router = routed(&["--client-timeout-secs", "2"]);
    assert!(eventually(Duration::from_secs(10), || agents_up(&router) == 2));
    let names: Vec<String> = (0..3).map(|i| format!("upload-{i}")).collect();
    for name in &names {
        let (status, answer) = router.post("/sandboxes", &json!({ "name": name }).to_string());
        assert_eq!(status, 201, "{answer}");
    }

    // Three uploads of 12 MiB at once (16 MiB bodies in base64): the router's memory
    // grows by far less than one of them, since none is held whole.
    let content: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = sha256::hex_digest(&content);
    let body = json!({ "content": base64::encode(&content), "encoding": "base64" }).to_string();
    router.reset_peak_rss();
    let before = router.peak_rss_kib();
    std::thread::scope(|scope| {
        for name in &names {
            let (url, body) = (
                router.url(&format!("/sandboxes/{name}/files/tmp/big")),
                &body,
            );
            scope.spawn(move || {
                let (status, answer) = crate::harness::request_url("PUT", &url, Some(body), &[]);
                assert_eq!(status, 200, "{answer}");
            });
        }
    });
    let grown = router.peak_rss_kib().saturating_sub(before);
    assert!(grown < 8 * 1024, "the router grew by {grown} KiB");
    for name in &names {
        assert_eq!(sha256_in(&router, name, "/tmp/big"), expected, "{name}");
    }

    // A tar archive sent chunked (its length unknown at the start) arrives whole.
    let dir = std::env::temp_dir().join(format!("ak-upload-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tree")).unwrap();
    std::fs::write(dir.join("tree/data"), &content[..3 * 1024 * 1024]).unwrap();
    let tar = dir.join("tree.tar");
    let made = std::process::Command::new("tar")
        .args([
            "-C",
            dir.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            "tree",
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let chunked = |router: &Server, target: &str| {
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/x-tar",
            "--data-binary",
            &format!("@{}", tar.display()),
            &router.url(target),
        ])
    };
    let (status, answer) = chunked(&router, "/sandboxes/upload-0/archive?path=/tmp");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["members"], 2, "{answer}");
    assert_eq!(
        sha256_in(&router, "upload-0", "/tmp/tree/data"),
        sha256::hex_digest(&content[..3 * 1024 * 1024])
    );

    // A sandbox no agent has: the agent's 404, before the body is asked for (curl
    // sends `Expect: 100-continue` and gets no go-ahead).
    let started = Instant::now();
    let (status, answer) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", tar.display()),
        &router.url("/sandboxes/nowhere/archive?path=/tmp"),
    ]);
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("nowhere"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Bodies that stall halfway: a 408 within the client timeout, and the agent, whose
    // request was cut off, wrote nothing. Each holds one of the agent's upload places
    // (all 64 are the operator's here: no tenants), and no more: past them, a 503 at
    // once, while the agent stays up for the rest.
    use std::io::{Read, Write};
    let stalled_head = |path: &str| {
        format!(
            "PUT /sandboxes/upload-1/files/tmp/{path} HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{{\"content\":\""
        )
    };
    let started = Instant::now();
    let stalled: Vec<std::net::TcpStream> = (0..agentkernel::cluster::MAX_UPLOADS)
        .map(|i| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", router.port)).unwrap();
            stream
                .write_all(stalled_head(&format!("stalled-{i}")).as_bytes())
                .unwrap();
            stream
        })
        .collect();
    let uploads = || {
        router.get("/health").1["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|agent| agent["uploads"].as_u64())
            .sum::<u64>()
    };
    assert!(
        eventually(Duration::from_millis(1500), || uploads()
            == agentkernel::cluster::MAX_UPLOADS),
        "{}",
        router.get("/health").1
    );
    let answer = router.raw(stalled_head("one-more").as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("uploads to node"),
        "{answer}"
    );
    assert_eq!(agents_up(&router), 2, "{}", router.get("/health").1);
    for mut stream in stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (status, answer) = router.post(
        "/sandboxes/upload-1/exec",
        r#"{"command":["ls","-A","/tmp"]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer["data"]["stdout"]
            .as_str()
            .unwrap()
            .contains("stalled"),
        "{answer}"
    );

    // A client that closes its side once it has sent its whole body still gets its
    // answer, and its file.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", router.port)).unwrap();
    let half =
        json!({ "content": base64::encode(&content[..2 * 1024 * 1024]), "encoding": "base64" })
            .to_string();
    stream
        .write_all(
            format!(
                "PUT /sandboxes/upload-1/files/tmp/half HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{half}",
                half.len()
            )
            .as_bytes(),
        )
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        sha256_in(&router, "upload-1", "/tmp/half"),
        sha256::hex_digest(&content[..2 * 1024 * 1024])
    );
    assert_eq!(router.get("/sandboxes/upload-1/files/tmp/stalled").0, 404);

    // A chunked body past the router's limit: a 413 from the router; what went on
    // to the agent before it was a cut request, and nothing was written.
    let small = routed(&["--max-file-bytes", "1048576"]);
    assert!(eventually(Duration::from_secs(10), || agents_up(&small) == 2));
    let (status, answer) = chunked(&small, "/sandboxes/upload-2/archive?path=/srv");
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = router.post(
        "/sandboxes/upload-2/exec",
        r#"{"command":["ls","-A","/srv"]}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["stdout"], "", "{answer}");
    small.finish();

    // A relayed answer while the router stops: whole, and it says the connection closes
    // (it is not kept for a next request that would be lost).
    let mut stopping = routed(&[]);
    assert!(eventually(Duration::from_secs(10), || agents_up(&stopping) == 2));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", stopping.port)).unwrap();
    let exec = r#"{"command":["sleep","2"]}"#;
    write!(
        stream,
        "POST /sandboxes/upload-0/exec HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{exec}",
        exec.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let status = stopping.terminate();
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("connection: close"),
        "{answer}"
    );
    assert!(status.success(), "{status}");

    let _ = std::fs::remove_dir_all(&dir);
    for name in &names {
        assert_eq!(router.delete(&format!("/sandboxes/{name}")).0, 200);
    }
    router.finish();
    for agent in agents {
        agent.finish();
    }
}
