//! Test harness: starts the real binary on a free port against the real engine, talks
//! HTTP to it, and cleans up every container of the test's own namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use agentkernel::config::Namespace;
use agentkernel::containers::labels;
use agentkernel::engine::Docker;
use serde_json::Value;

/// The local image every test runs in (built by scripts/build-busybox-image.sh).
pub fn image() -> String {
    std::env::var("AK_TEST_IMAGE").unwrap_or_else(|_| "agentkernel/busybox:latest".into())
}

pub fn docker() -> Docker {
    let socket = Docker::socket_from_env(std::env::var("DOCKER_HOST").ok().as_deref())
        .expect("DOCKER_HOST must be a unix socket");
    Docker::new(socket, Duration::from_secs(60))
}

/// Where test servers keep their history files (one per namespace).
pub fn data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("agentkernel-test-data");
    static PRUNED: std::sync::Once = std::sync::Once::new();
    PRUNED.call_once(|| prune_stub_copies(&dir));
    dir
}

/// Every build the tests run keeps a stub copy (tens of MB for a debug build) under the
/// test data dir; the servers never remove copies (sandboxes may mount them). No test
/// lasts a day: copies older than that are of builds no test runs any more.
fn prune_stub_copies(data_dir: &std::path::Path) {
    let day = Duration::from_secs(24 * 3600);
    let stubs = data_dir.join("stubs");
    for dir in [stubs.clone(), stubs.join("by-file")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age > day);
            if old && entry.file_type().is_ok_and(|kind| kind.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A namespace no other test uses: `t-<run>-<pid>-<n>`.
/// A shell script (removed by the caller) that runs the server binary after `prefix`:
/// `prefix` is a command that takes the binary as its arguments, or shell statements
/// ending in `;`.
pub fn wrapped_binary(tag: &str, prefix: &str) -> PathBuf {
    let script = std::env::temp_dir().join(format!("ak-{tag}-{}.sh", std::process::id()));
    let binary = env!("CARGO_BIN_EXE_agentkernel");
    let body = match prefix.strip_suffix(';') {
        Some(statements) => format!("#!/bin/sh\n{statements}\nexec {binary} \"$@\"\n"),
        None => format!("#!/bin/sh\nexec {prefix} {binary} \"$@\"\n"),
    };
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

pub fn fresh_namespace() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    // `AK_TEST_RUN` (set by `make test`) lets the leftover check look at this run's
    // namespaces only, whatever other suites share the engine.
    let run = std::env::var("AK_TEST_RUN").unwrap_or_else(|_| "0".into());
    format!(
        "t-{run}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Every container of a namespace, as (id, kind).
pub fn containers_of(namespace: &str) -> Vec<(String, String)> {
    let namespace = Namespace::parse(namespace).unwrap();
    docker()
        .container_list(&labels::filters(&namespace, None))
        .unwrap()
        .into_iter()
        .map(|c| {
            let kind = c
                .labels
                .unwrap_or_default()
                .get(labels::KIND)
                .cloned()
                .unwrap_or_default();
            (c.id, kind)
        })
        .collect()
}

/// A temporary (run or pool) container, with its owner label and engine state.
#[derive(Debug, Clone)]
pub struct Temporary {
    pub id: String,
    /// `run` or `pool`.
    pub kind: String,
    pub owner: Option<String>,
    pub state: String,
}

impl Temporary {
    /// The PID of the process that made it (the owner label starts with it).
    pub fn owner_pid(&self) -> Option<u32> {
        self.owner.as_deref()?.split('.').next()?.parse().ok()
    }
}

/// The temporary containers of a namespace.
pub fn temporary_containers(namespace: &str) -> Vec<Temporary> {
    let namespace = Namespace::parse(namespace).unwrap();
    docker()
        .container_list(&labels::filters(&namespace, None))
        .unwrap()
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            let kind = labels.get(labels::KIND).map(String::as_str);
            matches!(kind, Some("run" | "pool")).then(|| Temporary {
                kind: kind.unwrap_or_default().to_string(),
                id: c.id,
                owner: labels.get(labels::OWNER).cloned(),
                state: c.state,
            })
        })
        .collect()
}

/// The ids of the temporary containers `pid` made.
pub fn containers_owned_by(namespace: &str, pid: u32) -> Vec<String> {
    temporary_containers(namespace)
        .into_iter()
        .filter(|c| c.owner_pid() == Some(pid))
        .map(|c| c.id)
        .collect()
}

/// The snapshot images of a namespace (their tags).
pub fn snapshots_of(namespace: &str) -> Vec<String> {
    let filters = [
        "agentkernel.managed=true".to_string(),
        format!("agentkernel.namespace={namespace}"),
        "agentkernel.kind=snapshot".to_string(),
    ];
    docker()
        .image_list(&filters)
        .expect("list images")
        .into_iter()
        .map(|image| {
            image
                .repo_tags
                .unwrap_or_default()
                .into_iter()
                .next()
                .unwrap_or(image.id)
        })
        .collect()
}

/// The named volumes of a namespace (their engine names).
pub fn volumes_of(namespace: &str) -> Vec<String> {
    let filters = [
        "agentkernel.managed=true".to_string(),
        format!("agentkernel.namespace={namespace}"),
        "agentkernel.kind=volume".to_string(),
    ];
    docker()
        .volume_list(&filters)
        .expect("list volumes")
        .into_iter()
        .map(|volume| volume.name)
        .collect()
}

/// Releases the disks (`containers::disk`) under the test data dir of these removed
/// containers.
pub fn release_disks(ids: &[String]) {
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    CONFIGURED.call_once(|| agentkernel::containers::disk::configure(Some(&data_dir()), true));
    let docker = docker();
    for id in ids {
        agentkernel::containers::disk::release_when_gone(&docker, id);
    }
}

/// The container ids of the disks under the test data dir.
pub fn disks() -> Vec<String> {
    let dir = data_dir().join("disks");
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".img").map(str::to_string)
        })
        .collect();
    ids.sort();
    ids
}

pub fn remove_namespace(namespace: &str) {
    let docker = docker();
    let mut removed = Vec::new();
    for (id, _) in containers_of(namespace) {
        if docker.container_remove(&id).is_ok() {
            removed.push(id);
        }
    }
    // A snapshot of a restored sandbox is a child image, which keeps its parent until it
    // goes: rounds.
    for _ in 0..5 {
        let images = snapshots_of(namespace);
        if images.is_empty() {
            break;
        }
        for image in images {
            let _ = docker.image_remove(&image);
        }
    }
    for volume in volumes_of(namespace) {
        let _ = docker.volume_remove(&volume);
    }
    // The disks of the containers removed here (a server releases those it removes:
    // what a server leaves, `check-leftovers.sh` finds).
    release_disks(&removed);
    // The namespace's lease directory, with the leases of servers that are gone (a
    // crashed one's stays until a sweep of its namespace, which may never come here).
    let leases = data_dir().join("owners").join(namespace);
    for entry in std::fs::read_dir(&leases).into_iter().flatten().flatten() {
        let free = std::fs::File::open(entry.path()).is_ok_and(|file| file.try_lock().is_ok());
        if free {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(&leases);
}

pub struct Server {
    pub namespace: String,
    pub port: u16,
    child: Option<Child>,
    pub log: Mutex<mpsc::Receiver<String>>,
    /// Remove the namespace's containers on drop (off for restart tests that hand the
    /// namespace to a second server).
    pub cleanup: bool,
}

#[derive(Default)]
pub struct Options {
    pub namespace: Option<String>,
    /// Another copy of the binary to run (default: the one cargo built).
    pub binary: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run the server under a shell that stops it (SIGTERM) once this test process
    /// has exited, however it exits: see `shared`.
    pub until_exit: bool,
}

/// One server for the tests that leave nothing behind (one-shot runs, reads): started
/// on first use, stopped when the test process ends. Tests on it never stop it, and
/// must not depend on its pid, memory or log. Its namespace is a fresh one like any
/// other, so the leftover check (`scripts/check-leftovers.sh`) still covers it.
pub fn shared() -> &'static Server {
    static SHARED: OnceLock<Server> = OnceLock::new();
    SHARED.get_or_init(|| {
        Server::start_with(Options {
            until_exit: true,
            ..Options::default()
        })
    })
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Server {
        let namespace = options.namespace.unwrap_or_else(fresh_namespace);
        let binary = options
            .binary
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_agentkernel")));
        let mut command = if options.until_exit {
            // The shell waits for our end of its stdin to close, which happens when
            // this process exits, then stops the server as SIGTERM would.
            let mut shell = Command::new("sh");
            shell
                .args([
                    "-c",
                    "\"$@\" & server=$!; cat >/dev/null; kill -TERM $server; wait $server",
                ])
                .arg("sh")
                .arg(binary)
                .stdin(Stdio::piped());
            shell
        } else {
            let mut command = Command::new(binary);
            command.stdin(Stdio::null());
            command
        };
        command
            .args(["serve", "--port", "0", "--namespace", &namespace])
            .args(["--default-image", &image()])
            // No warm pool: runs start their container cold, and no server builds
            // containers nobody uses. Tests that measure or need the pool set their own.
            .args(["--pool-size", "0", "--pool-dynamic-size", "0"])
            .args(&options.args)
            .env_remove("AGENTKERNEL_API_KEY")
            .env("AGENTKERNEL_LOG", "info")
            .env("AGENTKERNEL_DATA_DIR", data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start agentkernel");
        let stderr = child.stderr.take().unwrap();
        let (sender, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            namespace,
            port: 0,
            child: Some(child),
            log: Mutex::new(log),
            cleanup: true,
        };
        server.port = server
            .wait_for_log("listening on http://", Duration::from_secs(60))
            .and_then(|line| {
                line.split("http://")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("server did not report its port");
        server
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let log = self
                .log
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.request("POST", path, Some(body), &[])
    }

    /// The sandboxes the server lists, name → status.
    pub fn sandboxes(&self) -> std::collections::BTreeMap<String, String> {
        let (status, body) = self.get("/sandboxes");
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.request("DELETE", path, None, &[])
    }

    /// Any request; any status is returned, never an error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        request_url(method, &self.url(path), body, headers)
    }

    /// Writes raw bytes and returns the raw answer (until the server closes or 10 s).
    pub fn raw(&self, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    // One answer is enough: stop at the end of its JSON body.
                    if answer.ends_with(b"}\n") {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// The server's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Resets the server's peak resident memory to what it holds now (`clear_refs` 5),
    /// so that `peak_rss_kib` measures what comes after, not start-up (which may copy
    /// our executable, a piece at a time, as the stub of a new version).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .expect("reset the server's peak RSS");
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        signal(child.id(), "TERM");
        wait_timeout(&mut child, Duration::from_secs(60))
            .expect("server did not exit after SIGTERM")
    }

    /// Waits up to `timeout` for the server to exit (after a signal sent with `signal`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = wait_timeout(self.child.as_mut().expect("server running"), timeout)?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL: a crash.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("server already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server gracefully and asserts that it left no temporary container and
    /// that the test removed its sandboxes.
    pub fn finish(mut self) {
        let status = self.terminate();
        assert!(status.success(), "server exited with {status}");
        // Shutdown is bounded (gone within 10 s of SIGTERM): on a busy engine its
        // clean-up may be cut short, and then the warm and run containers end by
        // themselves (their stubs see the connection close; `AutoRemove`). Give them
        // that moment; a sandbox or an idle-shell container never goes on its own.
        let gone = eventually(Duration::from_secs(15), || {
            containers_of(&self.namespace).is_empty()
        });
        let left = containers_of(&self.namespace);
        assert!(gone, "containers left behind: {left:?}");
        let snapshots = snapshots_of(&self.namespace);
        assert!(snapshots.is_empty(), "snapshots left behind: {snapshots:?}");
        let volumes = volumes_of(&self.namespace);
        assert!(volumes.is_empty(), "volumes left behind: {volumes:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.cleanup {
            remove_namespace(&self.namespace);
            let history = data_dir().join(format!("{}.history.jsonl", self.namespace));
            let _ = std::fs::remove_file(&history);
        }
    }
}

/// Any request to a full URL, from any thread (`Server` itself stays on the test's
/// thread); any status is returned, never an error.
pub fn request_url(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let mut request = agent.request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some(body) => request
            .set("Content-Type", "application/json")
            .send_string(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {url}: {error}"),
    };
    let status = response.status();
    // Read whole (`into_string` stops at 10 MiB; a batch's answer can be larger).
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .unwrap_or_else(|error| panic!("{method} {url}: reading the answer: {error}"));
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{method} {url} answered non-JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().ok()? {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stand-in for the engine's socket that forwards to the real one and can be made
/// unreachable on demand: the one fault a real engine cannot be asked to show.
pub struct EngineProxy {
    pub path: std::path::PathBuf,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EngineProxy {
    pub fn start() -> EngineProxy {
        use std::os::unix::net::{UnixListener, UnixStream};
        let path = std::env::temp_dir().join(format!("ak-proxy-{}.sock", fresh_namespace()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind proxy socket");
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let real = Docker::socket_from_env(std::env::var("DOCKER_HOST").ok().as_deref()).unwrap();
        let flag = down.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(engine) = UnixStream::connect(&real) else {
                    continue;
                };
                let (mut client_read, mut engine_write) =
                    (client.try_clone().unwrap(), engine.try_clone().unwrap());
                let (mut engine_read, mut client_write) = (engine, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_read, &mut engine_write);
                    let _ = engine_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut engine_read, &mut client_write);
                    let _ = client_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        EngineProxy { path, down }
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Taken by the tests that keep the machine's cores busy (endless printers, fork
/// bombs) and by those that time a bound against the engine's pace: they run one at a
/// time, so that one's load cannot push another past its bound, while the rest of
/// the suite runs beside them (`make test` runs four tests at once on two cores).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
/// A port free now, for a server that must come back on the same one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// A sandbox as an earlier release made it: the stub as init, mounted from the
/// executable, and no exec socket (its execs and file operations go by `docker exec`).
pub fn sandbox_without_socket(server: &Server, sandbox: &str) -> String {
    use agentkernel::config::Namespace;
    use agentkernel::containers::labels::{self, Kind, SandboxName};
    use agentkernel::containers::profile::Profile;
    use agentkernel::engine::ContainerSpec;
    let namespace = Namespace::parse(&server.namespace).unwrap();
    let name = SandboxName::parse(sandbox).unwrap();
    let mut labels = labels::labels(&namespace, Kind::Sandbox, &image(), "moderate", Some(&name));
    labels.insert(labels::STUB.to_string(), "1".to_string());
    let mounts = vec![(
        PathBuf::from(env!("CARGO_BIN_EXE_agentkernel")),
        agentkernel::stub::STUB_PATH.to_string(),
    )];
    let mut spec = ContainerSpec {
        name: Some(labels::container_name(&namespace, &name)),
        image: image(),
        labels,
        entrypoint: Some(vec![
            agentkernel::stub::STUB_PATH.into(),
            "stub".into(),
            "--idle".into(),
        ]),
        host: Profile::Moderate.host_settings(Profile::Moderate.default_limits(), "/", mounts),
        ..ContainerSpec::default()
    };
    spec.host.init = false;
    let docker = docker();
    let id = docker.container_create(&spec).unwrap();
    docker.container_start(&id).unwrap();
    id
}
