//! Tenants: the keys file (`--keys FILE`), which binds API keys to namespaces and
//! their quotas, and what quotas count in process (commands running per namespace).
//!
//! One line per key: its SHA-256 as 64 hex digits (never the key itself), the
//! namespace it selects, then optional quotas as `name=value` (`max_sandboxes`,
//! `max_memory_mb`, `max_concurrent_runs`, `max_snapshots`, `max_volumes`,
//! `max_network`):
//!
//! ```text
//! # printf %s "$KEY" | sha256sum
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 team-a max_sandboxes=10 max_concurrent_runs=4 max_memory_mb=8192
//! ```
//!
//! Quotas belong to the namespace: several keys of one namespace (a key being
//! rotated) give it the same quotas, or only one of them gives any. A file that does
//! not parse is refused as a whole, with its line number: at start the server does not
//! start; on a reload (SIGHUP) the keys in force stay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::codec::sha256;
use crate::config::Namespace;
use crate::containers::profile::Network;

/// What a namespace may hold and run at once; `None` is no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Sandboxes it has, whatever their state (a stopped one may start at any time).
    pub max_sandboxes: Option<u64>,
    /// Commands running at once: one-shot runs, sandbox execs, a batch's commands
    /// running together (its threads), streamed or not. Detached commands are not
    /// counted: they run on their own.
    pub max_concurrent_runs: Option<u64>,
    /// The memory limits of its sandboxes, added up (every sandbox has one).
    pub max_memory_mb: Option<u64>,
    /// Snapshots it keeps (each a whole image on the engine's disk).
    pub max_snapshots: Option<u64>,
    /// Named volumes it keeps (they outlive the sandboxes that mount them).
    pub max_volumes: Option<u64>,
    /// The widest egress policy its containers may have (`none`, `public`, `full`).
    pub max_network: Option<Network>,
}

impl Quotas {
    /// Whether any quota bounds what `adding` adds.
    pub fn bound(&self, adding: &Holdings) -> bool {
        (!adding.sandboxes.is_empty()
            && (self.max_sandboxes.is_some() || self.max_memory_mb.is_some()))
            || (!adding.snapshots.is_empty() && self.max_snapshots.is_some())
            || (!adding.volumes.is_empty() && self.max_volumes.is_some())
    }
}

/// What a namespace holds, or what a create adds, by name: sandboxes (with the memory
/// each was given, in MiB), snapshots and volumes. By name, so that what exists and
/// what creates in progress will make count once each, however they overlap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub sandboxes: BTreeMap<String, u64>,
    pub snapshots: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
}

impl Holdings {
    /// Everything of both (a sandbox of both counts its larger memory).
    fn union(&self, other: &Holdings) -> Holdings {
        let mut all = self.clone();
        for (name, memory_mb) in &other.sandboxes {
            let entry = all.sandboxes.entry(name.clone()).or_insert(0);
            *entry = (*entry).max(*memory_mb);
        }
        all.snapshots.extend(other.snapshots.iter().cloned());
        all.volumes.extend(other.volumes.iter().cloned());
        all
    }

    /// These, but those `has` holds already.
    fn without(&self, has: &Holdings) -> Holdings {
        Holdings {
            sandboxes: self
                .sandboxes
                .iter()
                .filter(|(name, _)| !has.sandboxes.contains_key(*name))
                .map(|(name, memory_mb)| (name.clone(), *memory_mb))
                .collect(),
            snapshots: self.snapshots.difference(&has.snapshots).cloned().collect(),
            volumes: self.volumes.difference(&has.volumes).cloned().collect(),
        }
    }

    fn memory_mb(&self) -> u64 {
        self.sandboxes
            .values()
            .fold(0, |sum, memory_mb| sum.saturating_add(*memory_mb))
    }
}

/// What a namespace holds on a cluster's other agents (`serve --cluster`), as counts:
/// the router says so in `X-Agentkernel-Elsewhere` on a request that adds to what it
/// holds, and the agent counts it with its own (`check_quotas`), so that a tenant's
/// quotas bound the whole cluster, not each agent. Counts only ever add: a client that
/// sends the header itself can only make its own quotas tighter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elsewhere {
    pub sandboxes: u64,
    pub memory_mb: u64,
    pub snapshots: u64,
    pub volumes: u64,
}

pub const ELSEWHERE_HEADER: &str = "x-agentkernel-elsewhere";

impl Elsewhere {
    /// `sandboxes=N memory_mb=N snapshots=N volumes=N`, in any order, any subset;
    /// `None` for anything else.
    pub fn parse(text: &str) -> Option<Elsewhere> {
        let mut counts = Elsewhere::default();
        for field in text.split_ascii_whitespace() {
            let (name, value) = field.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            match name {
                "sandboxes" => counts.sandboxes = value,
                "memory_mb" => counts.memory_mb = value,
                "snapshots" => counts.snapshots = value,
                "volumes" => counts.volumes = value,
                _ => return None,
            }
        }
        Some(counts)
    }

    pub fn header_value(&self) -> String {
        format!(
            "sandboxes={} memory_mb={} snapshots={} volumes={}",
            self.sandboxes, self.memory_mb, self.snapshots, self.volumes
        )
    }

    /// Both added up.
    pub fn add(&self, other: &Elsewhere) -> Elsewhere {
        Elsewhere {
            sandboxes: self.sandboxes.saturating_add(other.sandboxes),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            snapshots: self.snapshots.saturating_add(other.snapshots),
            volumes: self.volumes.saturating_add(other.volumes),
        }
    }
}

/// The parsed file: key digests to namespaces, and each namespace's quotas.
#[derive(Debug, Default)]
pub struct Keys {
    by_digest: HashMap<[u8; 32], Namespace>,
    quotas: BTreeMap<Namespace, Quotas>,
}

impl Keys {
    /// Parses the file's text; an error names the line (from 1) and what is wrong.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let mut keys = Keys::default();
        // Where each namespace's quotas were given, for the error of a second set.
        let mut quotas_line: BTreeMap<Namespace, usize> = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = |message: String| format!("line {number}: {message}");
            let mut fields = line.split_whitespace();
            let digest_hex = fields.next().unwrap_or_default();
            let digest = parse_digest(digest_hex).ok_or_else(|| {
                at(format!(
                    "'{}' is not a key's SHA-256 as 64 hex digits (the file holds no keys \
                     themselves: printf %s \"$KEY\" | sha256sum)",
                    shortened(digest_hex)
                ))
            })?;
            let namespace_text = fields
                .next()
                .ok_or_else(|| at("a namespace must follow the key's SHA-256".into()))?;
            let namespace = Namespace::parse(namespace_text).map_err(at)?;
            let mut quotas = Quotas::default();
            for field in fields {
                let (name, value) = field.split_once('=').ok_or_else(|| {
                    at(format!(
                        "'{}' is not a quota: write name=value",
                        shortened(field)
                    ))
                })?;
                if name == "max_network" {
                    let network = Network::parse(value).map_err(&at)?;
                    if quotas.max_network.replace(network).is_some() {
                        return Err(at(format!("{name} is given twice")));
                    }
                    continue;
                }
                let number: u64 = value
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| value.parse().ok())
                    .flatten()
                    .ok_or_else(|| {
                        at(format!("{name}={} is not a whole number", shortened(value)))
                    })?;
                let slot = match name {
                    "max_sandboxes" => &mut quotas.max_sandboxes,
                    "max_concurrent_runs" => &mut quotas.max_concurrent_runs,
                    "max_memory_mb" => &mut quotas.max_memory_mb,
                    "max_snapshots" => &mut quotas.max_snapshots,
                    "max_volumes" => &mut quotas.max_volumes,
                    other => {
                        return Err(at(format!(
                            "unknown quota '{}' (known: max_sandboxes, max_memory_mb, \
                             max_concurrent_runs, max_snapshots, max_volumes, max_network)",
                            shortened(other)
                        )))
                    }
                };
                if slot.replace(number).is_some() {
                    return Err(at(format!("{name} is given twice")));
                }
            }
            if keys.by_digest.contains_key(&digest) {
                return Err(at("this key is already on an earlier line".into()));
            }
            if quotas != Quotas::default() {
                if let Some(earlier) = quotas_line.get(&namespace) {
                    if keys.quotas.get(&namespace) != Some(&quotas) {
                        return Err(at(format!(
                            "namespace '{}' has other quotas on line {earlier}: a \
                             namespace's quotas are the same on each of its lines",
                            namespace.as_str()
                        )));
                    }
                }
                quotas_line.insert(namespace.clone(), number);
                keys.quotas.insert(namespace.clone(), quotas);
            }
            keys.by_digest.insert(digest, namespace);
        }
        Ok(keys)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The namespace of a key, if the file holds its digest.
    pub fn namespace_of(&self, key: &str) -> Option<&Namespace> {
        self.by_digest.get(&sha256::Sha256::digest(key.as_bytes()))
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.by_digest.values()
    }
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(digest)
}

/// At most 40 characters of what a line holds, for an error message.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// A quota a request would go over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    pub message: String,
    /// When trying again may succeed (the `Retry-After` header).
    pub retry_after: Duration,
}

/// The keys in force, and what the quotas count.
pub struct Tenants {
    /// The keys file; `None` when the server has none (one key, or none, as before).
    path: Option<PathBuf>,
    keys: RwLock<Arc<Keys>>,
    /// Every namespace a keys file named, ever: a tenant removed from the file keeps
    /// its sandboxes, and they still expire. Kept as empty files named after them
    /// (`<data dir>/tenants/<namespace>`), so a restart knows them too.
    seen: Mutex<BTreeSet<Namespace>>,
    seen_dir: Option<PathBuf>,
    /// Commands running per namespace.
    running: Arc<Mutex<HashMap<Namespace, u64>>>,
    /// Per namespace: what its creates in progress add (counted, not made yet), per
    /// reservation.
    pending: Arc<Mutex<HashMap<Namespace, BTreeMap<u64, Holdings>>>>,
    /// Per namespace, held from a count to its reservation.
    counting: Mutex<HashMap<Namespace, Arc<Mutex<()>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tenants {
    /// No keys file: every request is in the server's namespace, without quotas.
    pub fn none() -> Tenants {
        Tenants {
            path: None,
            keys: RwLock::new(Arc::new(Keys::default())),
            seen: Mutex::new(BTreeSet::new()),
            seen_dir: None,
            running: Arc::new(Mutex::new(HashMap::new())),
            pending: Arc::new(Mutex::new(HashMap::new())),
            counting: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the keys file; an error says which file and line. The namespaces served
    /// before are read from `data_dir` (and new ones written there), if given.
    pub fn load(path: &Path, data_dir: Option<&Path>) -> Result<Tenants, String> {
        let seen_dir = data_dir.map(|dir| dir.join("tenants"));
        let mut seen = BTreeSet::new();
        if let Some(dir) = &seen_dir {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if let Some(namespace) = entry
                    .file_name()
                    .to_str()
                    .and_then(|name| Namespace::parse(name).ok())
                {
                    seen.insert(namespace);
                }
            }
        }
        let tenants = Tenants {
            path: Some(path.to_path_buf()),
            seen: Mutex::new(seen),
            seen_dir,
            ..Tenants::none()
        };
        tenants.reload()?;
        Ok(tenants)
    }

    /// How many keys are in force.
    pub fn key_count(&self) -> usize {
        self.keys().len()
    }

    /// Whether a keys file is in force.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Reads the file again; on any error the keys in force stay. Gives how many keys
    /// it holds now.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read keys file {}: {error}", path.display()))?;
        let keys = Keys::parse(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        let count = keys.len();
        let mut seen = lock(&self.seen);
        for namespace in keys.namespaces() {
            if seen.insert(namespace.clone()) {
                if let Some(dir) = &self.seen_dir {
                    let written = std::fs::create_dir_all(dir)
                        .and_then(|()| std::fs::write(dir.join(namespace.as_str()), ""));
                    if let Err(error) = written {
                        log::warn!(
                            "cannot note namespace '{}' in {}: {error} (after a restart, \
                             its sandboxes expire only while a key names it)",
                            namespace.as_str(),
                            dir.display()
                        );
                    }
                }
            }
        }
        drop(seen);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(count)
    }

    fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The namespace a key selects, if the file holds it.
    pub fn namespace_of(&self, key: &str) -> Option<Namespace> {
        self.keys().namespace_of(key).cloned()
    }

    pub fn quotas(&self, namespace: &Namespace) -> Quotas {
        self.keys()
            .quotas
            .get(namespace)
            .copied()
            .unwrap_or_default()
    }

    /// The server's namespace and every one a keys file named since the start.
    pub fn namespaces(&self, server: &Namespace) -> Vec<Namespace> {
        let mut all = lock(&self.seen).clone();
        all.insert(server.clone());
        all.into_iter().collect()
    }

    /// The lock under which the namespace's holdings are counted and a create's
    /// reservation made (a cluster's router holds it from its count to the agent's
    /// answer).
    pub fn counting(&self, namespace: &Namespace) -> Arc<Mutex<()>> {
        Arc::clone(
            lock(&self.counting)
                .entry(namespace.clone())
                .or_insert_with(|| Arc::new(Mutex::new(()))),
        )
    }

    /// Takes up to `want` of the namespace's concurrent runs (at least one, else the
    /// quota's refusal): a batch runs as many commands at once as it was given.
    pub fn run_slots(&self, namespace: &Namespace, want: u64) -> Result<RunSlots, OverQuota> {
        let max = self.quotas(namespace).max_concurrent_runs;
        let mut running = lock(&self.running);
        let now = running.get(namespace).copied().unwrap_or(0);
        let granted = match max {
            None => want,
            Some(max) => want.min(max.saturating_sub(now)),
        };
        if granted == 0 {
            return Err(OverQuota {
                message: format!(
                    "Quota max_concurrent_runs reached: namespace '{}' runs {now} of its {} \
                     commands at once",
                    namespace.as_str(),
                    max.unwrap_or(0)
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        *running.entry(namespace.clone()).or_insert(0) += granted;
        Ok(RunSlots {
            running: Arc::clone(&self.running),
            namespace: namespace.clone(),
            count: granted,
        })
    }

    /// Reserves what a create adds (`adding`) against the namespace's quotas, if one
    /// bounds it. `has` reads what the namespace holds now (from the engine), and when
    /// a refusal may be worth trying again; it is called under the namespace's count
    /// lock, and what creates in progress will add counts too (once: by name), so that
    /// two creates never both take its last place. The reservation lasts until
    /// dropped: once what it reserved exists (or failed).
    pub fn reserve<E>(
        &self,
        namespace: &Namespace,
        adding: Holdings,
        elsewhere: Elsewhere,
        has: impl FnOnce() -> Result<(Holdings, Duration), E>,
    ) -> Result<Option<Reservation>, Refusal<E>> {
        let quotas = self.quotas(namespace);
        if !quotas.bound(&adding) {
            return Ok(None);
        }
        let counting = self.counting(namespace);
        let _counting = lock(&counting);
        let (mut has, retry_after) = has().map_err(Refusal::Failed)?;
        // What exists already adds nothing (a create of a name it has is a 409, whatever
        // memory it asks for). What creates in progress will add counts, at the larger
        // of two memories: one may fail, and the other then be made.
        let adding = adding.without(&has);
        let mut pending = lock(&self.pending);
        for held in pending
            .get(namespace)
            .into_iter()
            .flat_map(BTreeMap::values)
        {
            has = has.union(held);
        }
        check_quotas(namespace, quotas, &has, &adding, elsewhere, retry_after)
            .map_err(Refusal::Over)?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pending
            .entry(namespace.clone())
            .or_default()
            .insert(id, adding);
        Ok(Some(Reservation {
            pending: Arc::clone(&self.pending),
            namespace: namespace.clone(),
            id,
        }))
    }
}

/// Why a reservation was not made: a quota, or reading what the namespace has.
#[derive(Debug)]
pub enum Refusal<E> {
    Over(OverQuota),
    Failed(E),
}

/// What a create in progress adds to its namespace, counted until dropped.
#[derive(Debug)]
pub struct Reservation {
    pending: Arc<Mutex<HashMap<Namespace, BTreeMap<u64, Holdings>>>>,
    namespace: Namespace,
    id: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut pending = lock(&self.pending);
        if let Some(reservations) = pending.get_mut(&self.namespace) {
            reservations.remove(&self.id);
            if reservations.is_empty() {
                pending.remove(&self.namespace);
            }
        }
    }
}

/// Commands a namespace runs, counted until dropped.
#[derive(Debug)]
pub struct RunSlots {
    running: Arc<Mutex<HashMap<Namespace, u64>>>,
    namespace: Namespace,
    count: u64,
}

impl RunSlots {
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Drop for RunSlots {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        if let Some(now) = running.get_mut(&self.namespace) {
            *now = now.saturating_sub(self.count);
            if *now == 0 {
                running.remove(&self.namespace);
            }
        }
    }
}

/// Checks `adding` against the namespace's quotas, given what it holds (`has`, by name:
/// what `adding` names that it holds already adds nothing) and what it holds on a
/// cluster's other agents (`elsewhere`). `retry_after` is when one of its sandboxes
/// ends by itself, if one will (snapshots and volumes do not).
pub fn check_quotas(
    namespace: &Namespace,
    quotas: Quotas,
    has: &Holdings,
    adding: &Holdings,
    elsewhere: Elsewhere,
    retry_after: Duration,
) -> Result<(), OverQuota> {
    let namespace = namespace.as_str();
    let after = has.union(adding);
    let counts = [
        (
            "max_sandboxes",
            "sandboxes",
            quotas.max_sandboxes,
            has.sandboxes.len(),
            after.sandboxes.len(),
            elsewhere.sandboxes,
        ),
        (
            "max_snapshots",
            "snapshots",
            quotas.max_snapshots,
            has.snapshots.len(),
            after.snapshots.len(),
            elsewhere.snapshots,
        ),
        (
            "max_volumes",
            "volumes",
            quotas.max_volumes,
            has.volumes.len(),
            after.volumes.len(),
            elsewhere.volumes,
        ),
    ];
    for (quota, what, max, before, after, elsewhere) in counts {
        let before = (before as u64).saturating_add(elsewhere);
        let after = (after as u64).saturating_add(elsewhere);
        if let Some(max) = max.filter(|max| after > before && after > *max) {
            let retry_after = if what == "sandboxes" {
                retry_after
            } else {
                NO_EXPIRY_RETRY
            };
            return Err(OverQuota {
                message: format!(
                    "Quota {quota} reached: namespace '{namespace}' has {before} of its {max} \
                     {what}, and this would add {} (remove some first)",
                    after - before
                ),
                retry_after,
            });
        }
    }
    if let Some(max) = quotas.max_memory_mb {
        let (before, after) = (
            has.memory_mb().saturating_add(elsewhere.memory_mb),
            after.memory_mb().saturating_add(elsewhere.memory_mb),
        );
        if after > before && after > max {
            return Err(OverQuota {
                message: format!(
                    "Quota max_memory_mb reached: namespace '{namespace}' has sandboxes of \
                     {before} MiB of its {max} MiB, and this one asks for {} MiB more",
                    after - before
                ),
                retry_after,
            });
        }
    }
    Ok(())
}

/// `Retry-After` for what never ends by itself (snapshots, volumes, sandboxes without
/// a ttl): a minute.
pub const NO_EXPIRY_RETRY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KEY: &str = "test";
    // printf %s test | sha256sum
    const TEST_DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const OTHER_DIGEST: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    fn namespace(text: &str) -> Namespace {
        Namespace::parse(text).unwrap()
    }

    #[test]
    fn what_is_held_elsewhere_counts_and_only_ever_tightens() {
        assert_eq!(
            Elsewhere::parse("sandboxes=2 memory_mb=512 snapshots=1 volumes=3"),
            Some(Elsewhere {
                sandboxes: 2,
                memory_mb: 512,
                snapshots: 1,
                volumes: 3
            })
        );
        assert_eq!(Elsewhere::parse(""), Some(Elsewhere::default()));
        for bad in ["sandboxes=-1", "sandboxes", "other=1", "sandboxes=1x"] {
            assert_eq!(Elsewhere::parse(bad), None, "{bad}");
        }
        let counts = Elsewhere::parse("sandboxes=2 memory_mb=512").unwrap();
        assert_eq!(Elsewhere::parse(&counts.header_value()), Some(counts));

        let namespace = Namespace::parse("team").unwrap();
        let quotas = Quotas {
            max_sandboxes: Some(3),
            max_memory_mb: Some(1024),
            ..Quotas::default()
        };
        let one = |name: &str, memory_mb: u64| Holdings {
            sandboxes: [(name.to_string(), memory_mb)].into(),
            ..Holdings::default()
        };
        let here = one("a", 256);
        let check = |adding: &Holdings, elsewhere: Elsewhere| {
            check_quotas(
                &namespace,
                quotas,
                &here,
                adding,
                elsewhere,
                NO_EXPIRY_RETRY,
            )
        };
        assert!(check(&one("b", 256), Elsewhere::default()).is_ok());
        let two_elsewhere = Elsewhere {
            sandboxes: 2,
            memory_mb: 256,
            ..Elsewhere::default()
        };
        let refused = check(&one("b", 256), two_elsewhere).unwrap_err();
        assert!(
            refused.message.contains("has 3 of its 3 sandboxes"),
            "{}",
            refused.message
        );
        let memory = Elsewhere {
            sandboxes: 1,
            memory_mb: 700,
            ..Elsewhere::default()
        };
        let refused = check(&one("b", 256), memory).unwrap_err();
        assert!(
            refused.message.contains("max_memory_mb"),
            "{}",
            refused.message
        );
        // What it holds here already adds nothing, whatever is held elsewhere.
        assert!(check(&one("a", 256), two_elsewhere).is_ok());

        // Through a reservation: a name that exists adds nothing whatever memory it asks
        // for (the create is a 409, not a 429); one a create in progress reserved counts
        // at the larger memory (that create may fail, and this one be made).
        let tenants = Tenants::none();
        *tenants.keys.write().unwrap() =
            Arc::new(Keys::parse(&format!("{TEST_DIGEST} team max_memory_mb=1024")).unwrap());
        let exists = || Ok::<_, ()>((one("a", 256), NO_EXPIRY_RETRY));
        let elsewhere = Elsewhere::default();
        assert!(tenants
            .reserve(&namespace, one("a", 8192), elsewhere, exists)
            .is_ok());
        let pending = tenants
            .reserve(&namespace, one("x", 256), elsewhere, exists)
            .unwrap();
        assert!(tenants
            .reserve(&namespace, one("x", 8192), elsewhere, exists)
            .is_err());
        drop(pending);
        assert!(tenants
            .reserve(&namespace, one("x", 512), elsewhere, exists)
            .is_ok());
    }

    #[test]
    fn binds_key_digests_to_namespaces_and_quotas() {
        let text = format!(
            "# tenants\n\n{TEST_DIGEST} team-a max_sandboxes=2 max_memory_mb=512 # a\n\
             {} team-b\n",
            OTHER_DIGEST.to_uppercase()
        );
        let keys = Keys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.namespace_of(TEST_KEY), Some(&namespace("team-a")));
        assert_eq!(keys.namespace_of("test2"), Some(&namespace("team-b")));
        assert_eq!(
            keys.namespace_of(TEST_DIGEST),
            None,
            "the digest is not a key"
        );
        assert_eq!(
            keys.quotas.get(&namespace("team-a")),
            Some(&Quotas {
                max_sandboxes: Some(2),
                max_memory_mb: Some(512),
                ..Quotas::default()
            })
        );
        assert_eq!(keys.quotas.get(&namespace("team-b")), None);
    }

    #[test]
    fn a_malformed_line_is_refused_with_its_number() {
        let cases = [
            ("secret team-a", "line 1: 'secret' is not a key's SHA-256"),
            (TEST_DIGEST, "line 1: a namespace must follow"),
            (
                &format!("{TEST_DIGEST} Team_A"),
                "line 1: invalid namespace 'Team_A'",
            ),
            (
                &format!("#\n{TEST_DIGEST} a max_sandboxes"),
                "line 2: 'max_sandboxes' is not a quota",
            ),
            (
                &format!("{TEST_DIGEST} a max_sandboxes=-1"),
                "line 1: max_sandboxes=-1 is not a whole number",
            ),
            (
                &format!("{TEST_DIGEST} a max_cpus=1"),
                "line 1: unknown quota 'max_cpus'",
            ),
            (
                &format!("{TEST_DIGEST} a max_sandboxes=1 max_sandboxes=2"),
                "line 1: max_sandboxes is given twice",
            ),
            (
                &format!("{TEST_DIGEST} a\n\n{TEST_DIGEST} b"),
                "line 3: this key is already on an earlier line",
            ),
            (
                &format!("{TEST_DIGEST} a max_sandboxes=1\n{OTHER_DIGEST} a max_sandboxes=2"),
                "line 2: namespace 'a' has other quotas on line 1",
            ),
        ];
        for (text, expected) in cases {
            let error = Keys::parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
        // The same quotas on two lines of a namespace, or on one of them, are fine.
        let same = format!("{TEST_DIGEST} a max_sandboxes=1\n{OTHER_DIGEST} a max_sandboxes=1");
        assert!(Keys::parse(&same).is_ok());
        let one = format!("{TEST_DIGEST} a\n{OTHER_DIGEST} a max_sandboxes=1");
        assert_eq!(
            Keys::parse(&one).unwrap().quotas[&namespace("a")].max_sandboxes,
            Some(1)
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_keys_in_force() {
        let dir = std::env::temp_dir().join(format!("ak-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, format!("{TEST_DIGEST} team-a\n")).unwrap();
        let tenants = Tenants::load(&path, Some(&dir)).unwrap();
        assert_eq!(tenants.namespace_of(TEST_KEY), Some(namespace("team-a")));
        std::fs::write(&path, format!("{TEST_DIGEST} team-a\nnonsense\n")).unwrap();
        let error = tenants.reload().unwrap_err();
        assert!(error.contains("line 2:"), "{error}");
        assert_eq!(tenants.namespace_of(TEST_KEY), Some(namespace("team-a")));
        std::fs::write(&path, format!("{OTHER_DIGEST} team-b\n")).unwrap();
        assert_eq!(tenants.reload(), Ok(1));
        assert_eq!(tenants.namespace_of(TEST_KEY), None);
        // A removed tenant's sandboxes are still looked after.
        assert_eq!(
            tenants.namespaces(&namespace("default")),
            vec![
                namespace("default"),
                namespace("team-a"),
                namespace("team-b")
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_slots_are_bounded_per_namespace_and_given_back() {
        let tenants = Tenants::none();
        *tenants.keys.write().unwrap() =
            Arc::new(Keys::parse(&format!("{TEST_DIGEST} a max_concurrent_runs=3")).unwrap());
        let a = namespace("a");
        let first = tenants.run_slots(&a, 2).unwrap();
        assert_eq!(first.count(), 2);
        let second = tenants.run_slots(&a, 4).unwrap();
        assert_eq!(second.count(), 1, "a batch gets what is left");
        let refused = tenants.run_slots(&a, 1).unwrap_err();
        assert!(
            refused.message.contains("max_concurrent_runs"),
            "{refused:?}"
        );
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        // Another namespace, without quotas, is not held back.
        assert_eq!(tenants.run_slots(&namespace("b"), 9).unwrap().count(), 9);
        drop(first);
        assert_eq!(tenants.run_slots(&a, 5).unwrap().count(), 2);
        drop(second);
        assert!(lock(&tenants.running).is_empty());
    }

    fn sandbox(name: &str, memory_mb: u64) -> Holdings {
        Holdings {
            sandboxes: [(name.to_string(), memory_mb)].into(),
            ..Holdings::default()
        }
    }

    #[test]
    fn quotas_count_what_there_is_and_what_is_being_made_once_each() {
        let tenants = Tenants::none();
        let line = format!(
            "{TEST_DIGEST} a max_sandboxes=3 max_memory_mb=1024 max_snapshots=1 max_volumes=2"
        );
        *tenants.keys.write().unwrap() = Arc::new(Keys::parse(&line).unwrap());
        let a = namespace("a");
        let wait = Duration::from_secs(300);
        let has = |holdings: Holdings| move || Ok::<_, ()>((holdings, wait));
        // One sandbox exists; a second is being made.
        let second = tenants
            .reserve(
                &a,
                sandbox("two", 256),
                Elsewhere::default(),
                has(sandbox("one", 256)),
            )
            .unwrap()
            .expect("a quota bounds it");
        // The second is listed already while its create finishes: counted once.
        let listed = sandbox("one", 256).union(&sandbox("two", 256));
        let third = tenants
            .reserve(
                &a,
                sandbox("three", 256),
                Elsewhere::default(),
                has(listed.clone()),
            )
            .unwrap()
            .expect("a third fits");
        let Err(Refusal::Over(full)) = tenants.reserve(
            &a,
            sandbox("four", 16),
            Elsewhere::default(),
            has(listed.clone()),
        ) else {
            panic!("the last place is taken");
        };
        assert!(
            full.message.starts_with("Quota max_sandboxes reached"),
            "{full:?}"
        );
        assert!(full.message.contains("has 3 of its 3"), "{full:?}");
        assert_eq!(full.retry_after, wait);
        drop((second, third));
        let Err(Refusal::Over(memory)) = tenants.reserve(
            &a,
            sandbox("big", 900),
            Elsewhere::default(),
            has(sandbox("one", 256)),
        ) else {
            panic!("over the memory quota");
        };
        assert!(
            memory.message.starts_with("Quota max_memory_mb reached"),
            "{memory:?}"
        );
        // Volumes by name: one that exists, or that another create is making, is no new one.
        let volumes = |names: &[&str]| Holdings {
            volumes: names.iter().map(|n| n.to_string()).collect(),
            ..Holdings::default()
        };
        let making = tenants
            .reserve(
                &a,
                volumes(&["v1", "v2"]),
                Elsewhere::default(),
                has(volumes(&["v1"])),
            )
            .unwrap();
        assert!(tenants
            .reserve(
                &a,
                volumes(&["v2"]),
                Elsewhere::default(),
                has(volumes(&["v1"]))
            )
            .is_ok());
        let Err(Refusal::Over(over)) = tenants.reserve(
            &a,
            volumes(&["v3"]),
            Elsewhere::default(),
            has(volumes(&["v1"])),
        ) else {
            panic!("over the volume quota");
        };
        assert!(over.message.contains("max_volumes"), "{over:?}");
        assert_eq!(over.retry_after, NO_EXPIRY_RETRY);
        drop(making);
        // Snapshots never expire: a minute.
        let snapshot = |name: &str| Holdings {
            snapshots: [name.to_string()].into(),
            ..Holdings::default()
        };
        let Err(Refusal::Over(snapshots)) = tenants.reserve(
            &a,
            snapshot("s2"),
            Elsewhere::default(),
            has(snapshot("s1")),
        ) else {
            panic!("over the snapshot quota");
        };
        assert!(snapshots.message.contains("max_snapshots"), "{snapshots:?}");
        assert_eq!(snapshots.retry_after, NO_EXPIRY_RETRY);
        // What no quota bounds is not even counted; a failed count is the caller's.
        assert!(tenants
            .reserve(
                &namespace("b"),
                sandbox("x", 1 << 40),
                Elsewhere::default(),
                || Err(())
            )
            .unwrap()
            .is_none());
        assert!(matches!(
            tenants.reserve(&a, sandbox("x", 16), Elsewhere::default(), || Err(())),
            Err(Refusal::Failed(()))
        ));
        assert!(lock(&tenants.pending).is_empty());
    }

    #[test]
    fn a_reservation_does_not_hold_the_count_lock() {
        let tenants = Arc::new(Tenants::none());
        let line = format!("{TEST_DIGEST} a max_sandboxes=5");
        *tenants.keys.write().unwrap() = Arc::new(Keys::parse(&line).unwrap());
        let a = namespace("a");
        let held = tenants
            .reserve(&a, sandbox("one", 16), Elsewhere::default(), || {
                Ok::<_, ()>((Holdings::default(), NO_EXPIRY_RETRY))
            })
            .unwrap();
        // Another thread counts and reserves while the first reservation is held.
        let other = Arc::clone(&tenants);
        let second = std::thread::spawn(move || {
            other
                .reserve(&a, sandbox("two", 16), Elsewhere::default(), || {
                    Ok::<_, ()>((Holdings::default(), NO_EXPIRY_RETRY))
                })
                .map(|reservation| reservation.is_some())
                .unwrap_or(false)
        });
        assert!(second.join().unwrap());
        drop(held);
    }

    #[test]
    fn a_namespace_may_have_a_widest_network() {
        let line = format!("{TEST_DIGEST} a max_network=public max_sandboxes=1");
        let keys = Keys::parse(&line).unwrap();
        assert_eq!(
            keys.quotas[&namespace("a")].max_network,
            Some(Network::Public)
        );
        let error = Keys::parse(&format!("{TEST_DIGEST} a max_network=wide")).unwrap_err();
        assert!(
            error.starts_with("line 1: unknown network 'wide'"),
            "{error}"
        );
    }

    #[test]
    fn quota_values_are_plain_digits_and_digests_plain_hex() {
        let plus = format!("{TEST_DIGEST} a max_sandboxes=+5");
        assert!(Keys::parse(&plus)
            .unwrap_err()
            .contains("not a whole number"));
        let signed_hex = format!("+{}", &TEST_DIGEST[1..]);
        assert!(Keys::parse(&format!("{signed_hex} a")).is_err());
    }
}
