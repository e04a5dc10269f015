//! Snapshots: a sandbox's filesystem committed as a local image, from which new
//! sandboxes are made (`POST /snapshots/{name}/restore`, or `snapshot` on a create).
//!
//! Invariants: a snapshot is exactly a local image labelled `kind=snapshot` in our
//! namespace, named `reference(namespace, name)`; nothing about it is kept in server
//! memory. The commit keeps the container's labels under ours, so a snapshot blanks
//! its source's terms (expiry, exec socket), and a sandbox made from any image sets its
//! own (`sandbox::create`): none of a source's terms carry over. A
//! namespace sees only its own snapshots: another's answer as not found. Removing a
//! sandbox keeps its snapshots; a snapshot a sandbox still uses is not removed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::config::{Config, Namespace};
use crate::containers::labels::{self, SandboxName};
use crate::containers::profile::Limits;
use crate::engine::{Docker, ImageInspect};
use crate::error::{Error, Result};
use crate::sandbox;

/// On a snapshot: the name it was taken under.
pub const SNAPSHOT: &str = "agentkernel.snapshot";
/// On a snapshot: its source's limits when it was taken, restored with it.
pub const MEMORY_MB: &str = "agentkernel.memory-mb";
pub const MILLICPUS: &str = "agentkernel.millicpus";
pub const PIDS: &str = "agentkernel.pids";
/// How long a commit may take: it copies the sandbox's whole writable layer.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

/// A snapshot as the API reports it (the SDKs' `SnapshotMeta`).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub name: String,
    /// The sandbox it was taken of.
    pub sandbox: String,
    /// The local image holding it.
    pub image_tag: String,
    /// The image its sandbox was made from.
    pub base_image: Option<String>,
    pub profile: Option<String>,
    /// Its sandbox's egress policy (a sandbox made from it keeps it, unless told).
    pub network: Option<String>,
    /// Its sandbox's allow-list, where its policy is one.
    pub allow: Option<Vec<String>>,
    /// Its sandbox's engine runtime, where it named one (a fork keeps it, unless told).
    pub runtime: Option<String>,
    pub limits: Option<Limits>,
    pub created_at: String,
    pub size_bytes: u64,
}

/// The image reference of snapshot `name` in `namespace`: one repository per
/// namespace, the name as its tag. A namespace that is not a valid repository
/// component as it is (`-` first or last, or doubled) is written in hex after `x__`,
/// which no namespace can spell (it has no `_`), so two namespaces never share one.
pub fn reference(namespace: &Namespace, name: &SandboxName) -> String {
    format!("{}:{}", repository(namespace), name)
}

fn repository(namespace: &Namespace) -> String {
    let text = namespace.as_str();
    let plain = !text.starts_with('-') && !text.ends_with('-') && !text.contains("--");
    if plain {
        format!("agentkernel-snapshot/{text}")
    } else {
        let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
        format!("agentkernel-snapshot/x__{hex}")
    }
}

/// The labels a snapshot of `source` carries.
fn labels_for(
    namespace: &Namespace,
    name: &SandboxName,
    source: &sandbox::Sandbox,
    now: SystemTime,
) -> BTreeMap<String, String> {
    let mut set = labels::owned(namespace, labels::KIND_SNAPSHOT);
    set.extend([
        (SNAPSHOT.to_string(), name.to_string()),
        (labels::SANDBOX.to_string(), source.name.clone()),
        (labels::IMAGE.to_string(), source.image.clone()),
        (labels::PROFILE.to_string(), source.profile.clone()),
        (labels::CREATED.to_string(), labels::rfc3339(now)),
    ]);
    // The commit keeps the container's labels under ours: its terms are overridden
    // with empty values, which read as none.
    for key in labels::TERMS.into_iter().chain([labels::OWNER]) {
        set.insert(key.to_string(), String::new());
    }
    if let Some(limits) = source.limits {
        set.insert(MEMORY_MB.to_string(), limits.memory_mb.to_string());
        set.insert(MILLICPUS.to_string(), limits.millicpus.to_string());
        set.insert(PIDS.to_string(), limits.pids.to_string());
        set.insert(labels::DISK_MB.to_string(), limits.disk_mb.to_string());
    }
    set
}

/// Reads a snapshot back from its image's labels; `None` if the image is not one of
/// `namespace`'s snapshots.
fn from_labels(
    namespace: &Namespace,
    image_tag: String,
    image_labels: &BTreeMap<String, String>,
    size: i64,
) -> Option<Snapshot> {
    if !labels::is_owned(image_labels, namespace, labels::KIND_SNAPSHOT) {
        return None;
    }
    let number = |key: &str| image_labels.get(key).and_then(|v| v.parse::<u64>().ok());
    let limits = match (number(MEMORY_MB), number(MILLICPUS), number(PIDS)) {
        (Some(memory_mb), Some(millicpus), Some(pids)) => Some(Limits {
            memory_mb,
            millicpus,
            pids,
            // Snapshots made before disk quotas: the default.
            disk_mb: number(labels::DISK_MB).unwrap_or(0),
        }),
        _ => None,
    };
    Some(Snapshot {
        name: image_labels.get(SNAPSHOT)?.clone(),
        sandbox: image_labels
            .get(labels::SANDBOX)
            .cloned()
            .unwrap_or_default(),
        image_tag,
        base_image: image_labels.get(labels::IMAGE).cloned(),
        profile: image_labels.get(labels::PROFILE).cloned(),
        network: image_labels.get(labels::NETWORK).cloned(),
        allow: image_labels
            .get(labels::ALLOW_LIST)
            .and_then(|text| crate::containers::allow::AllowList::from_label(text))
            .map(|list| list.texts()),
        runtime: image_labels
            .get(labels::RUNTIME)
            .filter(|runtime| !runtime.is_empty())
            .cloned(),
        limits,
        created_at: image_labels
            .get(labels::CREATED)
            .cloned()
            .unwrap_or_default(),
        size_bytes: size.max(0) as u64,
    })
}

fn from_inspect(
    namespace: &Namespace,
    name: &SandboxName,
    image: &ImageInspect,
) -> Option<Snapshot> {
    let image_labels = image.config.as_ref()?.labels.as_ref()?;
    let snapshot = from_labels(
        namespace,
        reference(namespace, name),
        image_labels,
        image.size,
    )?;
    // The tag is ours only if the labels say it holds this very snapshot.
    (snapshot.name == name.as_str()).then_some(snapshot)
}

/// A name for a snapshot asked for without one: the sandbox's, and the time in
/// milliseconds.
pub fn default_name(sandbox: &SandboxName, now: SystemTime) -> SandboxName {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let stem: String = sandbox.as_str().chars().take(48).collect();
    SandboxName::parse(&format!("{stem}-{millis}")).expect("a sandbox name and digits")
}

/// The snapshots this process is taking, by reference: a second take of the same name
/// meanwhile is refused at once (a commit to a tag another commit holds would take the
/// tag from it); other names go on at the same time.
static TAKING: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Holds a name in `TAKING` until dropped.
struct Taking(String);

impl Drop for Taking {
    fn drop(&mut self) {
        TAKING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name| *name != self.0);
    }
}

/// Commits the sandbox `source` (running, paused or stopped) as snapshot `name`.
pub fn take(
    docker: &Docker,
    config: &Config,
    source: &SandboxName,
    name: &SandboxName,
) -> Result<Snapshot> {
    let found = sandbox::get(docker, config, source)?;
    let image_tag = reference(&config.namespace, name);
    let _taking = {
        let mut taking = TAKING.lock().unwrap_or_else(|e| e.into_inner());
        if taking.contains(&image_tag) {
            return Err(Error::SnapshotExists(name.to_string()));
        }
        taking.push(image_tag.clone());
        Taking(image_tag.clone())
    };
    if docker.image_exists(&image_tag)? {
        return Err(Error::SnapshotExists(name.to_string()));
    }
    // Its files as its disk holds them (mounted again after an engine restart), and
    // no more than its quota once copied into an image.
    crate::containers::disk::ensure(docker, &found.uuid)?;
    crate::containers::disk::check_commit(&found.uuid)?;
    let set = labels_for(&config.namespace, name, &found, SystemTime::now());
    let (repository, tag) = image_tag.rsplit_once(':').expect("a reference has a tag");
    let committed = docker
        .container_commit(&found.uuid, repository, tag, &set, COMMIT_TIMEOUT)
        .map_err(|error| {
            if error.is_not_found() {
                Error::SandboxNotFound(source.to_string())
            } else {
                Error::Engine(error)
            }
        })?;
    // Another process may have committed the same name meanwhile: the tag is the last
    // commit's. Whoever does not hold it gives its image up.
    let holder = docker.image_inspect(&image_tag).map(|image| image.id);
    if holder.as_ref().ok() != Some(&committed) {
        let _ = docker.image_remove(&committed);
        return Err(Error::SnapshotExists(name.to_string()));
    }
    remove_untagged(docker, &config.namespace);
    get(docker, config, name)
}

/// Removes our namespace's snapshot images that lost their tag (a commit to the same
/// name by another process took it), unless a container uses one.
fn remove_untagged(docker: &Docker, namespace: &Namespace) {
    let filters = labels::filters_of(namespace, labels::KIND_SNAPSHOT);
    let Ok(images) = docker.image_list(&filters) else {
        return;
    };
    for image in images {
        let tags = image.repo_tags.unwrap_or_default();
        if tags.iter().all(|tag| tag == "<none>:<none>") {
            let _ = docker.image_remove(&image.id);
        }
    }
}

/// Every snapshot of our namespace, by name.
pub fn list(docker: &Docker, config: &Config) -> Result<Vec<Snapshot>> {
    let filters = labels::filters_of(&config.namespace, labels::KIND_SNAPSHOT);
    let mut snapshots: Vec<Snapshot> = docker
        .image_list(&filters)?
        .into_iter()
        .filter_map(|image| {
            let image_labels = image.labels.unwrap_or_default();
            let name = SandboxName::parse(image_labels.get(SNAPSHOT)?).ok()?;
            let image_tag = reference(&config.namespace, &name);
            // An image whose tag moved on (untagged by hand) is not the snapshot.
            if !image.repo_tags.unwrap_or_default().contains(&image_tag) {
                return None;
            }
            from_labels(&config.namespace, image_tag, &image_labels, image.size)
        })
        .collect();
    snapshots.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(snapshots)
}

pub fn get(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Snapshot> {
    let not_found = || Error::SnapshotNotFound(name.to_string());
    let image = docker
        .image_inspect(&reference(&config.namespace, name))
        .map_err(|error| {
            if error.is_not_found() {
                not_found()
            } else {
                Error::Engine(error)
            }
        })?;
    from_inspect(&config.namespace, name, &image).ok_or_else(not_found)
}

/// Removes the snapshot; refused while a sandbox made from it exists.
pub fn delete(docker: &Docker, config: &Config, name: &SandboxName) -> Result<()> {
    let snapshot = get(docker, config, name)?;
    docker.image_remove(&snapshot.image_tag).map_err(|error| {
        if error.is_conflict() {
            Error::SnapshotInUse(name.to_string())
        } else if error.is_not_found() {
            Error::SnapshotNotFound(name.to_string())
        } else {
            Error::Engine(error)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(text: &str) -> Namespace {
        Namespace::parse(text).unwrap()
    }

    fn name(text: &str) -> SandboxName {
        SandboxName::parse(text).unwrap()
    }

    #[test]
    fn references_are_valid_and_distinct_per_namespace() {
        assert_eq!(
            reference(&ns("default"), &name("snap-1")),
            "agentkernel-snapshot/default:snap-1"
        );
        assert_eq!(
            reference(&ns("-a"), &name("s")),
            "agentkernel-snapshot/x__2d61:s"
        );
        assert_eq!(
            reference(&ns("a--b"), &name("s")),
            "agentkernel-snapshot/x__612d2d62:s"
        );
        // What the hex form spells can never be a plain namespace's.
        assert!(Namespace::parse("x__2d61").is_err());
        for text in ["default", "-a", "a-", "a--b", "t-1-x", "0"] {
            let reference = reference(&ns(text), &name("Snap_1.x"));
            assert!(
                crate::engine::reference::ImageRef::parse(&reference).is_ok(),
                "{reference}"
            );
        }
    }

    #[test]
    fn default_names_are_valid_for_the_longest_sandbox_names() {
        let long = name(&"a".repeat(63));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let made = default_name(&long, at);
        assert!(made.as_str().ends_with("-1790000000000"), "{made}");
        assert!(made.as_str().len() <= 63);
    }

    #[test]
    fn labels_read_back_only_in_their_own_namespace() {
        let source = sandbox::Sandbox {
            name: "box".into(),
            id: "abc".into(),
            uuid: "abcdef".into(),
            status: sandbox::SandboxStatus::Running,
            image: "busybox:latest".into(),
            profile: "moderate".into(),
            created_at: "2026-11-30T00:00:00Z".into(),
            limits: Some(Limits {
                memory_mb: 256,
                millicpus: 500,
                pids: 64,
                disk_mb: 128,
            }),
            disk: None,
            runtime: None,
            labels: BTreeMap::new(),
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let set = labels_for(&ns("team-a"), &name("s1"), &source, at);
        let tag = reference(&ns("team-a"), &name("s1"));
        let read = from_labels(&ns("team-a"), tag.clone(), &set, 4096).unwrap();
        assert_eq!(read.name, "s1");
        assert_eq!(read.sandbox, "box");
        assert_eq!(read.base_image.as_deref(), Some("busybox:latest"));
        assert_eq!(read.limits, source.limits);
        assert_eq!(read.size_bytes, 4096);
        assert_eq!(from_labels(&ns("team-b"), tag, &set, 0), None);
        // None of a sandbox's terms ride along: the commit's own are blanked.
        for key in [
            labels::EXPIRES_AT,
            labels::IDLE_TIMEOUT,
            labels::EXEC_SOCKET,
            labels::STUB,
        ] {
            assert_eq!(set.get(key).map(String::as_str), Some(""), "{key}");
        }
    }
}
