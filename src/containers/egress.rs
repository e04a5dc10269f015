//! The `public` egress policy made to hold: our own bridge network, and rules in the
//! host's packet filter for what comes in from it.
//!
//! Containers of the `public` policy join the engine network `agentkernel-public`
//! (bridge `ak-public0`, no IPv6, no traffic between its containers). The host's packet
//! filter, which the server extends with `iptables` as the engine extends it for its
//! own networks, refuses what comes in on that bridge for
//! - the host itself, at any of its addresses (chain `AGENTKERNEL-HOST`, jumped to
//!   first from `INPUT`): the server's port, the engine's, anything listening on the
//!   host;
//! - loopback, private (10/8, 172.16/12, 192.168/16), shared (100.64/10), link-local
//!   (169.254/16, where clouds serve instance credentials), multicast and reserved
//!   ranges, the host's own subnets and gateways (neighbours, whatever their
//!   addresses), and the bridge itself (another container): chain
//!   `AGENTKERNEL-PUBLIC`, jumped to first from `FORWARD`, and first from
//!   `DOCKER-USER`, which the engine keeps ahead of its own forwarding rules.
//!
//! One exception, ahead of every refusal (chain `AGENTKERNEL-DNS`): port 53 of the
//! resolvers the engine forwards names to (the host's), since the engine's resolver
//! sends its queries from inside the container, through the bridge.
//!
//! Refused at once, with a TCP reset or an ICMP "port unreachable": a connect fails in
//! a millisecond (connection refused), a UDP sender hears so, nothing hangs. The rest
//! is forwarded as the engine forwards its default bridge's traffic.
//!
//! Made before the first public container of a process, and checked again (and
//! repaired) every few seconds by the `egress-watch` thread, and before a public
//! sandbox starts: the engine, an operator or a firewall reload may move or drop rules.
//! Without them (no `iptables`, no right to change the rules, an engine in another
//! network namespace than the server's, a network of that name that is not ours) a
//! public container is refused, never made with more reach than its policy.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::containers::labels;
use crate::containers::profile::PUBLIC_NETWORK;
use crate::engine::Docker;
use crate::error::{Error, Result};

/// The host's name of the public network's bridge (at most 15 bytes).
pub const BRIDGE: &str = "ak-public0";
/// Our chains in the host's `filter` table: refusals for what the host forwards from
/// the bridge, refusals for what is for the host itself, and the resolvers' exception.
pub const CHAIN: &str = "AGENTKERNEL-PUBLIC";
pub const HOST_CHAIN: &str = "AGENTKERNEL-HOST";
pub const DNS_CHAIN: &str = "AGENTKERNEL-DNS";
/// The `KIND` label of a network of ours.
pub const KIND_NETWORK: &str = "network";
/// How often `egress-watch` checks the rules.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// IPv4 destinations a public container never reaches: "this network", private,
/// shared, loopback, link-local, IETF protocol assignments, private, benchmarking,
/// multicast and reserved (with the broadcast address), and Azure's host endpoint. The
/// documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) are left as the
/// internet routes them (but the host's own subnets are refused, whatever they are).
pub const REFUSED: [&str; 12] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "168.63.129.16/32",
];

/// What the host's own set-up adds to the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// The resolvers the engine forwards names to (IPv4, not loopback).
    pub resolvers: Vec<Ipv4Addr>,
    /// The host's directly connected subnets and its gateways, as CIDRs.
    pub neighbours: Vec<String>,
}

impl HostView {
    /// From `/etc/resolv.conf` (and systemd-resolved's upstream list, which the engine
    /// reads when the host's own resolver is on loopback) and `/proc/net/route`.
    pub fn read() -> HostView {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let mut resolvers = parse_resolvers(&read("/etc/resolv.conf"));
        for resolver in parse_resolvers(&read("/run/systemd/resolve/resolv.conf")) {
            if !resolvers.contains(&resolver) {
                resolvers.push(resolver);
            }
        }
        HostView {
            resolvers,
            neighbours: parse_routes(&read("/proc/net/route")),
        }
    }
}

/// The IPv4 `nameserver`s of a `resolv.conf`, loopback ones left out (the engine
/// queries those from the host, not through the bridge).
pub fn parse_resolvers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|line| line.split(['#', ';']).next())
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .filter(|address| !address.is_loopback())
        .collect()
}

/// From `/proc/net/route`: every subnet reached without a gateway, and every gateway,
/// but for our own bridge's.
pub fn parse_routes(text: &str) -> Vec<String> {
    let hex = |field: &str| u32::from_str_radix(field, 16).ok();
    let mut found = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 || fields[0] == BRIDGE {
            continue;
        }
        let (Some(destination), Some(gateway), Some(mask)) =
            (hex(fields[1]), hex(fields[2]), hex(fields[7]))
        else {
            continue;
        };
        // The kernel writes each address as the number its bytes (in network order)
        // make in its own byte order.
        let address = |value: u32| Ipv4Addr::from(u32::from_be(value));
        let cidr = if gateway != 0 {
            format!("{}/32", address(gateway))
        } else if mask != 0 {
            format!("{}/{}", address(destination), mask.count_ones())
        } else {
            // A default route without a gateway (a tunnel's): the whole internet.
            continue;
        };
        if !found.contains(&cidr) {
            found.push(cidr);
        }
    }
    found
}

/// Two rules refusing what `matching` matches: a TCP reset for TCP (an ICMP error
/// answering a connect may be held back by the kernel's ICMP rate limit, and the
/// connect then waits for its retransmission, a second later), then an ICMP "port
/// unreachable" for the rest.
pub(crate) fn refusals(matching: &[&str]) -> [Vec<String>; 2] {
    let tcp = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"];
    let other = ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"];
    [&tcp[..], &other[..]].map(|target| {
        matching
            .iter()
            .chain(target)
            .map(|part| part.to_string())
            .collect()
    })
}

/// Our chains and their rules, in order: each refusal chain starts with the jump to
/// the resolvers' exception.
pub fn chains(view: &HostView) -> Vec<(&'static str, Vec<Vec<String>>)> {
    let to_dns = vec!["-j".to_string(), DNS_CHAIN.to_string()];
    let mut dns = Vec::new();
    for resolver in &view.resolvers {
        for protocol in ["udp", "tcp"] {
            dns.push(
                [
                    "-d",
                    &format!("{resolver}/32"),
                    "-p",
                    protocol,
                    "-m",
                    protocol,
                ]
                .iter()
                .chain(&["--dport", "53", "-j", "ACCEPT"])
                .map(|part| part.to_string())
                .collect(),
            );
        }
    }
    let mut forward = vec![to_dns.clone()];
    let ranges = REFUSED.iter().map(|range| range.to_string());
    for range in ranges.chain(view.neighbours.iter().cloned()) {
        forward.extend(refusals(&["-d", &range]));
    }
    forward.extend(refusals(&["-o", BRIDGE]));
    let mut host = vec![to_dns];
    host.extend(refusals(&[]));
    vec![(DNS_CHAIN, dns), (CHAIN, forward), (HOST_CHAIN, host)]
}

/// The jumps into our chains, each to be the first rule of its chain: from `FORWARD`,
/// from `DOCKER-USER` where the engine has it (it keeps that chain ahead of its own
/// accepts), and from `INPUT`.
pub fn jumps(docker_user: bool) -> Vec<(&'static str, Vec<String>)> {
    let jump = |to: &str| ["-i", BRIDGE, "-j", to].map(String::from).to_vec();
    let mut jumps = vec![("FORWARD", jump(CHAIN))];
    if docker_user {
        jumps.push(("DOCKER-USER", jump(CHAIN)));
    }
    jumps.push(("INPUT", jump(HOST_CHAIN)));
    jumps
}

/// Whether the host has IPv6 (then public containers get it turned off).
pub fn host_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Whether the network and rules were found in place at the last look.
static READY: AtomicBool = AtomicBool::new(false);
/// Whether this process made or met a public container (then `egress-watch` looks).
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Makes sure the public network and its rules are in place before a public container
/// is made or started: at once when the last look found them (`egress-watch` looks
/// every few seconds), else a look (and repair) now.
pub fn ensure_public(docker: &Docker) -> Result<()> {
    IN_USE.store(true, Ordering::SeqCst);
    if READY.load(Ordering::SeqCst) {
        return Ok(());
    }
    // A look that failed a moment ago is the answer: requests do not queue up behind
    // looks that would fail the same way.
    if let Some(reason) = failed_within(WATCH_EVERY) {
        return Err(Error::EgressUnavailable(reason));
    }
    let _looking = lock(&LOOKING);
    // A look finished while this one waited: its answer is this one's.
    if READY.load(Ordering::SeqCst) {
        return Ok(());
    }
    if let Some(reason) = failed_within(Duration::from_secs(1)) {
        return Err(Error::EgressUnavailable(reason));
    }
    look_now(docker)
}

/// Why the last look failed, if it did within `within`.
fn failed_within(within: Duration) -> Option<String> {
    let failed = lock(&FAILED);
    let (at, reason) = failed.as_ref()?;
    (at.elapsed() < within).then(|| reason.clone())
}

/// Held by a look: one at a time.
static LOOKING: Mutex<()> = Mutex::new(());

/// When the last look failed, and why.
static FAILED: Mutex<Option<(Instant, String)>> = Mutex::new(None);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `egress-watch` has anything to watch.
pub fn in_use() -> bool {
    IN_USE.load(Ordering::SeqCst)
}

/// Looks at the network and every rule, and repairs what is missing or out of place.
/// One look at a time; a failed look leaves public containers refused until one
/// succeeds.
pub fn look(docker: &Docker) -> Result<()> {
    let _looking = lock(&LOOKING);
    look_now(docker)
}

/// A look, by whoever holds `LOOKING`.
fn look_now(docker: &Docker) -> Result<()> {
    let outcome = ensure_network(docker).and_then(|subnets| {
        // Our rules match the bridge by name: where the engine's bridge is not this
        // process's to see (an engine in another network namespace), they would match
        // nothing. Ours routes the network's subnet.
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        let here = bridge_routes(&routes);
        if subnets.is_empty() || !subnets.iter().all(|subnet| here.contains(subnet)) {
            return Err(Error::EgressUnavailable(format!(
                "the bridge {BRIDGE} of the network {PUBLIC_NETWORK} is not in this \
                 server's network namespace (the engine's is another): rules made here \
                 would not apply"
            )));
        }
        ensure_rules(&HostView::read()).map_err(Error::EgressUnavailable)
    });
    // (An engine that did not answer is its own error, a 503: not kept as this one.)
    *lock(&FAILED) = match &outcome {
        Err(Error::EgressUnavailable(reason)) => Some((Instant::now(), reason.clone())),
        _ => None,
    };
    let was_ready = READY.swap(outcome.is_ok(), Ordering::SeqCst);
    match &outcome {
        Ok(()) if !was_ready => log::info!(
            "egress: network {PUBLIC_NETWORK} (bridge {BRIDGE}) and its rules (chains \
             {CHAIN}, {HOST_CHAIN}, {DNS_CHAIN}) are in place"
        ),
        Err(error) if was_ready => log::error!("egress: {error}"),
        _ => {}
    }
    outcome
}

/// The network's driver options: our bridge name, no traffic between its containers.
fn network_options() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "com.docker.network.bridge.name".to_string(),
            BRIDGE.to_string(),
        ),
        (
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        ),
    ])
}

/// The subnets `/proc/net/route` routes through our bridge.
pub fn bridge_routes(text: &str) -> Vec<String> {
    bridge_routes_of(BRIDGE, text)
}

/// The subnets `/proc/net/route` routes through `bridge`.
pub fn bridge_routes_of(bridge: &str, text: &str) -> Vec<String> {
    let hex = |field: &str| u32::from_str_radix(field, 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || fields[0] != bridge {
                return None;
            }
            let (destination, mask) = (hex(fields[1])?, hex(fields[7])?);
            let address = Ipv4Addr::from(u32::from_be(destination));
            Some(format!("{address}/{}", mask.count_ones()))
        })
        .collect()
}

/// Makes (or finds) the public network; gives its subnets.
fn ensure_network(docker: &Docker) -> Result<Vec<String>> {
    for _ in 0..2 {
        match docker.network_inspect(PUBLIC_NETWORK) {
            Ok(found) => {
                let subnets: Vec<String> = found
                    .ipam
                    .clone()
                    .and_then(|ipam| ipam.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|config| config.subnet)
                    .collect();
                let ours = found.labels.unwrap_or_default().get(labels::KIND)
                    == Some(&KIND_NETWORK.to_string());
                let options = found.options.unwrap_or_default();
                let same = network_options()
                    .iter()
                    .all(|(key, value)| options.get(key) == Some(value));
                return if ours && same && !found.enable_ipv6 {
                    Ok(subnets)
                } else {
                    Err(Error::EgressUnavailable(format!(
                        "the engine has a network named {PUBLIC_NETWORK} that agentkernel did \
                         not make (or made otherwise): remove it"
                    )))
                };
            }
            Err(error) if error.is_not_found() => {
                let labels = BTreeMap::from([
                    (labels::MANAGED.to_string(), "true".to_string()),
                    (labels::KIND.to_string(), KIND_NETWORK.to_string()),
                ]);
                match docker.network_create(PUBLIC_NETWORK, &network_options(), &labels) {
                    // Made here, or by another server meanwhile: look again.
                    Ok(()) => continue,
                    Err(error) if error.is_conflict() => continue,
                    Err(error) => return Err(Error::Engine(error)),
                }
            }
            Err(error) => return Err(Error::Engine(error)),
        }
    }
    Err(Error::EgressUnavailable(format!(
        "the network {PUBLIC_NETWORK} could not be made"
    )))
}

/// The rules alone, for the host as it is now (no engine needed: they match the bridge
/// by name, before it exists).
pub fn install_rules() -> Result<()> {
    ensure_rules(&HostView::read()).map_err(Error::EgressUnavailable)
}

/// At a server's start: where public sandboxes of `namespaces` exist (the engine
/// starts them again by itself after a reboot), their rules are put back now; where
/// that fails, the running ones are stopped rather than left with more reach than
/// their policy.
/// Gives whether it could look (else it is to be tried again).
pub fn at_start(docker: &Docker, namespaces: &[crate::config::Namespace]) -> bool {
    let public = crate::containers::profile::Network::Public.name();
    put_back_at_start(
        docker,
        namespaces,
        public,
        "public",
        |attempt| match attempt {
            0 => ensure_public(docker),
            _ => look(docker),
        },
    )
}

/// At a server's start, for the sandboxes of `namespaces` whose `network` label is
/// `network` (`what` they are, in the log): `look` (its attempt, from 0) puts their
/// rules back. A look that fails may fail for a moment (the engine restoring its own
/// rules at boot holds the lock): a few tries before the running ones are stopped for
/// good. Gives whether it could list them.
pub(crate) fn put_back_at_start(
    docker: &Docker,
    namespaces: &[crate::config::Namespace],
    network: &str,
    what: &str,
    look: impl Fn(u32) -> Result<()>,
) -> bool {
    let mut filters = labels::all_sandboxes();
    filters.push(format!("{}={network}", labels::NETWORK));
    let Ok(found) = docker.container_list(&filters) else {
        return false;
    };
    let ours: Vec<_> = found
        .into_iter()
        .filter(|summary| labels::in_namespaces(summary.labels.as_ref(), namespaces))
        .collect();
    if ours.is_empty() {
        return true;
    }
    let mut outcome = look(0);
    for attempt in 1..=3 {
        if outcome.is_ok() {
            break;
        }
        std::thread::sleep(WATCH_EVERY);
        outcome = look(attempt);
    }
    if let Err(error) = outcome {
        stop_for_good(docker, &ours, what, &error);
    }
    true
}

/// Stops sandboxes whose policy cannot be made to hold (`what` they are), for good:
/// not started again by the engine without their rules.
pub(crate) fn stop_for_good(
    docker: &Docker,
    sandboxes: &[crate::engine::ContainerSummary],
    what: &str,
    error: &Error,
) {
    for sandbox in sandboxes
        .iter()
        .filter(|s| s.state != "exited" && s.state != "dead")
    {
        log::error!(
            "egress: stopping {what} sandbox {} (its rules cannot be put back: {error})",
            sandbox.names.join(",").trim_start_matches('/')
        );
        let _ = docker.container_set_restart(&sandbox.id, false);
        if sandbox.state == "paused" {
            let _ = docker.container_unpause(&sandbox.id);
        }
        let _ = docker.container_stop(&sandbox.id, 0);
        // (Again after the stop: a runtime that cannot update a running one.)
        let _ = docker.container_set_restart(&sandbox.id, false);
    }
}

/// The host's `filter` table as `iptables -S` writes it: per chain, its rules
/// (`-A CHAIN ...` lines, in order); a chain with no rules is there, empty.
pub fn parse_listing(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("-N" | "-P"), Some(chain)) => {
                chains.entry(chain.to_string()).or_default();
            }
            (Some("-A"), Some(chain)) => chains
                .entry(chain.to_string())
                .or_default()
                .push(line.trim().to_string()),
            _ => {}
        }
    }
    chains
}

/// What brings the host's `filter` table (`listing`) to what `view` asks, as one
/// `iptables-restore --noflush` transaction, or nothing when it is there already: our
/// chains that differ are replaced whole (declared again, which empties them within
/// the transaction: no moment without their rules), and each jump is made the first
/// rule of its chain, and the only copy (every copy deleted, one inserted first).
pub fn plan(view: &HostView, listing: &BTreeMap<String, Vec<String>>) -> Option<String> {
    let mut declared = String::new();
    let mut rules = String::new();
    plan_chains(chains(view), listing, &mut declared, &mut rules);
    plan_jumps(
        jumps(listing.contains_key("DOCKER-USER")),
        listing,
        &mut rules,
    );
    if rules.is_empty() && declared.is_empty() {
        return None;
    }
    Some(format!("*filter\n{declared}{rules}COMMIT\n"))
}

/// The lines of a restore script that bring each of `chains` to its rules where the
/// listing differs: declared again (emptied within the transaction), then filled.
pub(crate) fn plan_chains<C: AsRef<str>>(
    chains: Vec<(C, Vec<Vec<String>>)>,
    listing: &BTreeMap<String, Vec<String>>,
    declared: &mut String,
    rules: &mut String,
) {
    for (chain, wanted) in chains {
        let chain = chain.as_ref();
        let wanted: Vec<String> = wanted
            .iter()
            .map(|rule| format!("-A {chain} {}", rule.join(" ")))
            .collect();
        if listing.get(chain) != Some(&wanted) {
            declared.push_str(&format!(":{chain} - [0:0]\n"));
            for line in wanted {
                rules.push_str(&line);
                rules.push('\n');
            }
        }
    }
}

/// The lines that make each of `jumps` the only copy of itself, ahead of every rule
/// that is not one of our jumps (`jump_in_place`), where it is not.
pub(crate) fn plan_jumps(
    jumps: Vec<(&'static str, Vec<String>)>,
    listing: &BTreeMap<String, Vec<String>>,
    rules: &mut String,
) {
    for (chain, rule) in jumps {
        let text = format!("-A {chain} {}", rule.join(" "));
        let present = listing.get(chain).map(Vec::as_slice).unwrap_or_default();
        if jump_in_place(present, &text) {
            continue;
        }
        let copies = present.iter().filter(|line| **line == text).count();
        for _ in 0..copies {
            rules.push_str(&format!("-D {chain} {}\n", rule.join(" ")));
        }
        rules.push_str(&format!("-I {chain} 1 {}\n", rule.join(" ")));
    }
}

/// Whether the jump `text` is in its chain once, ahead of every rule that is not one
/// of our jumps (those of `public` and of allow-lists each want to be first: either
/// order holds both policies, and neither moves the other every look).
pub(crate) fn jump_in_place(present: &[String], text: &str) -> bool {
    let copies = present.iter().filter(|line| *line == text).count();
    copies == 1
        && present
            .iter()
            .take_while(|line| line.contains(" -j AGENTKERNEL-"))
            .any(|line| line == text)
}

/// Brings the host's rules to what `view` asks: one listing, and one transaction when
/// something differs. Under a lock every server of this host takes (a file under
/// `/run`), so that no two plan from the same listing.
fn ensure_rules(view: &HostView) -> std::result::Result<(), String> {
    with_host_lock(|| apply(|listing| plan(view, listing)))
}

/// Runs `work` under the lock every agentkernel process of this host takes before it
/// plans a change of the rules (a file under `/run`), waited for at most 30 s.
pub(crate) fn with_host_lock<T>(
    work: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    let lock_path = if std::path::Path::new("/run").is_dir() {
        std::path::PathBuf::from("/run/agentkernel-egress.lock")
    } else {
        std::env::temp_dir().join("agentkernel-egress.lock")
    };
    let opened = std::fs::File::open(&lock_path).or_else(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
    });
    let lock = opened.map_err(|error| format!("cannot open {}: {error}", lock_path.display()))?;
    // Bounded: a server stopped while it held the lock must not stop every other.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock.try_lock().is_err() {
        if Instant::now() >= deadline {
            return Err(format!(
                "another process holds {} (another agentkernel server, stuck?)",
                lock_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    work()
}

/// Lists the rules, and carries out what `plan` makes of them until nothing is left
/// to do. A program that changes the rules between our listing and our transaction
/// (the engine, at a network's creation) makes the transaction fail or the read-back
/// differ: a few tries.
pub(crate) fn apply(
    plan: impl Fn(&BTreeMap<String, Vec<String>>) -> Option<String>,
) -> std::result::Result<(), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let listing = parse_listing(&run("iptables", &["-w", "10", "-S"], None)?);
        let Some(script) = plan(&listing) else {
            return Ok(());
        };
        if let Err(error) = run(
            "iptables-restore",
            &["--wait=10", "--noflush"],
            Some(&script),
        ) {
            last = error;
            continue;
        }
        last = "the rules read back differ from the rules written".into();
    }
    Err(last)
}

/// Runs `program` (from the path, else where distributions put it) with `args` and
/// `input` on its stdin; gives what it wrote, or an error that says what it said. The
/// whole run is bounded.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> std::result::Result<String, String> {
    const BOUND: Duration = Duration::from_secs(20);
    let mut last = format!("{program} was not found");
    let places = [
        program.to_string(),
        format!("/usr/sbin/{program}"),
        format!("/sbin/{program}"),
    ];
    for path in &places {
        let spawned = Command::new(path)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                last = format!("cannot run {program}: {error}");
                continue;
            }
        };
        let outcome = finish(&mut child, input, BOUND);
        if outcome.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (status, stdout, stderr) =
            outcome.map_err(|error| format!("{program} {}: {error}", args.join(" ")))?;
        if status.success() {
            return Ok(stdout);
        }
        let said = stderr
            .lines()
            .rfind(|line| !line.starts_with('#'))
            .unwrap_or("failed")
            .trim()
            .to_string();
        return Err(format!("{program} {}: {said}", args.join(" ")));
    }
    Err(last)
}

/// Feeds `input`, reads both outputs as they come (a long listing must not fill a pipe
/// and stall the child), and waits for the end, at most `bound`.
fn finish(
    child: &mut std::process::Child,
    input: Option<&str>,
    bound: Duration,
) -> std::result::Result<(std::process::ExitStatus, String, String), String> {
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::Builder::new()
            .name("iptables-output".into())
            .spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .map_err(|error| format!("cannot read its output: {error}"))
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<_>))?;
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<_>))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(input.as_bytes())
            .map_err(|error| format!("cannot write its input: {error}"))?;
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < bound => std::thread::sleep(Duration::from_millis(2)),
            _ => return Err(format!("took over {bound:?}")),
        }
    };
    Ok((
        status,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chain: &str, rules: &[Vec<String>]) -> Vec<String> {
        rules
            .iter()
            .map(|rule| format!("-A {chain} {}", rule.join(" ")))
            .collect()
    }

    #[test]
    fn the_public_rules_refuse_the_host_private_ranges_and_neighbours() {
        let view = HostView {
            resolvers: vec![Ipv4Addr::new(10, 255, 255, 53)],
            neighbours: vec!["192.0.2.0/24".into(), "192.0.2.1/32".into()],
        };
        let chains = chains(&view);
        let get = |name: &str| {
            let (chain, rules) = chains.iter().find(|(chain, _)| *chain == name).unwrap();
            text(chain, rules)
        };
        let tcp = "-p tcp -j REJECT --reject-with tcp-reset";
        let other = "-j REJECT --reject-with icmp-port-unreachable";
        assert_eq!(
            get(DNS_CHAIN),
            [
                "-A AGENTKERNEL-DNS -d 10.255.255.53/32 -p udp -m udp --dport 53 -j ACCEPT",
                "-A AGENTKERNEL-DNS -d 10.255.255.53/32 -p tcp -m tcp --dport 53 -j ACCEPT",
            ]
        );
        assert_eq!(
            get(HOST_CHAIN),
            [
                "-A AGENTKERNEL-HOST -j AGENTKERNEL-DNS".to_string(),
                format!("-A AGENTKERNEL-HOST {tcp}"),
                format!("-A AGENTKERNEL-HOST {other}"),
            ]
        );
        let forward = get(CHAIN);
        assert_eq!(forward[0], "-A AGENTKERNEL-PUBLIC -j AGENTKERNEL-DNS");
        for matching in [
            "-d 10.0.0.0/8",
            "-d 169.254.0.0/16",
            "-d 172.16.0.0/12",
            "-d 192.168.0.0/16",
            "-d 100.64.0.0/10",
            "-d 127.0.0.0/8",
            "-d 224.0.0.0/4",
            "-d 168.63.129.16/32",
            "-d 192.0.2.0/24",
            "-d 192.0.2.1/32",
            "-o ak-public0",
        ] {
            let rule = format!("-A AGENTKERNEL-PUBLIC {matching} {tcp}");
            let at = forward.iter().position(|r| *r == rule).expect(&rule);
            // TCP's refusal first, then the catch-all of the same match.
            assert_eq!(
                forward[at + 1],
                format!("-A AGENTKERNEL-PUBLIC {matching} {other}")
            );
        }
        let jumps: Vec<String> = jumps(true)
            .iter()
            .flat_map(|(chain, rule)| text(chain, std::slice::from_ref(rule)))
            .collect();
        assert_eq!(
            jumps,
            [
                "-A FORWARD -i ak-public0 -j AGENTKERNEL-PUBLIC",
                "-A DOCKER-USER -i ak-public0 -j AGENTKERNEL-PUBLIC",
                "-A INPUT -i ak-public0 -j AGENTKERNEL-HOST",
            ]
        );
        assert!(BRIDGE.len() <= 15);
    }

    #[test]
    fn the_host_view_reads_resolvers_subnets_and_gateways() {
        let resolv = "# comment\nnameserver 10.255.255.53 # the VM's\nnameserver 127.0.0.53\n\
                      nameserver ::1\nsearch x\nnameserver 8.8.8.8\n";
        assert_eq!(
            parse_resolvers(resolv),
            [Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(8, 8, 8, 8)]
        );
        // This host's table: a default route, the engine's bridges, eth0's subnet.
        let routes =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            ak-public0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            akh1\t02643336\t0201FB0A\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        assert_eq!(bridge_routes(routes), ["172.18.0.0/16"]);
        assert_eq!(
            parse_routes(routes),
            [
                "192.0.2.1/32",
                "172.17.0.0/16",
                "192.0.2.0/24",
                "10.251.1.2/32"
            ]
        );
    }

    fn view() -> HostView {
        HostView {
            resolvers: vec![Ipv4Addr::new(10, 255, 255, 53)],
            neighbours: vec!["192.0.2.0/24".into()],
        }
    }

    /// The listing of a host where `plan` was carried out (our chains as wanted, the
    /// jumps first), with `other` rules of other programs after ours.
    fn in_place(other: &[&str]) -> BTreeMap<String, Vec<String>> {
        let mut text = String::from("-P INPUT ACCEPT\n-P FORWARD DROP\n-N DOCKER-USER\n");
        for (chain, rules) in chains(&view()) {
            text.push_str(&format!("-N {chain}\n"));
            for rule in text_of(chain, &rules) {
                text.push_str(&format!("{rule}\n"));
            }
        }
        text.push_str("-A INPUT -i ak-public0 -j AGENTKERNEL-HOST\n");
        text.push_str("-A FORWARD -i ak-public0 -j AGENTKERNEL-PUBLIC\n");
        text.push_str("-A DOCKER-USER -i ak-public0 -j AGENTKERNEL-PUBLIC\n");
        for line in other {
            text.push_str(&format!("{line}\n"));
        }
        parse_listing(&text)
    }

    fn text_of(chain: &str, rules: &[Vec<String>]) -> Vec<String> {
        text(chain, rules)
    }

    #[test]
    fn a_host_with_the_rules_in_place_needs_nothing() {
        let other = ["-A FORWARD -j DOCKER-USER", "-A DOCKER-USER -j RETURN"];
        assert_eq!(plan(&view(), &in_place(&other)), None);
    }

    #[test]
    fn a_bare_host_gets_every_chain_and_jump_in_one_transaction() {
        let listing = parse_listing("-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n");
        let script = plan(&view(), &listing).unwrap();
        assert!(
            script.starts_with("*filter\n:AGENTKERNEL-DNS - [0:0]\n"),
            "{script}"
        );
        assert!(script.ends_with("COMMIT\n"));
        for line in [
            ":AGENTKERNEL-PUBLIC - [0:0]",
            ":AGENTKERNEL-HOST - [0:0]",
            "-A AGENTKERNEL-PUBLIC -j AGENTKERNEL-DNS",
            "-I FORWARD 1 -i ak-public0 -j AGENTKERNEL-PUBLIC",
            "-I INPUT 1 -i ak-public0 -j AGENTKERNEL-HOST",
        ] {
            assert!(script.lines().any(|l| l == line), "{line}: {script}");
        }
        // No DOCKER-USER on this host: no jump from it.
        assert!(!script.contains("DOCKER-USER"), "{script}");
    }

    #[test]
    fn moved_deleted_or_doubled_rules_are_put_back_whole() {
        // Another program's accept ahead of our jump: every copy goes, one comes first.
        let mut listing = in_place(&[]);
        listing
            .get_mut("DOCKER-USER")
            .unwrap()
            .insert(0, "-A DOCKER-USER -i ak-public0 -j ACCEPT".into());
        let script = plan(&view(), &listing).unwrap();
        assert_eq!(
            script,
            "*filter\n-D DOCKER-USER -i ak-public0 -j AGENTKERNEL-PUBLIC\n\
             -I DOCKER-USER 1 -i ak-public0 -j AGENTKERNEL-PUBLIC\nCOMMIT\n"
        );
        let mut listing = in_place(&[]);
        listing
            .get_mut("INPUT")
            .unwrap()
            .push("-A INPUT -i ak-public0 -j AGENTKERNEL-HOST".into());
        let script = plan(&view(), &listing).unwrap();
        assert_eq!(script.matches("-D INPUT").count(), 2, "{script}");
        // A refusal deleted, or one left from an older view: the chain is replaced.
        let mut listing = in_place(&[]);
        listing.get_mut(CHAIN).unwrap().remove(3);
        let script = plan(&view(), &listing).unwrap();
        assert!(script.contains(":AGENTKERNEL-PUBLIC - [0:0]\n"), "{script}");
        assert!(!script.contains(":AGENTKERNEL-HOST"), "{script}");
        let mut listing = in_place(&[]);
        listing
            .get_mut(CHAIN)
            .unwrap()
            .push("-A AGENTKERNEL-PUBLIC -d 203.0.113.0/24 -j REJECT".into());
        assert!(plan(&view(), &listing)
            .unwrap()
            .contains(":AGENTKERNEL-PUBLIC"));
        // The resolvers changed: only the exception chain is replaced.
        let mut changed = view();
        changed.resolvers = vec![Ipv4Addr::new(10, 0, 0, 2)];
        let script = plan(&changed, &in_place(&[])).unwrap();
        assert!(script.contains(":AGENTKERNEL-DNS - [0:0]\n"), "{script}");
        assert!(script.contains("-d 10.0.0.2/32 -p udp"), "{script}");
        assert!(!script.contains(":AGENTKERNEL-PUBLIC"), "{script}");
    }
}
