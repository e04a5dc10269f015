//! A container's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`: ours, read-only.
//!
//! The engine's own are writable binds of files in its containers' directory, on its
//! own disk and outside any disk quota: a command could fill the engine's disk by
//! writing to them. Ours are small files under `<data dir>/etc`, one per content
//! (named by its SHA-256, written once, read-only), bound read-only; the engine then
//! binds none of its own (it still keeps its `resolv.conf` for its own resolver, the
//! one `public` and allow-list containers use).

use std::path::{Path, PathBuf};

use crate::containers::profile::Network;

/// The host name of temporary containers (a sandbox's is its name).
pub const TEMPORARY_HOSTNAME: &str = "sandbox";

/// A host name from a sandbox's name: lowercase letters, digits and `-`, at most 63.
pub fn hostname(name: &str) -> String {
    let mut host: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(63)
        .collect();
    host = host.trim_matches('-').to_string();
    if host.is_empty() {
        TEMPORARY_HOSTNAME.to_string()
    } else {
        host
    }
}

/// The three files' contents for a container of `network` named `hostname`.
pub fn contents(
    network: Network,
    hostname: &str,
    host_resolv: &str,
) -> [(String, &'static str); 3] {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    [
        (hosts, "/etc/hosts"),
        (format!("{hostname}\n"), "/etc/hostname"),
        (resolv_conf(network, host_resolv), "/etc/resolv.conf"),
    ]
}

/// What the engine would give: its own resolver on its networks (`public`, allow-lists),
/// the host's resolvers (not loopback ones, which the container cannot reach; the
/// engine's fallback where none is left) on its default bridge, nothing without a
/// network.
pub fn resolv_conf(network: Network, host_resolv: &str) -> String {
    match network {
        Network::None => String::new(),
        Network::Public | Network::Allow => "nameserver 127.0.0.11\noptions ndots:0\n".into(),
        Network::Full => {
            let mut out = String::new();
            let mut servers = 0;
            for line in host_resolv.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["nameserver", address, ..] => {
                        let loopback = address
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|address| address.is_loopback());
                        if !loopback {
                            out.push_str(&format!("nameserver {address}\n"));
                            servers += 1;
                        }
                    }
                    ["search" | "domain" | "options", ..] => {
                        out.push_str(line.trim());
                        out.push('\n');
                    }
                    _ => {}
                }
            }
            if servers == 0 {
                out.insert_str(0, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
            }
            out
        }
    }
}

/// The host's `resolv.conf` as the engine reads it: systemd-resolved's upstream list
/// where the host's own resolver is on loopback.
fn host_resolv() -> String {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let only_loopback = main
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .all(|address| {
            address
                .trim()
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback())
        });
    if only_loopback {
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    main
}

/// The read-only mounts of the three files for a container, written under
/// `<data_dir>/etc` where missing; none without a data dir (the engine's then).
pub fn mounts(data_dir: Option<&Path>, network: Network, hostname: &str) -> Vec<(PathBuf, String)> {
    let Some(data_dir) = data_dir else {
        return Vec::new();
    };
    let dir = data_dir.join("etc");
    let resolv = host_resolv();
    let mut mounts = Vec::new();
    for (content, target) in contents(network, hostname, &resolv) {
        match write(&dir, &content) {
            Ok(path) => mounts.push((path, target.to_string())),
            Err(error) => {
                log::warn!(
                    "cannot write {target} for containers under {}: {error}",
                    dir.display()
                );
                return Vec::new();
            }
        }
    }
    mounts
}

/// `<dir>/<sha256 of content>`, written once (atomically) and read-only.
fn write(dir: &Path, content: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(crate::codec::sha256::hex_digest(content.as_bytes()));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    // A name of this write's own (threads and processes write the same file at once).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    ));
    let written = std::fs::write(&temporary, content)
        .and_then(|()| {
            std::fs::set_permissions(
                &temporary,
                std::os::unix::fs::PermissionsExt::from_mode(0o444),
            )
        })
        .and_then(|()| std::fs::rename(&temporary, &path));
    let _ = std::fs::remove_file(&temporary);
    match written {
        // Another write made it meanwhile: the same content.
        Err(_) if path.exists() => Ok(path),
        other => other.map(|()| path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_come_from_sandbox_names() {
        assert_eq!(hostname("My_Box.1"), "my-box-1");
        assert_eq!(hostname("__"), "sandbox");
        assert_eq!(hostname(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn resolv_conf_is_what_the_engine_gives_each_network() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch corp.example\noptions edns0\n";
        assert_eq!(resolv_conf(Network::None, host), "");
        assert_eq!(
            resolv_conf(Network::Public, host),
            "nameserver 127.0.0.11\noptions ndots:0\n"
        );
        assert_eq!(
            resolv_conf(Network::Allow, host),
            resolv_conf(Network::Public, host)
        );
        assert_eq!(
            resolv_conf(Network::Full, host),
            "nameserver 10.0.0.2\nsearch corp.example\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf(Network::Full, "nameserver 127.0.0.53\n"),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    #[test]
    fn hosts_resolve_the_host_name_to_loopback() {
        let [(hosts, _), (hostname, _), _] = contents(Network::None, "box", "");
        assert!(hosts.contains("127.0.1.1\tbox\n"), "{hosts}");
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert_eq!(hostname, "box\n");
    }

    #[test]
    fn files_are_written_once_read_only_and_named_by_content() {
        let dir = std::env::temp_dir().join(format!("ak-etc-test-{}", std::process::id()));
        let first = write(&dir, "a\n").unwrap();
        let again = write(&dir, "a\n").unwrap();
        assert_eq!(first, again);
        assert_eq!(std::fs::read_to_string(&first).unwrap(), "a\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&first).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o444);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
