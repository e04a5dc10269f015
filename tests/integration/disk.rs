//! Disk quotas (`containers::disk`): what a container writes to its root filesystem is
//! bounded whatever the command does; past the quota writes fail, the run's status
//! names the quota, the host gives no more than the quota, other sandboxes and the
//! server go on; the quota holds across stop and start and a server restart, and the
//! disk goes with its container.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{data_dir, disks, eventually, shared, Options, Server};

const MIB: u64 = 1024 * 1024;

/// Writes `mb` MiB to `/big` (and fails with "No space left on device" past the quota).
fn fill(mb: u64) -> Value {
    json!([
        "dd",
        "if=/dev/zero",
        "of=/big",
        "bs=1M",
        format!("count={mb}")
    ])
}

fn exec(server: &Server, sandbox: &str, command: Value) -> Value {
    let (status, answer) = server.post(
        &format!("/sandboxes/{sandbox}/exec"),
        &json!({ "command": command }).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

fn assert_quota_hit(result: &Value, quota_mb: u64) {
    assert_eq!(result["status"], "disk_quota_exceeded", "{result}");
    assert_ne!(result["exit_code"], 0, "{result}");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("disk quota of {quota_mb} MiB")),
        "{result}"
    );
    assert!(
        result["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left on device"),
        "{result}"
    );
}

/// What the host's disk gives a container's disk file (its allocated blocks).
fn allocated(id: &str) -> u64 {
    let file = data_dir().join("disks").join(format!("{id}.img"));
    std::fs::metadata(&file)
        .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
        .blocks()
        * 512
}

fn mounted_under(id: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(id)
}

#[test]
fn a_run_past_its_disk_quota_ends_with_a_status_naming_it() {
    let server = shared();
    let body = json!({ "command": fill(200), "disk_mb": 32, "timeout_ms": 60_000 });
    let (status, answer) = server.post("/run", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    assert_quota_hit(&answer["data"], 32);
    // `df /` inside shows the quota.
    let body = json!({ "command": ["df", "-m", "/"], "disk_mb": 32 });
    let (_, answer) = server.post("/run", &body.to_string());
    let df = answer["data"]["stdout"].as_str().unwrap_or_default();
    let size_mb: u64 = df
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|size| size.parse().ok())
        .unwrap_or_else(|| panic!("df: {df}"));
    assert!((16..=32).contains(&size_mb), "{df}");
}

#[test]
fn disk_quotas_are_bounded_by_the_server() {
    let server = Server::start_with(Options {
        args: ["--max-disk-mb", "64"].map(String::from).to_vec(),
        ..Options::default()
    });
    for (disk_mb, says) in [(8, "between 16 and 64"), (65, "between 16 and 64")] {
        let body = json!({ "command": ["true"], "disk_mb": disk_mb });
        let (status, answer) = server.post("/run", &body.to_string());
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("disk_mb") && error.contains(says), "{error}");
        let body = json!({ "name": "big", "disk_mb": disk_mb });
        let (status, answer) = server.post("/sandboxes", &body.to_string());
        assert_eq!(status, 400, "{answer}");
    }
    // The permissive profile's default (8 GiB) is brought down to the server's bound.
    let body = json!({ "name": "p", "profile": "permissive" });
    let (status, answer) = server.post("/sandboxes", &body.to_string());
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["disk"]["quota_mb"], 64, "{answer}");
    assert_eq!(answer["data"]["limits"]["disk_mb"], 64, "{answer}");
    assert_eq!(server.delete("/sandboxes/p").0, 200);
    server.finish();
}

#[test]
fn a_sandbox_disk_quota_holds_for_its_life_and_its_disk_goes_with_it() {
    let mut first = Server::start();
    let (status, answer) = first.post("/sandboxes", r#"{"name":"small","disk_mb":24}"#);
    assert_eq!(status, 201, "{answer}");
    let id = answer["data"]["uuid"].as_str().unwrap().to_string();
    let disk = &answer["data"]["disk"];
    assert_eq!(disk["quota_mb"], 24, "{answer}");
    assert_eq!(disk["enforced_by"], "loop-filesystem", "{answer}");
    let (status, answer) = first.post("/sandboxes", r#"{"name":"other"}"#);
    assert_eq!(status, 201, "{answer}");

    // Past the quota: the write fails, the status names the quota, the host's disk
    // gave the sandbox no more than the quota: what it wrote is in its own filesystem
    // (the sparse file of the quota's size), not on the engine's disk.
    assert_quota_hit(&exec(&first, "small", fill(100)), 24);
    assert!(allocated(&id) <= 24 * MIB, "{} bytes", allocated(&id));
    let disk = std::fs::canonicalize(data_dir().join("disks").join(&id)).unwrap();
    let written = std::fs::metadata(disk.join("layer/diff/big")).map(|meta| meta.blocks() * 512);
    assert!(
        written.as_ref().is_ok_and(|bytes| *bytes > 16 * MIB),
        "the write is not in the container's own filesystem: {written:?}"
    );
    let (_, answer) = first.get("/sandboxes/small");
    let used = answer["data"]["disk"]["used_mb"].as_u64().unwrap();
    assert!((16..=24).contains(&used), "{answer}");
    // Files written through the API count too: no room, 507.
    let content = json!({ "content": "x".repeat(2 * MIB as usize) }).to_string();
    let (status, answer) = first.request("PUT", "/sandboxes/small/files/more", Some(&content), &[]);
    assert_eq!(status, 507, "{answer}");
    // Another sandbox, the server: unaffected.
    let result = exec(&first, "other", fill(10));
    assert_eq!(result["status"], "exited", "{result}");
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(first.get("/health").0, 200);

    // Across stop and start: the files stay, the quota holds.
    assert_eq!(first.post("/sandboxes/small/stop", "").0, 200);
    assert_eq!(first.post("/sandboxes/small/start", "").0, 200);
    let result = exec(
        &first,
        "small",
        json!([
            "sh",
            "-c",
            "rm /big && dd if=/dev/zero of=/half bs=1M count=8"
        ]),
    );
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_quota_hit(&exec(&first, "small", fill(100)), 24);

    // Across a server restart.
    first.cleanup = false;
    let namespace = first.namespace.clone();
    first.terminate();
    let second = Server::start_with(Options {
        namespace: Some(namespace),
        ..Options::default()
    });
    let result = exec(&second, "small", json!(["sh", "-c", "rm /big; ls /half"]));
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_quota_hit(&exec(&second, "small", fill(100)), 24);

    // Removed with its sandbox: no file, no mount.
    assert_eq!(second.delete("/sandboxes/small").0, 200);
    assert_eq!(second.delete("/sandboxes/other").0, 200);
    assert!(!disks().contains(&id), "{id} kept its disk");
    assert!(
        eventually(Duration::from_secs(5), || !mounted_under(&id)),
        "{id}'s disk still mounted"
    );
    second.finish();
}

/// The mount points of a container's disk other than the disk itself (its bind over
/// the layer), from this process's mount table.
fn binds_of(id: &str) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let disk = data_dir().join("disks").join(id);
    let disk = std::fs::canonicalize(&disk).unwrap_or(disk);
    let fields = |line: &str| -> (String, String) {
        let parts: Vec<&str> = line.split(' ').collect();
        (parts[2].to_string(), parts[4].to_string())
    };
    let device = table
        .lines()
        .map(fields)
        .find(|(_, point)| *point == disk.to_string_lossy())
        .map(|(device, _)| device)
        .unwrap_or_else(|| panic!("{} is not mounted", disk.display()));
    table
        .lines()
        .map(fields)
        .filter(|(found, point)| *found == device && *point != disk.to_string_lossy())
        .map(|(_, point)| point)
        .collect()
}

#[test]
fn a_sandbox_running_without_its_disk_gets_it_back_and_engine_files_are_read_only() {
    let server = Server::start();
    let (status, answer) = server.post("/sandboxes", r#"{"name":"lost","disk_mb":24}"#);
    assert_eq!(status, 201, "{answer}");
    let id = answer["data"]["uuid"].as_str().unwrap().to_string();
    // The engine's own files of the container are on its disk, outside any quota: ours
    // are read-only.
    let result = exec(
        &server,
        "lost",
        json!(["sh", "-c", "echo x >> /etc/hosts || echo x >> /etc/hostname || echo x >> /etc/resolv.conf || echo refused"]),
    );
    assert_eq!(result["stdout"], "refused\n", "{result}");
    // The bind goes while the sandbox runs (as an engine that stops unmounts it; that
    // the engine then starts it again without is `tests/chaos`' to show, with an
    // engine of its own): the server's look finds it, stops it, gives it its disk
    // back and starts it again.
    let binds = binds_of(&id);
    assert_eq!(binds.len(), 1, "{binds:?}");
    let status = std::process::Command::new("umount")
        .args(["-l", &binds[0]])
        .status()
        .unwrap();
    assert!(status.success());
    let size_mb = |server: &Server| {
        let result = exec(server, "lost", json!(["df", "-m", "/"]));
        let df = result["stdout"].as_str().unwrap_or_default().to_string();
        df.lines()
            .nth(1)
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|size| size.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let rebound = eventually(Duration::from_secs(60), || binds_of(&id).len() == 1);
    assert!(rebound, "the disk was not bound again");
    // Within the watch's next look (30 s): stopped, given its disk, started again.
    let back = eventually(Duration::from_secs(60), || {
        let size = size_mb(&server);
        size > 0 && size <= 24
    });
    assert!(back, "the sandbox still runs without its disk");
    assert_quota_hit(&exec(&server, "lost", fill(100)), 24);
    assert_eq!(server.delete("/sandboxes/lost").0, 200);
    server.finish();
}

#[test]
fn where_quotas_cannot_hold_containers_are_refused_unless_quotas_are_off() {
    // A server in namespaces of its own (its mounts would not be the engine's to see).
    let wrapper = crate::harness::wrapped_binary("pidns", "unshare --pid --fork --mount-proc");
    let refusing = Server::start_with(Options {
        binary: Some(wrapper.clone()),
        ..Options::default()
    });
    let inner = Inner::of(&refusing);
    let (status, answer) = refusing.post("/run", r#"{"command":["true"]}"#);
    assert_eq!(status, 500, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("disk quota cannot be enforced") && error.contains("--no-disk-quota"),
        "{error}"
    );
    let (status, _) = refusing.post("/sandboxes", r#"{"name":"never"}"#);
    assert_eq!(status, 500);
    stop_in_its_namespace(refusing, inner);
    let off = Server::start_with(Options {
        binary: Some(wrapper.clone()),
        args: vec!["--no-disk-quota".into()],
        ..Options::default()
    });
    let inner = Inner::of(&off);
    let (status, answer) = off.post("/sandboxes", r#"{"name":"free"}"#);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["disk"]["enforced_by"], "none", "{answer}");
    assert_eq!(off.delete("/sandboxes/free").0, 200);
    stop_in_its_namespace(off, inner);
    let _ = std::fs::remove_file(&wrapper);
}

/// The server itself under `unshare` (which passes no signal on): its namespace's
/// PID 1, killed on drop whatever the test did (a server left running there would
/// outlive the test).
struct Inner(u32);

impl Inner {
    fn of(server: &Server) -> Inner {
        let unshare = server.pid();
        let children = eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                .is_ok_and(|children| !children.trim().is_empty())
        });
        assert!(children, "no server under unshare");
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
        Inner(children.split_whitespace().next().unwrap().parse().unwrap())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // (Gone already, once stopped: nothing to say then.)
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Stops a server run by `unshare` in its namespace's PID 1; nothing of its namespace
/// is left.
fn stop_in_its_namespace(mut server: Server, inner: Inner) {
    crate::harness::signal(inner.0, "TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
    assert!(crate::harness::containers_of(&server.namespace).is_empty());
    drop(inner);
}

/// How often the container's disk is mounted (at its own mount point) and how many
/// loop devices hold its file, deleted or not: from the kernel's own tables.
fn disk_holds(id: &str) -> (usize, usize) {
    let disk = data_dir().join("disks").join(id);
    let disk = std::fs::canonicalize(&disk).unwrap_or(disk);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(&*disk.to_string_lossy()))
        .count();
    let image = format!("{}.img", disk.display());
    let devices = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("loop/backing_file"))
                .is_ok_and(|file| file.trim_end().trim_end_matches(" (deleted)") == image)
        })
        .count();
    (mounts, devices)
}

/// Requests that each give a sandbox its disk (its create, starts racing it, starts of
/// it stopped, file reads), all at once, mount it once; a delete racing them leaves no
/// mount and no loop device.
#[test]
fn racing_requests_mount_a_disk_once_and_a_racing_delete_leaves_nothing() {
    let server = Server::start();
    let racing = |first: &str| {
        std::thread::scope(|scope| {
            for round in 0..6 {
                let server = &server;
                let first = first.to_string();
                std::thread::Builder::new()
                    .name(format!("racer-{round}"))
                    .spawn_scoped(scope, move || match (round, first.as_str()) {
                        (0, "create") => {
                            let body = r#"{"name":"racer","disk_mb":16}"#;
                            let (status, answer) = server.post("/sandboxes", body);
                            assert_eq!(status, 201, "{answer}");
                        }
                        (0, "delete") => assert_eq!(server.delete("/sandboxes/racer").0, 200),
                        // Until the create has made it (and a little after). Whatever
                        // they meet, a clear answer: never the server's fault.
                        (round, _) if round % 2 == 1 => {
                            for _ in 0..40 {
                                let (status, answer) = server.post("/sandboxes/racer/start", "");
                                assert!(status < 500, "start: {status} {answer}");
                            }
                        }
                        _ => {
                            for _ in 0..10 {
                                let path = "/sandboxes/racer/files/etc/hostname";
                                let (status, answer) = server.get(path);
                                assert!(status < 500, "file: {status} {answer}");
                            }
                        }
                    })
                    .unwrap();
            }
        })
    };
    racing("create");
    let (status, answer) = server.get("/sandboxes/racer");
    assert_eq!(status, 200, "{answer}");
    let id = answer["data"]["uuid"].as_str().unwrap().to_string();
    assert_eq!(disk_holds(&id), (1, 1), "mounted once, by one loop device");
    for _ in 0..2 {
        assert_eq!(server.post("/sandboxes/racer/stop", "").0, 200);
        racing("starts");
        assert_eq!(disk_holds(&id), (1, 1), "mounted once, by one loop device");
    }
    assert_eq!(server.post("/sandboxes/racer/stop", "").0, 200);
    racing("delete");
    assert!(
        eventually(Duration::from_secs(5), || disk_holds(&id) == (0, 0)),
        "{id}'s disk is still held: {:?}",
        disk_holds(&id)
    );
    assert!(!disks().contains(&id), "{id} kept its disk");
    server.finish();
}

/// A disk whose container is gone but that is still mounted, or only attached to a loop
/// device, after its file was deleted (as an earlier release that lost a race left
/// them): invisible by its file, found by the sweep in the kernel's tables, released.
#[test]
fn the_sweep_releases_disks_left_mounted_or_attached_after_their_file_went() {
    let run = |program: &str, args: &[&str]| -> String {
        let output = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{program} {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let dir = data_dir().join("disks");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = std::fs::canonicalize(&dir).unwrap();
    // No container has this id: a made-up one, fresh for each run.
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    let id: String = (0..64)
        .map(|at| {
            let byte = seed.as_bytes()[at % seed.len()] as usize + at;
            char::from_digit((byte % 16) as u32, 16).unwrap()
        })
        .collect();
    let image = dir.join(format!("{id}.img"));
    let image = image.to_string_lossy().into_owned();
    run("truncate", &["-s", "16M", &image]);
    run("mkfs.ext4", &["-q", "-F", &image]);
    let mounted = run("losetup", &["--find", "--show", &image]);
    let point = dir.join(&id);
    std::fs::create_dir(&point).unwrap();
    run("mount", &[&mounted, &point.to_string_lossy()]);
    run("losetup", &["--find", "--show", &image]);
    std::fs::remove_file(&image).unwrap();
    assert_eq!(disk_holds(&id), (1, 2));

    let server = Server::start();
    assert!(
        eventually(Duration::from_secs(10), || disk_holds(&id) == (0, 0)),
        "still held: {:?}",
        disk_holds(&id)
    );
    assert!(!point.exists());
    server.finish();
}
