//! Named volumes: made on first use, shared within a namespace, listed and removed; host
//! paths refused; another namespace's are out of reach.

use serde_json::{json, Value};

use crate::harness::{volumes_of, Server};

fn exec(server: &Server, sandbox: &str, script: &str) -> Value {
    let body = json!({ "command": ["sh", "-c", script] }).to_string();
    let (status, answer) = server.post(&format!("/sandboxes/{sandbox}/exec"), &body);
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

#[test]
fn named_volumes_are_shared_within_a_namespace_only() {
    let server = Server::start();
    let create = |name: &str, volumes: Value| {
        let body = json!({ "name": name, "volumes": volumes }).to_string();
        server.post("/sandboxes", &body)
    };
    let (status, answer) = create("one", json!(["shared:/data", "own:/var/own"]));
    assert_eq!(status, 201, "{answer}");
    exec(&server, "one", "echo from-one > /data/f");
    // A second sandbox of the namespace sees the same volume, and so does a restrictive
    // one (its root is read-only; the volume is mounted all the same).
    let (status, answer) = create("two", json!(["shared:/mnt/shared"]));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        exec(&server, "two", "cat /mnt/shared/f")["stdout"],
        json!("from-one\n")
    );
    let body = json!({"name": "ro", "profile": "restrictive", "volumes": ["shared:/data"]});
    let (status, answer) = server.post("/sandboxes", &body.to_string());
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        exec(&server, "ro", "cat /data/f")["stdout"],
        json!("from-one\n")
    );

    let (status, answer) = server.get("/volumes");
    assert_eq!(status, 200, "{answer}");
    let names: Vec<&str> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["own", "shared"]);

    // Host paths, reserved paths and malformed entries are 400s; nothing is made.
    for (volumes, why) in [
        (json!(["/etc:/host"]), "host paths"),
        (json!(["./x:/y"]), "host paths"),
        (json!(["v:/proc/x"]), "managed"),
        (json!(["v:relative"]), "absolute"),
        (json!(["a:/x", "b:/x"]), "twice"),
    ] {
        let (status, answer) = create("bad", volumes.clone());
        assert_eq!(status, 400, "{volumes}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
    }
    // A create that cannot go ahead makes no volume: a taken name, a mount over the
    // profile's own tmpfs.
    let (status, answer) = create("one", json!(["never:/data"]));
    assert_eq!(status, 409, "{answer}");
    let body = json!({"name": "rt", "profile": "restrictive", "volumes": ["never:/tmp"]});
    let (status, answer) = server.post("/sandboxes", &body.to_string());
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("tmpfs"),
        "{answer}"
    );
    assert_eq!(volumes_of(&server.namespace).len(), 2);

    // Another namespace: its own volume of the same name, and none of ours.
    let other = Server::start();
    assert_eq!(other.get("/volumes").1["data"], json!([]));
    assert_eq!(other.request("DELETE", "/volumes/shared", None, &[]).0, 404);
    let body = json!({"name": "elsewhere", "volumes": ["shared:/data"]}).to_string();
    let (status, answer) = other.post("/sandboxes", &body);
    assert_eq!(status, 201, "{answer}");
    let seen = exec(&other, "elsewhere", "cat /data/f 2>/dev/null || echo empty");
    assert_eq!(seen["stdout"], json!("empty\n"));
    assert_eq!(other.delete("/sandboxes/elsewhere").0, 200);
    assert_eq!(other.delete("/volumes/shared").0, 200);
    other.finish();

    // In use: kept. Removing the sandboxes keeps the volumes; then they can go.
    let (status, answer) = server.delete("/volumes/shared");
    assert_eq!(status, 409, "{answer}");
    for name in ["one", "two", "ro"] {
        assert_eq!(server.delete(&format!("/sandboxes/{name}")).0, 200);
    }
    let (status, answer) = create("three", json!(["shared:/data"]));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        exec(&server, "three", "cat /data/f")["stdout"],
        json!("from-one\n")
    );
    assert_eq!(server.delete("/sandboxes/three").0, 200);
    for name in ["shared", "own"] {
        let (status, answer) = server.delete(&format!("/volumes/{name}"));
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(server.delete("/volumes/shared").0, 404);
    assert_eq!(server.request("DELETE", "/volumes/-x", None, &[]).0, 400);
    server.finish();
}
