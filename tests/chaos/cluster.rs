//! Cluster mode with tenants, on two hosts: two agents, each driving an engine of its
//! own (as on two machines: a tenant's namespace on one engine is not the other's), and
//! a router in front with the same keys file. A tenant's quotas bound the cluster, not
//! each agent: the router tells each agent what the tenant holds on the others.

use std::time::Duration;

use serde_json::json;

use crate::engine::PrivateEngine;
use crate::harness::{eventually, free_port, request_url, Options, Server};

const OPERATOR_KEY: &str = "cluster-operator-key";
const TENANT_KEY: &str = "cluster-tenant-key";
const TENANT: &str = "team-q";

fn agent(engine: &PrivateEngine, port: u16, keys: &str) -> Server {
    let mut server = Server::start_with(Options {
        // The private engine has no bridge of its own.
        args: [
            "--port",
            &port.to_string(),
            "--keys",
            keys,
            "--default-network",
            "none",
        ]
        .map(String::from)
        .to_vec(),
        env: [
            engine.server_env(),
            vec![("AGENTKERNEL_API_KEY".into(), OPERATOR_KEY.into())],
        ]
        .concat(),
        ..Options::default()
    });
    // Its containers are the private engine's: they go with it.
    server.cleanup = false;
    server
}

/// The tenant's sandboxes on an engine.
fn tenant_sandboxes(engine: &PrivateEngine) -> usize {
    engine
        .containers()
        .iter()
        .filter(|(name, _, kind)| kind == "sandbox" && name.contains(&format!("ak_{TENANT}_")))
        .count()
}

#[test]
fn a_tenants_quotas_bound_the_whole_cluster_not_each_agent() {
    let engines = [PrivateEngine::start(), PrivateEngine::start()];
    let dir = engines[0].dir.join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        format!(
            "{} {TENANT} max_sandboxes=3 max_memory_mb=1024 max_snapshots=1\n",
            agentkernel::codec::sha256::hex_digest(TENANT_KEY.as_bytes())
        ),
    )
    .unwrap();
    let keys = keys.display().to_string();
    let ports = [free_port(), free_port()];
    let agents: Vec<Server> = engines
        .iter()
        .zip(ports)
        .map(|(engine, port)| agent(engine, port, &keys))
        .collect();
    let nodes: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let router = Server::start_with(Options {
        args: ["--cluster", "--nodes", &nodes.join(","), "--keys", &keys]
            .map(String::from)
            .to_vec(),
        env: vec![("AGENTKERNEL_API_KEY".into(), OPERATOR_KEY.into())],
        ..Options::default()
    });
    let tenant = [("X-API-Key", TENANT_KEY)];
    let up = || {
        request_url(
            "GET",
            &router.url("/health"),
            None,
            &[("X-API-Key", OPERATOR_KEY)],
        )
        .1["agents_up"]
            .as_u64()
            == Some(2)
    };
    assert!(
        eventually(Duration::from_secs(20), up),
        "{}",
        request_url(
            "GET",
            &router.url("/health"),
            None,
            &[("X-API-Key", OPERATOR_KEY)]
        )
        .1
    );

    // Names placed as the router places them: two on the first agent, the rest on the
    // second, so that the second never holds three itself.
    let owner = |name: &str| {
        let key = format!("{TENANT}/{name}");
        agentkernel::cluster::hash::owner(&key, nodes.iter().map(String::as_str))
            .unwrap()
            .to_string()
    };
    let candidates: Vec<String> = (0..200).map(|i| format!("q-{i}")).collect();
    let on = |node: usize, count: usize| -> Vec<&String> {
        candidates
            .iter()
            .filter(|name| owner(name) == nodes[node])
            .take(count)
            .collect()
    };
    let (first, second) = (on(0, 2), on(1, 3));
    let create_with = |name: &str, memory_mb: u64| {
        request_url(
            "POST",
            &router.url("/sandboxes"),
            Some(&json!({ "name": name, "memory_mb": memory_mb }).to_string()),
            &tenant,
        )
    };
    let create = |name: &str| create_with(name, 16);
    // The tenant's runs in flight do not hold its creates: only creates are counted.
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    request_url(
                        "POST",
                        &router.url("/run"),
                        Some(r#"{"command":["sleep","2"]}"#),
                        &tenant,
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        for name in [first[0], first[1], second[0]] {
            let (status, answer) = create(name);
            assert_eq!(status, 201, "{name}: {answer}");
        }
        for run in runs {
            let (status, answer) = run.join().unwrap();
            assert_eq!(status, 200, "{answer}");
        }
    });
    assert_eq!(
        (tenant_sandboxes(&engines[0]), tenant_sandboxes(&engines[1])),
        (2, 1)
    );

    // A fourth, on the agent that holds one: refused for the cluster's three, nothing made.
    let (status, answer) = create(second[1]);
    assert_eq!(status, 429, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("max_sandboxes") && error.contains("3 of its 3"),
        "{error}"
    );
    assert_eq!(tenant_sandboxes(&engines[1]), 1);
    // One removed on the other agent makes room here.
    let (status, answer) = request_url(
        "DELETE",
        &router.url(&format!("/sandboxes/{}", first[1])),
        None,
        &tenant,
    );
    assert_eq!(status, 200, "{answer}");
    // Memory likewise: 1000 MiB more here is within the quota on this agent (16 + 1000)
    // but not over the cluster's (32 + 1000).
    let (status, answer) = create_with(second[1], 1000);
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_memory_mb"),
        "{answer}"
    );
    let (status, answer) = create(second[1]);
    assert_eq!(status, 201, "{answer}");

    // Snapshots likewise: one on the first agent, so none on the second.
    let snapshot = |sandbox: &str, name: &str| {
        request_url(
            "POST",
            &router.url("/snapshots"),
            Some(&json!({ "sandbox": sandbox, "name": name }).to_string()),
            &tenant,
        )
    };
    // The first is a long one whose client leaves at once: it is counted all the same
    // (the router waits for its end before it counts the next).
    let (status, answer) = request_url(
        "POST",
        &router.url(&format!("/sandboxes/{}/exec", first[0])),
        Some(r#"{"command":["dd","if=/dev/zero","of=/tmp/big","bs=1M","count=300"]}"#),
        &tenant,
    );
    assert_eq!(status, 200, "{answer}");
    {
        use std::io::Write;
        let body = json!({ "sandbox": first[0], "name": "snap-1" }).to_string();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", router.port)).unwrap();
        write!(
            stream,
            "POST /snapshots HTTP/1.1\r\nHost: x\r\nX-API-Key: {TENANT_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    // Meanwhile a second snapshot waits for the count, and of five creates at once one
    // more may wait (two waiting: a quarter of the router's 8 workers); the rest are a
    // 503 at once.
    let (status, answer, creates) = std::thread::scope(|scope| {
        let second_snapshot = scope.spawn(|| snapshot(second[0], "snap-2"));
        std::thread::sleep(Duration::from_millis(100));
        let creates: Vec<_> = (0..5)
            .map(|i| {
                let create = &create;
                scope.spawn(move || {
                    let started = std::time::Instant::now();
                    let answer = create(&format!("burst-{i}"));
                    (answer, started.elapsed())
                })
            })
            .collect();
        let creates: Vec<_> = creates.into_iter().map(|c| c.join().unwrap()).collect();
        let (status, answer) = second_snapshot.join().unwrap();
        (status, answer, creates)
    });
    let busy = creates
        .iter()
        .filter(|((status, _), _)| *status == 503)
        .count();
    assert_eq!(busy, 4, "{creates:?}");
    for ((status, answer), took) in &creates {
        let error = answer["error"].as_str().unwrap_or_default();
        match status {
            503 => {
                assert!(error.contains("being counted"), "{answer}");
                assert!(*took < Duration::from_millis(500), "{took:?}");
            }
            // Those that waited: the cluster holds its three sandboxes.
            _ => assert!(
                *status == 429 && error.contains("max_sandboxes"),
                "{answer}"
            ),
        }
    }
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_snapshots"),
        "{answer}"
    );
    let (status, answer) = request_url("GET", &router.url("/snapshots"), None, &tenant);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 1, "{answer}");

    // The header is the router's: one a client sends it is replaced (it could only
    // tighten its own quota, never loosen it, were it sent to an agent itself).
    let (status, answer) = request_url(
        "DELETE",
        &router.url(&format!("/sandboxes/{}", second[1])),
        None,
        &tenant,
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = request_url(
        "POST",
        &router.url("/sandboxes"),
        Some(&json!({ "name": second[1] }).to_string()),
        &[
            ("X-API-Key", TENANT_KEY),
            ("X-Agentkernel-Elsewhere", "sandboxes=99"),
        ],
    );
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = request_url(
        "POST",
        &agents[1].url("/sandboxes"),
        Some(&json!({ "name": second[2] }).to_string()),
        &[
            ("X-API-Key", TENANT_KEY),
            ("X-Agentkernel-Elsewhere", "sandboxes=99"),
        ],
    );
    assert_eq!(status, 429, "{answer}");

    for name in [first[0], second[0], second[1]] {
        let path = format!("/sandboxes/{name}");
        assert_eq!(
            request_url("DELETE", &router.url(&path), None, &tenant).0,
            200
        );
    }
    assert_eq!(
        request_url("DELETE", &router.url("/snapshots/snap-1"), None, &tenant).0,
        200
    );
    router.finish();
    for agent in agents {
        agent.finish();
    }
    for mut engine in engines {
        engine.stop();
    }
}
