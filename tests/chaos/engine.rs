//! A private Docker daemon per test, so that a test may kill, freeze and restart its
//! engine: its own socket, data root, exec root, pidfile and config file under a temp
//! dir, in a network namespace of its own (`ip netns`, entered with `nsenter --net`),
//! with `--bridge none --iptables=false`, so that it can never touch the host engine's
//! bridges or rules. The machine's own engine is only asked for the test image (`docker
//! save`), never stopped or reconfigured.
//!
//! Everything here fails loudly: a machine where a private daemon cannot start (no
//! root, no dockerd, no `ip netns`) fails the test with the reason, it never skips.
//! Dropping a `PrivateEngine` stops its daemon and containers, unmounts and removes
//! its dir and deletes its namespace, whatever state the test left it in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agentkernel::engine::Docker;

/// The image the tests run (built on the host engine by scripts/build-busybox-image.sh).
pub fn image() -> String {
    std::env::var("AK_TEST_IMAGE").unwrap_or_else(|_| "agentkernel/busybox:latest".into())
}

/// How long a daemon may take to answer after it is started (a restart first stops the
/// containers a crash left running, up to their stop timeout).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PrivateEngine {
    pub dir: PathBuf,
    netns: String,
    daemon: Option<Child>,
    frozen: bool,
}

impl PrivateEngine {
    /// Starts a daemon and loads the test image into it.
    pub fn start() -> PrivateEngine {
        PrivateEngine::start_with(false)
    }

    /// `start`, with gVisor's `runsc` registered as a runtime (`runtimes: runsc`), as
    /// it runs on these machines: its own network stack off (the container's network
    /// namespace is the engine's), ptrace for its platform.
    pub fn start_with_runsc() -> PrivateEngine {
        PrivateEngine::start_with(true)
    }

    fn start_with(runsc: bool) -> PrivateEngine {
        check_prerequisites();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "akc-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // Short: the socket path must fit a sockaddr_un (108 bytes).
        let dir = PathBuf::from("/tmp").join(&tag);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the private engine's dir");
        let mut config = serde_json::json!({
            "data-root": dir.join("root"),
            "storage-driver": storage_driver(),
            "live-restore": false,
        });
        if runsc {
            config["runtimes"] = serde_json::json!({
                "runsc": {
                    "path": runsc_path(),
                    "runtimeArgs": ["--platform=ptrace", "--network=none", "--file-access=shared"],
                },
            });
        }
        fs::write(dir.join("daemon.json"), config.to_string()).expect("write daemon.json");
        run_checked("ip", &["netns", "add", &tag]);
        let mut engine = PrivateEngine {
            dir,
            netns: tag,
            daemon: None,
            frozen: false,
        };
        engine.spawn_daemon();
        engine.wait_until_up(START_TIMEOUT);
        engine.load_image();
        engine
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("d.sock")
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The environment of a server of this engine: its socket, and a data dir of its
    /// own (under the engine's dir: it goes with it).
    pub fn server_env(&self) -> Vec<(String, String)> {
        vec![
            ("DOCKER_HOST".into(), self.docker_host()),
            (
                "AGENTKERNEL_DATA_DIR".into(),
                self.dir.join("data").display().to_string(),
            ),
        ]
    }

    /// Our own client on this engine.
    pub fn docker(&self) -> Docker {
        Docker::new(self.socket(), Duration::from_secs(60))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("the daemon runs").id()
    }

    fn spawn_daemon(&mut self) {
        assert!(self.daemon.is_none(), "the daemon already runs");
        // A crashed daemon leaves these; the new one would wait for a containerd that
        // no longer exists, or refuse to start.
        let _ = fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
        let _ = fs::remove_file(self.dir.join("d.pid"));
        let dir = self.dir.display().to_string();
        let dockerd = format!(
            "ip link set lo up && exec dockerd --config-file {dir}/daemon.json \
             --host unix://{dir}/d.sock --exec-root {dir}/exec --pidfile {dir}/d.pid \
             --bridge none --iptables=false --ip6tables=false"
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("open the daemon's log");
        // nsenter and sh exec in turn: the child's pid is dockerd's.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args(["sh", "-c", &dockerd])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start nsenter for dockerd");
        self.daemon = Some(child);
    }

    /// Polls `/_ping` until it answers; panics with the daemon's log if it does not.
    pub fn wait_until_up(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let docker = self.docker();
        while started.elapsed() < timeout {
            if docker.probe(Duration::from_secs(1)).is_ok() {
                return started.elapsed();
            }
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                panic!(
                    "the private dockerd exited with {status} before answering:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the private dockerd did not answer within {timeout:?}:\n{}",
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `docker save` from the host engine, `docker load` into this one.
    fn load_image(&self) {
        let pipeline = format!(
            "set -o pipefail; docker save '{}' | docker -H '{}' load -q",
            image(),
            self.docker_host()
        );
        let status = Command::new("bash")
            .args(["-c", &pipeline])
            .stdout(Stdio::null())
            .status()
            .expect("run docker save | docker load");
        assert!(
            status.success(),
            "could not copy {} from the host engine into the private one (build it with \
             scripts/build-busybox-image.sh)",
            image()
        );
    }

    /// `kill -9` of the daemon and its containerd, as a crash: the shims and the
    /// containers outlive them. Returns when the daemon was killed.
    pub fn kill(&mut self) -> Instant {
        let mut child = self.daemon.take().expect("the daemon runs");
        let containerd = children_of(child.id());
        let killed_at = Instant::now();
        signal(child.id(), "KILL");
        for pid in containerd {
            signal(pid, "KILL");
        }
        let _ = child.wait();
        self.frozen = false;
        killed_at
    }

    /// `kill -STOP`: the daemon accepts connections and answers nothing.
    pub fn freeze(&mut self) {
        signal(self.pid(), "STOP");
        self.frozen = true;
    }

    /// `kill -CONT`.
    pub fn thaw(&mut self) {
        signal(self.pid(), "CONT");
        self.frozen = false;
    }

    /// Starts the daemon again after `kill` or `stop`; returns how long it took to
    /// answer.
    pub fn start_again(&mut self) -> Duration {
        self.spawn_daemon();
        self.wait_until_up(START_TIMEOUT)
    }

    /// A power loss: the daemon, its containerd, every shim and every container process
    /// die at once, so that the next start finds nothing alive.
    pub fn kill_everything(&mut self) {
        let containers: Vec<String> = fs::read_dir(self.dir.join("root/containers"))
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        let container_pids: Vec<u32> = containers
            .iter()
            .flat_map(|id| container_processes(id))
            .collect();
        self.kill();
        for pid in processes_naming(&self.dir) {
            signal(pid, "KILL");
        }
        for pid in container_pids {
            signal(pid, "KILL");
        }
    }

    /// SIGTERM and wait: a clean stop of the daemon (it stops its containers).
    pub fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        if self.frozen {
            signal(child.id(), "CONT");
            self.frozen = false;
        }
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in children_of(child.id()) {
            signal(pid, "KILL");
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Every container on this engine, as (name, state, labels' kind).
    pub fn containers(&self) -> Vec<(String, String, String)> {
        self.docker()
            .container_list(&[])
            .expect("list the private engine's containers")
            .into_iter()
            .map(|c| {
                let kind = c
                    .labels
                    .unwrap_or_default()
                    .get("agentkernel.kind")
                    .cloned()
                    .unwrap_or_default();
                (c.names.join(","), c.state, kind)
            })
            .collect()
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        // With the daemon up, it removes its containers itself (killing their
        // processes); a killed daemon is started again for that.
        if self.frozen {
            self.thaw();
        }
        let up = self.daemon.is_some() || {
            self.spawn_daemon();
            let docker = self.docker();
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if docker.probe(Duration::from_secs(1)).is_ok() {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        if up {
            let docker = self.docker();
            for container in docker.container_list(&[]).unwrap_or_default() {
                let _ = docker.container_remove(&container.id);
            }
        }
        self.stop();
        for pid in processes_naming(&self.dir) {
            signal(pid, "KILL");
        }
        std::thread::sleep(Duration::from_millis(100));
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        // The loop devices of the disks a server gave its sandboxes (a server killed
        // with its engine never released them): freed once their mounts are gone.
        for device in loop_devices_under(&self.dir) {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
        for _ in 0..20 {
            if fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

/// Fails the test, with what is missing, where a private daemon cannot run.
/// Where gVisor's `runsc` is (Debian's package `runsc`); fails loudly without it.
pub fn runsc_path() -> String {
    for path in ["/usr/bin/runsc", "/usr/local/bin/runsc", "/usr/sbin/runsc"] {
        if Path::new(path).exists() {
            return path.to_string();
        }
    }
    panic!("runsc is not installed (Debian: apt-get install runsc): the gVisor tests need it");
}

fn check_prerequisites() {
    let uid = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the chaos tests start a private dockerd in a network namespace: they need root"
    );
    for tool in ["dockerd", "docker", "nsenter", "ip", "umount"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(found, "the chaos tests need `{tool}` on PATH");
    }
}

/// The host engine's storage driver (a second daemon given another one may not work
/// on this filesystem), unless AK_CHAOS_STORAGE_DRIVER says otherwise.
fn storage_driver() -> String {
    if let Ok(driver) = std::env::var("AK_CHAOS_STORAGE_DRIVER") {
        return driver;
    }
    static DRIVER: OnceLock<String> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let output = Command::new("docker")
                .args(["info", "-f", "{{.Driver}}"])
                .output()
                .expect("run docker info on the host engine");
            assert!(
                output.status.success(),
                "the host engine must answer (for its storage driver and the test image): {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        })
        .clone()
}

fn run_checked(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sends `KILL`, `STOP`, `CONT` or `TERM` to `pid` at once (no `kill` process to wait
/// for: the tests time what happens next).
pub fn signal(pid: u32, name: &str) {
    use rustix::process::{kill_process, Pid, Signal};
    let signal = match name {
        "KILL" => Signal::KILL,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        "TERM" => Signal::TERM,
        other => panic!("no signal {other} here"),
    };
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = kill_process(pid, signal);
    }
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(") ")?.1.to_string();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The processes whose command line names `dir` (shims, fuse-overlayfs mounts).
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|bytes| String::from_utf8_lossy(&bytes).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The processes in a container's cgroup (cgroup v1 or v2, cgroupfs driver).
fn container_processes(id: &str) -> Vec<u32> {
    for path in [
        format!("/sys/fs/cgroup/pids/docker/{id}/cgroup.procs"),
        format!("/sys/fs/cgroup/docker/{id}/cgroup.procs"),
    ] {
        if let Ok(text) = fs::read_to_string(path) {
            return text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    Vec::new()
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points under `dir`, deepest first.
/// The loop devices (`/dev/loopN`) whose file, deleted or not, is under `dir`, from the
/// kernel's own table.
fn loop_devices_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            fs::read_to_string(entry.path().join("loop/backing_file"))
                .is_ok_and(|file| file.starts_with(&prefix))
        })
        .map(|entry| format!("/dev/{}", entry.file_name().to_string_lossy()))
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    mounts
}
