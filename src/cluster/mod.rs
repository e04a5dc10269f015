//! Cluster mode's agents: the node servers a router (`serve --cluster`) sends requests
//! to, where they are, whether they answer, and how busy they are.
//!
//! The router holds no state that matters: agents come from `--nodes` or from a DNS
//! name resolved again every few seconds (`--discover`), their health from probing
//! them, and where a sandbox lives from asking them (a cache of answers, never trusted
//! over an agent's own 404). Two routers given the same agents make the same choices.
//!
//! Invariant: a request is never sent to an agent marked down; an agent is marked down
//! at its first failed probe or refused connection, and up again at its first good
//! probe, so an agent that dies stops getting requests within `PROBE_EVERY` plus
//! `PROBE_TIMEOUT`.

pub mod client;
pub mod hash;

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use crate::config::ClusterSource as Source;

/// How often every agent is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(1000);
/// How long a probe may take before its agent is marked down.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often a `--discover` name is resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(3);
/// How long an agent its `--discover` name no longer names stays known (down).
const GONE_GRACE: Duration = Duration::from_secs(60);
/// Most uploads streaming to one agent at once, from one router (far below a server's
/// default 1024 connections), and of those, most of one tenant's.
pub const MAX_UPLOADS: u64 = 64;
pub const MAX_UPLOADS_PER_NAMESPACE: u64 = 16;

/// Most sandbox locations remembered.
const MAX_CACHED: usize = 65_536;

/// An agent's error before its first probe (its first failure is logged).
const NOT_PROBED: &str = "not probed yet";

/// One agent as the router sees it.
#[derive(Debug)]
struct Agent {
    up: bool,
    /// Why it is down, or `None`.
    error: Option<String>,
    /// Warm containers ready, from its last `/pool`.
    warm: u64,
    /// Requests of ours it is serving now.
    in_flight: Arc<AtomicU64>,
    /// Uploads streaming to it now, by namespace (each holds one of its connections
    /// while its client sends).
    uploads: Arc<Mutex<HashMap<String, u64>>>,
    /// When its state last changed.
    since: Instant,
    /// When its `--discover` name stopped naming it: it stays, down, for `GONE_GRACE`,
    /// so that its sandboxes are a 503 naming it rather than a 404 while it restarts
    /// (a Swarm task that comes back does so at another address).
    gone: Option<Instant>,
}

impl Agent {
    fn new() -> Agent {
        Agent {
            up: false,
            error: Some(NOT_PROBED.into()),
            warm: 0,
            in_flight: Arc::new(AtomicU64::new(0)),
            uploads: Arc::new(Mutex::new(HashMap::new())),
            since: Instant::now(),
            gone: None,
        }
    }
}

/// An upload streaming to an agent: counted until dropped.
pub struct UploadSlot {
    uploads: Arc<Mutex<HashMap<String, u64>>>,
    namespace: String,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut counts = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.namespace) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.namespace);
            }
        }
    }
}

/// A request in flight on an agent: counted until dropped.
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The agents of a router.
pub struct Agents {
    source: Source,
    /// The operator key, sent with probes that need it (`/pool`).
    key: Option<String>,
    agents: Mutex<HashMap<String, Agent>>,
    /// Where sandboxes were found: name (with its namespace) to agent.
    located: Mutex<HashMap<String, String>>,
    /// Spreads ties between equally good agents.
    turn: AtomicU64,
}

impl Agents {
    pub fn new(source: Source, key: Option<String>) -> Agents {
        let agents = match &source {
            Source::Nodes(nodes) => nodes.iter().map(|n| (n.clone(), Agent::new())).collect(),
            Source::Discover { .. } => HashMap::new(),
        };
        Agents {
            source,
            key,
            agents: Mutex::new(agents),
            located: Mutex::new(HashMap::new()),
            turn: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Agent>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Probes every agent every `PROBE_EVERY` (and resolves a `--discover` name every
    /// `RESOLVE_EVERY`) until `shutdown`; the `cluster-watch` thread's work.
    pub fn watch(&self, shutdown: &AtomicBool) {
        let mut resolved_at: Option<Instant> = None;
        while !shutdown.load(Ordering::SeqCst) {
            if let Source::Discover { name, port } = &self.source {
                if resolved_at.is_none_or(|at| at.elapsed() >= RESOLVE_EVERY) {
                    resolved_at = Some(Instant::now());
                    self.rediscover(name, *port);
                }
            }
            let started = Instant::now();
            self.probe_all();
            std::thread::sleep(PROBE_EVERY.saturating_sub(started.elapsed()));
        }
    }

    /// The agents a name resolves to now: new ones are added (down until probed), gone
    /// ones dropped. A name that does not resolve keeps the last answer (a DNS hiccup
    /// is not every agent leaving).
    fn rediscover(&self, name: &str, port: u16) {
        let addresses: Vec<String> = match (name, port).to_socket_addrs() {
            Ok(found) => found.map(|address| address.to_string()).collect(),
            Err(error) => {
                log::warn!("cluster: cannot resolve {name}: {error}; keeping the agents known");
                return;
            }
        };
        let mut agents = self.lock();
        let now = Instant::now();
        agents.retain(|address, agent| {
            if addresses.contains(address) {
                agent.gone = None;
                return true;
            }
            let since = *agent.gone.get_or_insert_with(|| {
                log::info!("cluster: agent {address} left ({name} no longer names it)");
                now
            });
            agent.up = false;
            agent.error = Some(format!("{name} no longer names it"));
            now.duration_since(since) < GONE_GRACE
        });
        for address in addresses {
            agents.entry(address.clone()).or_insert_with(|| {
                log::info!("cluster: agent {address} found ({name})");
                Agent::new()
            });
        }
    }

    /// One probe of each agent, all at once.
    fn probe_all(&self) {
        let addresses: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, agent)| agent.gone.is_none())
            .map(|(address, _)| address.clone())
            .collect();
        let results: Vec<(String, Result<u64, String>)> = std::thread::scope(|scope| {
            let probes: Vec<_> = addresses
                .iter()
                .map(|address| {
                    let key = self.key.as_deref();
                    std::thread::Builder::new()
                        .name("cluster-probe".into())
                        .spawn_scoped(scope, move || probe(address, key))
                        .map(|handle| (address, handle))
                })
                .collect();
            probes
                .into_iter()
                .filter_map(Result::ok)
                .map(|(address, handle)| {
                    let result = handle
                        .join()
                        .unwrap_or_else(|_| Err("its probe panicked".into()));
                    (address.clone(), result)
                })
                .collect()
        });
        for (address, result) in results {
            match result {
                Ok(warm) => self.mark_up(&address, warm),
                Err(error) => self.mark_down(&address, &error),
            }
        }
    }

    fn mark_up(&self, address: &str, warm: u64) {
        let mut agents = self.lock();
        if let Some(agent) = agents.get_mut(address).filter(|agent| agent.gone.is_none()) {
            if !agent.up {
                log::info!("cluster: agent {address} is up");
                agent.since = Instant::now();
            }
            agent.up = true;
            agent.error = None;
            agent.warm = warm;
        }
    }

    /// Marks an agent down (a failed probe, or a connection it refused).
    pub fn mark_down(&self, address: &str, error: &str) {
        let mut agents = self.lock();
        if let Some(agent) = agents.get_mut(address) {
            if agent.up || agent.error.as_deref() == Some(NOT_PROBED) {
                log::warn!("cluster: agent {address} is down: {error}");
                agent.since = Instant::now();
            }
            agent.up = false;
            agent.error = Some(error.to_string());
        }
    }

    /// Whether an agent is known and up.
    pub fn is_up(&self, address: &str) -> bool {
        self.lock().get(address).is_some_and(|agent| agent.up)
    }

    /// Every agent known, up or not, sorted.
    pub fn all(&self) -> Vec<String> {
        self.sorted(|_| true)
    }

    /// The agents up now, sorted.
    pub fn up(&self) -> Vec<String> {
        self.sorted(|agent| agent.up)
    }

    /// The addresses of the agents `keep` picks, sorted.
    fn sorted(&self, keep: impl Fn(&Agent) -> bool) -> Vec<String> {
        let mut addresses: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, agent)| keep(agent))
            .map(|(address, _)| address.clone())
            .collect();
        addresses.sort();
        addresses
    }

    /// The agent up now with the most warm containers to spare (its ready ones at the
    /// last probe, less the runs sent there since), then the fewest in flight; ties take
    /// turns. A run (`takes_warm`) takes one off that count; the request counts as in
    /// flight there until the guard is dropped.
    pub fn for_run(&self, takes_warm: bool) -> Option<(String, InFlight)> {
        let mut agents = self.lock();
        let mut candidates: Vec<(&String, &Agent)> =
            agents.iter().filter(|(_, agent)| agent.up).collect();
        if candidates.is_empty() {
            return None;
        }
        candidates.sort_by_key(|(address, _)| address.as_str());
        // The warm count already went down for each run sent there since the last
        // probe: requests in flight only break ties.
        let score = |agent: &Agent| {
            let in_flight = agent.in_flight.load(Ordering::SeqCst);
            (agent.warm, u64::MAX - in_flight)
        };
        let best = candidates.iter().map(|(_, a)| score(a)).max()?;
        let tied: Vec<_> = candidates
            .into_iter()
            .filter(|(_, agent)| score(agent) == best)
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
        let address = tied[turn % tied.len()].0.clone();
        drop(tied);
        // The run takes one of its warm containers: the estimate says so until the next
        // probe says how many it has refilled.
        let agent = agents.get_mut(&address)?;
        if takes_warm {
            agent.warm = agent.warm.saturating_sub(1);
        }
        let guard = self.count(agent);
        Some((address, guard))
    }

    /// Counts a request in flight on `address` (for requests sent there by name).
    pub fn in_flight(&self, address: &str) -> Option<InFlight> {
        let agents = self.lock();
        agents.get(address).map(|agent| self.count(agent))
    }

    /// Takes one of `address`'s upload places for `namespace`, if one is free
    /// (`MAX_UPLOADS` in all, `share` of them the namespace's): an upload holds a
    /// connection to its agent while its client sends, and slow clients must never take
    /// all of an agent's connections, nor one tenant all of its places.
    pub fn upload_slot(&self, address: &str, namespace: &str, share: u64) -> Option<UploadSlot> {
        let agents = self.lock();
        let uploads = Arc::clone(&agents.get(address)?.uploads);
        drop(agents);
        let mut counts = uploads.lock().unwrap_or_else(|e| e.into_inner());
        let total: u64 = counts.values().sum();
        let own = counts.get(namespace).copied().unwrap_or(0);
        if total >= MAX_UPLOADS || own >= share {
            return None;
        }
        counts.insert(namespace.to_string(), own + 1);
        drop(counts);
        Some(UploadSlot {
            uploads,
            namespace: namespace.to_string(),
        })
    }

    fn count(&self, agent: &Agent) -> InFlight {
        agent.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(&agent.in_flight))
    }

    /// Where a new sandbox named `key` goes: rendezvous hashing over the agents up.
    pub fn place(&self, key: &str) -> Option<String> {
        let up = self.up();
        hash::owner(key, up.iter().map(String::as_str)).map(str::to_string)
    }

    /// Where `key` was last found (that agent may since have gone).
    pub fn cached(&self, key: &str) -> Option<String> {
        let located = self.located.lock().unwrap_or_else(|e| e.into_inner());
        located.get(key).cloned()
    }

    pub fn remember(&self, key: &str, address: &str) {
        let mut located = self.located.lock().unwrap_or_else(|e| e.into_inner());
        if located.len() >= MAX_CACHED {
            located.clear();
        }
        located.insert(key.to_string(), address.to_string());
    }

    pub fn forget(&self, key: &str) {
        let mut located = self.located.lock().unwrap_or_else(|e| e.into_inner());
        located.remove(key);
    }

    /// Each agent's state, for `/health`.
    pub fn states(&self) -> Value {
        let agents = self.lock();
        let mut list: Vec<(&String, &Agent)> = agents.iter().collect();
        list.sort_by_key(|(address, _)| address.as_str());
        Value::Array(
            list.into_iter()
                .map(|(address, agent)| {
                    json!({
                        "node": address,
                        "state": if agent.up { "up" } else { "down" },
                        "error": agent.error,
                        "warm": agent.warm,
                        "in_flight": agent.in_flight.load(Ordering::SeqCst),
                        "uploads": agent
                            .uploads
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .values()
                            .sum::<u64>(),
                        "for_secs": agent.since.elapsed().as_secs(),
                    })
                })
                .collect(),
        )
    }
}

/// One probe: `/health` answers 200 with its engine up; the warm containers ready,
/// from `/pool` (0 when it will not say).
fn probe(address: &str, key: Option<&str>) -> Result<u64, String> {
    let headers: Vec<(String, String)> = key
        .map(|key| vec![("X-API-Key".to_string(), key.to_string())])
        .unwrap_or_default();
    let (status, body) = client::get(address, "/health", &headers, PROBE_TIMEOUT)
        .map_err(|error| format!("/health: {error}"))?;
    let health: Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != 200 {
        return Err(format!("/health answered {status}"));
    }
    if health["engine"] != "up" {
        return Err("its Docker Engine does not answer".into());
    }
    let warm = match client::get(address, "/pool", &headers, PROBE_TIMEOUT) {
        Ok((200, body)) => {
            let pool: Value = serde_json::from_slice(&body).unwrap_or_default();
            pool["data"]["keys"]
                .as_array()
                .map(|keys| keys.iter().filter_map(|k| k["ready"].as_u64()).sum())
                .unwrap_or(0)
        }
        _ => 0,
    };
    Ok(warm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_go_to_the_most_warm_capacity_then_the_fewest_in_flight() {
        let agents = Agents::new(Source::nodes("a:1,b:1,c:1").unwrap(), None);
        assert!(agents.for_run(true).is_none(), "none is up before a probe");
        agents.mark_up("a:1", 2);
        agents.mark_up("b:1", 1);
        let (first, _one) = agents.for_run(true).unwrap();
        assert_eq!(first, "a:1");
        // a has 1 left now (one run sent there), b 1: the tie goes to the fewest in
        // flight (b).
        let (second, _two) = agents.for_run(true).unwrap();
        assert_eq!(second, "b:1");
        agents.mark_down("a:1", "gone");
        let (third, _three) = agents.for_run(true).unwrap();
        assert_eq!(third, "b:1");
        assert_eq!(agents.up(), vec!["b:1".to_string()]);
        assert_eq!(agents.place("anything").as_deref(), Some("b:1"));
    }

    #[test]
    fn an_agent_the_name_no_longer_names_stays_down_for_a_while() {
        let agents = Agents::new(Source::discover("localhost:1").unwrap(), None);
        agents.rediscover("localhost", 1);
        let known = agents.all();
        assert!(!known.is_empty());
        for address in &known {
            agents.mark_up(address, 1);
        }
        // The name now names nothing we had: what we had stays, down, for the grace.
        agents
            .lock()
            .iter_mut()
            .for_each(|(_, agent)| agent.gone = None);
        {
            let mut map = agents.lock();
            let entries: Vec<(String, Agent)> = map.drain().collect();
            for (address, agent) in entries {
                map.insert(format!("gone-{address}"), agent);
            }
        }
        agents.rediscover("localhost", 1);
        let gone: Vec<String> = agents
            .all()
            .into_iter()
            .filter(|address| address.starts_with("gone-"))
            .collect();
        assert_eq!(gone.len(), known.len());
        for address in &gone {
            assert!(!agents.is_up(address));
            agents.mark_up(address, 1);
            assert!(!agents.is_up(address), "a gone agent is not probed up");
        }
        agents
            .lock()
            .iter_mut()
            .for_each(|(_, agent)| agent.gone = agent.gone.map(|at| at - GONE_GRACE));
        agents.rediscover("localhost", 1);
        assert!(agents.all().iter().all(|a| !a.starts_with("gone-")));
    }

    #[test]
    fn in_flight_is_counted_until_the_guard_goes() {
        let agents = Agents::new(Source::nodes("a:1").unwrap(), None);
        agents.mark_up("a:1", 0);
        let guard = agents.for_run(true).unwrap().1;
        assert_eq!(agents.states()[0]["in_flight"], 1);
        drop(guard);
        assert_eq!(agents.states()[0]["in_flight"], 0);
    }

    #[test]
    fn upload_places_are_bounded_per_agent_and_per_key() {
        let agents = Agents::new(Source::nodes("a:1,b:1").unwrap(), None);
        let per_key = MAX_UPLOADS_PER_NAMESPACE as usize;
        let mut held = Vec::new();
        for key in 0..MAX_UPLOADS as usize / per_key {
            for _ in 0..per_key {
                held.push(
                    agents
                        .upload_slot("a:1", &format!("ns{key}"), MAX_UPLOADS_PER_NAMESPACE)
                        .unwrap(),
                );
            }
        }
        assert_eq!(agents.states()[0]["uploads"], MAX_UPLOADS);
        // One key past its share; a new key past the agent's; another agent is free.
        let share = MAX_UPLOADS_PER_NAMESPACE;
        assert!(agents.upload_slot("a:1", "ns0", share).is_none());
        assert!(agents.upload_slot("a:1", "other", share).is_none());
        assert!(agents.upload_slot("b:1", "ns0", share).is_some());
        assert!(agents.upload_slot("gone:1", "ns0", share).is_none());
        held.truncate(held.len() - 1);
        assert!(agents.upload_slot("a:1", "other", share).is_some());
        drop(held);
        // The operator's (a server without tenants): every place.
        let all: Vec<_> = (0..MAX_UPLOADS)
            .map(|_| agents.upload_slot("a:1", "operator", MAX_UPLOADS).unwrap())
            .collect();
        assert!(agents.upload_slot("a:1", "operator", MAX_UPLOADS).is_none());
        let held = all;
        drop(held);
        assert_eq!(agents.states()[0]["uploads"], 0);
    }
}
