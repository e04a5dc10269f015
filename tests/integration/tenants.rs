//! Tenants (`--keys FILE`): each key's namespace sees only its own sandboxes, snapshots,
//! volumes, history and runs; quotas answer 429 with `Retry-After` and make nothing;
//! the file is re-read on SIGHUP, and a malformed one is refused with its line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    containers_of, data_dir, fresh_namespace, image, remove_namespace, request_url, signal,
    snapshots_of, volumes_of, wait_timeout, Options, Server,
};

fn sha256_hex(key: &str) -> String {
    agentkernel::codec::sha256::hex_digest(key.as_bytes())
}

/// A keys file in a directory of its own, and the tenants' namespaces: everything of
/// theirs is removed on drop, whatever the test did.
struct Tenants {
    dir: PathBuf,
    namespaces: Vec<String>,
}

impl Tenants {
    fn new(lines: &[(&str, &str, &str)]) -> Tenants {
        let dir = data_dir().join(format!("keys-{}", fresh_namespace()));
        std::fs::create_dir_all(&dir).unwrap();
        let tenants = Tenants {
            dir,
            namespaces: lines.iter().map(|(_, ns, _)| ns.to_string()).collect(),
        };
        tenants.write(lines);
        tenants
    }

    fn path(&self) -> PathBuf {
        self.dir.join("keys")
    }

    fn write(&self, lines: &[(&str, &str, &str)]) {
        let text: String = lines
            .iter()
            .map(|(key, namespace, quotas)| format!("{} {namespace} {quotas}\n", sha256_hex(key)))
            .collect();
        write_atomically(&self.path(), &format!("# tenants\n{text}"));
    }
}

fn write_atomically(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

impl Drop for Tenants {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            remove_namespace(namespace);
            let history = data_dir().join(format!("{namespace}.history.jsonl"));
            let _ = std::fs::remove_file(history);
            let _ = std::fs::remove_dir_all(data_dir().join("expiry").join(namespace));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(tenants: &Tenants, env: &[(&str, &str)]) -> Server {
    Server::start_with(Options {
        args: vec!["--keys".into(), tenants.path().display().to_string()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    })
}

fn call(server: &Server, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|body| body.to_string());
    server.request(method, path, body.as_deref(), &[("X-API-Key", key)])
}

/// Status, `Retry-After` and body of a request with the key.
fn call_with_headers(
    server: &Server,
    key: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Option<String>, Value) {
    let result = ureq::request(method, &server.url(path))
        .set("X-API-Key", key)
        .send_string(&body.to_string());
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {path}: {error}"),
    };
    let status = response.status();
    let retry_after = response.header("Retry-After").map(str::to_string);
    let body: Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
    (status, retry_after, body)
}

#[test]
fn each_key_sees_only_its_own_namespace() {
    let (a, b, own) = (fresh_namespace(), fresh_namespace(), fresh_namespace());
    // The server's own key is also on a line of a tenant's (it wins: the server's
    // namespace); a line of the server's own namespace is an operator's key.
    let tenants = Tenants::new(&[
        ("key-a", &a, ""),
        ("key-b", &b, "max_network=none"),
        ("operator", &a, ""),
        ("key-ops", &own, ""),
    ]);
    let server = Server::start_with(Options {
        namespace: Some(own.clone()),
        args: vec![
            "--keys".into(),
            tenants.path().display().to_string(),
            // Images runs use are kept warm: a snapshot's never is (it would be served
            // to the next run of any namespace).
            "--pool-dynamic-size".into(),
            "1".into(),
        ],
        env: vec![("AGENTKERNEL_API_KEY".into(), "operator".into())],
        ..Options::default()
    });
    // No key, an unknown key, an empty one, a digest instead of its key: 401.
    assert_eq!(server.get("/sandboxes").0, 401);
    for key in ["nope", "", &sha256_hex("key-a")] {
        assert_eq!(
            call(&server, key, "GET", "/sandboxes", None).0,
            401,
            "{key}"
        );
    }

    // The same name in two namespaces: two sandboxes, neither sees the other.
    for key in ["key-a", "key-b"] {
        let (status, answer) = call(
            &server,
            key,
            "POST",
            "/sandboxes",
            Some(json!({"name": "box"})),
        );
        assert_eq!(status, 201, "{answer}");
    }
    let exec = |key: &str, script: &str| {
        let body = json!({ "command": ["sh", "-c", script] });
        let (status, answer) = call(&server, key, "POST", "/sandboxes/box/exec", Some(body));
        assert_eq!(status, 200, "{answer}");
        answer["data"]["stdout"].as_str().unwrap().to_string()
    };
    exec("key-a", "echo mine > /tmp/f");
    // B's egress is at most none: its default is brought down to it, wider is refused.
    let (_, b_box) = call(&server, "key-b", "GET", "/sandboxes/box", None);
    assert_eq!(b_box["data"]["network"], json!("none"));
    let (_, a_box) = call(&server, "key-a", "GET", "/sandboxes/box", None);
    assert_eq!(a_box["data"]["network"], json!("public"));
    let wide = json!({"name": "wide", "network": "public"});
    let (status, answer) = call(&server, "key-b", "POST", "/sandboxes", Some(wide));
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("at most 'none'"),
        "{answer}"
    );
    assert_eq!(
        exec("key-b", "cat /tmp/f 2>/dev/null || echo none"),
        "none\n"
    );
    assert_eq!(containers_of(&a).len(), 1);
    assert_eq!(containers_of(&b).len(), 1);
    // Bearer works as X-API-Key does.
    let (status, answer) = server.request(
        "GET",
        "/sandboxes",
        None,
        &[("Authorization", "Bearer key-a")],
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 1);
    // The operator's key sees the server's own namespace: neither tenant's sandbox.
    let (status, answer) = call(&server, "operator", "GET", "/sandboxes", None);
    assert_eq!((status, answer["data"].clone()), (200, json!([])));
    assert_eq!(
        call(&server, "operator", "GET", "/sandboxes/box", None).0,
        404
    );

    // History: each namespace's own.
    exec("key-a", "true");
    let (_, logs_a) = call(&server, "key-a", "GET", "/sandboxes/box/logs", None);
    let (_, logs_b) = call(&server, "key-b", "GET", "/sandboxes/box/logs", None);
    let events = |logs: &Value| logs["data"].as_array().unwrap().len();
    assert_eq!(
        (events(&logs_a), events(&logs_b)),
        (3, 2),
        "{logs_a} {logs_b}"
    );

    // Snapshots: another namespace's are not found, by name or as an image.
    let (status, answer) = call(
        &server,
        "key-a",
        "POST",
        "/snapshots",
        Some(json!({"sandbox": "box", "name": "snap"})),
    );
    assert_eq!(status, 201, "{answer}");
    let image_of_a = answer["data"]["image_tag"].as_str().unwrap().to_string();
    assert_eq!(
        call(&server, "key-b", "GET", "/snapshots/snap", None).0,
        404
    );
    let (_, listed) = call(&server, "key-b", "GET", "/snapshots", None);
    assert_eq!(listed["data"], json!([]));
    let from = json!({"name": "fork", "snapshot": "snap"});
    assert_eq!(
        call(&server, "key-b", "POST", "/sandboxes", Some(from.clone())).0,
        404
    );
    assert_eq!(
        call(&server, "key-b", "DELETE", "/snapshots/snap", None).0,
        404
    );
    let run = json!({"command": ["true"], "image": image_of_a});
    assert_eq!(
        call(&server, "key-b", "POST", "/run", Some(run.clone())).0,
        404
    );
    for _ in 0..2 {
        let (status, answer) = call(&server, "key-a", "POST", "/run", Some(run.clone()));
        assert_eq!(status, 200, "{answer}");
    }
    let (_, pool) = call(&server, "operator", "GET", "/pool", None);
    assert!(!pool.to_string().contains(&image_of_a), "{pool}");
    assert_eq!(
        call(&server, "key-b", "POST", "/run", Some(run.clone())).0,
        404
    );
    let stream = server.request(
        "POST",
        "/run/stream",
        Some(&run.to_string()),
        &[("X-API-Key", "key-b")],
    );
    assert_eq!(stream.0, 404);
    // The pool serves every namespace: its keys are the operator's to see.
    assert_eq!(call(&server, "key-a", "GET", "/pool", None).0, 403);
    // Its own namespace forks from it.
    let (status, answer) = call(&server, "key-a", "POST", "/sandboxes", Some(from));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        call(
            &server,
            "key-a",
            "POST",
            "/sandboxes/fork/exec",
            Some(json!({"command": ["cat", "/tmp/f"]}))
        )
        .1["data"]["stdout"],
        json!("mine\n")
    );

    // Volumes: made in the namespace of the key, out of the other's reach.
    let with_volume = json!({"name": "vol", "volumes": ["data:/data"]});
    let (status, answer) = call(&server, "key-a", "POST", "/sandboxes", Some(with_volume));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(volumes_of(&a).len(), 1);
    let (_, listed) = call(&server, "key-b", "GET", "/volumes", None);
    assert_eq!(listed["data"], json!([]));
    assert_eq!(
        call(&server, "key-b", "DELETE", "/volumes/data", None).0,
        404
    );

    // Metrics count every namespace, and are the operator's alone.
    let (status, answer) = call(&server, "key-a", "GET", "/metrics", None);
    assert_eq!(status, 403, "{answer}");
    // (A scrape does not wait long for a busy engine: then it has no counts.)
    let mut metrics = String::new();
    let counted = crate::harness::eventually(Duration::from_secs(30), || {
        metrics = ureq::get(&server.url("/metrics"))
            .set("X-API-Key", "operator")
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        metrics.contains("agentkernel_sandboxes{status=\"running\"} 4")
    });
    assert!(counted, "{metrics}");

    for key in ["operator", "key-ops"] {
        assert_eq!(call(&server, key, "GET", "/pool", None).0, 200, "{key}");
        let metrics = ureq::get(&server.url("/metrics"))
            .set("X-API-Key", key)
            .call();
        assert_eq!(metrics.map(|r| r.status()).ok(), Some(200), "{key}");
    }

    // A stream runs in its key's namespace too.
    let stream = |key: &str, name: &str| {
        let result = ureq::post(&server.url(&format!("/sandboxes/{name}/exec/stream")))
            .set("X-API-Key", key)
            .send_string(&json!({"command": ["cat", "/tmp/f"]}).to_string());
        match result {
            Ok(response) => (200, response.into_string().unwrap()),
            Err(ureq::Error::Status(status, response)) => (status, response.into_string().unwrap()),
            Err(error) => panic!("{error}"),
        }
    };
    let (status, events) = stream("key-a", "fork");
    assert_eq!(status, 200, "{events}");
    assert!(events.contains("mine"), "{events}");
    assert_eq!(stream("key-b", "fork").0, 404);

    // A tenant's sandbox ends at its ttl; the other namespace's of that name stays.
    let (status, answer) = call(
        &server,
        "key-a",
        "POST",
        "/sandboxes",
        Some(json!({"name": "brief", "ttl": "2s"})),
    );
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = call(
        &server,
        "key-b",
        "POST",
        "/sandboxes",
        Some(json!({"name": "brief"})),
    );
    assert_eq!(status, 201, "{answer}");
    let gone = crate::harness::eventually(Duration::from_secs(15), || {
        call(&server, "key-a", "GET", "/sandboxes/brief", None).0 == 404
    });
    assert!(gone, "a tenant's sandbox past its ttl is removed");
    let (_, logs) = call(&server, "key-a", "GET", "/sandboxes/brief/logs", None);
    assert!(logs.to_string().contains("\"expired\""), "{logs}");
    assert_eq!(
        call(&server, "key-b", "GET", "/sandboxes/brief", None).0,
        200
    );
    assert_eq!(
        call(&server, "key-b", "DELETE", "/sandboxes/brief", None).0,
        200
    );

    for name in ["box", "fork", "vol"] {
        call(
            &server,
            "key-a",
            "DELETE",
            &format!("/sandboxes/{name}"),
            None,
        );
    }
    assert_eq!(
        call(&server, "key-a", "DELETE", "/snapshots/snap", None).0,
        200
    );
    assert_eq!(
        call(&server, "key-a", "DELETE", "/volumes/data", None).0,
        200
    );
    assert_eq!(
        call(&server, "key-b", "DELETE", "/sandboxes/box", None).0,
        200
    );
    assert!(containers_of(&a).is_empty() && containers_of(&b).is_empty());
    assert!(snapshots_of(&a).is_empty() && volumes_of(&a).is_empty());
    server.finish();
}

#[test]
fn quotas_refuse_with_429_and_make_nothing() {
    let (limited, free, keeper) = (fresh_namespace(), fresh_namespace(), fresh_namespace());
    let tenants = Tenants::new(&[
        (
            "key-q",
            &limited,
            "max_sandboxes=1 max_concurrent_runs=1 max_memory_mb=300",
        ),
        ("key-free", &free, ""),
        ("key-s", &keeper, "max_snapshots=1 max_volumes=1"),
    ]);
    let server = serve(&tenants, &[]);
    let create =
        |key: &str, body: Value| call_with_headers(&server, key, "POST", "/sandboxes", body);

    // max_sandboxes: the second is refused, and waits for the first one's ttl.
    let (status, _, answer) = create(
        "key-q",
        json!({"name": "one", "memory_mb": 256, "ttl": "1h"}),
    );
    assert_eq!(status, 201, "{answer}");
    let (status, retry_after, answer) = create("key-q", json!({"name": "two", "memory_mb": 16}));
    assert_eq!(status, 429, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("max_sandboxes"), "{message}");
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((3590..=3610).contains(&retry_after), "{retry_after}");
    assert_eq!(containers_of(&limited).len(), 1);
    // Another namespace is not held back.
    let (status, _, answer) = create("key-free", json!({"name": "two"}));
    assert_eq!(status, 201, "{answer}");

    // max_memory_mb: the sum of the limits, whatever fits in the count.
    assert_eq!(
        call(&server, "key-q", "DELETE", "/sandboxes/one", None).0,
        200
    );
    let (status, retry_after, answer) = create("key-q", json!({"name": "big", "memory_mb": 512}));
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_memory_mb"),
        "{answer}"
    );
    assert_eq!(retry_after.as_deref(), Some("60"));
    assert!(containers_of(&limited).is_empty());

    // Two creates at once for the last place: one of them gets it.
    let url = server.url("/sandboxes");
    let racers: Vec<_> = ["r1", "r2"]
        .into_iter()
        .map(|name| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = json!({ "name": name, "memory_mb": 64 }).to_string();
                request_url("POST", &url, Some(&body), &[("X-API-Key", "key-q")]).0
            })
        })
        .collect();
    let mut statuses: Vec<u16> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 429]);
    assert_eq!(containers_of(&limited).len(), 1);
    let made = ["r1", "r2"]
        .into_iter()
        .find(|name| call(&server, "key-q", "GET", &format!("/sandboxes/{name}"), None).0 == 200)
        .expect("one of them was made");

    // An exec counts among the concurrent runs.
    let exec_url = server.url(&format!("/sandboxes/{made}/exec"));
    let exec = std::thread::spawn(move || {
        let body = json!({"command": ["sleep", "3"]}).to_string();
        request_url("POST", &exec_url, Some(&body), &[("X-API-Key", "key-q")])
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, answer) = call(
        &server,
        "key-q",
        "POST",
        "/run",
        Some(json!({"command": ["true"]})),
    );
    assert_eq!(status, 429, "{answer}");
    assert_eq!(exec.join().unwrap().0, 200);
    // A stopped sandbox still counts: it may start at any time.
    let (status, answer) = call(
        &server,
        "key-q",
        "POST",
        &format!("/sandboxes/{made}/stop"),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let (status, _, answer) = create("key-q", json!({"name": "more", "memory_mb": 16}));
    assert_eq!(status, 429, "{answer}");

    // max_concurrent_runs: a second command while one runs is refused, for a second.
    let run_url = server.url("/run");
    let first = std::thread::spawn(move || {
        let body = json!({"command": ["sleep", "3"]}).to_string();
        request_url("POST", &run_url, Some(&body), &[("X-API-Key", "key-q")])
    });
    // Its head start: it takes its place at once, and holds it for 3 s.
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = None;
    for _ in 0..100 {
        let (status, retry_after, answer) = call_with_headers(
            &server,
            "key-q",
            "POST",
            "/run",
            json!({"command": ["true"]}),
        );
        if status == 429 {
            refused = Some((retry_after, answer));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some((retry_after, answer)) = refused else {
        panic!("not refused while one runs: {:?}", first.join().unwrap());
    };
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_runs"),
        "{answer}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (status, answer) = first.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    // Given back: the next one runs.
    let (status, answer) = call(
        &server,
        "key-q",
        "POST",
        "/run",
        Some(json!({"command": ["true"]})),
    );
    assert_eq!(status, 200, "{answer}");
    // A stream holds its place until it ends.
    let stream_url = server.url("/run/stream");
    let stream = std::thread::spawn(move || {
        let body = json!({"command": ["sleep", "3"]}).to_string();
        let response = ureq::post(&stream_url)
            .set("X-API-Key", "key-q")
            .send_string(&body)
            .unwrap();
        response.into_string().unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    let refused = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        call(
            &server,
            "key-q",
            "POST",
            "/run",
            Some(json!({"command": ["true"]})),
        )
        .0 == 429
    });
    assert!(refused, "a run while a stream runs is refused");
    assert!(stream.join().unwrap().contains("event: done"));
    let (status, answer) = call(
        &server,
        "key-q",
        "POST",
        "/run",
        Some(json!({"command": ["true"]})),
    );
    assert_eq!(status, 200, "{answer}");

    // max_volumes: volumes it names that exist already are not new ones.
    let (status, _, answer) = create("key-s", json!({"name": "v", "volumes": ["v1:/a"]}));
    assert_eq!(status, 201, "{answer}");
    let (status, _, answer) = create("key-s", json!({"name": "w", "volumes": ["v1:/b"]}));
    assert_eq!(status, 201, "{answer}");
    let (status, retry_after, answer) =
        create("key-s", json!({"name": "x", "volumes": ["v1:/b", "v2:/c"]}));
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_volumes"),
        "{answer}"
    );
    assert_eq!(retry_after.as_deref(), Some("60"));
    assert_eq!(volumes_of(&keeper).len(), 1);
    // max_snapshots.
    let snapshot = |name: &str| {
        let body = json!({"sandbox": "v", "name": name});
        call_with_headers(&server, "key-s", "POST", "/snapshots", body)
    };
    let (status, _, answer) = snapshot("s1");
    assert_eq!(status, 201, "{answer}");
    let (status, retry_after, answer) = snapshot("s2");
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_snapshots"),
        "{answer}"
    );
    assert_eq!(retry_after.as_deref(), Some("60"));
    assert_eq!(snapshots_of(&keeper).len(), 1);
    assert_eq!(
        call(&server, "key-s", "DELETE", "/snapshots/s1", None).0,
        200
    );
    for name in ["v", "w"] {
        call(
            &server,
            "key-s",
            "DELETE",
            &format!("/sandboxes/{name}"),
            None,
        );
    }
    assert_eq!(call(&server, "key-s", "DELETE", "/volumes/v1", None).0, 200);

    for (key, name) in [("key-free", "two"), ("key-q", "r1"), ("key-q", "r2")] {
        call(&server, key, "DELETE", &format!("/sandboxes/{name}"), None);
    }
    server.finish();
}

#[test]
fn the_keys_file_is_read_again_on_sighup_and_a_bad_one_is_refused() {
    let (a, b) = (fresh_namespace(), fresh_namespace());
    let tenants = Tenants::new(&[("key-a", &a, "")]);
    // Malformed at start: the server does not start, and says which line.
    let bad = tenants.dir.join("bad");
    std::fs::write(
        &bad,
        format!("{} {a}\nnot-a-digest {b}\n", sha256_hex("key-a")),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(["serve", "--port", "0", "--keys"])
        .arg(&bad)
        .args(["--default-image", &image()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("line 2:"), "{stderr}");

    let server = serve(&tenants, &[]);
    assert_eq!(call(&server, "key-a", "GET", "/sandboxes", None).0, 200);
    assert_eq!(call(&server, "key-b", "GET", "/sandboxes", None).0, 401);
    // A second key: in force after SIGHUP.
    let tenants = Tenants {
        namespaces: vec![a.clone(), b.clone()],
        dir: tenants.dir.clone(),
    };
    tenants.write(&[("key-a", &a, ""), ("key-b", &b, "")]);
    signal(server.pid(), "HUP");
    assert!(server
        .wait_for_log("keys file read again: 2 keys", Duration::from_secs(10))
        .is_some());
    assert_eq!(call(&server, "key-b", "GET", "/sandboxes", None).0, 200);
    // A malformed file on reload: logged with its line, the keys in force stay.
    write_atomically(
        &tenants.path(),
        &format!(
            "{} {a}\n{} {b} max_cpus=2\n",
            sha256_hex("key-a"),
            sha256_hex("key-b")
        ),
    );
    signal(server.pid(), "HUP");
    let logged = server
        .wait_for_log("the keys in force stay", Duration::from_secs(10))
        .expect("the refused reload is logged");
    assert!(
        logged.contains("line 2: unknown quota 'max_cpus'"),
        "{logged}"
    );
    assert_eq!(call(&server, "key-a", "GET", "/sandboxes", None).0, 200);
    assert_eq!(call(&server, "key-b", "GET", "/sandboxes", None).0, 200);
    // A key removed: refused from the reload on.
    tenants.write(&[("key-b", &b, "")]);
    signal(server.pid(), "HUP");
    assert!(server
        .wait_for_log("keys file read again: 1 keys", Duration::from_secs(10))
        .is_some());
    assert_eq!(call(&server, "key-a", "GET", "/sandboxes", None).0, 401);
    server.finish();
}
