//! `make bench`: latency and throughput of the server against raw Engine API floors
//! measured in the same run, printed as a table with ratios and the targets.
//!
//! Phases:
//! 1. 60 `/run` fast requests back to back, with a pool sized for the burst (64 warm
//!    containers, filled first): the warm path as a burst sees it, fallbacks counted.
//! 2. 60 rounds, each running once, in turn, `/run` fast:false, exec into a sandbox, a
//!    raw exec (create/start/drain/inspect in a running container) and a raw cold run
//!    (create/attach/start/drain/wait/remove). Interleaving keeps the machine's drift
//!    out of the ratios; the server is let settle (used containers removed, pool
//!    refilled) before each of its measurements, since the raw floors leave no such
//!    background work behind them.
//!    Each round also times an exec stream into the sandbox to its first output event.
//! 3. 8 concurrent clients send 200 execs into the one sandbox, then 200 `/run`
//!    requests; the server's peak RSS is read from /proc.
//!
//! 4. Sustained load (see `sustained_load`).
//! 5. gVisor: a private engine with `runsc` registered (`scripts/private-engine.sh`),
//!    a server on it under `runsc` and one under `runc`: `/run` fast and sandbox exec
//!    under runsc, as ratios of the same under runc, measured in turn in the same run
//!    (no target: gVisor's cost, said).
//!
//! Ratios are against the raw floors of the same run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel::config::Namespace;
use agentkernel::containers::labels::{self, Kind};
use agentkernel::containers::profile::Profile;
use agentkernel::engine::{ContainerSpec, Docker, ExecSpec};
use serde_json::{json, Value};

const ROUNDS: usize = 60;
/// Warm containers: enough for the back-to-back burst of phase 1.
const POOL: usize = 64;
const CONCURRENT_CLIENTS: usize = 8;
const CONCURRENT_REQUESTS: usize = 200;

fn main() {
    let image =
        std::env::var("AK_BENCH_IMAGE").unwrap_or_else(|_| "agentkernel/busybox:latest".into());
    let namespace = format!("bench-{}", std::process::id());
    let binary = std::env::var("AK_BENCH_BINARY")
        .unwrap_or_else(|_| "target/x86_64-unknown-linux-gnu/release/agentkernel".into());
    let socket = Docker::socket_from_env(std::env::var("DOCKER_HOST").ok().as_deref()).unwrap();
    let docker = Docker::new(socket, Duration::from_secs(60));
    // `AK_BENCH_PHASES=gvisor`: only the gVisor rows (phase 5).
    if std::env::var("AK_BENCH_PHASES").as_deref() == Ok("gvisor") {
        header();
        gvisor_rows(&binary);
        return;
    }
    // `AK_BENCH_PHASES=load`: only the sustained load (phase 4).
    if std::env::var("AK_BENCH_PHASES").as_deref() == Ok("load") {
        let load = sustained_load(&binary, &image, &docker);
        header();
        load_rows(&load, None);
        rate_row("raw throughput, 4 clients", load.raw_per_s, None);
        let met = report_load(&load);
        for (name, met) in &met {
            println!("{} {name}", if *met { "MET " } else { "MISS" });
        }
        std::process::exit(if met.iter().all(|(_, met)| *met) {
            0
        } else {
            1
        });
    }

    let server = Server::start(
        &binary,
        &namespace,
        &image,
        &["--pool-size", &POOL.to_string(), "--workers", "8"],
    );
    let port = server.port;
    let base = format!("http://127.0.0.1:{port}");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let post = |path: &str, body: &Value| -> Value {
        agent
            .post(&format!("{base}{path}"))
            .send_json(body.clone())
            .unwrap_or_else(|error| panic!("POST {path}: {error}"))
            .into_json()
            .unwrap()
    };
    let pool_state = || -> Value {
        agent
            .get(&format!("{base}/pool"))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    };
    let fallbacks = || {
        pool_state()["data"]["keys"][0]["fallbacks"]
            .as_u64()
            .unwrap_or(0)
    };
    let settle = || {
        wait_until(Duration::from_secs(300), || {
            let state = pool_state();
            state["data"]["keys"][0]["ready"] == json!(POOL) && state["data"]["reaping"] == json!(0)
        })
    };
    settle();

    // A running container for the raw exec floor, and a sandbox for the API exec.
    let ns = Namespace::parse(&namespace).unwrap();
    let host = Profile::Moderate.host_settings(Profile::Moderate.default_limits(), "/", Vec::new());
    let idle = ContainerSpec {
        image: image.clone(),
        labels: labels::labels(&ns, Kind::Run, &image, "moderate", None),
        entrypoint: Some(vec!["sleep".into(), "3600".into()]),
        host: host.clone(),
        ..ContainerSpec::default()
    };
    let idle_id = docker.container_create(&idle).unwrap();
    docker.container_start(&idle_id).unwrap();
    post("/sandboxes", &json!({"name": "bench"}));

    let echo = json!({"command": ["echo", "hi"]});
    let mut fast = Vec::new();
    let mut cold = Vec::new();
    let mut sandbox = Vec::new();
    let mut raw_exec = Vec::new();
    let mut raw_cold = Vec::new();
    let mut first_byte = Vec::new();
    // Phase 1: a burst of fast runs, back to back, served by the pool.
    for _ in 0..ROUNDS {
        fast.push(timed(|| check(post("/run", &echo))));
    }
    let sequential_fallbacks = fallbacks();

    // Phase 2: interleaved rounds of everything else.
    for _ in 0..ROUNDS {
        settle();
        cold.push(timed(|| {
            check(post(
                "/run",
                &json!({"command": ["echo", "hi"], "fast": false}),
            ))
        }));
        settle();
        sandbox.push(timed(|| check(post("/sandboxes/bench/exec", &echo))));
        first_byte.push(first_output_ms(port, "/sandboxes/bench/exec/stream"));
        settle();
        raw_exec.push(timed(|| raw_exec_once(&docker, &idle_id)));
        raw_cold.push(timed(|| raw_cold_once(&docker, &ns, &image, &host)));
    }

    // Phase 3a: 8 concurrent clients exec into the one sandbox.
    let exec_url = format!("{base}/sandboxes/bench/exec");
    let (concurrent_execs, exec_failures) = {
        let next = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CONCURRENT_CLIENTS)
            .map(|client| {
                let (next, url) = (Arc::clone(&next), exec_url.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(120))
                        .build();
                    let (mut took, mut failures) = (Vec::new(), 0);
                    while next.fetch_add(1, Ordering::SeqCst) < CONCURRENT_REQUESTS {
                        let word = format!("c{client}");
                        let started = Instant::now();
                        let answer = agent
                            .post(&url)
                            .send_json(json!({"command": ["echo", word]}))
                            .map_err(|error| error.to_string())
                            .and_then(|r| r.into_json::<Value>().map_err(|e| e.to_string()));
                        took.push(started.elapsed().as_secs_f64() * 1000.0);
                        match answer {
                            Ok(v) if v["data"]["stdout"] == json!(format!("{word}\n")) => {}
                            other => {
                                if failures == 0 {
                                    eprintln!("bench: a concurrent exec failed: {other:?}");
                                }
                                failures += 1;
                            }
                        }
                    }
                    (took, failures)
                })
            })
            .collect();
        let mut took = Vec::new();
        let mut failures = 0;
        for client in clients {
            let (client_took, client_failures) = client.join().unwrap();
            took.extend(client_took);
            failures += client_failures;
        }
        (took, failures)
    };

    // Phase 3: concurrent clients.
    let before = fallbacks();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CONCURRENT_CLIENTS)
        .map(|_| {
            let next = Arc::clone(&next);
            let url = format!("{base}/run");
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build();
                let mut failures = 0;
                while next.fetch_add(1, Ordering::SeqCst) < CONCURRENT_REQUESTS {
                    let answer = agent
                        .post(&url)
                        .send_json(json!({"command": ["echo", "hi"]}))
                        .map_err(|error| error.to_string())
                        .and_then(|r| r.into_json::<Value>().map_err(|e| e.to_string()));
                    match answer {
                        Ok(v) if v["data"]["stdout"] == json!("hi\n") => {}
                        other => {
                            if failures == 0 {
                                eprintln!("bench: a concurrent /run failed: {other:?}");
                            }
                            failures += 1;
                        }
                    }
                }
                failures
            })
        })
        .collect();
    let failures: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let elapsed = started.elapsed();
    let concurrent_fallbacks = fallbacks() - before;
    let peak_rss_kib = peak_rss_kib(server.child.id());

    // Clean up: the sandbox, the idle container, the server (which sweeps the rest).
    agent
        .delete(&format!("{base}/sandboxes/bench"))
        .call()
        .unwrap();
    docker.container_remove(&idle_id).unwrap();
    server.stop(&docker, &ns);

    // Phase 4: sustained load on a server with the default pool settings.
    let load = sustained_load(&binary, &image, &docker);

    let raw_exec_p50 = percentile(&raw_exec, 50.0);
    let raw_cold_p50 = percentile(&raw_cold, 50.0);
    println!(
        "agentkernel bench: `echo hi`; {ROUNDS} back-to-back /run fast (pool of {POOL}), \
         then {ROUNDS} interleaved rounds of the rest, then sustained load on a server \
         with the default pool settings (ms, or runs/s where it says so)\n"
    );
    header();
    row("/run fast", &fast, Some(raw_exec_p50));
    row("/run fast:false", &cold, Some(raw_cold_p50));
    row("sandbox exec", &sandbox, Some(raw_exec_p50));
    row(
        "sandbox exec, 8 at once",
        &concurrent_execs,
        Some(raw_exec_p50),
    );
    row("exec stream: first output", &first_byte, Some(raw_exec_p50));
    load_rows(&load, Some(raw_exec_p50));
    row("raw exec (Engine API)", &raw_exec, None);
    row("raw cold run (Engine API)", &raw_cold, None);
    rate_row("raw throughput, 4 clients", load.raw_per_s, None);
    println!(
        "\nratios: fast:false against raw cold; throughput against raw throughput (runs/s); \
         the rest against raw exec"
    );
    println!("pool fallbacks during the {ROUNDS} back-to-back /run fast: {sequential_fallbacks}");
    println!(
        "sandbox execs, {CONCURRENT_CLIENTS} clients at once into one sandbox: \
         {CONCURRENT_REQUESTS}, {exec_failures} failed or wrong"
    );
    println!(
        "concurrent: {CONCURRENT_CLIENTS} clients, {CONCURRENT_REQUESTS} /run in {:.2} s = {:.1} req/s, \
         {concurrent_fallbacks} fell back to the cold path, {failures} failed",
        elapsed.as_secs_f64(),
        CONCURRENT_REQUESTS as f64 / elapsed.as_secs_f64()
    );
    println!("server peak RSS: {:.1} MiB", peak_rss_kib as f64 / 1024.0);
    println!();
    header();
    gvisor_rows(&binary);

    let load_targets = report_load(&load);
    let fast_p50 = percentile(&fast, 50.0);
    let targets = [
        ("/run fast p50 <= 10 ms", fast_p50 <= 10.0),
        (
            "/run fast p50 <= 0.25 x raw exec",
            fast_p50 <= 0.25 * raw_exec_p50,
        ),
        (
            "/run fast:false p50 <= 1.15 x raw cold",
            percentile(&cold, 50.0) <= 1.15 * raw_cold_p50,
        ),
        (
            "sandbox exec p50 <= 5 ms",
            percentile(&sandbox, 50.0) <= 5.0,
        ),
        (
            "sandbox exec p50 <= 0.1 x raw exec",
            percentile(&sandbox, 50.0) <= 0.1 * raw_exec_p50,
        ),
        (
            "exec stream first output p50 <= 3 ms",
            percentile(&first_byte, 50.0) <= 3.0,
        ),
        (
            "8 concurrent execs into one sandbox all correct",
            exec_failures == 0,
        ),
        ("peak RSS <= 30 MiB", peak_rss_kib <= 30 * 1024),
        ("no failed request", failures == 0),
    ];
    println!();
    let mut all = true;
    for (name, met) in targets.into_iter().chain(load_targets) {
        println!("{} {name}", if met { "MET " } else { "MISS" });
        all &= met;
    }
    std::process::exit(if all { 0 } else { 1 });
}

fn header() {
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "measure", "p50", "p95", "min", "ratio"
    );
}

/// A latency row: p50, p95 and min in ms, and p50 as a ratio of `floor`.
fn row(name: &str, samples: &[f64], floor: Option<f64>) {
    let p50 = percentile(samples, 50.0);
    let ratio = floor
        .map(|f| format!("{:.2}x", p50 / f))
        .unwrap_or_default();
    println!(
        "{name:<34} {p50:>8.1} {:>8.1} {:>8.1} {ratio:>8}",
        percentile(samples, 95.0),
        samples.iter().cloned().fold(f64::MAX, f64::min)
    );
}

/// A throughput row: runs/s, and as a ratio of `floor`.
fn rate_row(name: &str, per_s: f64, floor: Option<f64>) {
    let ratio = floor
        .map(|f| format!("{:.2}x", per_s / f))
        .unwrap_or_default();
    println!("{name:<34} {per_s:>8.2} {:>8} {:>8} {ratio:>8}", "-", "-");
}

/// The sustained-load rows: latencies against `raw_exec_p50`, throughput against the
/// raw engine's.
fn load_rows(load: &Load, raw_exec_p50: Option<f64>) {
    row("/run at 1/s (light)", &load.light, raw_exec_p50);
    row("/run at 2/s for 60 s (steady)", &load.steady, raw_exec_p50);
    rate_row(
        "/run throughput, 4 clients (runs/s)",
        load.server_per_s,
        Some(load.raw_per_s),
    );
}

/// Prints the sustained-load notes; returns their targets.
fn report_load(load: &Load) -> Vec<(&'static str, bool)> {
    let throughput_ratio = load.server_per_s / load.raw_per_s;
    println!(
        "throughput: {THROUGHPUT_CLIENTS} clients in a closed loop, {THROUGHPUT_BLOCKS} blocks \
         of {} s each, server and raw in turn; /run {} runs, {} failed or wrong; the \
         server's time runs until its pool is back where it began",
        THROUGHPUT_BLOCK.as_secs(),
        load.throughput_runs,
        load.throughput_failures,
    );
    println!(
        "steady load: {} fallbacks after the first {ADAPT_SECONDS} s; pool at its end: {}",
        load.steady_late_fallbacks, load.steady_pool
    );
    println!(
        "load server peak RSS: {:.1} MiB",
        load.peak_rss_kib as f64 / 1024.0
    );

    vec![
        (
            "/run at 1/s: p50 <= 5 ms",
            percentile(&load.light, 50.0) <= 5.0,
        ),
        (
            "/run at 1/s: p95 <= 10 ms",
            percentile(&load.light, 95.0) <= 10.0,
        ),
        (
            "/run at 2/s: p95 <= 25 ms",
            percentile(&load.steady, 95.0) <= 25.0,
        ),
        (
            "/run at 2/s: no fallback once adapted",
            load.steady_late_fallbacks == 0,
        ),
        (
            "throughput >= 0.8 x raw at 4 clients",
            throughput_ratio >= 0.8,
        ),
        (
            "throughput: no failed or wrong run",
            load.throughput_failures == 0,
        ),
        (
            "load server peak RSS <= 30 MiB",
            load.peak_rss_kib <= 30 * 1024,
        ),
    ]
}

/// From sending an exec stream request to its first `output` event, in ms.
fn first_output_ms(port: u16, path: &str) -> f64 {
    use std::io::{Read, Write};
    let body = r#"{"command":["echo","hi"]}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    stream.write_all(request.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let mut first = None;
    loop {
        let count = stream.read(&mut buffer).unwrap();
        if count == 0 {
            break;
        }
        seen.extend_from_slice(&buffer[..count]);
        if first.is_none() && seen.windows(13).any(|w| w == b"event: output") {
            first = Some(started.elapsed());
        }
    }
    first.expect("no output event").as_secs_f64() * 1000.0
}

fn check(answer: Value) {
    assert_eq!(answer["data"]["stdout"], json!("hi\n"), "{answer}");
}

fn timed(work: impl FnOnce()) -> f64 {
    let started = Instant::now();
    work();
    started.elapsed().as_secs_f64() * 1000.0
}

fn raw_exec_once(docker: &Docker, container: &str) {
    let spec = ExecSpec {
        cmd: vec!["echo".into(), "hi".into()],
        ..ExecSpec::default()
    };
    let id = docker.exec_create(container, &spec).unwrap();
    let mut hijacked = docker.exec_start(&id).unwrap();
    let mut out = Vec::new();
    agentkernel::engine::drain_frames(&mut hijacked.frames, |_, bytes| {
        out.extend_from_slice(bytes)
    })
    .unwrap();
    assert_eq!(out, b"hi\n");
    while docker.exec_inspect(&id).unwrap().running {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn raw_cold_once(
    docker: &Docker,
    namespace: &Namespace,
    image: &str,
    host: &agentkernel::engine::HostSettings,
) {
    let spec = ContainerSpec {
        image: image.to_string(),
        labels: labels::labels(namespace, Kind::Run, image, "moderate", None),
        entrypoint: Some(vec!["echo".into(), "hi".into()]),
        host: host.clone(),
        ..ContainerSpec::default()
    };
    let id = docker.container_create(&spec).unwrap();
    let mut hijacked = docker.container_attach(&id, false).unwrap();
    docker.container_start(&id).unwrap();
    let mut out = Vec::new();
    agentkernel::engine::drain_frames(&mut hijacked.frames, |_, bytes| {
        out.extend_from_slice(bytes)
    })
    .unwrap();
    assert_eq!(out, b"hi\n");
    assert_eq!(
        docker.container_wait(&id, Duration::from_secs(30)).unwrap(),
        0
    );
    docker.container_remove(&id).unwrap();
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for the pool");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A release server started for the bench, in its own namespace.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    fn start(binary: &str, namespace: &str, image: &str, extra: &[&str]) -> Server {
        Server::start_with(binary, namespace, image, extra, &[])
    }

    fn start_with(
        binary: &str,
        namespace: &str,
        image: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = Command::new(binary)
            .args(["serve", "--port", "0", "--namespace", namespace])
            .args(["--default-image", image])
            .args(extra)
            .env("AGENTKERNEL_LOG", "warn,agentkernel=info")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error} (run `make bench`)"));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut lines = stderr.lines();
        let port: u16 = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(rest) = line.split("http://").nth(1) {
                break rest
                    .split(' ')
                    .next()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, port }
    }

    /// Stops the server (it removes its pool) and removes whatever its namespace still
    /// holds.
    fn stop(self, docker: &Docker, namespace: &Namespace) {
        drop(self);
        for container in docker
            .container_list(&labels::filters(namespace, None))
            .unwrap_or_default()
        {
            let _ = docker.container_remove(&container.id);
        }
    }
}

/// A bench that fails half-way must not leave its server (and warm pool) running.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Light and steady open-loop load, then closed-loop throughput against the raw engine,
/// on a server with the default pool settings.
struct Load {
    light: Vec<f64>,
    steady: Vec<f64>,
    steady_late_fallbacks: u64,
    steady_pool: Value,
    server_per_s: f64,
    raw_per_s: f64,
    throughput_failures: usize,
    throughput_runs: usize,
    peak_rss_kib: u64,
}

const LIGHT_SECONDS: u64 = 40;
const STEADY_SECONDS: u64 = 60;
/// Steady-load fallbacks are counted after this much adaptation.
const ADAPT_SECONDS: u64 = 10;
const THROUGHPUT_CLIENTS: usize = 4;
/// Throughput is measured in blocks, server and raw in turn, so drift cancels.
const THROUGHPUT_BLOCKS: usize = 2;
const THROUGHPUT_BLOCK: Duration = Duration::from_secs(15);

fn sustained_load(binary: &str, image: &str, docker: &Docker) -> Load {
    let namespace = format!("bench-load-{}", std::process::id());
    let ns = Namespace::parse(&namespace).unwrap();
    let server = Server::start(binary, &namespace, image, &["--workers", "8"]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let key = || -> Value {
        let state: Value = agent
            .get(&format!("{base}/pool"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        json!({"key": state["data"]["keys"][0], "reaping": state["data"]["reaping"]})
    };
    let fallbacks = || key()["key"]["fallbacks"].as_u64().unwrap_or(0);
    let settled = || {
        let state = key();
        state["key"]["ready"] == state["key"]["target"] && state["reaping"] == json!(0)
    };
    wait_until(Duration::from_secs(300), settled);
    // Timed from when it was due, so that a request the one before held up counts its
    // wait (an open loop, not a client that slows down with the server).
    let run = |due: Instant| {
        let answer: Value = agent
            .post(&format!("{base}/run"))
            .send_json(json!({"command": ["echo", "hi"]}))
            .unwrap()
            .into_json()
            .unwrap();
        check(answer);
        due.elapsed().as_secs_f64() * 1000.0
    };
    // Open loop: one request every `every`, on schedule whatever the latencies.
    let paced = |every: Duration, seconds: u64, mut at_adapted: Option<&mut u64>| {
        let count = (seconds as f64 / every.as_secs_f64()) as u32;
        let started = Instant::now();
        let mut took = Vec::new();
        for i in 0..count {
            let due = started + every * i;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if started.elapsed() >= Duration::from_secs(ADAPT_SECONDS) {
                if let Some(mark) = at_adapted.take() {
                    *mark = fallbacks();
                }
            }
            took.push(run(due));
        }
        took
    };
    let light = paced(Duration::from_secs(1), LIGHT_SECONDS, None);
    let mut adapted_fallbacks = 0;
    let steady = paced(
        Duration::from_millis(500),
        STEADY_SECONDS,
        Some(&mut adapted_fallbacks),
    );
    let steady_late_fallbacks = fallbacks() - adapted_fallbacks;
    let steady_pool = key();

    // Closed loop: THROUGHPUT_CLIENTS clients for a block, the server's and the raw
    // engine's in turn. The server's time runs until its pool is back where it was at
    // the block's start and every used container is removed, so that work it put off
    // (removals, refills) and the warm containers it began with are paid for.
    let (mut server_runs, mut server_time, mut raw_runs, mut raw_time) =
        (0, Duration::ZERO, 0, Duration::ZERO);
    let mut throughput_failures = 0;
    let host = Profile::Moderate.host_settings(Profile::Moderate.default_limits(), "/", Vec::new());
    for _ in 0..THROUGHPUT_BLOCKS {
        wait_until(Duration::from_secs(300), settled);
        let ready_before = key()["key"]["ready"].as_u64().unwrap_or(0);
        let started = Instant::now();
        let (runs, failures) = closed_loop(THROUGHPUT_CLIENTS, THROUGHPUT_BLOCK, || {
            let answer = ureq::post(&format!("{base}/run"))
                .send_json(json!({"command": ["echo", "hi"]}))
                .map_err(|error| error.to_string())
                .and_then(|r| r.into_json::<Value>().map_err(|e| e.to_string()));
            matches!(answer, Ok(v) if v["data"]["stdout"] == json!("hi\n"))
        });
        wait_until(Duration::from_secs(300), || {
            let state = key();
            state["key"]["ready"].as_u64().unwrap_or(0) >= ready_before
                && state["reaping"] == json!(0)
        });
        server_time += started.elapsed();
        server_runs += runs;
        throughput_failures += failures;

        let started = Instant::now();
        let (runs, failures) = closed_loop(THROUGHPUT_CLIENTS, THROUGHPUT_BLOCK, || {
            raw_cold_once(docker, &ns, image, &host);
            true
        });
        raw_time += started.elapsed();
        raw_runs += runs;
        assert_eq!(failures, 0);
    }
    let peak_rss_kib = peak_rss_kib(server.child.id());
    server.stop(docker, &ns);
    Load {
        light,
        steady,
        steady_late_fallbacks,
        steady_pool,
        server_per_s: server_runs as f64 / server_time.as_secs_f64(),
        raw_per_s: raw_runs as f64 / raw_time.as_secs_f64(),
        throughput_failures,
        throughput_runs: server_runs,
        peak_rss_kib,
    }
}

/// `clients` threads call `once` until `length` is up; returns the calls made and how
/// many answered false.
fn closed_loop(clients: usize, length: Duration, once: impl Fn() -> bool + Sync) -> (usize, usize) {
    let done = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                while started.elapsed() < length {
                    if !once() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (done.into_inner(), failed.into_inner())
}

/// The private engine of phase 5, stopped (everything it started gone) on drop.
struct PrivateEngine {
    dir: String,
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args(["scripts/private-engine.sh", "stop", &self.dir])
            .status();
    }
}

/// Phase 5: `/run` fast and sandbox exec under gVisor, against runc on the same
/// private engine, measured in turn (runc, runsc, runc, runsc...) so that the
/// machine's drift falls on both.
fn gvisor_rows(binary: &str) {
    const GVISOR_ROUNDS: usize = 20;
    if !std::path::Path::new("/usr/bin/runsc").exists() {
        println!("gVisor rows: runsc is not installed (Debian: apt-get install runsc)");
        return;
    }
    let image =
        std::env::var("AK_BENCH_IMAGE").unwrap_or_else(|_| "agentkernel/busybox:latest".into());
    let dir = format!("/tmp/akbench-{}", std::process::id());
    let started = Command::new("bash")
        .args(["scripts/private-engine.sh", "start", &dir])
        .output()
        .expect("run scripts/private-engine.sh");
    let engine = PrivateEngine { dir: dir.clone() };
    assert!(
        started.status.success(),
        "private engine: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let docker_host = String::from_utf8_lossy(&started.stdout).trim().to_string();
    let data = format!("{dir}/data");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let servers: Vec<(&str, Server)> = ["runc", "runsc"]
        .into_iter()
        .map(|runtime| {
            let namespace = format!("bench-{runtime}-{}", std::process::id());
            let server = Server::start_with(
                binary,
                &namespace,
                &image,
                &[
                    "--default-runtime",
                    runtime,
                    "--default-network",
                    "none",
                    "--pool-size",
                    "2",
                ],
                &[
                    ("DOCKER_HOST", &docker_host),
                    ("AGENTKERNEL_DATA_DIR", &data),
                ],
            );
            (runtime, server)
        })
        .collect();
    let base = |server: &Server| format!("http://127.0.0.1:{}", server.port);
    let post = |server: &Server, path: &str, body: &Value| -> Value {
        agent
            .post(&format!("{}{path}", base(server)))
            .send_json(body.clone())
            .unwrap_or_else(|error| panic!("POST {path}: {error}"))
            .into_json()
            .unwrap()
    };
    let settle = |server: &Server| {
        wait_until(Duration::from_secs(300), || {
            let state: Value = agent
                .get(&format!("{}/pool", base(server)))
                .call()
                .ok()
                .and_then(|answer| answer.into_json().ok())
                .unwrap_or_default();
            state["data"]["keys"][0]["ready"] == json!(2) && state["data"]["reaping"] == json!(0)
        })
    };
    for (_, server) in &servers {
        settle(server);
        post(server, "/sandboxes", &json!({"name": "bench"}));
    }
    let echo = json!({"command": ["echo", "hi"]});
    let mut fast: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let mut exec: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for _ in 0..GVISOR_ROUNDS {
        for (index, (_, server)) in servers.iter().enumerate() {
            settle(server);
            fast[index].push(timed(|| check(post(server, "/run", &echo))));
            exec[index].push(timed(|| {
                check(post(server, "/sandboxes/bench/exec", &echo))
            }));
        }
    }
    let fast_runc = percentile(&fast[0], 50.0);
    let exec_runc = percentile(&exec[0], 50.0);
    row("runc /run fast (private engine)", &fast[0], None);
    row("runsc /run fast", &fast[1], Some(fast_runc));
    row("runc sandbox exec (private engine)", &exec[0], None);
    row("runsc sandbox exec", &exec[1], Some(exec_runc));
    println!("gVisor ratios: against runc on the same private engine, {GVISOR_ROUNDS} rounds each");
    for (_, server) in servers {
        drop(server);
    }
    drop(engine);
}
