//! Who owns a temporary container, and whether that owner is gone.
//!
//! Every temporary (run or pool) container is labelled with the process that made it
//! (`agentkernel.owner`): a server, or a local CLI run. The label is
//! `PID.START.PIDNS.BOOT`: the process id, its start time (clock ticks since boot, from
//! `/proc/PID/stat`), its PID namespace and the kernel's boot id. Nothing else on this
//! kernel can carry the same four values at once, and they are enough to ask the
//! kernel whether that process still runs: a sweep removes only the containers of its
//! own process and of owners that are verifiably gone, never those of another server or
//! CLI run of the same namespace that still runs.
//!
//! How an owner is judged, first match wins:
//! - no owner label: made by a build from before owners were marked; gone.
//! - a lease file `<data dir>/owners/<namespace>/LABEL.lock` (servers hold an exclusive
//!   `flock` on theirs for their whole life; the kernel lets go of it when the process
//!   dies, however it dies): alive if the lock is held, gone if we can take it. This
//!   works across PID namespaces (a server in a container) wherever the data dir is
//!   shared. A free lease is removed once no container of its owner is left.
//! - another boot id: every process of an earlier boot is gone. (The engine is reached
//!   over a local unix socket, so its containers' owners ran on this kernel.)
//! - our PID namespace: alive while a process with that PID and that start time runs
//!   and is not a zombie (`/proc/PID/stat`); a PID reused by another process has another
//!   start time. Where `/proc` hides the process (`hidepid`), `kill(PID, 0)` decides
//!   whether it exists, and then it is taken as alive.
//! - otherwise (another PID namespace and no lease here): unknown, and kept.
//!
//! Invariants: a process never judges itself gone; a verdict of gone rests on the
//! kernel's word (a free lock, a missing or different process, another boot), never on a
//! timeout; what cannot be checked is kept.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory of a namespace's leases: `<data dir>/owners/<namespace>`.
pub fn leases_dir(data_dir: &Path, namespace: &str) -> PathBuf {
    data_dir.join("owners").join(namespace)
}

/// A process that makes temporary containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22); 0 if unknown.
    start: u64,
    /// The PID namespace's inode number; 0 if unknown.
    pid_namespace: u64,
    /// `/proc/sys/kernel/random/boot_id`; empty if unknown.
    boot: String,
}

impl Owner {
    /// This process, read once.
    pub fn this() -> &'static Owner {
        static THIS: OnceLock<Owner> = OnceLock::new();
        THIS.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                pid,
                start: process_state(pid).map(|(_, start)| start).unwrap_or(0),
                pid_namespace: pid_namespace().unwrap_or(0),
                boot: boot_id().unwrap_or_default(),
            }
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The value of the owner label.
    pub fn label(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.pid, self.start, self.pid_namespace, self.boot
        )
    }

    pub fn parse(label: &str) -> Option<Owner> {
        let mut parts = label.splitn(4, '.');
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let pid_namespace = parts.next()?.parse().ok()?;
        let boot = parts.next()?.to_string();
        let boot_is_valid = boot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        boot_is_valid.then_some(Owner {
            pid,
            start,
            pid_namespace,
            boot,
        })
    }
}

/// What a sweep may do with an owner's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This process made them.
    Ours,
    /// The owner still runs: not ours to touch.
    Alive,
    /// The owner is gone (the reason, for the log): its containers are leftovers.
    Gone(String),
    /// The owner cannot be checked from here (the reason): kept.
    Unknown(String),
}

impl Verdict {
    /// Whether a sweep removes the containers.
    pub fn removable(&self) -> bool {
        matches!(self, Verdict::Ours | Verdict::Gone(_))
    }
}

/// Judges the owner named by a container's owner label, as seen by this process, with
/// the leases under `leases` (`leases_dir`), if there is a data dir.
pub fn judge(label: Option<&str>, leases: Option<&Path>) -> Verdict {
    judge_as(Owner::this(), label, leases)
}

fn judge_as(me: &Owner, label: Option<&str>, leases: Option<&Path>) -> Verdict {
    let Some(label) = label else {
        return Verdict::Gone("made before containers were marked with their owner".into());
    };
    let Some(owner) = Owner::parse(label) else {
        return Verdict::Unknown(format!("unreadable owner label '{}'", label.escape_debug()));
    };
    if owner == *me {
        return Verdict::Ours;
    }
    if let Some(lease) = leases.map(|dir| dir.join(format!("{label}.lock"))) {
        match lease_held(&lease) {
            Some(true) => return Verdict::Alive,
            Some(false) => return Verdict::Gone(format!("its lease {} is free", lease.display())),
            None => {}
        }
    }
    if !owner.boot.is_empty() && !me.boot.is_empty() && owner.boot != me.boot {
        return Verdict::Gone("it ran before the host's last boot".into());
    }
    if owner.pid_namespace != 0 && owner.pid_namespace == me.pid_namespace {
        return match process_state(owner.pid) {
            Some((state, start)) if start == owner.start && !matches!(state, 'Z' | 'X') => {
                Verdict::Alive
            }
            Some(_) => Verdict::Gone(format!("process {} is gone", owner.pid)),
            None => match rustix::process::Pid::from_raw(owner.pid as i32)
                .map(rustix::process::test_kill_process)
            {
                Some(Err(rustix::io::Errno::SRCH)) => {
                    Verdict::Gone(format!("process {} is gone", owner.pid))
                }
                // It exists but `/proc` does not show it to us: taken as alive.
                _ => Verdict::Alive,
            },
        };
    }
    Verdict::Unknown(format!(
        "process {} runs in another PID namespace and holds no lease here",
        owner.pid
    ))
}

/// Whether the lease file's lock is held by a live process: `None` if there is no such
/// file.
fn lease_held(path: &Path) -> Option<bool> {
    let file = File::open(path).ok()?;
    match file.try_lock() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Removes the free leases under `dir` (their owners are gone) except those of owners in
/// `keep` (containers of theirs are still there, and the lease is what says they are
/// gone); returns how many went. Each is removed under its lock.
pub fn remove_free_leases(dir: &Path, keep: &BTreeSet<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(label) = name.to_str().and_then(|name| name.strip_suffix(".lock")) else {
            continue;
        };
        if label.starts_with('.') || keep.contains(label) {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        if file.try_lock().is_ok() && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A server's lease: an exclusive lock on `<data dir>/owners/LABEL.lock`, held while
/// this value lives (and by the kernel until the process ends, however it ends); the
/// file is removed on drop.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    _file: File,
}

impl Lease {
    /// Takes this process's lease under `dir`. The file appears under its name only once
    /// locked (made under a temporary name, locked, then renamed), so a lease file that
    /// can be locked always means its owner is gone.
    pub fn take(dir: &Path) -> io::Result<Lease> {
        std::fs::create_dir_all(dir)?;
        let label = Owner::this().label();
        let path = dir.join(format!("{label}.lock"));
        let temporary = dir.join(format!(".{label}.lock.new"));
        let file = File::create(&temporary)?;
        file.lock()?;
        std::fs::rename(&temporary, &path)?;
        Ok(Lease { path, _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process's state letter and start time, from `/proc/PID/stat`.
fn process_state(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// `pid (comm) state ppid ... starttime ...`: the state (field 3) and the start time
/// (field 22). The command name may hold spaces and parentheses: fields are counted
/// from its closing one.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn pid_namespace() -> Option<u64> {
    // `pid:[4026531836]`
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

fn boot_id() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = text.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ak-owner-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A process that has ended (and been reaped): its PID and start time are known.
    fn ended_process() -> Owner {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (_, start) = process_state(child.id()).unwrap();
        let owner = Owner {
            pid: child.id(),
            start,
            ..Owner::this().clone()
        };
        child.kill().unwrap();
        child.wait().unwrap();
        owner
    }

    #[test]
    fn this_process_is_fully_known_and_its_label_reads_back() {
        let me = Owner::this();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start > 0 && me.pid_namespace > 0 && !me.boot.is_empty());
        assert_eq!(Owner::parse(&me.label()).as_ref(), Some(me));
        for bad in ["", "1.2.3", "x.2.3.b", "1.2.3.not/a-boot id", "1.-2.3.ab"] {
            assert_eq!(Owner::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn stat_fields_are_counted_past_the_command_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    123456 1000 10 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 123456)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn judges_by_process_boot_and_label() {
        let me = Owner::this();
        assert_eq!(judge_as(me, Some(&me.label()), None), Verdict::Ours);
        assert!(matches!(judge_as(me, None, None), Verdict::Gone(_)));
        assert!(matches!(
            judge_as(me, Some("garbage"), None),
            Verdict::Unknown(_)
        ));

        // A live process that is not us: our parent (the test runner).
        let parent = rustix::process::getppid().unwrap().as_raw_nonzero().get() as u32;
        let (_, start) = process_state(parent).unwrap();
        let alive = Owner {
            pid: parent,
            start,
            ..me.clone()
        };
        assert_eq!(judge_as(me, Some(&alive.label()), None), Verdict::Alive);
        // The same PID with another start time is another (gone) process.
        let reused = Owner {
            start: start + 1,
            ..alive.clone()
        };
        assert!(matches!(
            judge_as(me, Some(&reused.label()), None),
            Verdict::Gone(_)
        ));
        assert!(matches!(
            judge_as(me, Some(&ended_process().label()), None),
            Verdict::Gone(_)
        ));
        // Another boot: gone, whatever the PID.
        let rebooted = Owner {
            boot: "0000".into(),
            ..alive.clone()
        };
        assert!(matches!(
            judge_as(me, Some(&rebooted.label()), None),
            Verdict::Gone(_)
        ));
        // Another PID namespace, no lease: not ours to judge.
        let elsewhere = Owner {
            pid_namespace: me.pid_namespace + 1,
            ..alive
        };
        assert!(matches!(
            judge_as(me, Some(&elsewhere.label()), None),
            Verdict::Unknown(_)
        ));
    }

    #[test]
    fn a_lease_is_held_while_its_owner_lives_and_free_after() {
        let dir = temporary_dir("lease");
        let me = Owner::this();
        let lease = Lease::take(&dir).unwrap();
        assert!(lease.path().exists());
        // Seen as another process would see it (same label, judged by someone else).
        let observer = Owner {
            pid: 1,
            ..me.clone()
        };
        assert_eq!(
            judge_as(&observer, Some(&me.label()), Some(&dir)),
            Verdict::Alive
        );
        // A lease file left by a process that died: its lock is free. The lease decides
        // even where the PID alone could not (another PID namespace).
        let dead = Owner {
            pid_namespace: me.pid_namespace + 1,
            ..ended_process()
        };
        let left = dir.join(format!("{}.lock", dead.label()));
        File::create(&left).unwrap();
        assert!(matches!(
            judge_as(me, Some(&dead.label()), Some(&dir)),
            Verdict::Gone(_)
        ));
        // Kept while its owner's containers are; removed after. A held lease stays.
        let mut keep = BTreeSet::from([dead.label()]);
        assert_eq!(remove_free_leases(&dir, &keep), 0);
        assert!(left.exists());
        keep.clear();
        assert_eq!(remove_free_leases(&dir, &keep), 1);
        assert!(!left.exists());
        assert!(lease.path().exists());
        drop(lease);
        assert!(!dir.join(format!("{}.lock", me.label())).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
