//! `make cluster-bench`: what a router costs, and what three agents carry.
//!
//! Three agents (release builds, namespaces of their own, a warm pool of 4 each) on this
//! machine's engine and a router in front of them (`--nodes`). Then:
//! 1. 80 rounds, each in turn: `/run` to the first agent direct, `/run` through a router
//!    in front of that agent alone (the same warm pool serves both), an exec into a
//!    sandbox direct (to the agent that has it), the same exec through the router,
//!    400 ms apart (a steady pace the pool keeps warm for both: at 150 ms a third of the
//!    runs were cold, and p50 fell between the two). Interleaved, so the machine's drift
//!    stays out of the differences; printed
//!    as p50/p95 and the router's p50 over the direct one's (ms and ratio).
//! 2. Throughput: 6 clients back to back for 15 s sending `/run` to one agent direct,
//!    then through the router (three agents): runs per second and the ratio.
//!
//! Every figure is against one measured in the same run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const ROUNDS: usize = 80;
const CLIENTS: usize = 6;
const THROUGHPUT_FOR: Duration = Duration::from_secs(15);

struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    fn start(binary: &str, args: &[&str]) -> Server {
        let mut child = Command::new(binary)
            .args(["serve", "--port", "0"])
            .args(args)
            .env("AGENTKERNEL_LOG", "warn,agentkernel=info")
            .env_remove("AGENTKERNEL_API_KEY")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start {binary}: {error} (run `make cluster-bench`)")
            });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port: u16 = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(rest) = line.split("http://").nth(1) {
                let address = rest.split(' ').next().unwrap();
                break address.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> Value {
    let answer = agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(body)
        .unwrap_or_else(|error| panic!("POST {url}: {error}"));
    answer.into_json().unwrap()
}

fn get(agent: &ureq::Agent, url: &str) -> Value {
    match agent.get(url).call() {
        Ok(answer) => answer.into_json().unwrap_or_default(),
        Err(ureq::Error::Status(_, answer)) => answer.into_json().unwrap_or_default(),
        Err(_) => Value::Null,
    }
}

fn timed(work: impl FnOnce()) -> f64 {
    let started = Instant::now();
    work();
    started.elapsed().as_secs_f64() * 1000.0
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index]
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "not ready after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() {
    let binary = "target/x86_64-unknown-linux-gnu/release/agentkernel";
    let image = std::env::var("AK_BENCH_IMAGE").unwrap_or("agentkernel/busybox:latest".into());
    let run_id = std::process::id();
    let namespaces: Vec<String> = (0..3).map(|i| format!("bench-cl-{run_id}-{i}")).collect();
    let agents: Vec<Server> = namespaces
        .iter()
        .map(|namespace| {
            Server::start(
                binary,
                &[
                    "--namespace",
                    namespace,
                    "--default-image",
                    &image,
                    "--pool-size",
                    "4",
                    "--default-network",
                    "none",
                ],
            )
        })
        .collect();
    let nodes: Vec<String> = agents
        .iter()
        .map(|agent| format!("127.0.0.1:{}", agent.port))
        .collect();
    let router = Server::start(binary, &["--cluster", "--nodes", &nodes.join(",")]);
    // The router's own cost: a router in front of the first agent alone, against that
    // agent direct (the same warm pool serves both).
    let single = Server::start(binary, &["--cluster", "--nodes", &nodes[0]]);
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    for router in [&router, &single] {
        wait_until(Duration::from_secs(60), || {
            let health = get(&http, &router.url("/health"));
            health["agents"]
                .as_array()
                .is_some_and(|agents| agents.iter().all(|a| a["state"] == "up" && a["warm"] == 4))
        });
    }

    let created = post(
        &http,
        &router.url("/sandboxes"),
        r#"{"name":"bench","network":"none"}"#,
    );
    assert_eq!(created["success"], true, "{created}");
    let holder = agents
        .iter()
        .find(|agent| get(&http, &agent.url("/sandboxes/bench"))["success"] == true)
        .expect("the sandbox is on an agent");

    let run = r#"{"command":["true"]}"#;
    let exec = r#"{"command":["true"]}"#;
    let mut samples: [Vec<f64>; 4] = Default::default();
    for round in 0..ROUNDS {
        // The pool refills between runs; let it, as a client at a steady pace would. The
        // two go first in turn: the second meets the first's teardown and refill.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            std::thread::sleep(Duration::from_millis(400));
            let url = if index == 0 {
                agents[0].url("/run")
            } else {
                single.url("/run")
            };
            samples[index].push(timed(|| {
                post(&http, &url, run);
            }));
        }
        samples[2].push(timed(|| {
            post(&http, &holder.url("/sandboxes/bench/exec"), exec);
        }));
        samples[3].push(timed(|| {
            post(&http, &router.url("/sandboxes/bench/exec"), exec);
        }));
    }
    println!(
        "{:<36} {:>8} {:>8} {:>10} {:>8}",
        "measure (ms)", "p50", "p95", "router +", "ratio"
    );
    for (name, index, base) in [
        ("/run fast, agent direct", 0, None),
        ("/run fast, through the router", 1, Some(0)),
        ("sandbox exec, agent direct", 2, None),
        ("sandbox exec, through the router", 3, Some(2)),
    ] {
        let p50 = percentile(&samples[index], 50.0);
        let (extra, ratio) = match base {
            Some(base) => {
                let direct = percentile(&samples[base], 50.0);
                (
                    format!("{:+.2}", p50 - direct),
                    format!("{:.2}x", p50 / direct),
                )
            }
            None => (String::new(), String::new()),
        };
        println!(
            "{name:<36} {p50:>8.2} {:>8.2} {extra:>10} {ratio:>8}",
            percentile(&samples[index], 95.0)
        );
    }

    let closed_loop = |url: String| {
        let done = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..CLIENTS {
                scope.spawn(|| {
                    let http = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(120))
                        .build();
                    while started.elapsed() < THROUGHPUT_FOR {
                        let ok = http
                            .post(&url)
                            .send_string(run)
                            .is_ok_and(|answer| answer.status() == 200);
                        if !ok {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        let per_s = done.into_inner() as f64 / started.elapsed().as_secs_f64();
        (per_s, failed.into_inner())
    };
    let (one, one_failed) = closed_loop(agents[0].url("/run"));
    std::thread::sleep(Duration::from_secs(5));
    let (three, three_failed) = closed_loop(router.url("/run"));
    println!(
        "{:<36} {one:>8.2} runs/s ({one_failed} failed)",
        format!("/run, {CLIENTS} clients, one agent direct")
    );
    println!(
        "{:<36} {three:>8.2} runs/s ({three_failed} failed), {:.2}x",
        format!("/run, {CLIENTS} clients, router, 3 agents"),
        three / one
    );

    let deleted = http.delete(&router.url("/sandboxes/bench")).call();
    assert!(deleted.is_ok(), "{deleted:?}");
    drop(router);
    drop(single);
    drop(agents);
    // Whatever an agent could not remove in its shutdown.
    for namespace in &namespaces {
        let output = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=agentkernel.namespace={namespace}"))
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}
