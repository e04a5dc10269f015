//! The `public` egress policy made to hold: our own bridge network, and rules in the
//! host's packet filter for what comes in from it.
//!
//! Containers of the `public` policy join the engine network `agentkernel-public`
//! (bridge `ak-public0`, no IPv6, no traffic between its containers). The host's packet
//! filter, which the server extends with `iptables` as the engine extends it for its
//! own networks, refuses what comes in on that bridge for
//! - the host itself, at any of its addresses (chain `AGENTKERNEL-HOST`, jumped to
//!   from `INPUT`): the server's port, the engine's, anything listening on the host;
//! - loopback, private (10/8, 172.16/12, 192.168/16), shared (100.64/10), link-local
//!   (169.254/16, where clouds serve instance credentials), multicast and reserved
//!   ranges, and the bridge itself (another container): chain `AGENTKERNEL-PUBLIC`,
//!   jumped to from `FORWARD`.
//!
//! Refused at once, with a TCP reset or an ICMP "port unreachable": a connect fails in
//! a millisecond (connection refused), a UDP sender hears so, nothing hangs. The rest is forwarded as
//! the engine forwards its default bridge's traffic. Names resolve through the engine's
//! resolver inside the container, as on any network of the engine's.
//!
//! The network and the rules are made once per process, before its first public
//! container: they stay while the host runs (sandboxes outlive servers), and a server
//! that starts finds them there. Without them (no `iptables`, no right to change the
//! rules, a network of that name that is not ours) a public container is refused,
//! never made with more reach than its policy.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

use crate::containers::labels;
use crate::containers::profile::PUBLIC_NETWORK;
use crate::engine::Docker;
use crate::error::{Error, Result};

/// The host's name of the public network's bridge (at most 15 bytes).
pub const BRIDGE: &str = "ak-public0";
/// Our chains in the host's `filter` table: for what the host forwards from the
/// bridge, and for what is for the host itself.
pub const CHAIN: &str = "AGENTKERNEL-PUBLIC";
pub const HOST_CHAIN: &str = "AGENTKERNEL-HOST";
/// The `KIND` label of a network of ours.
pub const KIND_NETWORK: &str = "network";

/// IPv4 destinations a public container never reaches: "this network", private,
/// shared, loopback, link-local, IETF protocol assignments, private, benchmarking,
/// multicast and reserved (with the broadcast address). The documentation ranges
/// (192.0.2/24, 198.51.100/24, 203.0.113/24) are left as the internet routes them.
pub const REFUSED: [&str; 11] = [
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
];

/// One rule: its chain, whether it goes first (else last), and its match and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub first: bool,
    pub spec: Vec<String>,
}

/// The rules the public policy needs, in the order they are made. Each refusal is two
/// rules: a TCP reset for TCP (an ICMP error answering a connect may be held back by
/// the kernel's ICMP rate limit, and the connect then waits for its retransmission, a
/// second later), then an ICMP "port unreachable" for the rest.
pub fn rules() -> Vec<Rule> {
    let refusals = |chain: &'static str, matching: &[&str]| {
        let tcp = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"];
        let other = ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"];
        [&tcp[..], &other[..]].map(|target| Rule {
            chain,
            first: false,
            spec: matching
                .iter()
                .chain(target)
                .map(|part| part.to_string())
                .collect(),
        })
    };
    let mut rules: Vec<Rule> = REFUSED
        .iter()
        .flat_map(|range| refusals(CHAIN, &["-d", range]))
        .collect();
    rules.extend(refusals(CHAIN, &["-o", BRIDGE]));
    rules.extend(refusals(HOST_CHAIN, &[]));
    let jump = |chain: &'static str, to: &str| Rule {
        chain,
        first: true,
        spec: ["-i", BRIDGE, "-j", to].map(String::from).to_vec(),
    };
    rules.push(jump("FORWARD", CHAIN));
    rules.push(jump("INPUT", HOST_CHAIN));
    rules
}

/// Whether the host has IPv6 (then public containers get it turned off).
pub fn host_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Makes the public network and its rules, once per process (again after a failure).
pub fn ensure_public(docker: &Docker) -> Result<()> {
    static READY: Mutex<bool> = Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if *ready {
        return Ok(());
    }
    let unavailable = |reason: String| Error::EgressUnavailable(reason);
    ensure_network(docker)?;
    for rule in rules() {
        ensure_rule(&rule).map_err(unavailable)?;
    }
    log::info!(
        "egress: network {PUBLIC_NETWORK} (bridge {BRIDGE}) and its rules (chain {CHAIN}) are \
         in place"
    );
    *ready = true;
    Ok(())
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

fn ensure_network(docker: &Docker) -> Result<()> {
    for _ in 0..2 {
        match docker.network_inspect(PUBLIC_NETWORK) {
            Ok(found) => {
                let ours = found.labels.unwrap_or_default().get(labels::KIND)
                    == Some(&KIND_NETWORK.to_string());
                let options = found.options.unwrap_or_default();
                let same = network_options()
                    .iter()
                    .all(|(key, value)| options.get(key) == Some(value));
                return if ours && same && !found.enable_ipv6 {
                    Ok(())
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

/// Adds the rule unless the host has it already (`iptables -C`); chains are made as
/// needed. `-w`: waits for the lock other programs (the engine) hold while they change
/// rules.
fn ensure_rule(rule: &Rule) -> std::result::Result<(), String> {
    let ours = rule.chain == CHAIN || rule.chain == HOST_CHAIN;
    if ours && iptables(&["-w", "-n", "-L", rule.chain]).is_err() {
        // Made meanwhile by another server: fine, the listing decides.
        let _ = iptables(&["-w", "-N", rule.chain]);
        iptables(&["-w", "-n", "-L", rule.chain])?;
    }
    let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
    let check: Vec<&str> = ["-w", "-C", rule.chain]
        .iter()
        .copied()
        .chain(spec.iter().copied())
        .collect();
    if iptables(&check).is_ok() {
        return Ok(());
    }
    let add: Vec<&str> = if rule.first {
        ["-w", "-I", rule.chain, "1"]
            .into_iter()
            .chain(spec)
            .collect()
    } else {
        ["-w", "-A", rule.chain].into_iter().chain(spec).collect()
    };
    iptables(&add)
}

/// Runs `iptables` with `args` (from the path, else where distributions put it); an
/// error says what it said.
fn iptables(args: &[&str]) -> std::result::Result<(), String> {
    let mut last = String::from("iptables was not found");
    for program in ["iptables", "/usr/sbin/iptables", "/sbin/iptables"] {
        match Command::new(program).args(args).output() {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => {
                let said = String::from_utf8_lossy(&output.stderr);
                return Err(format!(
                    "iptables {}: {}",
                    args.join(" "),
                    said.trim().lines().last().unwrap_or("failed")
                ));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => last = format!("cannot run iptables: {error}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_rules_refuse_the_host_private_ranges_and_neighbours() {
        let rules = rules();
        let text: Vec<String> = rules
            .iter()
            .map(|rule| format!("{} {}", rule.chain, rule.spec.join(" ")))
            .collect();
        let tcp = "-p tcp -j REJECT --reject-with tcp-reset";
        let other = "-j REJECT --reject-with icmp-port-unreachable";
        let mut expected = vec![
            "FORWARD -i ak-public0 -j AGENTKERNEL-PUBLIC".to_string(),
            "INPUT -i ak-public0 -j AGENTKERNEL-HOST".to_string(),
            format!("AGENTKERNEL-HOST {tcp}"),
            format!("AGENTKERNEL-HOST {other}"),
        ];
        for matching in [
            "-d 10.0.0.0/8",
            "-d 169.254.0.0/16",
            "-d 172.16.0.0/12",
            "-d 192.168.0.0/16",
            "-d 100.64.0.0/10",
            "-d 127.0.0.0/8",
            "-d 224.0.0.0/4",
            "-o ak-public0",
        ] {
            expected.push(format!("AGENTKERNEL-PUBLIC {matching} {tcp}"));
            expected.push(format!("AGENTKERNEL-PUBLIC {matching} {other}"));
        }
        for rule in &expected {
            assert!(text.contains(rule), "{rule}: {text:?}");
        }
        // Within a chain of ours, TCP's rule comes before the catch-all of its match.
        for (index, rule) in text.iter().enumerate() {
            if rule.ends_with(tcp) {
                assert_eq!(text[index + 1], rule.replace(tcp, other));
            }
        }
        // The jumps go first, ahead of whatever accepts.
        for rule in &rules {
            assert_eq!(rule.first, rule.chain == "FORWARD" || rule.chain == "INPUT");
        }
        assert!(BRIDGE.len() <= 15);
    }
}
