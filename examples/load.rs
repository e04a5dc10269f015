//! `make load`: the release server under sustained concurrent load, every phase a row of
//! one table: throughput, latency percentiles, errors split by kind, wrong outputs, pool
//! fallbacks, the server's peak RSS and the containers left behind; then the targets.
//!
//! Phases, each `LOAD_SECONDS` long (default 20), against one server started here with
//! `--workers 8 --queue 64` and a warm pool sized for 16 clients:
//! 1. `GET /health` from 64 keep-alive connections.
//! 2. `POST /run` `echo hi` from 1, 4, 8 and 16 clients, each on its own keep-alive
//!    connection, sending its next request as soon as the last is answered. Before each
//!    row the server is let settle (pool refilled, used containers removed), so a row
//!    does not pay for the one before it.
//! 3. Overload: workers + queue + 8 clients, more than the server admits, so some
//!    requests must be refused with a 503 at once. A refused client pauses 10 ms before
//!    trying again, as a polite client would, so the refusals do not starve the machine.
//!
//! Every client is bounded in time and in count, every request by a 60 s timeout, and
//! only 127.0.0.1 is targeted. Peak RSS per phase is the kernel's high-water mark
//! (`VmHWM`, reset through `/proc/PID/clear_refs` at the start of the phase) or, where
//! that reset is refused, the highest `VmRSS` sampled every 20 ms. At the end the server
//! is stopped with SIGTERM and its namespace must be empty; whatever is left is counted
//! and removed, also when this program panics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkernel::config::Namespace;
use agentkernel::containers::labels;
use agentkernel::engine::Docker;
use serde_json::{json, Value};

const WORKERS: usize = 8;
const QUEUE: usize = 64;
/// Warm containers: twice the largest client count below the overload.
const POOL: usize = 32;
const HEALTH_CONNECTIONS: usize = 64;
const RUN_CLIENTS: [usize; 4] = [1, 4, 8, 16];
/// Clients beyond what the server admits (workers busy, queue full).
const OVERLOAD_CLIENTS: usize = WORKERS + QUEUE + 8;
/// The second bound on every client loop, besides its time.
const MAX_REQUESTS_PER_CLIENT: usize = 5_000_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A refused client's pause before its next request.
const BUSY_PAUSE: Duration = Duration::from_millis(10);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
const RSS_TARGET_KIB: u64 = 40 * 1024;
/// A 503 slower than this counts as a hang.
const BUSY_TARGET_MS: f64 = 1000.0;

fn main() {
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .map(|value| {
            value
                .parse()
                .expect("LOAD_SECONDS: a whole number of seconds")
        })
        .unwrap_or(20);
    let phase_length = Duration::from_secs(seconds);
    let image = std::env::var("LOAD_IMAGE").unwrap_or_else(|_| "agentkernel/busybox:latest".into());
    let binary = std::env::var("LOAD_BINARY")
        .unwrap_or_else(|_| "target/x86_64-unknown-linux-gnu/release/agentkernel".into());
    let namespace = format!("load-{}", std::process::id());
    let socket = Docker::socket_from_env(std::env::var("DOCKER_HOST").ok().as_deref()).unwrap();
    let docker = Docker::new(socket, Duration::from_secs(60));

    let mut server = Server::start(&binary, &namespace, &image, docker);
    let base = format!("http://127.0.0.1:{}", server.port);
    let pool_state = || -> Value {
        ureq::AgentBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .get(&format!("{base}/pool"))
            .call()
            .ok()
            .and_then(|response| response.into_json().ok())
            .unwrap_or(Value::Null)
    };
    let fallbacks = || pool_state()["data"]["keys"][0]["fallbacks"].as_u64();
    // Settled: the pool is full again and no used container is waiting for removal.
    // Returns the containers of the namespace beyond the warm pool, or None if the
    // server did not settle in time.
    let settle = || -> Option<usize> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let state = pool_state();
            let ready = state["data"]["keys"][0]["ready"].as_u64();
            if ready == Some(POOL as u64) && state["data"]["reaping"] == json!(0) {
                let containers = server.containers().len();
                return Some(containers.saturating_sub(POOL));
            }
            if Instant::now() >= deadline {
                eprintln!("load: the server did not settle in {SETTLE_TIMEOUT:?}: {state}");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    settle();

    let mut rows = Vec::new();
    let health_url = format!("{base}/health");
    rows.push(measure(
        "GET /health",
        HEALTH_CONNECTIONS,
        phase_length,
        server.pid,
        |agent| get_health(agent, &health_url),
    ));
    let run_url = format!("{base}/run");
    let mut run_rows = Vec::new();
    for clients in RUN_CLIENTS.into_iter().chain([OVERLOAD_CLIENTS]) {
        settle();
        let before = fallbacks();
        let mut row = measure("POST /run", clients, phase_length, server.pid, |agent| {
            post_run(agent, &run_url)
        });
        row.fallbacks = before
            .zip(fallbacks())
            .map(|(before, after)| after - before);
        row.left = settle();
        run_rows.push(row);
    }
    rows.extend(run_rows);

    let (left_after_shutdown, exit) = server.stop();
    let log = server.log.lock().unwrap().clone();

    println!(
        "agentkernel load: `echo hi`, release server with {WORKERS} workers, queue {QUEUE}, \
         pool {POOL}; {seconds} s per row; latencies in ms over 2xx answers\n"
    );
    println!(
        "{:<12} {:>7} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6} {:>7} {:>6} {:>8} {:>6} {:>8} {:>5}",
        "phase",
        "clients",
        "ok/s",
        "p50",
        "p95",
        "p99",
        "max",
        "ok",
        "wrong",
        "503",
        "other",
        "503 max",
        "fallb",
        "RSS MiB",
        "left"
    );
    for row in &rows {
        row.print();
    }
    println!(
        "\nok: 2xx answers (for /run, with stdout \"hi\\n\"); wrong: a 2xx with other output; \
         other: any other status or a transport error;\nfallb: /run that found the pool \
         empty and started a container cold; left: containers beyond the warm pool once \
         the server settled after the row;\nthe last row has {OVERLOAD_CLIENTS} clients = \
         workers + queue + 8: the server admits {} requests at once and answers the rest 503.",
        WORKERS + QUEUE
    );
    println!(
        "\nslowest first request of a client (connect included) against the slowest later one:"
    );
    for row in &rows {
        println!(
            "  {} at {} clients: first {:.1} ms; later {:.1} ms, later 503 {}",
            row.name,
            row.clients,
            row.first_max,
            row.later_max,
            if row.later_busy_max > 0.0 {
                format!("{:.1} ms", row.later_busy_max)
            } else {
                "-".into()
            }
        );
    }
    for row in &rows {
        if let Some(failure) = &row.first_failure {
            println!(
                "first failure, {} at {} clients: {failure}",
                row.name, row.clients
            );
        }
    }
    let complaints: Vec<&String> = log
        .iter()
        .filter(|line| {
            (line.contains("[WARN]") || line.contains("[ERROR]")) && !line.contains("queue full")
        })
        .collect();
    println!(
        "server: exit {exit}; {} warning/error lines besides queue-full 503s{}",
        complaints.len(),
        complaints
            .first()
            .map(|line| format!(" (first: {line})"))
            .unwrap_or_default()
    );
    println!("after shutdown: {left_after_shutdown} containers left in namespace '{namespace}'");

    let run_rows = &rows[1..];
    let mut within_workers = run_rows.iter().filter(|row| row.clients <= WORKERS);
    let overload = &rows[rows.len() - 1];
    let sixteen = run_rows.iter().find(|row| row.clients == 16).unwrap();
    let targets = [
        (
            "no error on GET /health".to_string(),
            rows[0].busy.is_empty() && rows[0].other == 0,
        ),
        (
            format!("no error and no wrong output at <= {WORKERS} clients"),
            within_workers.all(|row| row.busy.is_empty() && row.other == 0 && row.wrong == 0),
        ),
        (
            format!(
                "server peak RSS <= {} MiB at 16 clients",
                RSS_TARGET_KIB / 1024
            ),
            sixteen.peak_rss_kib <= RSS_TARGET_KIB,
        ),
        (
            format!(
                "overload: 503s seen ({}), each within {BUSY_TARGET_MS} ms; nothing but 2xx and 503",
                overload.busy.len()
            ),
            !overload.busy.is_empty()
                && overload.other == 0
                && overload.wrong == 0
                && overload.busy.iter().all(|&ms| ms <= BUSY_TARGET_MS),
        ),
        (
            "no container left after shutdown".to_string(),
            left_after_shutdown == 0,
        ),
    ];
    println!();
    let mut all = true;
    for (name, met) in targets {
        println!("{} {name}", if met { "MET   " } else { "MISSED" });
        all &= met;
    }
    std::process::exit(if all { 0 } else { 1 });
}

/// What one request came to.
enum Outcome {
    /// A 2xx with the expected body.
    Ok,
    /// A 2xx with another body.
    Wrong(String),
    /// A 503.
    Busy,
    /// Any other status, or a transport error.
    Other(String),
}

fn get_health(agent: &ureq::Agent, url: &str) -> Outcome {
    match agent.get(url).call() {
        Ok(response) => match response.into_string() {
            Ok(body) if body.contains("\"ok\"") => Outcome::Ok,
            Ok(body) => Outcome::Wrong(body),
            Err(error) => Outcome::Other(error.to_string()),
        },
        Err(error) => refused(error),
    }
}

fn post_run(agent: &ureq::Agent, url: &str) -> Outcome {
    match agent
        .post(url)
        .send_json(json!({"command": ["echo", "hi"]}))
    {
        Ok(response) => match response.into_json::<Value>() {
            Ok(answer) if answer["data"]["stdout"] == json!("hi\n") => Outcome::Ok,
            Ok(answer) => Outcome::Wrong(answer.to_string()),
            Err(error) => Outcome::Other(error.to_string()),
        },
        Err(error) => refused(error),
    }
}

/// A non-2xx answer or a transport error. The body is read, so that the connection is
/// kept for the next request.
fn refused(error: ureq::Error) -> Outcome {
    match error {
        ureq::Error::Status(503, response) => {
            let _ = response.into_string();
            Outcome::Busy
        }
        ureq::Error::Status(status, response) => {
            let body = response.into_string().unwrap_or_default();
            Outcome::Other(format!("{status} {body}"))
        }
        ureq::Error::Transport(transport) => Outcome::Other(transport.to_string()),
    }
}

/// One row of the table.
struct Row {
    name: &'static str,
    clients: usize,
    elapsed: Duration,
    /// Latencies (ms) of the 2xx answers, right or wrong.
    answered: Vec<f64>,
    /// Latencies (ms) of the 503s.
    busy: Vec<f64>,
    wrong: usize,
    other: usize,
    first_failure: Option<String>,
    peak_rss_kib: u64,
    fallbacks: Option<u64>,
    left: Option<usize>,
    /// The slowest first request of a client (it includes the connect).
    first_max: f64,
    /// The slowest later request (on an open keep-alive connection), not a 503.
    later_max: f64,
    /// The slowest later 503.
    later_busy_max: f64,
}

impl Row {
    fn print(&self) {
        let ok = self.answered.len() - self.wrong;
        let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        let is_run = self.name.starts_with("POST");
        println!(
            "{:<12} {:>7} {:>9.1} {:>7.2} {:>7.2} {:>7.2} {:>8.1} {:>8} {:>6} {:>7} {:>6} {:>8} {:>6} {:>8.1} {:>5}",
            self.name,
            self.clients,
            ok as f64 / self.elapsed.as_secs_f64(),
            percentile(&self.answered, 50.0),
            percentile(&self.answered, 95.0),
            percentile(&self.answered, 99.0),
            self.answered.iter().cloned().fold(0.0, f64::max),
            ok,
            self.wrong,
            self.busy.len(),
            self.other,
            optional(
                (!self.busy.is_empty())
                    .then(|| format!("{:.1}", self.busy.iter().cloned().fold(0.0, f64::max)))
            ),
            optional(self.fallbacks.filter(|_| is_run).map(|n| n.to_string())),
            self.peak_rss_kib as f64 / 1024.0,
            optional(self.left.filter(|_| is_run).map(|n| n.to_string())),
        );
    }
}

/// Runs `clients` threads, each with its own agent (one keep-alive connection), sending
/// `request` back to back for `length`; samples the server's RSS meanwhile.
fn measure(
    name: &'static str,
    clients: usize,
    length: Duration,
    server_pid: u32,
    request: impl Fn(&ureq::Agent) -> Outcome + Sync,
) -> Row {
    eprintln!("load: {name} at {clients} clients for {length:?}");
    let hwm_reset = reset_peak_rss(server_pid);
    let sampling = AtomicBool::new(true);
    let started = Instant::now();
    let deadline = started + length;
    let (outcomes, sampled_rss_kib) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while sampling.load(Ordering::SeqCst) {
                peak = peak.max(status_kib(server_pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let request = &request;
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
                    let mut outcomes = Vec::new();
                    while Instant::now() < deadline && outcomes.len() < MAX_REQUESTS_PER_CLIENT {
                        let sent = Instant::now();
                        let outcome = request(&agent);
                        let ms = sent.elapsed().as_secs_f64() * 1000.0;
                        let busy = matches!(outcome, Outcome::Busy);
                        outcomes.push((ms, outcomes.is_empty(), outcome));
                        if busy {
                            std::thread::sleep(BUSY_PAUSE);
                        }
                    }
                    outcomes
                })
            })
            .collect();
        let outcomes: Vec<(f64, bool, Outcome)> = threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect();
        sampling.store(false, Ordering::SeqCst);
        (outcomes, sampler.join().unwrap())
    });
    let elapsed = started.elapsed();
    let mut peak_rss_kib = sampled_rss_kib;
    if hwm_reset {
        peak_rss_kib = peak_rss_kib.max(status_kib(server_pid, "VmHWM:"));
    }
    let mut row = Row {
        name,
        clients,
        elapsed,
        answered: Vec::new(),
        busy: Vec::new(),
        wrong: 0,
        other: 0,
        first_failure: None,
        peak_rss_kib,
        fallbacks: None,
        left: None,
        first_max: 0.0,
        later_max: 0.0,
        later_busy_max: 0.0,
    };
    for (ms, first, outcome) in outcomes {
        let busy = matches!(outcome, Outcome::Busy);
        let slowest = match (first, busy) {
            (true, _) => &mut row.first_max,
            (false, false) => &mut row.later_max,
            (false, true) => &mut row.later_busy_max,
        };
        *slowest = slowest.max(ms);
        match outcome {
            Outcome::Ok => row.answered.push(ms),
            Outcome::Wrong(body) => {
                row.answered.push(ms);
                row.wrong += 1;
                row.first_failure
                    .get_or_insert(format!("wrong output: {body}"));
            }
            Outcome::Busy => row.busy.push(ms),
            Outcome::Other(error) => {
                row.other += 1;
                row.first_failure
                    .get_or_insert(format!("after {ms:.0} ms: {error}"));
            }
        }
    }
    row
}

/// The server process, stopped (and its namespace emptied) on drop if not before.
struct Server {
    child: Option<Child>,
    pid: u32,
    port: u16,
    namespace: Namespace,
    docker: Docker,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(binary: &str, namespace: &str, image: &str, docker: Docker) -> Server {
        let data_dir = std::env::temp_dir().join(format!("agentkernel-{namespace}"));
        let mut child = Command::new(binary)
            .args(["serve", "--port", "0", "--namespace", namespace])
            .args(["--default-image", image])
            .args(["--workers", &WORKERS.to_string()])
            .args(["--queue", &QUEUE.to_string()])
            .args(["--pool-size", &POOL.to_string()])
            .env_remove("AGENTKERNEL_API_KEY")
            .env("AGENTKERNEL_LOG", "info")
            .env("AGENTKERNEL_DATA_DIR", &data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error} (run `make load`)"));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut port = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            port = line
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split(' ').next()?.rsplit(':').next()?.parse().ok());
            log.lock().unwrap().push(line);
            if port.is_some() {
                break;
            }
        }
        // Keep the warnings and errors (the info lines, one per request, are dropped).
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if !line.contains("[INFO]") {
                        log.lock().unwrap().push(line);
                    }
                }
            });
        }
        let pid = child.id();
        let server = Server {
            child: Some(child),
            pid,
            port: port.unwrap_or(0),
            namespace: Namespace::parse(namespace).unwrap(),
            docker,
            log,
        };
        assert!(
            server.port != 0,
            "the server did not report its port: {:?}",
            server.log.lock().unwrap()
        );
        server
    }

    fn containers(&self) -> Vec<agentkernel::engine::ContainerSummary> {
        self.docker
            .container_list(&labels::filters(&self.namespace, None))
            .unwrap_or_default()
    }

    /// SIGTERM, a bounded wait (then SIGKILL), then the containers still in the
    /// namespace once the warm ones had a moment to remove themselves; those are
    /// removed. Returns their count and the server's exit status.
    fn stop(&mut self) -> (usize, String) {
        let Some(mut child) = self.child.take() else {
            return (0, "already stopped".into());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        let exit = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    break format!("killed after 60 s: {:?}", child.wait());
                }
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left = self.containers();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            left = self.containers();
        }
        for container in &left {
            let _ = self.docker.container_remove(&container.id);
        }
        let data_dir =
            std::env::temp_dir().join(format!("agentkernel-{}", self.namespace.as_str()));
        let _ = std::fs::remove_dir_all(data_dir);
        (left.len(), exit)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resets the kernel's RSS high-water mark of `pid` (Linux 4.0+); false if refused.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}
