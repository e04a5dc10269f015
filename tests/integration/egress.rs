//! Egress policies, proven from inside sandboxes against destinations of our own: a
//! network namespace with a private address (10.251.N.2) and a public-looking one
//! (198.51.100.N), each answering TCP on 8080 and DNS queries (UDP) on 53; a listener on
//! the host; the server's own port; another sandbox. `public` reaches the public
//! address only, and everything else fails fast; `none` reaches nothing; `full`
//! reaches everything. The policy holds across stop/start and a server restart.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{fresh_namespace, Options, Server};

/// A network namespace routed from the host, with a TCP greeter and a UDP echo.
struct Destinations {
    netns: String,
    private: String,
    public: String,
    /// A private address that only the 10/8 refusal covers (not a neighbour of the
    /// host's: routed through the namespace).
    routed: String,
    listener: Option<Child>,
}

const SERVE: &str = r#"
import socket, threading
received = 0
def dns():
    global received
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 53))
    while True:
        query, peer = u.recvfrom(2048)
        received += 1
        if len(query) >= 12:
            # The query back as an answer: "no such name".
            u.sendto(query[:2] + bytes([query[2] | 0x80, (query[3] & 0xF0) | 3]) + query[4:], peer)
threading.Thread(target=dns, daemon=True).start()
def greet(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    return s
listeners = [greet(8080), greet(8081)]
def serve(s):
    while True:
        c, _ = s.accept()
        c.sendall(("hello %d\n" % received).encode())
        c.close()
threading.Thread(target=serve, args=(listeners[1],), daemon=True).start()
print("ready", flush=True)
serve(listeners[0])
"#;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

impl Destinations {
    fn new() -> Destinations {
        // One set per test of this process, numbered apart.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let n = (std::process::id() + 101 * made) % 200 + 20;
        let netns = format!("akdst{n}");
        let (host_end, ns_end) = (format!("akh{n}"), format!("akn{n}"));
        let private = format!("10.251.{n}.2");
        let public = format!("198.51.100.{n}");
        let routed = format!("10.252.{n}.2");
        let _ = Command::new("ip")
            .args(["netns", "delete", &netns])
            .status();
        ip(&["netns", "add", &netns]);
        let mut destinations = Destinations {
            netns: netns.clone(),
            private: private.clone(),
            public: public.clone(),
            routed: routed.clone(),
            listener: None,
        };
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
        ]);
        ip(&["link", "set", &ns_end, "netns", &netns]);
        ip(&["addr", "add", &format!("10.251.{n}.1/24"), "dev", &host_end]);
        ip(&["link", "set", &host_end, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", netns.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{private}/24"), "dev", &ns_end]);
        inside(&["addr", "add", &format!("{public}/32"), "dev", &ns_end]);
        inside(&["addr", "add", &format!("{routed}/32"), "dev", &ns_end]);
        inside(&["link", "set", &ns_end, "up"]);
        inside(&["route", "add", "default", "via", &format!("10.251.{n}.1")]);
        ip(&["route", "add", &format!("{public}/32"), "via", &private]);
        ip(&["route", "add", &format!("{routed}/32"), "via", &private]);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c", SERVE])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the destinations' listener");
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready.trim(), "ready");
        destinations.listener = Some(child);
        destinations
    }
}

impl Destinations {
    /// How many datagrams the resolver received so far (its greeting says).
    fn datagrams(&self) -> u64 {
        let mut stream = std::net::TcpStream::connect((self.private.as_str(), 8080)).unwrap();
        let mut greeting = String::new();
        std::io::Read::read_to_string(&mut stream, &mut greeting).unwrap();
        greeting
            .trim()
            .strip_prefix("hello ")
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("greeting: {greeting:?}"))
    }
}

impl Drop for Destinations {
    fn drop(&mut self) {
        if let Some(mut child) = self.listener.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The veth pair and the route through it go with the namespace.
        for address in [&self.public, &self.routed] {
            let _ = Command::new("ip")
                .args(["route", "del", &format!("{address}/32")])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

/// What a probe from a sandbox found: its output, and how long it took.
struct Probe {
    stdout: String,
    stderr: String,
    millis: u64,
}

fn exec(server: &Server, sandbox: &str, script: &str) -> Probe {
    let body = json!({ "command": ["sh", "-c", script] }).to_string();
    let (status, answer) = server.request(
        "POST",
        &format!("/sandboxes/{sandbox}/exec"),
        Some(&body),
        &[("X-API-Key", "k")],
    );
    assert_eq!(status, 200, "{answer}");
    let data = &answer["data"];
    Probe {
        stdout: data["stdout"].as_str().unwrap_or_default().to_string(),
        stderr: data["stderr"].as_str().unwrap_or_default().to_string(),
        millis: data["duration_ms"].as_u64().unwrap_or(u64::MAX),
    }
}

fn tcp(server: &Server, sandbox: &str, host: &str, port: u16) -> Probe {
    exec(
        server,
        sandbox,
        &format!("nc -w 3 {host} {port} </dev/null"),
    )
}

/// A DNS query (a UDP packet) to the destinations' resolver at `host`; whether it
/// arrived, from the datagrams the destinations counted (asked from the test itself).
fn dns(server: &Server, sandbox: &str, host: &str, destinations: &Destinations) -> (bool, Probe) {
    let before = destinations.datagrams();
    let probe = exec(server, sandbox, &format!("nslookup example.org {host}"));
    (destinations.datagrams() > before, probe)
}

/// Answered: the greeting (or, for a listener that says nothing, a connect).
fn assert_reached(probe: &Probe, expected: &str, what: &str) {
    assert!(
        probe.stdout.contains(expected),
        "{what}: expected {expected:?}, got {:?} {:?}",
        probe.stdout,
        probe.stderr
    );
}

/// Refused or unreachable, fast: never a hang until nc's own timeout.
fn assert_stopped(probe: &Probe, what: &str) {
    assert!(
        !probe.stdout.contains("hello"),
        "{what}: reached ({:?})",
        probe.stdout
    );
    assert!(probe.millis < 2000, "{what}: took {} ms", probe.millis);
}

fn create(server: &Server, name: &str, network: Option<&str>) -> Value {
    let mut body = json!({ "name": name });
    if let Some(network) = network {
        body["network"] = json!(network);
    }
    let (status, answer) = server.request(
        "POST",
        "/sandboxes",
        Some(&body.to_string()),
        &[("X-API-Key", "k")],
    );
    assert_eq!(status, 201, "{answer}");
    answer["data"].clone()
}

fn gateway(server: &Server, sandbox: &str) -> String {
    let routes = exec(server, sandbox, "ip route").stdout;
    routes
        .lines()
        .find_map(|line| line.strip_prefix("default via "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no default route in {sandbox}: {routes}"))
        .to_string()
}

#[test]
fn each_policy_reaches_what_it_says_and_nothing_else() {
    let destinations = Destinations::new();
    let (private, public) = (destinations.private.clone(), destinations.public.clone());
    // A listener on the host, on every address.
    let host = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut connection in host.incoming().flatten() {
            let _ = connection.write_all(b"hello from the host\n");
        }
    });
    let namespace = fresh_namespace();
    let options = || Options {
        namespace: Some(namespace.clone()),
        // Reachable on every address of the host, as a server open to its network is.
        args: vec!["--host".into(), "0.0.0.0".into()],
        env: vec![("AGENTKERNEL_API_KEY".into(), "k".into())],
        ..Options::default()
    };
    // Its clean-up (on drop, after the second server's, or on a failure) removes what
    // the test made.
    let mut server = Server::start_with(options());
    let port = server.port;

    // The profile's default: moderate is public.
    assert_eq!(create(&server, "pub", None)["network"], json!("public"));
    assert_eq!(create(&server, "other", None)["network"], json!("public"));
    assert_eq!(
        create(&server, "full", Some("full"))["network"],
        json!("full")
    );
    assert_eq!(
        create(&server, "none", Some("none"))["network"],
        json!("none")
    );

    // full reaches everything: both destinations, the host, the server.
    let full_gateway = gateway(&server, "full");
    assert_reached(
        &tcp(&server, "full", &public, 8080),
        "hello",
        "full → public address",
    );
    assert_reached(
        &tcp(&server, "full", &private, 8080),
        "hello",
        "full → private address",
    );
    assert!(
        dns(&server, "full", &private, &destinations).0,
        "full → private DNS"
    );
    assert_reached(
        &tcp(&server, "full", &full_gateway, host_port),
        "hello from the host",
        "full → host listener",
    );

    // public: the public address only.
    let probe_public = |server: &Server, when: &str| {
        let gateway = gateway(server, "pub");
        assert_reached(&tcp(server, "pub", &public, 8080), "hello", when);
        assert!(
            dns(server, "pub", &public, &destinations).0,
            "{when}: public DNS"
        );
        for (host, port, what) in [
            (private.as_str(), 8080, "a private address"),
            ("169.254.169.254", 80, "the metadata address"),
            (gateway.as_str(), host_port, "the host through its gateway"),
            (
                full_gateway.as_str(),
                host_port,
                "the host's default bridge",
            ),
            (gateway.as_str(), port, "the server's own port"),
            ("127.0.0.1", port, "the server's port on loopback"),
        ] {
            assert_stopped(&tcp(server, "pub", host, port), &format!("{when}: {what}"));
        }
        // A DNS query to a resolver of the command's choosing, a private one: the
        // packet never arrives (nslookup then gives up by itself).
        let (arrived, probe) = dns(server, "pub", &private, &destinations);
        assert!(!arrived, "{when}: a private resolver got the query");
        assert!(
            probe.millis < 15_000,
            "{when}: DNS took {} ms",
            probe.millis
        );
        // An IPv6 literal: no route at all.
        let v6 = exec(server, "pub", "nc -w 3 2001:db8::1 80 </dev/null");
        assert_stopped(&v6, &format!("{when}: an IPv6 literal"));
    };
    probe_public(&server, "public");
    // Another sandbox, serving on its own address.
    let listen = json!({"command": ["nc", "-ll", "-p", "9000", "-e", "echo", "hello"]});
    let (status, answer) = server.request(
        "POST",
        "/sandboxes/other/exec/detach",
        Some(&listen.to_string()),
        &[("X-API-Key", "k")],
    );
    assert_eq!(status, 200, "{answer}");
    let other = exec(&server, "other", "ip -4 -o addr show eth0").stdout;
    let other_address = other
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no address: {other}"))
        .to_string();
    assert_reached(
        &tcp(&server, "other", "127.0.0.1", 9000),
        "hello",
        "its own listener",
    );
    assert_stopped(
        &tcp(&server, "pub", &other_address, 9000),
        "another sandbox",
    );

    // Names resolve through the engine's resolver as on the engine's default bridge
    // (the engine forwards from inside the container: the host's resolvers are let
    // through, port 53 only).
    let resolved = |sandbox: &str| {
        let probe = exec(&server, sandbox, "nslookup deb.debian.org");
        probe.stdout.contains("Name:") || probe.stdout.contains("Address: ")
    };
    if resolved("full") {
        assert!(resolved("pub"), "a name full resolves, public does not");
    }

    // Rules moved or lost (an engine that puts its own first, an operator, a firewall
    // reload) are put back within a look of egress-watch.
    let iptables = |args: &[&str]| {
        let status = Command::new("iptables")
            .args(["-w", "10"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "iptables {args:?}");
    };
    let accept_first = ["DOCKER-USER", "-i", "ak-public0", "-j", "ACCEPT"];
    let refusal = [
        "AGENTKERNEL-PUBLIC",
        "-d",
        "10.0.0.0/8",
        "-p",
        "tcp",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ];
    let refusal_icmp = [
        "AGENTKERNEL-PUBLIC",
        "-d",
        "10.0.0.0/8",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-port-unreachable",
    ];
    let accept_forward = ["FORWARD", "-i", "ak-public0", "-j", "ACCEPT"];
    iptables(&[&["-I"], &accept_first[..1], &["1"], &accept_first[1..]].concat());
    iptables(&[&["-I"], &accept_forward[..1], &["1"], &accept_forward[1..]].concat());
    iptables(&[&["-D"], &refusal[..]].concat());
    iptables(&[&["-D"], &refusal_icmp[..]].concat());
    let routed = destinations.routed.clone();
    assert_reached(
        &tcp(&server, "full", &routed, 8080),
        "hello",
        "full → routed",
    );
    let repaired = crate::harness::eventually(Duration::from_secs(20), || {
        let probe = tcp(&server, "pub", &routed, 8080);
        !probe.stdout.contains("hello") && probe.millis < 2000
    });
    iptables(&[&["-D"], &accept_first[..]].concat());
    iptables(&[&["-D"], &accept_forward[..]].concat());
    assert!(repaired, "the rules were not put back");

    // `agentkernel egress` (for a boot unit): the same network and rules, from the CLI.
    let installed = Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .arg("egress")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&installed.stdout);
    assert!(installed.status.success(), "{said} {:?}", installed.stderr);
    assert!(
        said.contains("egress: networks and rules in place"),
        "{said}"
    );

    // A fork of a sandbox keeps its policy.
    let (status, answer) = server.request(
        "POST",
        "/snapshots",
        Some(&json!({"sandbox": "none", "name": "none-snap"}).to_string()),
        &[("X-API-Key", "k")],
    );
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = server.request(
        "POST",
        "/sandboxes",
        Some(&json!({"name": "fork", "snapshot": "none-snap"}).to_string()),
        &[("X-API-Key", "k")],
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["data"]["network"], json!("none"));
    server.request("DELETE", "/sandboxes/fork", None, &[("X-API-Key", "k")]);
    server.request(
        "DELETE",
        "/snapshots/none-snap",
        None,
        &[("X-API-Key", "k")],
    );

    // none: nothing but loopback: not the destinations, the host (its listener, the
    // server's port), the metadata address.
    for (host, port) in [
        (public.as_str(), 8080),
        (private.as_str(), 8080),
        (full_gateway.as_str(), host_port),
        (full_gateway.as_str(), port),
        ("169.254.169.254", 80),
    ] {
        assert_stopped(
            &tcp(&server, "none", host, port),
            &format!("none → {host}:{port}"),
        );
    }

    // One-shot runs take the same policies.
    let run = |network: &str, host: &str| {
        let body =
            json!({"network": network, "command": ["nc", "-w", "3", host, "8080"], "stdin": ""});
        let (status, answer) = server.request(
            "POST",
            "/run",
            Some(&body.to_string()),
            &[("X-API-Key", "k")],
        );
        assert_eq!(status, 200, "{answer}");
        answer["data"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(run("public", &public).contains("hello"));
    assert!(!run("public", &private).contains("hello"));
    assert!(run("full", &private).contains("hello"));
    assert!(!run("none", &public).contains("hello"));

    // The policy is the sandbox's for its life: across stop and start...
    for step in ["stop", "start"] {
        let (status, answer) = server.request(
            "POST",
            &format!("/sandboxes/pub/{step}"),
            None,
            &[("X-API-Key", "k")],
        );
        assert_eq!(status, 200, "{answer}");
    }
    probe_public(&server, "after stop and start");
    // ... and a server restart.
    server.terminate();
    let server = Server::start_with(options());
    let (status, answer) = server.request("GET", "/sandboxes/pub", None, &[("X-API-Key", "k")]);
    assert_eq!(
        (status, &answer["data"]["network"]),
        (200, &json!("public"))
    );
    probe_public(&server, "after a server restart");
    for name in ["pub", "other", "full", "none"] {
        server.request(
            "DELETE",
            &format!("/sandboxes/{name}"),
            None,
            &[("X-API-Key", "k")],
        );
    }
    server.finish();
    drop(destinations);
}

/// A resolver of our own for the server to ask allow-list names of (the server's
/// `--egress-resolver`): `names` answered with their address, anything else "no such
/// name"; it counts the queries it gets.
struct Resolver {
    address: std::net::SocketAddr,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Resolver {
    fn start(names: Vec<(String, std::net::Ipv4Addr)>) -> Resolver {
        use agentkernel::containers::dns;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&asked);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok((length, peer)) = socket.recv_from(&mut buffer) {
                let packet = &buffer[..length];
                let Ok(query) = dns::parse_query(packet) else {
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reply = match names.iter().find(|(name, _)| *name == query.name) {
                    Some((_, address)) => dns::answer(packet, &query, &[*address], 60),
                    None => dns::refusal(packet, &query, dns::RCODE_NXDOMAIN),
                };
                let _ = socket.send_to(&reply, peer);
            }
        });
        Resolver { address, asked }
    }
}

#[test]
fn an_allow_list_reaches_what_it_lists_and_nothing_else() {
    let destinations = Destinations::new();
    let (private, public, routed) = (
        destinations.private.clone(),
        destinations.public.clone(),
        destinations.routed.clone(),
    );
    let host = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut connection in host.incoming().flatten() {
            let _ = connection.write_all(b"hello from the host\n");
        }
    });
    let resolver = Resolver::start(vec![
        ("svc.test".into(), private.parse().unwrap()),
        ("a.wild.test".into(), routed.parse().unwrap()),
        ("meta.test".into(), "169.254.169.254".parse().unwrap()),
        ("unlisted.test".into(), public.parse().unwrap()),
    ]);
    let namespace = fresh_namespace();
    let options = || Options {
        namespace: Some(namespace.clone()),
        args: vec![
            "--host".into(),
            "0.0.0.0".into(),
            "--egress-resolver".into(),
            resolver.address.to_string(),
        ],
        env: vec![("AGENTKERNEL_API_KEY".into(), "k".into())],
        ..Options::default()
    };
    let mut server = Server::start_with(options());
    let port = server.port;
    let list =
        json!({"allow": ["svc.test:8080", format!("{public}:8080"), "*.wild.test", "meta.test"]});
    let made = create_with(&server, "al", &list);
    assert_eq!(made["network"], list, "{made}");

    let probe = |server: &Server, when: &str| {
        let gateway = gateway(server, "al");
        // What it lists: a name on its port, an address on its port, every name below
        // a wildcard on every port.
        assert_reached(&tcp(server, "al", "svc.test", 8080), "hello", when);
        assert_reached(&tcp(server, "al", &public, 8080), "hello", when);
        assert_reached(&tcp(server, "al", "a.wild.test", 8081), "hello", when);
        // Nothing else, fast.
        for (host, port, what) in [
            ("svc.test", 8081, "a listed name on an unlisted port"),
            (
                public.as_str(),
                8081,
                "a listed address on an unlisted port",
            ),
            (routed.as_str(), 9, "a private address on another port"),
            (
                "meta.test",
                80,
                "a listed name answered with the metadata address",
            ),
            ("169.254.169.254", 80, "the metadata address"),
            (gateway.as_str(), host_port, "the host through its gateway"),
            (gateway.as_str(), port, "the server's own port"),
            ("127.0.0.1", port, "the server's port on loopback"),
        ] {
            assert_stopped(&tcp(server, "al", host, port), &format!("{when}: {what}"));
        }
        // An unlisted name does not resolve (and is never asked upstream).
        let asked = resolver.asked.load(std::sync::atomic::Ordering::SeqCst);
        let lookup = exec(server, "al", "nslookup unlisted.test");
        assert!(
            !lookup.stdout.contains(&public),
            "{when}: an unlisted name resolved: {}",
            lookup.stdout
        );
        assert!(
            lookup.millis < 2000,
            "{when}: lookup took {} ms",
            lookup.millis
        );
        assert_eq!(
            resolver.asked.load(std::sync::atomic::Ordering::SeqCst),
            asked,
            "{when}: an unlisted name was asked upstream"
        );
        assert_stopped(
            &tcp(server, "al", "unlisted.test", 8080),
            &format!("{when}: an unlisted name"),
        );
        // A resolver of the command's choosing never gets its query.
        let (arrived, _) = dns(server, "al", &private, &destinations);
        assert!(!arrived, "{when}: a private resolver got the query");
        let v6 = exec(server, "al", "nc -w 3 2001:db8::1 80 </dev/null");
        assert_stopped(&v6, &format!("{when}: an IPv6 literal"));
    };
    probe(&server, "allow");

    // A one-shot run takes its list; an empty list reaches nothing.
    let run = |server: &Server, network: &Value, host: &str| {
        let body =
            json!({"network": network, "command": ["nc", "-w", "3", host, "8080"], "stdin": ""});
        let (status, answer) = server.request(
            "POST",
            "/run",
            Some(&body.to_string()),
            &[("X-API-Key", "k")],
        );
        assert_eq!(status, 200, "{answer}");
        answer["data"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(run(&server, &json!({"allow": ["svc.test:8080"]}), "svc.test").contains("hello"));
    assert!(!run(&server, &json!({"allow": []}), &public).contains("hello"));

    // Bad lists: a 400 naming what is wrong.
    for (network, says) in [
        (json!("allow"), "needs its list"),
        (json!({"allow": "svc.test"}), "must be a list"),
        (json!({"allow": ["2001:db8::1"]}), "IPv6"),
        (json!({"allow": ["svc.test:99999"]}), "port"),
        (json!({"allow": [1]}), "each entry is a string"),
    ] {
        let body = json!({"name": "bad", "network": network}).to_string();
        let (status, answer) =
            server.request("POST", "/sandboxes", Some(&body), &[("X-API-Key", "k")]);
        assert_eq!(status, 400, "{network}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }

    // For its life: across stop and start, and a server restart.
    for step in ["stop", "start"] {
        let (status, answer) = server.request(
            "POST",
            &format!("/sandboxes/al/{step}"),
            None,
            &[("X-API-Key", "k")],
        );
        assert_eq!(status, 200, "{answer}");
    }
    probe(&server, "after stop and start");
    server.terminate();
    let server = Server::start_with(options());
    let (_, answer) = server.request("GET", "/sandboxes/al", None, &[("X-API-Key", "k")]);
    assert_eq!(answer["data"]["network"], list, "{answer}");
    probe(&server, "after a server restart");
    assert_eq!(
        server
            .request("DELETE", "/sandboxes/al", None, &[("X-API-Key", "k")])
            .0,
        200
    );
    server.finish();

    // A ceiling of public takes lists of names and public addresses, not private ones.
    // (Its names then open public addresses only: svc.test answers a private one.)
    let ceiling = Server::start_with(Options {
        args: vec![
            "--max-network".into(),
            "public".into(),
            "--egress-resolver".into(),
            resolver.address.to_string(),
        ],
        ..Options::default()
    });
    let body = json!({"command": ["true"], "network": {"allow": ["10.0.0.0/8"]}}).to_string();
    assert_eq!(ceiling.post("/run", &body).0, 403);
    let body = json!({
        "command": ["nc", "-w", "3", "svc.test", "8080"],
        "stdin": "",
        "network": {"allow": ["svc.test:8080"]},
    })
    .to_string();
    let (status, answer) = ceiling.post("/run", &body);
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer["data"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("hello"),
        "a name opened a private address under the ceiling public: {answer}"
    );
    ceiling.finish();
    drop(destinations);
}

fn create_with(server: &Server, name: &str, network: &Value) -> Value {
    let body = json!({ "name": name, "network": network });
    let (status, answer) = server.request(
        "POST",
        "/sandboxes",
        Some(&body.to_string()),
        &[("X-API-Key", "k")],
    );
    assert_eq!(status, 201, "{answer}");
    answer["data"].clone()
}
