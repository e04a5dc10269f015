//! The allow-list egress policy (`network: {"allow": [...]}`): a container reaches the
//! destinations its list names and nothing else.
//!
//! Containers of the policy join the engine network `agentkernel-allow` (bridge
//! `ak-allow0`, a subnet of ours, no IPv6, no traffic between its containers), each at
//! a fixed address the server picks (label `agentkernel.allow-ip`), with its list in a
//! label (`agentkernel.allow`): the engine is the source of truth. The host's packet
//! filter, as `egress` extends it for `public`, holds the policy:
//! - `AGENTKERNEL-ALLOW` (first in `FORWARD` and `DOCKER-USER` for what comes in on
//!   the bridge) sends each container's traffic, by its address, to its own chain
//!   `AK-ALLOW-<address>`, and refuses everything else (a TCP reset, an ICMP error: a
//!   refused connect fails at once);
//! - `AK-ALLOW-<address>` accepts the list's addresses and networks (with their port,
//!   where the entry names one), then the names' addresses learnt so far, in
//!   `AK-LEARN-<address>`;
//! - `AGENTKERNEL-ALLOW-HOST` (first in `INPUT`) refuses the host to the bridge, but
//!   for port 53 of its gateway: the server's resolver for names.
//!
//! Names are the server's to resolve: the containers' resolver (the engine's) forwards
//! to the bridge's gateway, where `egress-dns` answers (one socket per server, the
//! kernel spreading queries among them). A query from a container for a name its list
//! does not allow gets "no such name"; an allowed one is asked of the host's resolvers,
//! the addresses of the answer are added to the container's `AK-LEARN` chain (with the
//! entry's port), and then the answer goes back: a connect that follows the answer
//! finds its way open. Addresses a name can never open: loopback, link-local (metadata
//! endpoints), multicast, reserved (an answer naming them is a rebinding attempt).
//!
//! A container runs no command of a client before a look found it running and wrote
//! its rules (`ensure`); `egress-watch` looks again every few seconds, and removes the
//! chains of addresses no container holds. Without the rules a container reaches
//! nothing: the policy fails closed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::containers::dns;
use crate::containers::egress;
use crate::containers::labels;
use crate::engine::Docker;
use crate::error::{Error, Result};

/// The engine network of allow-list containers, and its bridge.
pub const NETWORK: &str = crate::containers::profile::ALLOW_NETWORK;
pub const BRIDGE: &str = "ak-allow0";
/// Our chains (see the module's doc).
pub const CHAIN: &str = "AGENTKERNEL-ALLOW";
pub const HOST_CHAIN: &str = "AGENTKERNEL-ALLOW-HOST";
const OWN_PREFIX: &str = "AK-ALLOW-";
const LEARN_PREFIX: &str = "AK-LEARN-";
/// Labels: a container's list, and its address.
pub const LIST_LABEL: &str = labels::ALLOW_LIST;
pub const ADDRESS_LABEL: &str = labels::ALLOW_ADDRESS;
/// Most entries in one list, and most addresses learnt for one container.
pub const MAX_ENTRIES: usize = 64;
pub const MAX_LEARNED: usize = 256;
/// The subnets the network may get, in order (the first the host does not route
/// already, and the engine has free).
const SUBNETS: [&str; 4] = [
    "10.213.0.0/16",
    "10.214.0.0/16",
    "10.215.0.0/16",
    "172.29.0.0/16",
];
/// How long the upstream resolver has to answer one query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// What an entry names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A host name, lowercase (`pypi.org`).
    Name(String),
    /// Every name below a suffix (`*.debian.org`: the suffix `debian.org`).
    Below(String),
    /// An address or a network (an address is a /32).
    Net(Ipv4Addr, u8),
}

/// One destination of a list, on one port or all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub target: Target,
    pub port: Option<u16>,
}

impl Entry {
    /// `pypi.org`, `*.debian.org:443`, `10.1.2.3`, `192.168.0.0/24:8080`.
    pub fn parse(text: &str) -> std::result::Result<Entry, String> {
        let refuse = |why: &str| Err(format!("allow entry '{text}': {why}"));
        if text.contains('[') || text.matches(':').count() > 1 {
            return refuse(
                "IPv6 destinations are not supported (allow-list containers have no IPv6)",
            );
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host, Some(port)),
                _ => return refuse("the port must be a number from 1 to 65535"),
            },
            None => (text, None),
        };
        if let Some((address, prefix)) = host.split_once('/') {
            let (Ok(address), Ok(prefix)) = (address.parse::<Ipv4Addr>(), prefix.parse::<u8>())
            else {
                return refuse("expected an IPv4 network like 10.0.0.0/8");
            };
            if prefix > 32 {
                return refuse("a prefix length is at most 32");
            }
            let network = Ipv4Addr::from(u32::from(address) & mask(prefix));
            return Ok(Entry {
                target: Target::Net(network, prefix),
                port,
            });
        }
        if let Ok(address) = host.parse::<Ipv4Addr>() {
            return Ok(Entry {
                target: Target::Net(address, 32),
                port,
            });
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let (below, plain) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, name),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if plain.len() > 253 || !plain.split('.').all(label_ok) {
            return refuse(
                "expected a host name (letters, digits, '-', '_'; a leading '*.' for every \
                 name below), an IPv4 address or network, each with an optional :port",
            );
        }
        if plain.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return refuse("not an IPv4 address");
        }
        Ok(Entry {
            target: if below {
                Target::Below(plain)
            } else {
                Target::Name(plain)
            },
            port,
        })
    }

    /// How the entry is written (and labelled).
    pub fn text(&self) -> String {
        let host = match &self.target {
            Target::Name(name) => name.clone(),
            Target::Below(suffix) => format!("*.{suffix}"),
            Target::Net(address, 32) => address.to_string(),
            Target::Net(address, prefix) => format!("{address}/{prefix}"),
        };
        match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }

    fn names(&self, name: &str) -> bool {
        match &self.target {
            Target::Name(pattern) => dns::name_matches(pattern, name),
            Target::Below(suffix) => dns::name_matches(&format!("*.{suffix}"), name),
            Target::Net(..) => false,
        }
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        prefix => u32::MAX << (32 - u32::from(prefix)),
    }
}

/// Whether two networks share an address.
fn overlaps((a, a_len): (Ipv4Addr, u8), (b, b_len): (Ipv4Addr, u8)) -> bool {
    let shorter = mask(a_len.min(b_len));
    u32::from(a) & shorter == u32::from(b) & shorter
}

/// What `public` refuses: its ranges and the host's neighbours (`HostView`).
fn refused_by_public(neighbours: &[String]) -> impl Iterator<Item = (Ipv4Addr, u8)> + '_ {
    egress::REFUSED
        .iter()
        .copied()
        .chain(neighbours.iter().map(String::as_str))
        .filter_map(parse_net)
}

fn parse_net(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    Some((address.parse().ok()?, prefix.parse().ok()?))
}

/// The destinations of one container, in the order given (duplicates dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Entry>);

impl AllowList {
    /// From the request's strings: at most `MAX_ENTRIES`, each valid.
    pub fn parse(items: &[String]) -> std::result::Result<AllowList, String> {
        if items.len() > MAX_ENTRIES {
            return Err(format!(
                "an allow-list has at most {MAX_ENTRIES} entries, got {}",
                items.len()
            ));
        }
        let mut entries: Vec<Entry> = Vec::new();
        for item in items {
            let entry = Entry::parse(item.trim())?;
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        Ok(AllowList(entries))
    }

    /// The label's value: the entries, comma-separated (no entry holds a comma).
    pub fn label(&self) -> String {
        self.0.iter().map(Entry::text).collect::<Vec<_>>().join(",")
    }

    pub fn from_label(text: &str) -> Option<AllowList> {
        let items: Vec<String> = text
            .split(',')
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect();
        AllowList::parse(&items).ok()
    }

    pub fn texts(&self) -> Vec<String> {
        self.0.iter().map(Entry::text).collect()
    }

    /// Whether it names a destination the `public` policy refuses (a private, shared,
    /// loopback, link-local, multicast or reserved address): such a list reaches
    /// further than `public`, and needs the ceiling `full`.
    pub fn names_refused_ranges(&self, neighbours: &[String]) -> bool {
        self.0.iter().any(|entry| match entry.target {
            Target::Net(address, prefix) => {
                refused_by_public(neighbours).any(|range| overlaps(range, (address, prefix)))
            }
            _ => false,
        })
    }

    /// The ports `name` is allowed on (`None` in it: every port); empty if none.
    pub fn ports_for(&self, name: &str) -> Vec<Option<u16>> {
        let mut ports: Vec<Option<u16>> = self
            .0
            .iter()
            .filter(|entry| entry.names(name))
            .map(|entry| entry.port)
            .collect();
        ports.sort();
        ports.dedup();
        if ports.contains(&None) {
            return vec![None];
        }
        ports
    }
}

/// Rules accepting `destination` (a CIDR) on `port` (TCP and UDP), or on every port.
fn accepts(destination: &str, port: Option<u16>) -> Vec<Vec<String>> {
    let rule = |parts: &[&str]| -> Vec<String> {
        // Every address: no `-d` (the host's listing leaves `-d 0.0.0.0/0` out).
        let skip = if destination == "0.0.0.0/0" { 2 } else { 0 };
        parts
            .iter()
            .skip(skip)
            .map(|part| part.to_string())
            .collect()
    };
    match port {
        None => vec![rule(&["-d", destination, "-j", "ACCEPT"])],
        Some(port) => {
            let port = port.to_string();
            ["tcp", "udp"]
                .iter()
                .map(|protocol| {
                    rule(&[
                        "-d",
                        destination,
                        "-p",
                        protocol,
                        "-m",
                        protocol,
                        "--dport",
                        &port,
                        "-j",
                        "ACCEPT",
                    ])
                })
                .collect()
        }
    }
}

/// Our chains for these containers (address, list), in order, each with its rules;
/// the containers' `AK-LEARN` chains are not among them (only made where missing).
pub fn chains(
    gateway: Option<Ipv4Addr>,
    containers: &[(Ipv4Addr, AllowList)],
) -> Vec<(String, Vec<Vec<String>>)> {
    let mut dispatch = Vec::new();
    let mut own = Vec::new();
    for (address, list) in containers {
        let chain = format!("{OWN_PREFIX}{address}");
        dispatch.push(
            ["-s", &format!("{address}/32"), "-j", &chain]
                .map(String::from)
                .to_vec(),
        );
        let mut rules = Vec::new();
        for entry in &list.0 {
            if let Target::Net(network, prefix) = entry.target {
                rules.extend(accepts(&format!("{network}/{prefix}"), entry.port));
            }
        }
        rules.push(vec!["-j".to_string(), format!("{LEARN_PREFIX}{address}")]);
        own.push((chain, rules));
    }
    dispatch.extend(egress::refusals(&[]));
    // Never another container, whatever a list names: the engine's bridges come first.
    let mut first = Vec::new();
    for bridge in [BRIDGE, egress::BRIDGE, "docker0", "br-+"] {
        first.extend(egress::refusals(&["-o", bridge]));
    }
    first.extend(dispatch);
    let dispatch = first;
    let gateway = gateway.map(|gateway| format!("{gateway}/32"));
    // UDP only: our resolver's (nothing else on the host answers there).
    let mut host: Vec<Vec<String>> = ["udp"]
        .iter()
        .filter_map(|protocol| Some((gateway.as_ref()?, protocol)))
        .map(|(gateway, protocol)| {
            [
                "-d", gateway, "-p", protocol, "-m", protocol, "--dport", "53", "-j", "ACCEPT",
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    host.extend(egress::refusals(&[]));
    let mut all = vec![
        (CHAIN.to_string(), dispatch),
        (HOST_CHAIN.to_string(), host),
    ];
    all.extend(own);
    all
}

/// The jumps into our chains, each first in its chain.
pub fn jumps(docker_user: bool) -> Vec<(&'static str, Vec<String>)> {
    let jump = |to: &str| ["-i", BRIDGE, "-j", to].map(String::from).to_vec();
    let mut jumps = vec![("FORWARD", jump(CHAIN))];
    if docker_user {
        jumps.push(("DOCKER-USER", jump(CHAIN)));
    }
    jumps.push(("INPUT", jump(HOST_CHAIN)));
    jumps
}

/// What brings the host's `filter` table (`listing`) to the rules of these
/// containers, as one `iptables-restore --noflush` transaction (see `egress::plan`),
/// or nothing when they are there: our chains that differ are replaced whole, missing
/// `AK-LEARN` chains made (never emptied once there), the jumps made first, and the
/// chains of addresses no container holds emptied and deleted.
pub fn plan(
    gateway: Option<Ipv4Addr>,
    containers: &[(Ipv4Addr, AllowList)],
    listing: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let mut declared = String::new();
    let mut rules = String::new();
    for (address, _) in containers {
        let learn = format!("{LEARN_PREFIX}{address}");
        if !listing.contains_key(&learn) {
            declared.push_str(&format!(":{learn} - [0:0]\n"));
        }
    }
    egress::plan_chains(
        chains(gateway, containers),
        listing,
        &mut declared,
        &mut rules,
    );
    egress::plan_jumps(
        jumps(listing.contains_key("DOCKER-USER")),
        listing,
        &mut rules,
    );
    let held: BTreeSet<String> = containers.iter().map(|(a, _)| a.to_string()).collect();
    let mut stale = String::new();
    for prefix in [OWN_PREFIX, LEARN_PREFIX] {
        for chain in listing.keys() {
            if let Some(address) = chain.strip_prefix(prefix) {
                if !held.contains(address) {
                    stale.push_str(&format!("-F {chain}\n-X {chain}\n"));
                }
            }
        }
    }
    if declared.is_empty() && rules.is_empty() && stale.is_empty() {
        return None;
    }
    Some(format!("*filter\n{declared}{rules}{stale}COMMIT\n"))
}

/// Addresses an answer never opens, whatever name it is for: this network,
/// loopback, link-local (metadata endpoints), multicast, reserved and broadcast,
/// Azure's host endpoint.
pub fn never_learnt(address: Ipv4Addr) -> bool {
    address.is_unspecified()
        || address.octets()[0] == 0
        || address.is_loopback()
        || address.is_link_local()
        || address.is_multicast()
        || address.octets()[0] >= 240
        || address == Ipv4Addr::new(168, 63, 129, 16)
}

/// The rules one learnt address adds for the ports its name is allowed on.
pub fn learnt_rules(address: Ipv4Addr, ports: &[Option<u16>]) -> Vec<Vec<String>> {
    let destination = format!("{address}/32");
    ports
        .iter()
        .flat_map(|port| accepts(&destination, *port))
        .collect()
}

// ---- The network, the looks, the resolver --------------------------------------

/// Whether this process made or met an allow-list container (then `egress-watch`
/// looks).
static IN_USE: AtomicBool = AtomicBool::new(false);
/// The running containers as the last look found them, for the resolver.
static KNOWN: Mutex<BTreeMap<Ipv4Addr, Known>> = Mutex::new(BTreeMap::new());
/// What each container's `AK-LEARN` chain holds (rule texts), as the last look read
/// it and the resolver added since.
static LEARNT: Mutex<BTreeMap<Ipv4Addr, BTreeSet<String>>> = Mutex::new(BTreeMap::new());
/// The upstream resolvers (`--egress-resolver`; else the host's).
static UPSTREAM: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());
/// The engine's socket, for the resolver's own looks.
static ENGINE: Mutex<Option<(std::path::PathBuf, Duration)>> = Mutex::new(None);
/// One look at a time in this process.
static LOOKING: Mutex<()> = Mutex::new(());
/// The network's subnet as the last look found it: the resolver answers its
/// containers only.
static SUBNET: Mutex<Option<(Ipv4Addr, u8)>> = Mutex::new(None);
/// One learning at a time: an answer goes out only once its rules are in (a second
/// lookup of the same name waits for the first's rules, not just for their record).
static LEARNING: Mutex<()> = Mutex::new(());

/// A running allow-list container as the resolver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub list: AllowList,
    /// Whether its names may open what `public` refuses (private addresses, the host's
    /// neighbours): only where it was made under the ceiling `full`.
    pub private: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `egress-watch` has allow-lists to look after.
pub fn in_use() -> bool {
    IN_USE.load(Ordering::SeqCst)
}

/// Makes this process a resolver for allow-list containers (a server: not a CLI
/// that only puts rules in place), asking `resolvers` (empty: the host's). Every
/// server of a host shares the gateway's port 53 (the kernel spreads the queries
/// among them): they must be given the same resolvers.
pub fn serve_names(resolvers: Vec<SocketAddr>) {
    *lock(&UPSTREAM) = resolvers;
    SERVES_NAMES.store(true, Ordering::SeqCst);
}

/// Whether this process answers names (`serve_names`).
static SERVES_NAMES: AtomicBool = AtomicBool::new(false);

/// The network's subnet and gateway (looked at each time: the network may have been
/// removed, `docker network prune`): found, or made with the first subnet the host
/// does not route and the engine has free. Its bridge must be this process's to see
/// (as `public`'s: rules made here would not apply otherwise).
pub fn ensure_network(docker: &Docker) -> Result<(String, Ipv4Addr)> {
    let plan = find_or_make(docker)?;
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    if !egress::bridge_routes_of(BRIDGE, &routes).contains(&plan.0) {
        return Err(Error::EgressUnavailable(format!(
            "the bridge {BRIDGE} of the network {NETWORK} is not in this server's network \
             namespace (the engine's is another): rules made here would not apply"
        )));
    }
    Ok(plan)
}

fn find_or_make(docker: &Docker) -> Result<(String, Ipv4Addr)> {
    let options = BTreeMap::from([
        (
            "com.docker.network.bridge.name".to_string(),
            BRIDGE.to_string(),
        ),
        (
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        ),
    ]);
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let routed = egress::parse_routes(&routes);
    let mut candidates = SUBNETS.iter().filter(|subnet| {
        let subnet = parse_net(subnet).expect("our subnets parse");
        !routed
            .iter()
            .filter_map(|route| parse_net(route))
            .any(|route| route.1 > 0 && overlaps(route, subnet))
    });
    let mut last = String::new();
    for _ in 0..SUBNETS.len() + 1 {
        match docker.network_inspect(NETWORK) {
            Ok(found) => {
                let ours = found.labels.unwrap_or_default().get(labels::KIND)
                    == Some(&egress::KIND_NETWORK.to_string());
                let same = options.iter().all(|(key, value)| {
                    found.options.as_ref().and_then(|o| o.get(key)) == Some(value)
                });
                let config = found
                    .ipam
                    .and_then(|ipam| ipam.config)
                    .unwrap_or_default()
                    .into_iter()
                    .next();
                let plan = config.and_then(|config| {
                    let gateway = config.gateway?.parse().ok()?;
                    Some((config.subnet?, gateway))
                });
                return match plan {
                    Some(plan) if ours && same && !found.enable_ipv6 => Ok(plan),
                    _ => Err(Error::EgressUnavailable(format!(
                        "the engine has a network named {NETWORK} that agentkernel did not \
                         make (or made otherwise): remove it"
                    ))),
                };
            }
            Err(error) if error.is_not_found() => {
                let Some(subnet) = candidates.next() else {
                    break;
                };
                let network = parse_net(subnet).expect("our subnets parse").0;
                let gateway = Ipv4Addr::from(u32::from(network) + 1).to_string();
                let labels = BTreeMap::from([
                    (labels::MANAGED.to_string(), "true".to_string()),
                    (labels::KIND.to_string(), egress::KIND_NETWORK.to_string()),
                ]);
                let made = docker.network_create_with(
                    NETWORK,
                    &options,
                    &labels,
                    Some((subnet, &gateway)),
                );
                match made {
                    Ok(()) => continue,
                    // Made by another server meanwhile, or the subnet is taken: again.
                    Err(error) if error.is_conflict() => continue,
                    Err(
                        error @ crate::engine::DockerError::Api {
                            status: 400 | 403 | 500,
                            ..
                        },
                    ) => {
                        last = error.to_string();
                        continue;
                    }
                    Err(error) => return Err(Error::Engine(error)),
                }
            }
            Err(error) => return Err(Error::Engine(error)),
        }
    }
    Err(Error::EgressUnavailable(format!(
        "no subnet for the network {NETWORK}: {} are routed here or taken ({last})",
        SUBNETS.join(", ")
    )))
}

/// An address for a new container: one of the subnet's that no container of ours
/// holds or was given, and that no chain names (`taken`), at random.
pub fn pick_address(subnet: &str, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let (network, prefix) = parse_net(subnet)?;
    let size = 1u64 << (32 - u32::from(prefix.min(30)));
    let first = u64::from(u32::from(network)) + 2;
    let count = size.checked_sub(3)?;
    let start = random_u64() % count;
    (0..count.min(4096)).find_map(|step| {
        let address = Ipv4Addr::from(u32::try_from(first + (start + step) % count).ok()?);
        (!taken.contains(&address)).then_some(address)
    })
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
    {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64),
    }
}

/// The running allow-list containers: their address, list and reach.
type Running = Vec<(Ipv4Addr, Known)>;

/// The allow-list containers the engine has (of every namespace: the rules are the
/// host's): the running ones, and the addresses every one was given.
fn containers(docker: &Docker) -> Result<(Running, BTreeSet<Ipv4Addr>)> {
    let filters = vec![
        format!("{}=true", labels::MANAGED),
        format!("{}=allow", labels::NETWORK),
    ];
    let found = docker.container_list(&filters).map_err(Error::Engine)?;
    let mut running: Running = Vec::new();
    let mut given = BTreeSet::new();
    for summary in found {
        let labels = summary.labels.unwrap_or_default();
        let Some(address) = labels
            .get(ADDRESS_LABEL)
            .and_then(|address| address.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        given.insert(address);
        // A container that does not run holds no address: its rules would serve
        // whoever the engine gives it to next.
        if summary.state != "running" && summary.state != "paused" {
            continue;
        }
        let known = Known {
            list: labels
                .get(LIST_LABEL)
                .and_then(|text| AllowList::from_label(text))
                .unwrap_or_default(),
            private: labels.get(labels::ALLOW_PRIVATE).map(String::as_str) == Some("1"),
        };
        if !running.iter().any(|(held, _)| *held == address) {
            running.push((address, known));
        }
    }
    Ok((running, given))
}

/// The addresses our chains name (a container's that is gone, until a look).
fn chained(listing: &BTreeMap<String, Vec<String>>) -> BTreeSet<Ipv4Addr> {
    listing
        .keys()
        .filter_map(|chain| {
            chain
                .strip_prefix(OWN_PREFIX)
                .or_else(|| chain.strip_prefix(LEARN_PREFIX))
        })
        .filter_map(|address| address.parse().ok())
        .collect()
}

fn listing() -> Result<BTreeMap<String, Vec<String>>> {
    egress::run("iptables", &["-w", "10", "-S"], None)
        .map(|text| egress::parse_listing(&text))
        .map_err(Error::EgressUnavailable)
}

/// Looks at the network and the rules of every allow-list container the engine runs,
/// and repairs what is missing or out of place (under the host's lock, from a list
/// of the containers taken under it); starts the resolver where this process answers
/// names, and fails where it cannot (names would then reach whatever else listens).
pub fn look(docker: &Docker) -> Result<()> {
    IN_USE.store(true, Ordering::SeqCst);
    let _looking = lock(&LOOKING);
    let (subnet, gateway) = ensure_network(docker)?;
    *lock(&SUBNET) = parse_net(&subnet);
    let running = egress::with_host_lock(|| {
        let (running, _) = containers(docker).map_err(|error| error.to_string())?;
        let lists: Vec<(Ipv4Addr, AllowList)> = running
            .iter()
            .map(|(address, known)| (*address, known.list.clone()))
            .collect();
        egress::apply(|listing| plan(Some(gateway), &lists, listing))?;
        Ok(running)
    })
    .map_err(Error::EgressUnavailable)?;
    // What the learn chains hold now (a chain made again is empty: its addresses are
    // learnt again).
    let now = listing()?;
    let mut learnt = BTreeMap::new();
    for (address, _) in &running {
        let chain = format!("{LEARN_PREFIX}{address}");
        let rules: BTreeSet<String> = now
            .get(&chain)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|line| line.strip_prefix(&format!("-A {chain} ")))
            .map(str::to_string)
            .collect();
        learnt.insert(*address, rules);
    }
    *lock(&LEARNT) = learnt;
    *lock(&KNOWN) = running.into_iter().collect();
    if SERVES_NAMES.load(Ordering::SeqCst) {
        *lock(&ENGINE) = Some((docker.socket().to_path_buf(), Duration::from_secs(10)));
        start_resolver(gateway)?;
    }
    Ok(())
}

/// Before an allow-list container is made: the network, and an address for it (none
/// that a container holds or a chain still names).
pub fn prepare(docker: &Docker) -> Result<(Ipv4Addr, Ipv4Addr)> {
    IN_USE.store(true, Ordering::SeqCst);
    let (subnet, gateway) = ensure_network(docker)?;
    let (_, mut taken) = containers(docker)?;
    taken.extend(chained(&listing()?));
    let address = pick_address(&subnet, &taken)
        .ok_or_else(|| Error::EgressUnavailable(format!("no free address left in {subnet}")))?;
    Ok((address, gateway))
}

/// An allow-list container's address, labels and settings, for `list`: its names may
/// open what `public` refuses only under the ceiling `full`.
pub fn make_ready(
    docker: &Docker,
    config: &crate::config::Config,
    host: &mut crate::engine::HostSettings,
    labels: &mut BTreeMap<String, String>,
    list: &AllowList,
) -> Result<()> {
    let placed = prepare(docker)?;
    let private = config.max_network == crate::containers::profile::Network::Full;
    apply(host, labels, list, placed, private);
    Ok(())
}

/// The labels and engine settings of an allow-list container at `address`; `private`:
/// whether its names may open what `public` refuses (made under the ceiling `full`).
pub fn apply(
    host: &mut crate::engine::HostSettings,
    labels: &mut BTreeMap<String, String>,
    list: &AllowList,
    (address, gateway): (Ipv4Addr, Ipv4Addr),
    private: bool,
) {
    host.network_mode = NETWORK.to_string();
    host.ipv4_address = Some(address.to_string());
    host.dns = vec![gateway.to_string()];
    if egress::host_has_ipv6() {
        host.sysctls.insert(
            "net.ipv6.conf.all.disable_ipv6".to_string(),
            "1".to_string(),
        );
    }
    labels.insert(labels::NETWORK.to_string(), "allow".to_string());
    labels.insert(LIST_LABEL.to_string(), list.label());
    labels.insert(ADDRESS_LABEL.to_string(), address.to_string());
    labels.insert(
        labels::ALLOW_PRIVATE.to_string(),
        if private { "1" } else { "0" }.to_string(),
    );
}

/// At a server's start: where allow-list sandboxes of `namespaces` exist (the engine
/// starts them again by itself after a reboot), their rules are put back now; where
/// that fails, the running ones are stopped. Gives whether it could look.
pub fn at_start(docker: &Docker, namespaces: &[crate::config::Namespace]) -> bool {
    let allow = crate::containers::profile::Network::Allow.name();
    egress::put_back_at_start(docker, namespaces, allow, "allow-list", |_| look(docker))
}

/// The rules before the engine runs (at boot): every allow-list container refused
/// everything until a server looks (they match the bridge by name).
pub fn install_closed() -> Result<()> {
    egress::with_host_lock(|| egress::apply(|listing| plan(None, &[], listing)))
        .map_err(Error::EgressUnavailable)
}

/// Whether a container's labels make it an allow-list one.
pub fn is_allow(labels: &BTreeMap<String, String>) -> bool {
    labels.get(labels::NETWORK).map(String::as_str) == Some("allow")
}

/// The list a container's labels hold.
pub fn list_of(labels: &BTreeMap<String, String>) -> Option<AllowList> {
    labels
        .get(LIST_LABEL)
        .and_then(|text| AllowList::from_label(text))
}

/// Whether a start failed because another container holds the address.
pub fn address_taken(error: &crate::engine::DockerError) -> bool {
    let text = error.to_string();
    text.contains("Address already in use")
        || text.contains("address already in use")
        || text.contains("no available IPv4 addresses")
}

/// The gateway the resolver is bound on (bound again if the network is made again
/// with another).
static RESOLVER: Mutex<Option<Ipv4Addr>> = Mutex::new(None);

/// Threads answering names (one slow upstream must not hold every container's).
const RESOLVER_THREADS: usize = 4;

/// Starts `egress-dns` on the gateway's port 53, once. An error where it cannot bind.
fn start_resolver(gateway: Ipv4Addr) -> Result<()> {
    let mut bound = lock(&RESOLVER);
    if *bound == Some(gateway) {
        return Ok(());
    }
    let socket = bind_shared(SocketAddr::from((gateway, 53))).map_err(|error| {
        Error::EgressUnavailable(format!(
            "cannot serve names to allow-list containers on {gateway}:53 ({error})"
        ))
    })?;
    for index in 0..RESOLVER_THREADS {
        let socket = socket.try_clone().map_err(|error| {
            Error::EgressUnavailable(format!("cannot share the resolver's socket: {error}"))
        })?;
        std::thread::Builder::new()
            .name(format!("egress-dns-{index}"))
            .spawn(move || serve(socket))
            .map_err(|error| {
                Error::EgressUnavailable(format!("cannot start the resolver: {error}"))
            })?;
    }
    *bound = Some(gateway);
    Ok(())
}

/// A UDP socket on `address` that other servers of the host may bind too.
fn bind_shared(address: SocketAddr) -> std::io::Result<UdpSocket> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &address)?;
    Ok(UdpSocket::from(fd))
}

/// `egress-dns`: answers queries until the process ends.
fn serve(socket: UdpSocket) {
    let mut buffer = vec![0u8; dns::MAX_MESSAGE];
    loop {
        let (length, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(error) => {
                log::warn!("egress-dns: {error}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let SocketAddr::V4(peer_v4) = peer else {
            continue;
        };
        if let Some(reply) = answer(&buffer[..length], *peer_v4.ip()) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

/// The container at `source` as the last look saw it; one the resolver does not know
/// yet (made since, by this or another server) gets a look of its own, at most one a
/// second.
fn known(source: Ipv4Addr) -> Option<Known> {
    if let Some(known) = lock(&KNOWN).get(&source).cloned() {
        return Some(known);
    }
    // Only the network's own containers are looked up (a container of another network
    // that reaches the gateway is answered nothing, and costs no look).
    let inside = lock(&SUBNET).is_some_and(|subnet| overlaps(subnet, (source, 32)));
    if !inside {
        return None;
    }
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    {
        let mut last = lock(&LAST);
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        *last = Some(Instant::now());
    }
    let (socket, timeout) = lock(&ENGINE).clone()?;
    if let Err(error) = look(&Docker::new(socket, timeout)) {
        log::warn!("egress-dns: {error}");
    }
    lock(&KNOWN).get(&source).cloned()
}

/// The reply to one query from `source`, if it gets one.
pub fn answer(packet: &[u8], source: Ipv4Addr) -> Option<Vec<u8>> {
    const RCODE_SERVFAIL: u8 = 2;
    let query = dns::parse_query(packet).ok()?;
    let Some(known) = known(source) else {
        return Some(dns::refusal(packet, &query, dns::RCODE_REFUSED));
    };
    let ports = known.list.ports_for(&query.name);
    if ports.is_empty() {
        return Some(dns::refusal(packet, &query, dns::RCODE_NXDOMAIN));
    }
    if query.qtype != dns::TYPE_A || query.qclass != dns::CLASS_IN {
        return Some(dns::empty_answer(packet, &query));
    }
    let upstream = lock(&UPSTREAM).clone();
    let resolvers = if upstream.is_empty() {
        host_resolvers()
    } else {
        upstream
    };
    // Our own question, with our own id: nothing of the client's bytes goes upstream.
    let id = (random_u64() & 0xffff) as u16;
    let ours = dns::query_packet(id, &query.name, dns::TYPE_A);
    let asked = dns::Query {
        id,
        ..query.clone()
    };
    for resolver in resolvers {
        let Ok(reply) = ask(resolver, &ours) else {
            continue;
        };
        let Ok(response) = dns::parse_response(&reply, &asked) else {
            continue;
        };
        let Some(opened) = learn(source, &known, &response.addresses, &ports) else {
            return Some(dns::refusal(packet, &query, RCODE_SERVFAIL));
        };
        // Only what was opened: an address that leads nowhere is not given.
        let addresses: Vec<Ipv4Addr> = opened;
        let ttl = response
            .addresses
            .iter()
            .map(|(_, ttl)| *ttl)
            .min()
            .unwrap_or(0);
        let mut reply = dns::answer(packet, &query, &addresses, ttl);
        // The upstream's verdict (no such name, ...) where it gave no address.
        if addresses.is_empty() && reply.len() > 3 {
            reply[3] = (reply[3] & 0xF0) | (response.rcode & 0x0F);
        }
        return Some(reply);
    }
    Some(dns::refusal(packet, &query, RCODE_SERVFAIL))
}

/// The host's resolvers (loopback ones too: the server asks from the host).
fn host_resolvers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(['#', ';']).next())
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .map(|address| SocketAddr::from((address, 53)))
        .collect()
}

fn ask(resolver: SocketAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    socket.connect(resolver)?;
    socket.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    socket.send(packet)?;
    let mut buffer = vec![0u8; dns::MAX_MESSAGE];
    let length = socket.recv(&mut buffer)?;
    buffer.truncate(length);
    Ok(buffer)
}

/// Whether an answer's address may be opened to a container: never what no name
/// opens, and what `public` refuses only where the container may reach it.
pub fn may_open(address: Ipv4Addr, private: bool, neighbours: &[String]) -> bool {
    if never_learnt(address) {
        return false;
    }
    private || !refused_by_public(neighbours).any(|range| overlaps(range, (address, 32)))
}

/// Opens the answer's addresses to `source` on `ports`: rules appended to its
/// `AK-LEARN` chain, each once, for at most `MAX_LEARNED` addresses, one learning at a
/// time. Gives the addresses open now (those its names may open); `None` where one
/// could not be opened (the client then hears a failure, not an answer that leads
/// nowhere).
fn learn(
    source: Ipv4Addr,
    known: &Known,
    addresses: &[(Ipv4Addr, u32)],
    ports: &[Option<u16>],
) -> Option<Vec<Ipv4Addr>> {
    let _learning = lock(&LEARNING);
    let chain = format!("{LEARN_PREFIX}{source}");
    let neighbours = egress::HostView::read().neighbours;
    let mut all = true;
    let mut opened = Vec::new();
    for (address, _) in addresses {
        if !may_open(*address, known.private, &neighbours) {
            log::warn!("egress-dns: {source} was answered {address}, which its names do not open");
            continue;
        }
        opened.push(*address);
        for rule in learnt_rules(*address, ports) {
            let text = rule.join(" ");
            {
                let mut learnt = lock(&LEARNT);
                let set = learnt.entry(source).or_default();
                if set.contains(&text) {
                    continue;
                }
                let destination = format!("-d {address}/32 ");
                let addresses: BTreeSet<&str> = set
                    .iter()
                    .filter_map(|rule| rule.split(' ').nth(1))
                    .collect();
                if addresses.len() >= MAX_LEARNED
                    && !set.iter().any(|r| r.starts_with(&destination))
                {
                    log::warn!("egress-dns: {source} has {MAX_LEARNED} addresses open already");
                    all = false;
                    continue;
                }
                set.insert(text.clone());
            }
            let mut args = vec!["-w", "10", "-A", chain.as_str()];
            args.extend(rule.iter().map(String::as_str));
            if let Err(error) = egress::run("iptables", &args, None) {
                lock(&LEARNT).entry(source).or_default().remove(&text);
                log::warn!("egress-dns: cannot open {address} to {source}: {error}");
                all = false;
            }
        }
    }
    all.then_some(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> AllowList {
        AllowList::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn entries_parse_to_names_networks_and_ports() {
        let parsed = list(&[
            "PyPI.org",
            "*.debian.org:443",
            "10.1.2.3",
            "192.168.7.9/24:8080",
            "pypi.org",
        ]);
        assert_eq!(
            parsed.texts(),
            [
                "pypi.org",
                "*.debian.org:443",
                "10.1.2.3",
                "192.168.7.0/24:8080"
            ]
        );
        assert_eq!(AllowList::from_label(&parsed.label()), Some(parsed));
        for bad in [
            "",
            "pypi.org:0",
            "pypi.org:70000",
            "2001:db8::1",
            "[2001:db8::1]:80",
            "10.0.0.0/33",
            "a b",
            "*.",
            "x.*.org",
            "1.2.3",
            "pypi..org",
        ] {
            let error = AllowList::parse(&[bad.to_string()]).unwrap_err();
            assert!(
                error.starts_with(&format!("allow entry '{bad}'")),
                "{error}"
            );
        }
        let many: Vec<String> = (0..65).map(|n| format!("h{n}.example")).collect();
        assert!(AllowList::parse(&many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn names_get_the_ports_of_every_entry_naming_them() {
        let parsed = list(&[
            "pypi.org:443",
            "*.pypi.org:80",
            "files.pypi.org",
            "10.0.0.1",
        ]);
        assert_eq!(parsed.ports_for("pypi.org"), [Some(443)]);
        assert_eq!(parsed.ports_for("x.pypi.org"), [Some(80)]);
        assert_eq!(parsed.ports_for("files.pypi.org"), [None]);
        assert!(parsed.ports_for("evil.org").is_empty());
        assert!(parsed.ports_for("10.0.0.1").is_empty());
    }

    #[test]
    fn lists_naming_refused_ranges_need_the_full_ceiling() {
        let none: &[String] = &[];
        assert!(!list(&["pypi.org", "198.51.100.7"]).names_refused_ranges(none));
        assert!(list(&["10.1.2.3:80"]).names_refused_ranges(none));
        assert!(list(&["169.254.169.254"]).names_refused_ranges(none));
        assert!(list(&["0.0.0.0/0"]).names_refused_ranges(none));
        let neighbours = ["198.51.100.0/24".to_string()];
        assert!(list(&["198.51.100.7"]).names_refused_ranges(&neighbours));
    }

    #[test]
    fn the_rules_send_each_container_to_its_chain_and_refuse_the_rest() {
        let containers = [(
            Ipv4Addr::new(10, 213, 0, 9),
            list(&["10.1.0.0/16:8080", "192.0.2.1", "pypi.org"]),
        )];
        let chains = chains(Some(Ipv4Addr::new(10, 213, 0, 1)), &containers);
        let text = |name: &str| -> Vec<String> {
            let (_, rules) = chains.iter().find(|(chain, _)| chain == name).unwrap();
            rules.iter().map(|rule| rule.join(" ")).collect()
        };
        let dispatch = text(CHAIN);
        // Never another container: the engine's bridges are refused first.
        for bridge in ["ak-allow0", "ak-public0", "docker0", "br-+"] {
            let refusal = format!("-o {bridge} -p tcp -j REJECT --reject-with tcp-reset");
            let at = dispatch
                .iter()
                .position(|rule| *rule == refusal)
                .expect(&refusal);
            assert!(at < 8, "{dispatch:?}");
        }
        assert_eq!(
            dispatch[8..],
            [
                "-s 10.213.0.9/32 -j AK-ALLOW-10.213.0.9",
                "-p tcp -j REJECT --reject-with tcp-reset",
                "-j REJECT --reject-with icmp-port-unreachable",
            ]
        );
        assert_eq!(
            text("AK-ALLOW-10.213.0.9"),
            [
                "-d 10.1.0.0/16 -p tcp -m tcp --dport 8080 -j ACCEPT",
                "-d 10.1.0.0/16 -p udp -m udp --dport 8080 -j ACCEPT",
                "-d 192.0.2.1/32 -j ACCEPT",
                "-j AK-LEARN-10.213.0.9",
            ]
        );
        assert_eq!(
            text(HOST_CHAIN),
            [
                "-d 10.213.0.1/32 -p udp -m udp --dport 53 -j ACCEPT",
                "-p tcp -j REJECT --reject-with tcp-reset",
                "-j REJECT --reject-with icmp-port-unreachable",
            ]
        );
    }

    #[test]
    fn the_plan_makes_learn_chains_once_and_deletes_those_nobody_holds() {
        let gateway = Some(Ipv4Addr::new(10, 213, 0, 1));
        let held = [(Ipv4Addr::new(10, 213, 0, 9), list(&["pypi.org"]))];
        let empty = BTreeMap::new();
        let first = plan(gateway, &held, &empty).unwrap();
        assert!(first.contains(":AK-LEARN-10.213.0.9 - [0:0]\n"), "{first}");
        assert!(first.contains("-I FORWARD 1 -i ak-allow0 -j AGENTKERNEL-ALLOW\n"));
        assert!(first.contains("-I INPUT 1 -i ak-allow0 -j AGENTKERNEL-ALLOW-HOST\n"));
        // The listing once it holds that (and a learnt rule, and a chain of a
        // container that is gone).
        let mut listing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (chain, rules) in chains(gateway, &held) {
            let lines = rules
                .iter()
                .map(|r| format!("-A {chain} {}", r.join(" ")))
                .collect();
            listing.insert(chain, lines);
        }
        listing.insert(
            "AK-LEARN-10.213.0.9".into(),
            vec!["-A AK-LEARN-10.213.0.9 -d 198.51.100.7/32 -j ACCEPT".into()],
        );
        for (chain, rule) in jumps(false) {
            listing.insert(chain.into(), vec![format!("-A {chain} {}", rule.join(" "))]);
        }
        assert_eq!(plan(gateway, &held, &listing), None);
        listing.insert("AK-ALLOW-10.213.0.7".into(), vec![]);
        listing.insert("AK-LEARN-10.213.0.7".into(), vec![]);
        let cleanup = plan(gateway, &held, &listing).unwrap();
        assert_eq!(
            cleanup,
            "*filter\n-F AK-ALLOW-10.213.0.7\n-X AK-ALLOW-10.213.0.7\n\
             -F AK-LEARN-10.213.0.7\n-X AK-LEARN-10.213.0.7\nCOMMIT\n"
        );
    }

    #[test]
    fn every_address_is_written_as_the_hosts_listing_writes_it() {
        let containers = [(Ipv4Addr::new(10, 213, 0, 9), list(&["0.0.0.0/0:443"]))];
        let chains = chains(None, &containers);
        let (_, own) = chains
            .iter()
            .find(|(c, _)| c == "AK-ALLOW-10.213.0.9")
            .unwrap();
        assert_eq!(own[0].join(" "), "-p tcp -m tcp --dport 443 -j ACCEPT");
    }

    #[test]
    fn our_jumps_may_come_in_either_order_ahead_of_the_rest() {
        let public = "-A FORWARD -i ak-public0 -j AGENTKERNEL-PUBLIC".to_string();
        let allow = "-A FORWARD -i ak-allow0 -j AGENTKERNEL-ALLOW".to_string();
        let other = "-A FORWARD -j DOCKER-USER".to_string();
        let listing = [public.clone(), allow.clone(), other.clone()];
        assert!(egress::jump_in_place(&listing, &allow));
        assert!(egress::jump_in_place(&listing, &public));
        let behind = [public.clone(), other.clone(), allow.clone()];
        assert!(!egress::jump_in_place(&behind, &allow));
        let twice = [allow.clone(), allow.clone()];
        assert!(!egress::jump_in_place(&twice, &allow));
    }

    #[test]
    fn names_open_private_addresses_only_under_the_full_ceiling() {
        let neighbours = ["192.0.2.0/24".to_string()];
        for address in ["10.1.2.3", "100.100.100.200", "192.168.1.1", "192.0.2.9"] {
            let address: Ipv4Addr = address.parse().unwrap();
            assert!(!may_open(address, false, &neighbours), "{address}");
            assert!(may_open(address, true, &neighbours), "{address}");
        }
        assert!(may_open(
            "198.51.100.7".parse().unwrap(),
            false,
            &neighbours
        ));
        assert!(!may_open(
            "169.254.169.254".parse().unwrap(),
            true,
            &neighbours
        ));
    }

    #[test]
    fn answers_never_open_loopback_link_local_multicast_or_reserved() {
        for address in [
            "127.0.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "0.1.2.3",
        ] {
            assert!(never_learnt(address.parse().unwrap()), "{address}");
        }
        for address in ["10.251.3.2", "198.51.100.7", "8.8.8.8"] {
            assert!(!never_learnt(address.parse().unwrap()), "{address}");
        }
        assert_eq!(
            learnt_rules(Ipv4Addr::new(198, 51, 100, 7), &[Some(443)])
                .iter()
                .map(|rule| rule.join(" "))
                .collect::<Vec<_>>(),
            [
                "-d 198.51.100.7/32 -p tcp -m tcp --dport 443 -j ACCEPT",
                "-d 198.51.100.7/32 -p udp -m udp --dport 443 -j ACCEPT",
            ]
        );
    }

    #[test]
    fn addresses_are_picked_in_the_subnet_never_taken_ones() {
        let taken: BTreeSet<Ipv4Addr> = (2..=200).map(|n| Ipv4Addr::new(10, 9, 0, n)).collect();
        for _ in 0..50 {
            let address = pick_address("10.9.0.0/24", &taken).unwrap();
            assert!(!taken.contains(&address), "{address}");
            assert_eq!(address.octets()[..3], [10, 9, 0]);
            assert!((201..=254).contains(&address.octets()[3]), "{address}");
        }
        let all: BTreeSet<Ipv4Addr> = (2..=254).map(|n| Ipv4Addr::new(10, 9, 0, n)).collect();
        assert_eq!(pick_address("10.9.0.0/24", &all), None);
    }
}
