//! Named volumes: `"name:/path"` on a sandbox's create (the SDKs' `volumes` field) mounts
//! the namespace's volume `name` at `/path`, made on first use and shared by every
//! sandbox of the namespace that names it; listed and removed through the API.
//!
//! Invariants: a volume is exactly an engine volume named `ak_<namespace>_<name>` and
//! labelled with our namespace and `kind=volume` (a volume of that name without them is
//! not ours and is never used); a namespace sees only its own; host paths are refused
//! (a volume is named, never a path); a volume a container uses is not removed; removing
//! a sandbox keeps its volumes.

use std::time::SystemTime;

use crate::config::{Config, Namespace};
use crate::containers::labels::{self, SandboxName};
use crate::engine::{Docker, VolumeInfo, VolumeMount};
use crate::error::{Error, Result};

/// On a volume: the name the API knows it by.
pub const VOLUME: &str = "agentkernel.volume";
/// Most volumes one sandbox mounts.
pub const MAX_PER_SANDBOX: usize = 16;

/// Where no volume may be mounted: what the engine or we manage in every container.
const RESERVED: [&str; 6] = [
    "/proc",
    "/sys",
    "/dev",
    "/.agentkernel",
    "/.agentkernel-run",
    crate::stub::DETACHED_DIR,
];

/// A volume as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub name: String,
    pub created_at: String,
}

/// One `"name:/path"` of a create, checked: the volume's name and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub name: SandboxName,
    /// Absolute, without `.`, `..` or empty parts, not `/`.
    pub path: String,
}

impl Mount {
    /// `name:/path`. A host path (`/srv:/data`, `./x:/y`) is refused: volumes are
    /// named; so are a path the engine or we manage, and anything after the path.
    pub fn parse(text: &str) -> std::result::Result<Mount, String> {
        let (name, path) = text.split_once(':').ok_or_else(|| {
            format!("volume '{text}': expected name:/path (a named volume and where it goes)")
        })?;
        if name.starts_with('/') || name.starts_with('.') || name.starts_with('~') {
            return Err(format!(
                "volume '{text}': host paths are refused; name a volume instead (name:/path)"
            ));
        }
        let name = SandboxName::parse(name).map_err(|message| {
            format!(
                "volume '{text}': {}",
                message.replacen("sandbox name", "volume name", 1)
            )
        })?;
        if !path.starts_with('/') || path.contains(':') {
            return Err(format!(
                "volume '{text}': the path must be absolute, with nothing after it"
            ));
        }
        let parts: Vec<&str> = path
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect();
        if parts.contains(&"..") || parts.iter().any(|part| part.contains('\0')) {
            return Err(format!(
                "volume '{text}': no '..' parts or NUL bytes in the path"
            ));
        }
        if parts.is_empty() {
            return Err(format!("volume '{text}': not the root directory"));
        }
        let path = format!("/{}", parts.join("/"));
        let within = |tree: &str| {
            path == tree
                || path
                    .strip_prefix(tree)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        if RESERVED.iter().any(|reserved| within(reserved)) {
            return Err(format!(
                "volume '{text}': '{path}' is managed by the engine or by agentkernel"
            ));
        }
        Ok(Mount { name, path })
    }
}

/// Checks a create's volumes: each well formed, at most `MAX_PER_SANDBOX`, no path twice.
pub fn parse_all(texts: &[String]) -> std::result::Result<Vec<Mount>, String> {
    if texts.len() > MAX_PER_SANDBOX {
        return Err(format!(
            "volumes: at most {MAX_PER_SANDBOX} per sandbox, got {}",
            texts.len()
        ));
    }
    let mounts = texts
        .iter()
        .map(|text| Mount::parse(text))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for (index, mount) in mounts.iter().enumerate() {
        if mounts[..index].iter().any(|other| other.path == mount.path) {
            return Err(format!("volumes: '{}' is mounted twice", mount.path));
        }
    }
    Ok(mounts)
}

/// The engine's name of volume `name` in `namespace` (unique: namespaces have no `_`).
pub fn engine_name(namespace: &Namespace, name: &SandboxName) -> String {
    format!("ak_{}_{name}", namespace.as_str())
}

fn is_ours(namespace: &Namespace, info: &VolumeInfo) -> bool {
    info.labels
        .as_ref()
        .is_some_and(|found| labels::is_owned(found, namespace, labels::KIND_VOLUME))
}

/// Makes the namespace's volume `name` unless it exists; returns how to mount it at
/// `target` (with our labels, which the engine gives the volume should it have to make
/// it again: removed meanwhile). A volume of that engine name that is not ours refuses
/// the create (409).
pub fn ensure(
    docker: &Docker,
    namespace: &Namespace,
    name: &SandboxName,
    target: &str,
) -> Result<VolumeMount> {
    let engine = engine_name(namespace, name);
    let mut set = labels::owned(namespace, labels::KIND_VOLUME);
    set.extend([
        (VOLUME.to_string(), name.to_string()),
        (
            labels::CREATED.to_string(),
            labels::rfc3339(SystemTime::now()),
        ),
    ]);
    // Made if missing; kept as it is if there (then its labels tell whose it is).
    docker.volume_create(&engine, &set)?;
    let info = docker.volume_inspect(&engine)?;
    if !is_ours(namespace, &info) {
        return Err(Error::VolumeNotOurs(name.to_string()));
    }
    Ok(VolumeMount {
        name: engine,
        target: target.to_string(),
        labels: set,
    })
}

/// The namespace's volumes, by name.
pub fn list(docker: &Docker, config: &Config) -> Result<Vec<Volume>> {
    let filters = labels::filters_of(&config.namespace, labels::KIND_VOLUME);
    let mut volumes: Vec<Volume> = docker
        .volume_list(&filters)?
        .into_iter()
        .filter(|info| is_ours(&config.namespace, info))
        .filter_map(|info| {
            let labels = info.labels.unwrap_or_default();
            Some(Volume {
                name: labels.get(VOLUME)?.clone(),
                created_at: labels.get(labels::CREATED).cloned().unwrap_or_default(),
            })
        })
        .collect();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(volumes)
}

/// Removes the namespace's volume `name` and its files; refused while a container uses
/// it.
pub fn delete(docker: &Docker, config: &Config, name: &SandboxName) -> Result<()> {
    let engine = engine_name(&config.namespace, name);
    let not_found = || Error::VolumeNotFound(name.to_string());
    let info = docker.volume_inspect(&engine).map_err(|error| {
        if error.is_not_found() {
            not_found()
        } else {
            Error::Engine(error)
        }
    })?;
    if !is_ours(&config.namespace, &info) {
        return Err(not_found());
    }
    docker.volume_remove(&engine).map_err(|error| {
        if error.is_conflict() {
            Error::VolumeInUse(name.to_string())
        } else if error.is_not_found() {
            not_found()
        } else {
            Error::Engine(error)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_named_volumes_at_plain_paths() {
        let mount = Mount::parse("cache:/data/cache").unwrap();
        assert_eq!(mount.name.as_str(), "cache");
        assert_eq!(mount.path, "/data/cache");
        assert_eq!(Mount::parse("c://d/./e/").unwrap().path, "/d/e");
        for (bad, why) in [
            ("/etc:/x", "host paths"),
            ("./here:/x", "host paths"),
            ("~/x:/y", "host paths"),
            ("cache", "name:/path"),
            ("cache:data", "absolute"),
            ("cache:/data:ro", "nothing after"),
            ("ca che:/x", "volume name"),
            ("cache:/", "root"),
            ("cache:/tmp/.agentkernel-detached/x", "managed"),
            ("cache:/a/../b", "'..'"),
            ("cache:/proc/x", "managed"),
            ("cache:/tmp/.agentkernel-detached", "managed"),
            ("cache:/.agentkernel", "managed"),
        ] {
            let error = Mount::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let twice = parse_all(&["a:/x".into(), "b:/x/".into()]).unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
        let many: Vec<String> = (0..17).map(|i| format!("v{i}:/d{i}")).collect();
        assert!(parse_all(&many).unwrap_err().contains("at most"));
        let ns = Namespace::parse("team-a").unwrap();
        assert_eq!(
            engine_name(&ns, &SandboxName::parse("cache").unwrap()),
            "ak_team-a_cache"
        );
    }
}
