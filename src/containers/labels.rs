//! How our containers are marked on the engine: labels, container names and the
//! sandbox name rule. Docker is the source of truth, so everything we need to rebuild
//! our view after a restart (kind, sandbox name, image, profile, creation time) is in
//! these labels, and every container we create carries them.
//!
//! Invariants: every label set has `agentkernel.managed=true` and the namespace; the
//! container name `ak_<namespace>_<sandbox>` is unique per (namespace, sandbox)
//! because namespaces cannot contain `_`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Namespace;

pub const MANAGED: &str = "agentkernel.managed";
pub const NAMESPACE: &str = "agentkernel.namespace";
pub const KIND: &str = "agentkernel.kind";
pub const SANDBOX: &str = "agentkernel.sandbox";
pub const CREATED: &str = "agentkernel.created";
pub const IMAGE: &str = "agentkernel.image";
pub const PROFILE: &str = "agentkernel.profile";
/// Set on sandboxes whose containers have our stub mounted (exec goes through it).
pub const STUB: &str = "agentkernel.stub";
/// On sandboxes with an exec socket: its key (`exec::socket`).
pub const EXEC_SOCKET: &str = "agentkernel.exec-socket";
/// A sandbox's expiry (its creation plus its ttl), in unix seconds (`expiry`).
pub const EXPIRES_AT: &str = "agentkernel.expires-at";
/// A sandbox's idle timeout, in seconds (`expiry`).
pub const IDLE_TIMEOUT: &str = "agentkernel.idle-timeout";
/// A sandbox's own terms: what an image must not give it (see `sandbox::create`).
pub const TERMS: [&str; 7] = [
    STUB,
    EXEC_SOCKET,
    EXPIRES_AT,
    IDLE_TIMEOUT,
    ALLOW_ADDRESS,
    ALLOW_PRIVATE,
    DISK,
];
/// An allow-list container's list (`containers::allow`; a snapshot keeps it for its
/// forks) and its address (a container's own: never an image's).
pub const ALLOW_LIST: &str = "agentkernel.allow";
pub const ALLOW_ADDRESS: &str = "agentkernel.allow-ip";
/// Whether an allow-list container's names may open private addresses (made under the
/// ceiling `full`).
pub const ALLOW_PRIVATE: &str = "agentkernel.allow-private";
/// On temporary containers: the process that made them (`owner::Owner::label`), so that
/// a sweep removes only its own and those of owners that are gone.
pub const OWNER: &str = "agentkernel.owner";

/// A sandbox's memory limit in MiB, as its create asked (what `max_memory_mb` counts,
/// whatever the engine applied).
pub const MEMORY_MB: &str = "agentkernel.memory_mb";

/// What a container may write to its root filesystem, in MiB (`containers::disk`), and
/// how that holds (`loop-filesystem`, `storage-opt`, `off`).
pub const DISK_MB: &str = "agentkernel.disk_mb";
pub const DISK: &str = "agentkernel.disk";

/// A sandbox's engine runtime where it was made with one other than the engine's
/// default (`runsc`); a fork keeps it.
pub const RUNTIME: &str = "agentkernel.runtime";

/// A container's egress policy (`none`, `public`, `full`), as its create chose.
pub const NETWORK: &str = "agentkernel.network";

/// The `KIND` of a snapshot's image (`snapshot`).
pub const KIND_SNAPSHOT: &str = "snapshot";
/// The `KIND` of a named volume (`volume`).
pub const KIND_VOLUME: &str = "volume";

/// Whether `image` is present and ours to use: another namespace's snapshot (named by
/// its reference or by an id prefix) is as missing as an image that is not there, so
/// that no namespace reads another's files, or learns its snapshots' names. Gives
/// whether it is a snapshot (of `namespace`).
pub fn check_image(
    docker: &crate::engine::Docker,
    namespace: &Namespace,
    image: &str,
) -> crate::error::Result<bool> {
    let missing = || crate::error::Error::ImageMissing(image.to_string());
    let found = match docker.image_inspect(image) {
        Ok(found) => found,
        Err(error) if error.is_not_found() => return Err(missing()),
        // An unparseable reference (uppercase, bad characters) cannot be present.
        Err(crate::engine::DockerError::Api { status: 400, .. }) => return Err(missing()),
        Err(error) => return Err(crate::error::Error::Engine(error)),
    };
    let image_labels = found
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default();
    let a_snapshot = image_labels.get(KIND).map(String::as_str) == Some(KIND_SNAPSHOT);
    let ours = image_labels.get(NAMESPACE).map(String::as_str) == Some(namespace.as_str());
    if a_snapshot && !ours {
        return Err(missing());
    }
    Ok(a_snapshot)
}

/// What a container is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A persistent sandbox: kept across restarts.
    Sandbox,
    /// A one-shot `/run` container: temporary.
    Run,
    /// A warm pool container: temporary.
    Pool,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sandbox => "sandbox",
            Kind::Run => "run",
            Kind::Pool => "pool",
        }
    }
}

/// The label set for a new container.
pub fn labels(
    namespace: &Namespace,
    kind: Kind,
    image: &str,
    profile: &str,
    sandbox: Option<&SandboxName>,
) -> BTreeMap<String, String> {
    let mut labels = owned(namespace, kind.name());
    labels.insert(CREATED.to_string(), rfc3339(SystemTime::now()));
    labels.insert(IMAGE.to_string(), image.to_string());
    labels.insert(PROFILE.to_string(), profile.to_string());
    if let Some(name) = sandbox {
        labels.insert(SANDBOX.to_string(), name.as_str().to_string());
    }
    labels
}

/// Label filters selecting our namespace, optionally one kind.
pub fn filters(namespace: &Namespace, kind: Option<Kind>) -> Vec<String> {
    let mut filters = vec![
        format!("{MANAGED}=true"),
        format!("{NAMESPACE}={}", namespace.as_str()),
    ];
    if let Some(kind) = kind {
        filters.push(format!("{KIND}={}", kind.name()));
    }
    filters
}

/// The filters selecting every sandbox of ours on the engine, whatever its namespace
/// (the engine's filters cannot say "one of these namespaces": `in_namespaces` then
/// keeps those of the namespaces a server serves).
pub fn all_sandboxes() -> Vec<String> {
    vec![
        format!("{MANAGED}=true"),
        format!("{KIND}={}", Kind::Sandbox.name()),
    ]
}

/// Whether a container labelled `labels` is of one of `namespaces`.
pub fn in_namespaces(labels: Option<&BTreeMap<String, String>>, namespaces: &[Namespace]) -> bool {
    let namespace = labels.and_then(|labels| labels.get(NAMESPACE));
    namespaces
        .iter()
        .any(|served| Some(served.as_str()) == namespace.map(String::as_str))
}

/// What every object we make of `kind` (a container's `Kind::name`, `KIND_SNAPSHOT`,
/// `KIND_VOLUME`) carries in `namespace`: managed, the namespace, the kind.
pub fn owned(namespace: &Namespace, kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED.to_string(), "true".to_string()),
        (NAMESPACE.to_string(), namespace.as_str().to_string()),
        (KIND.to_string(), kind.to_string()),
    ])
}

/// The engine filters selecting `owned(namespace, kind)`.
pub fn filters_of(namespace: &Namespace, kind: &str) -> Vec<String> {
    let mut filters = filters(namespace, None);
    filters.push(format!("{KIND}={kind}"));
    filters
}

/// Whether `labels` say the object is ours: `owned(namespace, kind)`, all of it.
pub fn is_owned(labels: &BTreeMap<String, String>, namespace: &Namespace, kind: &str) -> bool {
    owned(namespace, kind)
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The engine's name for a sandbox's container.
pub fn container_name(namespace: &Namespace, sandbox: &SandboxName) -> String {
    format!("ak_{}_{}", namespace.as_str(), sandbox.as_str())
}

/// A valid sandbox name: 1–63 characters, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, so it can be
/// part of a container name and never a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SandboxName(String);

impl SandboxName {
    pub fn parse(text: &str) -> Result<SandboxName, String> {
        let bytes = text.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(SandboxName(text.to_string()))
        } else {
            Err(format!(
                "invalid sandbox name '{}': use 1-63 characters of a-z, A-Z, 0-9, '_', '.' \
                 and '-', starting with a letter or digit",
                text.escape_debug()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `2026-11-28T15:04:05Z`, without a date crate.
pub fn rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sandbox_names_follow_the_rule() {
        for good in ["a", "A1", "my-sandbox", "x.y_z-1", &"n".repeat(63)] {
            assert!(SandboxName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a/b",
            "..",
            "a b",
            "é",
            &"n".repeat(64),
        ] {
            assert!(SandboxName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(time), "2023-11-14T22:13:20Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn every_label_set_is_ours_and_namespaced() {
        let namespace = Namespace::parse("ci").unwrap();
        let name = SandboxName::parse("box").unwrap();
        let labels = labels(&namespace, Kind::Sandbox, "img", "moderate", Some(&name));
        assert_eq!(labels[MANAGED], "true");
        assert_eq!(labels[NAMESPACE], "ci");
        assert_eq!(labels[KIND], "sandbox");
        assert_eq!(labels[SANDBOX], "box");
        assert_eq!(container_name(&namespace, &name), "ak_ci_box");
        assert_eq!(
            filters(&namespace, Some(Kind::Run)),
            [
                "agentkernel.managed=true",
                "agentkernel.namespace=ci",
                "agentkernel.kind=run"
            ]
        );
    }
}
