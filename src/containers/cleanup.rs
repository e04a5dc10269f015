//! Removals we owe the engine: containers we meant to remove when the engine could not
//! do it (it was down, frozen, or failed midway and left the container `Dead`). Each is
//! remembered here and removed again later (`retry`, from the `engine-watch` thread,
//! at once when the engine comes back, then with a growing pause), never forgotten
//! after one warning.
//!
//! Invariants: a removal is retried until the engine says the container is gone; an
//! owed sandbox create (whose client was told it failed) only ever removes the
//! container that create made (its creation label is not older than the request), never
//! an older sandbox of the same name; the list is bounded (`MAX_OWED`): past it a
//! removal is only logged, and temporary containers are then left to the next start-up
//! sweep.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Namespace;
use crate::containers::labels::{self, Kind};
use crate::engine::Docker;

/// Most removals remembered at once.
const MAX_OWED: usize = 4096;
/// Pauses between tries of one removal: from the first to the longest.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(60);

/// What is owed, keyed by container id (or, for a create, container name).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owed {
    /// A temporary container, by id.
    Container,
    /// The container of a sandbox create that failed because the engine could not be
    /// reached: it may or may not exist. Ours if its labels say namespace, kind sandbox
    /// and a creation time at or after `not_before` (RFC 3339, seconds).
    FailedCreate {
        namespace: String,
        not_before: String,
    },
}

#[derive(Debug)]
struct Entry {
    owed: Owed,
    tries: u32,
    next_try: Instant,
}

#[derive(Debug, Default)]
pub struct Cleanup {
    owed: Mutex<BTreeMap<String, Entry>>,
}

impl Cleanup {
    /// Removes a container now; if the engine cannot, owes it.
    pub fn remove(&self, docker: &Docker, id: &str) {
        match docker.container_remove(id) {
            Ok(()) => crate::containers::disk::release_when_gone(docker, id),
            Err(error) => {
                log::warn!(
                    "could not remove container {id}: {error}; retrying once the engine can"
                );
                self.owe(id.to_string(), Owed::Container);
            }
        }
    }

    /// Owes the removal of what a sandbox create may have made before the engine
    /// stopped answering: the container `container_name`, if the engine has it and its
    /// creation label is not older than `not_before` (taken before the create began).
    pub fn owe_failed_create(
        &self,
        namespace: &Namespace,
        container_name: &str,
        not_before: String,
    ) {
        self.owe(
            container_name.to_string(),
            Owed::FailedCreate {
                namespace: namespace.as_str().to_string(),
                not_before,
            },
        );
    }

    fn owe(&self, key: String, owed: Owed) {
        let mut list = self.lock();
        if list.len() >= MAX_OWED && !list.contains_key(&key) {
            log::error!(
                "{MAX_OWED} container removals already owed: not remembering {key} (the \
                 next start-up sweep removes temporary containers)"
            );
            return;
        }
        list.insert(
            key,
            Entry {
                owed,
                tries: 0,
                next_try: Instant::now() + FIRST_PAUSE,
            },
        );
    }

    /// How many removals are owed.
    pub fn owed(&self) -> usize {
        self.lock().len()
    }

    /// Makes every owed removal due now (the engine just came back).
    pub fn due_now(&self) {
        let now = Instant::now();
        for entry in self.lock().values_mut() {
            entry.next_try = now;
        }
    }

    /// Tries the owed removals that are due; returns how many were settled. The lock
    /// is not held across engine calls.
    pub fn retry(&self, docker: &Docker) -> usize {
        let now = Instant::now();
        let due: Vec<(String, Owed)> = self
            .lock()
            .iter()
            .filter(|(_, entry)| entry.next_try <= now)
            .map(|(key, entry)| (key.clone(), entry.owed.clone()))
            .collect();
        let mut settled = 0;
        for (key, owed) in due {
            let result = match &owed {
                Owed::Container => docker.container_remove(&key).map(|()| {
                    crate::containers::disk::release_when_gone(docker, &key);
                    true
                }),
                Owed::FailedCreate {
                    namespace,
                    not_before,
                } => remove_failed_create(docker, &key, namespace, not_before),
            };
            let mut list = self.lock();
            match result {
                Ok(removed) => {
                    list.remove(&key);
                    settled += 1;
                    if removed {
                        log::info!("removed container {key}, owed since the engine failed");
                    }
                }
                Err(error) => {
                    if let Some(entry) = list.get_mut(&key) {
                        entry.tries += 1;
                        let pause = FIRST_PAUSE
                            .saturating_mul(1 << entry.tries.min(6))
                            .min(LONGEST_PAUSE);
                        entry.next_try = Instant::now() + pause;
                        if entry.tries == 1 || entry.tries % 10 == 0 {
                            log::warn!(
                                "still cannot remove container {key} ({} tries): {error}",
                                entry.tries
                            );
                        }
                    }
                }
            }
        }
        settled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes the container a failed create made, if it is that one; `Ok(false)` when
/// there is nothing of it to remove.
fn remove_failed_create(
    docker: &Docker,
    container_name: &str,
    namespace: &str,
    not_before: &str,
) -> crate::engine::Result<bool> {
    let inspect = match docker.container_inspect(container_name) {
        Ok(inspect) => inspect,
        Err(error) if error.is_not_found() => return Ok(false),
        Err(error) => return Err(error),
    };
    let labels = inspect.config.labels.unwrap_or_default();
    let label = |key: &str| labels.get(key).map(String::as_str);
    let made_by_that_create = label(labels::NAMESPACE) == Some(namespace)
        && label(labels::KIND) == Some(Kind::Sandbox.name())
        && label(labels::CREATED).is_some_and(|created| created >= not_before);
    if !made_by_that_create {
        return Ok(false);
    }
    docker.container_remove(&inspect.id)?;
    crate::containers::disk::release_when_gone(docker, &inspect.id);
    log::info!(
        "removed sandbox container {container_name}: its create failed when the engine \
         stopped answering"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> Docker {
        Docker::new(
            "/nonexistent/agentkernel.sock".into(),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn a_removal_the_engine_refused_is_owed_until_it_is_settled() {
        let cleanup = Cleanup::default();
        let docker = unreachable();
        cleanup.remove(&docker, "abc");
        cleanup.remove(&docker, "abc");
        assert_eq!(cleanup.owed(), 1);
        // Not yet due: nothing is tried.
        assert_eq!(cleanup.retry(&docker), 0);
        cleanup.due_now();
        assert_eq!(cleanup.retry(&docker), 0);
        assert_eq!(cleanup.owed(), 1, "an unreachable engine settles nothing");
        let entry_pause = {
            let list = cleanup.lock();
            list["abc"]
                .next_try
                .saturating_duration_since(Instant::now())
        };
        assert!(entry_pause > FIRST_PAUSE, "{entry_pause:?}");
    }

    #[test]
    fn the_list_is_bounded() {
        let cleanup = Cleanup::default();
        for index in 0..MAX_OWED + 10 {
            cleanup.owe(format!("c{index}"), Owed::Container);
        }
        assert_eq!(cleanup.owed(), MAX_OWED);
    }
}
