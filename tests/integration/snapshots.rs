//! Snapshots: take, list, get, restore, create from, delete; their errors; namespaces.

use serde_json::{json, Value};

use crate::harness::{docker, snapshots_of, Server};

fn exec(server: &Server, sandbox: &str, script: &str) -> Value {
    let body = json!({ "command": ["sh", "-c", script] }).to_string();
    let (status, answer) = server.post(&format!("/sandboxes/{sandbox}/exec"), &body);
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

fn container_labels(server: &Server, sandbox: &str) -> serde_json::Map<String, Value> {
    let inspect = docker()
        .container_inspect(&format!("ak_{}_{sandbox}", server.namespace))
        .unwrap();
    serde_json::to_value(inspect.config.labels.unwrap_or_default())
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

#[test]
fn a_snapshot_keeps_the_files_of_its_moment_and_makes_new_sandboxes() {
    // Commits copy whole filesystems: heavy work for the engine and the cores, which
    // the tests that time a bound must not share.
    let _serial = crate::harness::exclusive();
    let server = Server::start();
    let (status, answer) = server.post(
        "/sandboxes",
        r#"{"name":"src","ttl":"1h","memory_mb":256,"vcpus":1}"#,
    );
    assert_eq!(status, 201, "{answer}");
    exec(&server, "src", "mkdir -p /work && echo kept > /work/f");

    let (status, answer) = server.post("/snapshots", r#"{"sandbox":"src","name":"s1"}"#);
    assert_eq!(status, 201, "{answer}");
    let snapshot = &answer["data"];
    assert_eq!(snapshot["name"], json!("s1"), "{answer}");
    assert_eq!(snapshot["sandbox"], json!("src"));
    assert_eq!(snapshot["backend"], json!("docker"));
    assert_eq!(snapshot["memory_mb"], json!(256));
    assert_eq!(snapshot["vcpus"], json!(1));
    assert!(snapshot["created_at"].as_str().unwrap().ends_with('Z'));
    let image_tag = snapshot["image_tag"].as_str().unwrap().to_string();
    assert!(image_tag.ends_with(":s1"), "{image_tag}");
    // Taken: the sandbox runs on, and later changes are not in the snapshot.
    exec(&server, "src", "echo changed > /work/f");

    let (status, answer) = server.post("/snapshots", r#"{"sandbox":"src","name":"s1"}"#);
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], json!("Snapshot 's1' already exists"));
    let (status, answer) = server.post("/snapshots", r#"{"sandbox":"nope","name":"s9"}"#);
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = server.post("/snapshots", r#"{"name":"s9"}"#);
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = server.post("/snapshots", r#"{"sandbox":"src","name":"-x"}"#);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("snapshot name"));

    let (status, answer) = server.get("/snapshots");
    assert_eq!(status, 200, "{answer}");
    let names: Vec<&str> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1"]);
    assert_eq!(server.get("/snapshots/s1").0, 200);
    assert_eq!(server.get("/snapshots/nope").0, 404);
    assert_eq!(server.get("/snapshots/-bad").0, 400);

    // Restoring needs a free name: by default the source's, which exists.
    let (status, answer) = server.post("/snapshots/s1/restore", "");
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = server.post("/snapshots/s1/restore", r#"{"name":"copy"}"#);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["status"], json!("running"));
    assert_eq!(answer["data"]["memory_mb"], json!(256), "{answer}");
    // None of the source's terms: no expiry, its own exec socket.
    assert_eq!(answer["data"]["expires_at"], Value::Null, "{answer}");
    let (source, copy) = (
        container_labels(&server, "src"),
        container_labels(&server, "copy"),
    );
    assert_eq!(copy["agentkernel.expires-at"], json!(""), "{copy:?}");
    assert_ne!(
        copy["agentkernel.exec-socket"], source["agentkernel.exec-socket"],
        "{copy:?}"
    );
    assert_eq!(
        exec(&server, "copy", "cat /work/f")["stdout"],
        json!("kept\n")
    );
    assert_eq!(
        exec(&server, "src", "cat /work/f")["stdout"],
        json!("changed\n")
    );

    // A create from a snapshot: a fork.
    let (status, answer) = server.post("/sandboxes", r#"{"name":"fork","snapshot":"s1"}"#);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        exec(&server, "fork", "cat /work/f")["stdout"],
        json!("kept\n")
    );
    let (status, answer) = server.post(
        "/sandboxes",
        r#"{"name":"x","snapshot":"s1","image":"busybox:latest"}"#,
    );
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = server.post("/sandboxes", r#"{"name":"x","snapshot":"gone"}"#);
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"], json!("Snapshot 'gone' not found"));

    // In use by a sandbox made from it: kept.
    let (status, answer) = server.delete("/snapshots/s1");
    assert_eq!(status, 409, "{answer}");
    for name in ["copy", "fork"] {
        assert_eq!(server.delete(&format!("/sandboxes/{name}")).0, 200);
    }
    let (status, answer) = server.delete("/snapshots/s1");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(server.get("/snapshots/s1").0, 404);
    assert_eq!(server.delete("/snapshots/s1").0, 404);

    // A paused sandbox can be snapshotted, and stays paused; removing a sandbox keeps
    // its snapshots, and a restore without a name brings it back.
    assert_eq!(server.post("/sandboxes/src/pause", "").0, 200);
    let (status, answer) = server.post("/snapshots", r#"{"sandbox":"src"}"#);
    assert_eq!(status, 201, "{answer}");
    let default_name = answer["data"]["name"].as_str().unwrap().to_string();
    assert!(default_name.starts_with("src-"), "{default_name}");
    assert_eq!(
        server.get("/sandboxes/src").1["data"]["status"],
        json!("paused")
    );
    assert_eq!(server.delete("/sandboxes/src").0, 200);
    assert_eq!(server.get(&format!("/snapshots/{default_name}")).0, 200);
    let (status, answer) = server.post(&format!("/snapshots/{default_name}/restore"), "");
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["name"], json!("src"));
    assert_eq!(
        exec(&server, "src", "cat /work/f")["stdout"],
        json!("changed\n")
    );

    // Another namespace sees none of it: not by its routes, not as an image by its
    // reference or by an id prefix.
    let other = Server::start();
    assert_eq!(other.get("/snapshots").1["data"], json!([]));
    let image_tag = server.get(&format!("/snapshots/{default_name}")).1["data"]["image_tag"]
        .as_str()
        .unwrap()
        .to_string();
    let id = docker().image_inspect(&image_tag).unwrap().id;
    let prefix = id.trim_start_matches("sha256:")[..12].to_string();
    for image in [image_tag.as_str(), prefix.as_str()] {
        let run = json!({"command": ["cat", "/work/f"], "image": image}).to_string();
        let (status, answer) = other.post("/run", &run);
        assert_eq!(status, 404, "{image}: {answer}");
        let create = json!({"name": "steal", "image": image}).to_string();
        let (status, answer) = other.post("/sandboxes", &create);
        assert_eq!(status, 404, "{image}: {answer}");
        let (status, answer) = other.post("/run/stream", &run);
        assert_eq!(status, 404, "{image}: {answer}");
    }
    assert_eq!(other.get(&format!("/snapshots/{default_name}")).0, 404);
    assert_eq!(
        other
            .post(&format!("/snapshots/{default_name}/restore"), "")
            .0,
        404
    );
    assert_eq!(other.delete(&format!("/snapshots/{default_name}")).0, 404);
    other.finish();

    assert_eq!(server.delete("/sandboxes/src").0, 200);
    assert_eq!(server.delete(&format!("/snapshots/{default_name}")).0, 200);
    assert!(snapshots_of(&server.namespace).is_empty());
    server.finish();
}

/// An image can carry our labels too: a sandbox made from one never takes its terms (an
/// expiry, an exec socket key that names another sandbox's token, or a path). And an
/// image without `/tmp` gets one in a sandbox (no tmpfs there on a writable root).
#[test]
fn a_sandbox_takes_no_terms_from_its_image_and_always_has_a_tmp() {
    let server = Server::start();
    let image = format!("agentkernel-test/labelled:{}", server.namespace);
    let docker = docker();
    let key = format!("../victim-{}", server.namespace);
    // An image with our labels: committed from a plain container that has them.
    let spec = agentkernel::engine::ContainerSpec {
        image: crate::harness::image(),
        labels: [
            ("agentkernel.expires-at", "1"),
            ("agentkernel.idle-timeout", "1"),
            ("agentkernel.exec-socket", key.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        entrypoint: Some(vec!["rm".into(), "-rf".into(), "/tmp".into()]),
        ..Default::default()
    };
    let id = docker.container_create(&spec).unwrap();
    docker.container_start(&id).unwrap();
    assert_eq!(
        docker
            .container_wait(&id, std::time::Duration::from_secs(30))
            .unwrap(),
        0
    );
    let (repository, tag) = image.split_once(':').unwrap();
    docker
        .container_commit(
            &id,
            repository,
            tag,
            &Default::default(),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    docker.container_remove(&id).unwrap();
    let victim = crate::harness::data_dir().join(format!("victim-{}.token", server.namespace));
    std::fs::write(&victim, [7u8; 32]).unwrap();

    let body = json!({ "name": "labelled", "image": image }).to_string();
    let (status, answer) = server.post("/sandboxes", &body);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["expires_at"], Value::Null, "{answer}");
    assert_eq!(answer["data"]["idle_timeout"], Value::Null, "{answer}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        exec(&server, "labelled", "echo hi")["stdout"],
        json!("hi\n")
    );
    assert_eq!(
        exec(&server, "labelled", "stat -c %a /tmp")["stdout"],
        json!("1777\n")
    );
    assert_eq!(server.delete("/sandboxes/labelled").0, 200);
    assert!(
        victim.exists(),
        "a label named a file outside the run directory"
    );
    let _ = std::fs::remove_file(&victim);
    docker.image_remove(&image).unwrap();
    server.finish();
}

/// Two takes of one name at once: one snapshot, one 409, and no image left over.
#[test]
fn concurrent_snapshots_of_one_name_make_one_snapshot() {
    let _serial = crate::harness::exclusive();
    let server = Server::start();
    let (status, answer) = server.post("/sandboxes", r#"{"name":"twice"}"#);
    assert_eq!(status, 201, "{answer}");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let takes: Vec<_> = (0..3)
            .map(|_| {
                let url = server.url("/snapshots");
                scope.spawn(move || {
                    crate::harness::request_url(
                        "POST",
                        &url,
                        Some(r#"{"sandbox":"twice","name":"once"}"#),
                        &[],
                    )
                    .0
                })
            })
            .collect();
        takes.into_iter().map(|take| take.join().unwrap()).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [201, 409, 409], "{statuses:?}");
    assert_eq!(snapshots_of(&server.namespace).len(), 1);
    assert_eq!(server.delete("/sandboxes/twice").0, 200);
    assert_eq!(server.delete("/snapshots/once").0, 200);
    server.finish();
}
