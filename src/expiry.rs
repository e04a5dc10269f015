//! Sandboxes that end by themselves: a time to live (`ttl`, fixed at creation, moved
//! by `extend`) and an idle timeout (no exec, file operation or stream for that long).
//!
//! What is fixed at creation is in the container's labels (`EXPIRES_AT`, unix seconds,
//! and `IDLE_TIMEOUT`, seconds); an extension, which labels cannot carry, is a file of
//! its own under the data dir (`expiry/<namespace>/<container id>`, written whole by a
//! rename), so it survives a restart. Activity is kept in memory: after a restart a
//! sandbox's idle time counts from the server's start, never from before.
//!
//! The `expiry` thread looks every second and removes what is due, recording
//! `expired` in the history. A removal and an extension never interleave (one lock, and
//! the removal reads the expiry again under it); an idle sandbox with a command in
//! flight is not idle; an exec in flight when a sandbox's time is up is killed with it
//! (its answer says the sandbox is gone).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Namespace};
use crate::containers::labels::{self, SandboxName, EXPIRES_AT, IDLE_TIMEOUT};
use crate::engine::Docker;
use crate::error::{Error, Result};
use crate::history::History;

pub use crate::config::{parse_duration, MAX_DURATION};
/// How often the `expiry` thread looks.
pub const EVERY: Duration = Duration::from_secs(1);

/// When a sandbox ends by itself, as its labels and an extension say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub expires_at: Option<SystemTime>,
    pub idle_timeout: Option<Duration>,
}

/// What the `expiry` thread and the handlers share.
pub struct Expiry {
    /// Where extensions are kept, a directory per namespace (none without a data dir:
    /// then they are refused).
    dir: Option<PathBuf>,
    /// Per namespace: the last activity of its sandboxes, and commands in flight.
    activity: Mutex<HashMap<String, Room>>,
    /// Held by a removal (from its last look to the removal) and by an extension.
    decide: Mutex<()>,
    /// The server's start: before it, no activity is known.
    started: Instant,
    /// Sandboxes removed for their terms since the start (for `GET /metrics`).
    expired: std::sync::atomic::AtomicU64,
}

/// Most sandboxes of one namespace whose activity is kept (requests may name sandboxes
/// that do not exist); past it, the longest idle entry goes, and the namespace's
/// `since` moves to now, so that no sandbox is ever taken for idle sooner than it was
/// (and one namespace's made-up names move only its own).
const MAX_ACTIVITY: usize = 4096;

/// One namespace's activity.
struct Room {
    /// Since when a sandbox without an entry counts as idle: the server's start, or
    /// the last time an entry had to be dropped for room.
    since: Instant,
    sandboxes: HashMap<String, Activity>,
}

#[derive(Debug, Clone, Copy)]
struct Activity {
    last: Instant,
    in_flight: usize,
}

/// A command or file operation on a sandbox, from its start to its end.
pub struct Busy<'a> {
    expiry: &'a Expiry,
    namespace: String,
    name: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut activity = lock(&self.expiry.activity);
        let room = activity.get_mut(&self.namespace);
        if let Some(entry) = room.and_then(|room| room.sandboxes.get_mut(&self.name)) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.last = Instant::now();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Expiry {
    pub fn new(config: &Config) -> Expiry {
        Expiry {
            dir: config.data_dir.as_ref().map(|dir| dir.join("expiry")),
            activity: Mutex::new(HashMap::new()),
            decide: Mutex::new(()),
            started: Instant::now(),
            expired: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Sandboxes removed for their terms since the start.
    pub fn expired_count(&self) -> u64 {
        self.expired.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks a sandbox busy until the guard drops (activity, for its idle timeout).
    pub fn busy(&self, namespace: &Namespace, name: &SandboxName) -> Busy<'_> {
        let mut activity = lock(&self.activity);
        let room = activity
            .entry(namespace.as_str().to_string())
            .or_insert_with(|| Room {
                since: self.started,
                sandboxes: HashMap::new(),
            });
        if room.sandboxes.len() >= MAX_ACTIVITY && !room.sandboxes.contains_key(name.as_str()) {
            let idlest = room
                .sandboxes
                .iter()
                .filter(|(_, entry)| entry.in_flight == 0)
                .min_by_key(|(_, entry)| entry.last)
                .map(|(name, _)| name.clone());
            if let Some(idlest) = idlest {
                room.sandboxes.remove(&idlest);
                room.since = Instant::now();
            }
        }
        let entry = room
            .sandboxes
            .entry(name.as_str().to_string())
            .or_insert(Activity {
                last: Instant::now(),
                in_flight: 0,
            });
        entry.in_flight += 1;
        entry.last = Instant::now();
        Busy {
            expiry: self,
            namespace: namespace.as_str().to_string(),
            name: name.as_str().to_string(),
        }
    }

    /// Where the extension of a container of the namespace labelled `labels` is kept.
    fn extension_path(
        &self,
        labels: &BTreeMap<String, String>,
        container: &str,
    ) -> Option<PathBuf> {
        // Container ids are hex from the engine; anything else is never a file name.
        if container.is_empty() || !container.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let namespace = Namespace::parse(labels.get(labels::NAMESPACE)?).ok()?;
        Some(self.dir.as_ref()?.join(namespace.as_str()).join(container))
    }

    /// A sandbox's terms: its labels, and its extension if it has one.
    pub fn terms(&self, container: &str, labels: &BTreeMap<String, String>) -> Terms {
        // A time the clock cannot hold (a corrupt file) is no time: the label's stands.
        let time = |seconds: u64| UNIX_EPOCH.checked_add(Duration::from_secs(seconds));
        let labelled = labels
            .get(EXPIRES_AT)
            .and_then(|value| value.parse::<u64>().ok())
            .and_then(time);
        let extended = self
            .extension_path(labels, container)
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .and_then(time);
        Terms {
            expires_at: extended.or(labelled),
            idle_timeout: labels
                .get(IDLE_TIMEOUT)
                .and_then(|value| value.parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    }

    /// Moves a sandbox's expiry `by` later (from now, if it is past); `None` for a
    /// sandbox that does not expire (it stays so). `still_there` is asked under the
    /// lock a removal holds: a sandbox removed meanwhile is not extended.
    pub fn extend(
        &self,
        container: &str,
        labels: &BTreeMap<String, String>,
        by: Duration,
        still_there: impl FnOnce() -> Result<()>,
    ) -> Result<Option<SystemTime>> {
        let _decide = self.deciding();
        still_there()?;
        let Some(current) = self.terms(container, labels).expires_at else {
            return Ok(None);
        };
        let path = self.extension_path(labels, container).ok_or_else(|| {
            Error::Invalid(
                "extending a sandbox needs the server's data dir (AGENTKERNEL_DATA_DIR)".into(),
            )
        })?;
        // Never further than `MAX_DURATION` from now, however often it is extended.
        let now = SystemTime::now();
        let moved = (current.max(now) + by).min(now + MAX_DURATION);
        let seconds = unix_seconds(moved);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
            // A name of this process's own: two servers extending at once each
            // rename a whole file.
            static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let count = WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let partial = path.with_extension(format!("{}.{count}.partial", std::process::id()));
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(format!("{seconds}\n").as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&partial, &path)
        };
        write().map_err(|error| Error::DataDir(format!("cannot keep the extension: {error}")))?;
        Ok(Some(UNIX_EPOCH + Duration::from_secs(seconds)))
    }

    /// Forgets a removed sandbox (its container `container`, labelled `labels`): its
    /// extension and its activity.
    pub fn forget(&self, container: &str, labels: &BTreeMap<String, String>) {
        if let Some(path) = self.extension_path(labels, container) {
            let _ = std::fs::remove_file(path);
        }
        let Some((namespace, name)) = activity_key(labels) else {
            return;
        };
        // A command still in flight there keeps its count (its end takes it off).
        let mut activity = lock(&self.activity);
        if let Some(room) = activity.get_mut(&namespace) {
            if room
                .sandboxes
                .get(&name)
                .is_some_and(|entry| entry.in_flight == 0)
            {
                room.sandboxes.remove(&name);
            }
        }
    }

    /// Counts as activity now (a sandbox just made or started: idle from here).
    pub fn touch(&self, namespace: &Namespace, name: &SandboxName) {
        drop(self.busy(namespace, name));
    }

    /// The lock under which removals and extensions are decided and done; a delete
    /// takes it too, so that it and a removal for expiry never both happen.
    pub fn deciding(&self) -> MutexGuard<'_, ()> {
        lock(&self.decide)
    }

    /// Why a sandbox is due now, if it is. `created` is when its container was made
    /// (a sandbox is never idle since before it existed).
    fn due(
        &self,
        (namespace, name): (&str, &str),
        terms: Terms,
        created: SystemTime,
        now: SystemTime,
    ) -> Option<&'static str> {
        if terms.expires_at.is_some_and(|at| at <= now) {
            return Some("its ttl ran out");
        }
        let idle = terms.idle_timeout?;
        let (activity, since) = {
            let activity = lock(&self.activity);
            let room = activity.get(namespace);
            (
                room.and_then(|room| room.sandboxes.get(name).copied()),
                room.map_or(self.started, |room| room.since),
            )
        };
        let (last, in_flight) = activity.map_or((since, 0), |a| (a.last.max(since), a.in_flight));
        let idle_for = last
            .elapsed()
            .min(now.duration_since(created).unwrap_or_default());
        (in_flight == 0 && idle_for >= idle).then_some("it was idle past its idle timeout")
    }

    /// One look: removes every sandbox of the namespaces that is due; returns how many.
    pub fn reap(
        &self,
        docker: &Docker,
        config: &Config,
        history: &History,
        namespaces: &[Namespace],
    ) -> usize {
        // One list for every namespace: the sandboxes of this engine, then ours.
        let Ok(found) = docker.container_list(&labels::all_sandboxes()) else {
            return 0;
        };
        let summaries: Vec<_> = found
            .into_iter()
            .filter(|summary| labels::in_namespaces(summary.labels.as_ref(), namespaces))
            .collect();
        // Activity of sandboxes that do not exist (a 404's, a removed one's) goes.
        {
            let keys: std::collections::HashSet<(String, String)> = summaries
                .iter()
                .filter_map(|summary| activity_key(summary.labels.as_ref()?))
                .collect();
            // (Only the namespaces listed: one a reload just added was not.)
            let mut activity = lock(&self.activity);
            for (namespace, room) in activity.iter_mut() {
                if !namespaces.iter().any(|served| served.as_str() == namespace) {
                    continue;
                }
                room.sandboxes.retain(|name, entry| {
                    entry.in_flight > 0 || keys.contains(&(namespace.clone(), name.clone()))
                });
            }
        }
        let mut removed = 0;
        for summary in summaries {
            let labels = summary.labels.clone().unwrap_or_default();
            let (Some(key), Some(namespace), Some(name)) = (
                activity_key(&labels),
                labels
                    .get(labels::NAMESPACE)
                    .and_then(|text| Namespace::parse(text).ok()),
                labels
                    .get(labels::SANDBOX)
                    .and_then(|name| SandboxName::parse(name).ok()),
            ) else {
                continue;
            };
            let has = |key: &str| labels.get(key).is_some_and(|value| !value.is_empty());
            if !has(EXPIRES_AT) && !has(IDLE_TIMEOUT) {
                continue;
            }
            // Decided and done under the lock an extension takes, with the terms read
            // again: an extension that came first is seen, one that comes later finds
            // the sandbox gone.
            let _decide = self.deciding();
            let created = u64::try_from(summary.created)
                .ok()
                .and_then(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds)))
                .unwrap_or(UNIX_EPOCH);
            let Some(reason) = self.due(
                (&key.0, &key.1),
                self.terms(&summary.id, &labels),
                created,
                SystemTime::now(),
            ) else {
                continue;
            };
            // Still there? (A delete, here or by another server, may have come first:
            // then it, not an expiry, is what happened.)
            match docker.container_inspect(&summary.id) {
                Err(error) if error.is_not_found() => {
                    self.forget(&summary.id, &labels);
                    continue;
                }
                Err(_) => continue,
                Ok(_) => {}
            }
            // The history is written before the disk is let go: whoever sees the
            // sandbox gone finds why in its history.
            match docker.container_remove(&summary.id) {
                Ok(()) => {
                    history.event(&namespace, &name, "expired");
                    crate::sandbox::after_removal(docker, config, &summary.id, &labels);
                    self.forget(&summary.id, &labels);
                    self.expired
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::info!("sandbox {name} removed: {reason}");
                    removed += 1;
                }
                Err(error) => {
                    log::warn!("sandbox {name} is due ({reason}) but was not removed: {error}")
                }
            }
        }
        removed
    }
}

/// The key of a sandbox's activity: its namespace and name, from its labels.
fn activity_key(labels: &BTreeMap<String, String>) -> Option<(String, String)> {
    let namespace = Namespace::parse(labels.get(labels::NAMESPACE)?).ok()?;
    let name = SandboxName::parse(labels.get(labels::SANDBOX)?).ok()?;
    Some((namespace.as_str().to_string(), name.as_str().to_string()))
}

/// A sandbox's terms as the API shows them: `expires_at` (RFC 3339 or null) and
/// `idle_timeout` (seconds or null).
pub fn shown(terms: Terms) -> (Option<String>, Option<u64>) {
    (
        terms.expires_at.map(labels::rfc3339),
        terms.idle_timeout.map(|idle| idle.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiry_in(dir: &std::path::Path) -> Expiry {
        Expiry {
            dir: Some(dir.to_path_buf()),
            activity: Mutex::new(HashMap::new()),
            decide: Mutex::new(()),
            started: Instant::now(),
            expired: std::sync::atomic::AtomicU64::new(0),
        }
    }

    #[test]
    fn an_extension_outlives_the_process_and_a_sandbox_without_ttl_stays_so() {
        let dir = std::env::temp_dir().join(format!("ak-expiry-{}", std::process::id()));
        let expiry = expiry_in(&dir);
        let id = "0123abcd";
        let soon = unix_seconds(SystemTime::now()) + 60;
        let labels = BTreeMap::from([
            (EXPIRES_AT.to_string(), soon.to_string()),
            (labels::NAMESPACE.to_string(), "ns".to_string()),
            (labels::SANDBOX.to_string(), "s".to_string()),
        ]);
        let moved = expiry
            .extend(id, &labels, Duration::from_secs(3600), || Ok(()))
            .unwrap()
            .unwrap();
        assert_eq!(unix_seconds(moved), soon + 3600);
        // Another process reads it from the data dir.
        let again = expiry_in(&dir);
        assert_eq!(again.terms(id, &labels).expires_at, Some(moved));
        // A sandbox without a ttl keeps none.
        assert_eq!(
            again
                .extend("ffff", &BTreeMap::new(), Duration::from_secs(60), || Ok(()))
                .unwrap(),
            None
        );
        // Gone meanwhile: not extended.
        let gone = || Err(Error::SandboxNotFound("x".into()));
        assert!(again
            .extend("abcd", &labels, Duration::from_secs(60), gone)
            .is_err());
        assert!(!dir.join("ns").join("abcd").exists());
        assert!(dir.join("ns").join(id).exists());
        // Never past a year from now, however often.
        for _ in 0..3 {
            let far = again.extend(id, &labels, MAX_DURATION, || Ok(())).unwrap();
            assert!(far.unwrap() <= SystemTime::now() + MAX_DURATION);
        }
        // A corrupt file is no extension, never a panic.
        std::fs::write(dir.join("ns").join(id), "18446744073709551615\n").unwrap();
        assert_eq!(
            again.terms(id, &labels).expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(soon))
        );
        // An id that is not hex never names a file.
        assert!(again.extension_path(&labels, "../x").is_none());
        let mut odd = labels.clone();
        odd.insert(labels::NAMESPACE.to_string(), "../x".to_string());
        assert!(again.extension_path(&odd, id).is_none());
        again.forget(id, &labels);
        assert_eq!(
            again.terms(id, &labels).expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(soon))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn busy_sandboxes_are_not_idle() {
        let expiry = expiry_in(&std::env::temp_dir());
        let name = SandboxName::parse("idle").unwrap();
        let namespace = Namespace::parse("ns").unwrap();
        let terms = Terms {
            expires_at: None,
            idle_timeout: Some(Duration::from_millis(1)),
        };
        let busy = expiry.busy(&namespace, &name);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            expiry.due(("ns", "idle"), terms, UNIX_EPOCH, SystemTime::now()),
            None
        );
        drop(busy);
        assert_eq!(
            expiry.due(("ns", "idle"), terms, UNIX_EPOCH, SystemTime::now()),
            None
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(expiry
            .due(("ns", "idle"), terms, UNIX_EPOCH, SystemTime::now())
            .is_some());
        let expired = Terms {
            expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
            idle_timeout: None,
        };
        let _busy = expiry.busy(&namespace, &name);
        assert_eq!(
            expiry.due(("ns", "idle"), expired, UNIX_EPOCH, SystemTime::now()),
            Some("its ttl ran out")
        );
    }

    #[test]
    fn made_up_names_of_one_namespace_move_only_its_own_idle_clock() {
        let expiry = expiry_in(&std::env::temp_dir());
        let (mine, flooder) = (
            Namespace::parse("mine").unwrap(),
            Namespace::parse("flooder").unwrap(),
        );
        expiry.touch(&mine, &SandboxName::parse("real").unwrap());
        for index in 0..=MAX_ACTIVITY {
            let name = SandboxName::parse(&format!("fake-{index}")).unwrap();
            expiry.touch(&flooder, &name);
        }
        let activity = lock(&expiry.activity);
        assert_eq!(activity["flooder"].sandboxes.len(), MAX_ACTIVITY);
        assert!(activity["flooder"].since > expiry.started);
        assert_eq!(activity["mine"].since, expiry.started);
        assert!(activity["mine"].sandboxes.contains_key("real"));
    }
}
