//! Security profiles and resource limits: what `permissive`, `moderate` and
//! `restrictive` mean, as plain data, and how per-sandbox overrides are bounded.
//!
//! Invariants: every profile drops all capabilities but a documented few, sets
//! `no-new-privileges` (in the docker client, unconditionally), a pids limit, a memory
//! limit with swap equal to it, a CPU limit and a size-capped `/tmp` tmpfs (but for a
//! persistent sandbox with a writable root, whose `/tmp` persists); none is ever
//! privileged or given a host mount other than our read-only stub. The same
//! `HostSettings` come out of here for warm, cold and persistent containers alike.

use std::collections::BTreeMap;
use std::fmt;

use crate::engine::{HostResources, HostSettings};

/// The unprivileged user restrictive containers run as (`nobody` in most images).
pub const UNPRIVILEGED_USER: &str = "65534:65534";

/// `uid[:gid]` when numeric; any other part (a name, or nothing) counts as 0.
pub fn numeric_owner(user: &str) -> (u32, u32) {
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    (uid.parse().unwrap_or(0), gid.parse().unwrap_or(0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    Permissive,
    Moderate,
    Restrictive,
}

/// Where a container's network reaches: its egress policy (`containers::egress` makes
/// `Public` hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Network {
    /// Loopback only.
    None,
    /// Only the destinations of a list (`containers::allow`, which holds the list).
    Allow,
    /// The internet; never the host, nor loopback, private, shared (CGNAT),
    /// link-local (metadata endpoints), multicast or reserved addresses, nor another
    /// container; no IPv6.
    Public,
    /// Whatever the engine's default bridge reaches.
    Full,
}

/// The engine network `Network::Public` containers join (ours, made on first use).
pub const PUBLIC_NETWORK: &str = "agentkernel-public";
/// The engine network `Network::Allow` containers join (ours, made on first use).
pub const ALLOW_NETWORK: &str = "agentkernel-allow";

impl Network {
    pub const ALL: [Network; 4] = [
        Network::None,
        Network::Allow,
        Network::Public,
        Network::Full,
    ];

    pub fn parse(name: &str) -> Result<Network, String> {
        match name {
            "none" => Ok(Network::None),
            "allow" => Ok(Network::Allow),
            "public" => Ok(Network::Public),
            "full" => Ok(Network::Full),
            other => Err(format!(
                "unknown network '{other}': expected none, allow, public or full"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Allow => "allow",
            Network::Public => "public",
            Network::Full => "full",
        }
    }

    /// The engine's `NetworkMode` for it.
    pub fn mode(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Allow => ALLOW_NETWORK,
            Network::Public => PUBLIC_NETWORK,
            Network::Full => "bridge",
        }
    }

    /// Sets a container's network to this policy's. `Public` also turns IPv6 off in
    /// the container (where the host has it), so that no link-local IPv6 address
    /// reaches the host.
    pub fn apply(self, host: &mut HostSettings, host_has_ipv6: bool) {
        const IPV6_OFF: &str = "net.ipv6.conf.all.disable_ipv6";
        host.network_mode = self.mode().to_string();
        if self == Network::Public && host_has_ipv6 {
            host.sysctls.insert(IPV6_OFF.to_string(), "1".to_string());
        } else {
            host.sysctls.remove(IPV6_OFF);
        }
    }
}

/// A policy that can be a default: any but `allow`, whose list is a request's own.
pub fn default_policy(network: Network) -> Result<Network, String> {
    match network {
        Network::Allow => {
            Err("allow needs a list: requests give theirs ({\"allow\": [...]})".into())
        }
        network => Ok(network),
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Resource limits of one container, in the units the API speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u64,
    /// CPUs in thousandths (500 = half a CPU).
    pub millicpus: u64,
    pub pids: u64,
    /// What the container may write to its root filesystem (`containers::disk`).
    pub disk_mb: u64,
}

/// Bounds for per-sandbox overrides; outside them a request is refused.
pub const MEMORY_MB_RANGE: (u64, u64) = (16, 16 * 1024);
pub const VCPUS_RANGE: (u64, u64) = (1, 16);
pub const PIDS_RANGE: (u64, u64) = (16, 4096);
/// The server's `--max-disk-mb` narrows the top of this.
pub const DISK_MB_RANGE: (u64, u64) = (16, 1024 * 1024);

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Permissive, Profile::Moderate, Profile::Restrictive];

    pub fn parse(name: &str) -> Result<Profile, String> {
        match name {
            "permissive" => Ok(Profile::Permissive),
            "moderate" => Ok(Profile::Moderate),
            "restrictive" => Ok(Profile::Restrictive),
            other => Err(format!(
                "unknown profile '{other}': expected permissive, moderate or restrictive"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Permissive => "permissive",
            Profile::Moderate => "moderate",
            Profile::Restrictive => "restrictive",
        }
    }

    pub fn default_limits(self) -> Limits {
        match self {
            Profile::Permissive => Limits {
                memory_mb: 2048,
                millicpus: 2000,
                pids: 1024,
                disk_mb: 8192,
            },
            Profile::Moderate => Limits {
                memory_mb: 512,
                millicpus: 1000,
                pids: 256,
                disk_mb: 2048,
            },
            Profile::Restrictive => Limits {
                memory_mb: 256,
                millicpus: 500,
                pids: 64,
                disk_mb: 256,
            },
        }
    }

    /// Capabilities kept on top of `CapDrop: ALL`. Enough for package managers and
    /// file ownership changes inside the container; no networking, mount, ptrace or
    /// device capabilities anywhere.
    pub fn capabilities(self) -> Vec<&'static str> {
        const BASE: [&str; 7] = [
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
        ];
        const PERMISSIVE_EXTRA: [&str; 4] =
            ["NET_BIND_SERVICE", "SYS_CHROOT", "AUDIT_WRITE", "SETFCAP"];
        match self {
            Profile::Permissive => BASE.iter().chain(&PERMISSIVE_EXTRA).copied().collect(),
            Profile::Moderate => BASE.to_vec(),
            Profile::Restrictive => Vec::new(),
        }
    }

    /// The egress policy its containers get when neither the request nor the server
    /// names one.
    pub fn default_network(self) -> Network {
        match self {
            Profile::Permissive => Network::Full,
            Profile::Moderate => Network::Public,
            Profile::Restrictive => Network::None,
        }
    }

    pub fn read_only_root(self) -> bool {
        matches!(self, Profile::Restrictive)
    }

    /// Size of the `/tmp` tmpfs (and, under restrictive, of the workdir tmpfs).
    pub fn tmpfs_mb(self) -> u64 {
        match self {
            Profile::Permissive => 512,
            Profile::Moderate => 256,
            Profile::Restrictive => 64,
        }
    }

    /// The user commands run as, or `None` for the image's own user.
    pub fn user(self) -> Option<&'static str> {
        match self {
            Profile::Restrictive => Some(UNPRIVILEGED_USER),
            _ => None,
        }
    }

    /// Checks a run's workdir against this profile. Where the root is read-only, a
    /// cold container gets a tmpfs at its workdir, and the engine (runc) fails to start
    /// a container with a tmpfs over what it manages itself: `/proc`, `/sys`, `/dev`,
    /// its `/etc` files, and our own stub's directory. The path must also be plain
    /// (no `.` or `..` parts), since it becomes a mount point.
    pub fn check_workdir(self, workdir: &str) -> Result<(), String> {
        if !self.read_only_root() {
            return Ok(());
        }
        const RESERVED_TREES: [&str; 4] = ["/proc", "/sys", "/dev", "/.agentkernel"];
        const RESERVED_FILES: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
        let refuse = |why: &str| {
            Err(format!(
                "workdir '{workdir}' cannot be used under the '{}' profile: {why}",
                self.name()
            ))
        };
        let plain = workdir.trim_end_matches('/');
        if plain
            .split('/')
            .skip(1)
            .any(|part| part == "." || part == ".." || part.is_empty())
        {
            return refuse("it must be a plain absolute path, without '.', '..' or '//'");
        }
        let under = |tree: &str| {
            plain == tree
                || plain
                    .strip_prefix(tree)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        if RESERVED_TREES.iter().any(|tree| under(tree)) || RESERVED_FILES.contains(&plain) {
            return refuse(
                "the read-only root gets a writable tmpfs there, and the engine manages                  that path itself",
            );
        }
        Ok(())
    }

    /// The options of this profile's `/tmp` tmpfs.
    pub fn tmp_options(self) -> String {
        format!("rw,nosuid,nodev,size={}m,mode=1777", self.tmpfs_mb())
    }

    /// The engine settings for this profile with these limits. `workdir` is made a
    /// writable tmpfs where the root is read-only; `mounts` are our own read-only binds
    /// (the stub), the only host paths a container ever sees.
    pub fn host_settings(
        self,
        limits: Limits,
        workdir: &str,
        mounts: Vec<(std::path::PathBuf, String)>,
    ) -> HostSettings {
        let tmpfs_mb = self.tmpfs_mb();
        let mut tmpfs = BTreeMap::new();
        tmpfs.insert("/tmp".to_string(), self.tmp_options());
        if self.read_only_root() && workdir != "/tmp" && workdir != "/" {
            tmpfs.insert(
                workdir.to_string(),
                format!("rw,nosuid,nodev,exec,size={tmpfs_mb}m,mode=1777"),
            );
        }
        HostSettings {
            memory_bytes: (limits.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (limits.millicpus * 1_000_000) as i64,
            pids_limit: limits.pids as i64,
            network_mode: self.default_network().mode().to_string(),
            sysctls: BTreeMap::new(),
            read_only_root: self.read_only_root(),
            cap_add: self.capabilities().iter().map(|c| c.to_string()).collect(),
            tmpfs,
            read_only_mounts: mounts,
            volumes: Vec::new(),
            init: true,
            storage_size_mb: None,
            runtime: None,
            dns: Vec::new(),
            ipv4_address: None,
            hostname: None,
        }
    }

    /// A persistent sandbox's settings: `host_settings` at `/`, but where the root is
    /// writable, `/tmp` is the root's own directory (no tmpfs), kept across stop and
    /// start like every other file; where it is read-only, `/tmp` stays the tmpfs.
    /// Detached commands' state and output (`detached::STATE_DIR`, under `/tmp`) keeps
    /// a tmpfs of the same size either way, which bounds it.
    pub fn sandbox_host_settings(
        self,
        limits: Limits,
        mounts: Vec<(std::path::PathBuf, String)>,
        detached_dir: &str,
    ) -> HostSettings {
        let mut host = self.host_settings(limits, "/", mounts);
        if !self.read_only_root() {
            if let Some(options) = host.tmpfs.remove("/tmp") {
                host.tmpfs.insert(detached_dir.to_string(), options);
            }
        }
        host
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks one override against its bounds, naming the bound when it is out.
pub fn check_bound(field: &str, value: u64, (low, high): (u64, u64)) -> Result<u64, String> {
    if value < low || value > high {
        Err(format!(
            "{field} must be between {low} and {high}, got {value}"
        ))
    } else {
        Ok(value)
    }
}

/// Checks requested CPUs against the engine's host: the engine refuses a container more
/// CPUs than its host has, and that refusal is the request's fault, not the engine's.
pub fn check_host_cpus(vcpus: u64, host: HostResources) -> Result<u64, String> {
    if vcpus > host.cpus {
        Err(format!(
            "vcpus {vcpus} exceeds the {} CPUs of the engine's host",
            host.cpus
        ))
    } else {
        Ok(vcpus)
    }
}

/// Checks requested memory against the engine's host: a limit above what the host has
/// is no limit at all.
pub fn check_host_memory(memory_mb: u64, host: HostResources) -> Result<u64, String> {
    let host_mb = host.memory_bytes / (1024 * 1024);
    if memory_mb > host_mb {
        Err(format!(
            "memory_mb {memory_mb} exceeds the {host_mb} MiB of memory of the engine's host"
        ))
    } else {
        Ok(memory_mb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_come_from_numeric_users_only() {
        assert_eq!(numeric_owner("65534:65534"), (65534, 65534));
        assert_eq!(numeric_owner("1000"), (1000, 0));
        assert_eq!(numeric_owner(""), (0, 0));
        assert_eq!(numeric_owner("node"), (0, 0));
        assert_eq!(numeric_owner("node:100"), (0, 100));
        assert_eq!(numeric_owner(UNPRIVILEGED_USER), (65534, 65534));
    }

    #[test]
    fn parses_known_names_only() {
        for profile in Profile::ALL {
            assert_eq!(Profile::parse(profile.name()), Ok(profile));
        }
        let error = Profile::parse("root").unwrap_err();
        assert!(error.contains("'root'"), "{error}");
    }

    #[test]
    fn restrictive_maps_to_no_network_read_only_and_no_capabilities() {
        let profile = Profile::Restrictive;
        let host = profile.host_settings(profile.default_limits(), "/work", Vec::new());
        assert_eq!(host.network_mode, "none");
        assert!(host.read_only_root);
        assert!(host.cap_add.is_empty());
        assert_eq!(host.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(host.nano_cpus, 500_000_000);
        assert_eq!(host.pids_limit, 64);
        assert_eq!(
            host.tmpfs.get("/work").map(String::as_str),
            Some("rw,nosuid,nodev,exec,size=64m,mode=1777")
        );
        assert_eq!(profile.user(), Some("65534:65534"));
    }

    #[test]
    fn moderate_matches_the_documented_table() {
        let profile = Profile::Moderate;
        let host = profile.host_settings(profile.default_limits(), "/", Vec::new());
        assert_eq!(host.network_mode, PUBLIC_NETWORK);
        assert!(!host.read_only_root);
        assert_eq!(host.memory_bytes, 512 * 1024 * 1024);
        assert_eq!(host.nano_cpus, 1_000_000_000);
        assert_eq!(host.pids_limit, 256);
        assert_eq!(host.tmpfs.len(), 1);
        assert!(!host
            .cap_add
            .iter()
            .any(|c| c == "SYS_ADMIN" || c == "NET_RAW"));
    }

    #[test]
    fn networks_by_profile_and_by_name() {
        let defaults = Profile::ALL.map(Profile::default_network);
        assert_eq!(defaults, [Network::Full, Network::Public, Network::None]);
        for network in Network::ALL {
            assert_eq!(Network::parse(network.name()), Ok(network));
        }
        let error = Network::parse("private").unwrap_err();
        assert!(error.contains("'private'"), "{error}");
        let mut host =
            Profile::Permissive.host_settings(Profile::Permissive.default_limits(), "/", vec![]);
        assert_eq!(host.network_mode, "bridge");
        Network::Public.apply(&mut host, true);
        assert_eq!(host.network_mode, PUBLIC_NETWORK);
        assert_eq!(
            host.sysctls
                .get("net.ipv6.conf.all.disable_ipv6")
                .map(String::as_str),
            Some("1")
        );
        Network::Full.apply(&mut host, true);
        assert!(host.sysctls.is_empty());
        Network::Public.apply(&mut host, false);
        assert!(
            host.sysctls.is_empty(),
            "no IPv6 on the host: nothing to turn off"
        );
    }

    #[test]
    fn bounds_name_themselves() {
        assert_eq!(check_bound("memory_mb", 64, MEMORY_MB_RANGE), Ok(64));
        let error = check_bound("memory_mb", 1, MEMORY_MB_RANGE).unwrap_err();
        assert_eq!(error, "memory_mb must be between 16 and 16384, got 1");
    }

    #[test]
    fn sandboxes_keep_tmp_on_a_writable_root_and_a_tmpfs_on_a_read_only_one() {
        for profile in [Profile::Permissive, Profile::Moderate] {
            let host =
                profile.sandbox_host_settings(profile.default_limits(), Vec::new(), "/tmp/d");
            assert!(!host.tmpfs.contains_key("/tmp"), "{profile}");
            assert!(host.tmpfs.contains_key("/tmp/d"), "{profile}");
            let temporary = profile.host_settings(profile.default_limits(), "/", Vec::new());
            assert!(temporary.tmpfs.contains_key("/tmp"), "{profile}");
        }
        let restrictive = Profile::Restrictive;
        let host =
            restrictive.sandbox_host_settings(restrictive.default_limits(), Vec::new(), "/tmp/d");
        assert!(host.tmpfs.contains_key("/tmp"));
        assert!(!host.tmpfs.contains_key("/tmp/d"));
    }

    #[test]
    fn read_only_workdirs_stay_off_what_the_engine_manages() {
        let restrictive = Profile::Restrictive;
        for good in [
            "/", "/work", "/tmp", "/tmp/a", "/sysroot", "/etc/x", "/home/u/",
        ] {
            assert_eq!(restrictive.check_workdir(good), Ok(()), "{good}");
        }
        for bad in [
            "/proc",
            "/proc/x",
            "/sys/fs",
            "/dev",
            "/etc/hosts",
            "/.agentkernel",
            "/a/../b",
            "/a/./b",
            "/a//b",
        ] {
            let error = restrictive.check_workdir(bad).unwrap_err();
            assert!(error.contains(&format!("'{bad}'")), "{error}");
        }
        assert_eq!(Profile::Moderate.check_workdir("/proc"), Ok(()));
    }

    #[test]
    fn host_bounds_name_the_host() {
        let host = HostResources {
            cpus: 2,
            memory_bytes: 1024 * 1024 * 1024,
        };
        assert_eq!(check_host_cpus(2, host), Ok(2));
        assert_eq!(
            check_host_cpus(16, host).unwrap_err(),
            "vcpus 16 exceeds the 2 CPUs of the engine's host"
        );
        assert_eq!(check_host_memory(1024, host), Ok(1024));
        assert_eq!(
            check_host_memory(1025, host).unwrap_err(),
            "memory_mb 1025 exceeds the 1024 MiB of memory of the engine's host"
        );
    }
}
