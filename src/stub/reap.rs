//! The processes of a container and how the stub kills them: by ancestry, which a
//! command cannot change (unlike its environment, its files, its process group or its
//! session).
//!
//! Every process of a command stays below the process that supervises it: the stub
//! that runs it (a one-shot container's init, or a `docker exec`'d stub in a sandbox)
//! or a detached command's supervisor. Each is a child subreaper, so orphans of
//! `setsid` and double forks are reparented to it, never past it. The supervisors of a
//! sandbox are exec roots (started by the engine from outside the container, they have
//! parent 0 there, which no process inside can have) or children the init started for
//! its exec socket, which it knows by pid and start time. So in a sandbox whose init is
//! the stub, any other process below the init (PID 1) belongs to no living supervisor:
//! its own was killed, and the kernel reparented what it left to the init. The init
//! kills such orphans at once (`sweep_orphans_except`), and so does every server-side
//! kill (`sweep_orphans`, sparing what looks like the init's supervisors).
//!
//! Invariant: nothing here reads anything a command can write (environment, files,
//! process groups); only parent links and start times from `/proc/PID/stat`, and the
//! argv of exec roots, which only they can change.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

/// One process, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEntry {
    pub pid: u32,
    pub parent: u32,
    /// Start time in clock ticks since boot: with the pid, it names a process for good.
    pub start: u64,
    /// Dead, only waiting to be reaped (its children were reparented when it died).
    pub zombie: bool,
    /// Stopped (SIGSTOP, or a tracer's stop): it runs nothing until continued.
    pub stopped: bool,
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid ... starttime ...`; comm may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<ProcessEntry> {
    let pid = stat.split_whitespace().next()?.parse().ok()?;
    let after_comm: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcessEntry {
        pid,
        parent: after_comm.get(1)?.parse().ok()?,
        // Field 22 of the line, the 20th after comm.
        start: after_comm.get(19)?.parse().ok()?,
        zombie: matches!(*after_comm.first()?, "Z" | "X" | "x"),
        stopped: matches!(*after_comm.first()?, "T" | "t"),
    })
}

/// Every process we can see.
pub fn list_processes() -> Vec<ProcessEntry> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            entry.file_name().to_str()?.parse::<u32>().ok()?;
            parse_stat(&std::fs::read_to_string(entry.path().join("stat")).ok()?)
        })
        .collect()
}

/// One process by pid, if it is there.
pub fn process(pid: u32) -> Option<ProcessEntry> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A process's argv, from `/proc/PID/cmdline` (readable even for non-dumpable ones).
pub fn argv_of(pid: u32) -> Vec<String> {
    let Ok(bytes) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    bytes
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// Every process below `root` (not `root` itself).
pub fn descendants(root: u32, processes: &[ProcessEntry]) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for process in processes {
        if process.pid != process.parent {
            children
                .entry(process.parent)
                .or_default()
                .push(process.pid);
        }
    }
    let mut found = HashSet::new();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for &child in children.get(&parent).map(Vec::as_slice).unwrap_or(&[]) {
            if child != root && found.insert(child) {
                next.push(child);
            }
        }
    }
    found
}

/// Most rounds of each phase of a kill: each round hits everything it found, so only
/// processes forked during a round are left for the next.
const KILL_ROUNDS: usize = 200;

/// SIGKILLs every process below `root`: see `kill_below_except`. Returns how many were
/// signalled.
pub fn kill_below(root: u32) -> usize {
    kill_below_except(root, |_| false)
}

/// The processes below `root` still to hit: not us, not spared (the
/// children of `root` that `spare` picks and everything below them), not in `hit`;
/// each as `(pid, start)`, which names a process for good.
fn targets(
    root: u32,
    spare: &impl Fn(&ProcessEntry) -> bool,
    hit: &HashSet<(u32, u64)>,
) -> Vec<(u32, u64)> {
    let own = std::process::id();
    let processes = list_processes();
    let spared: HashSet<u32> = processes
        .iter()
        .filter(|p| p.parent == root && spare(p))
        .flat_map(|p| descendants(p.pid, &processes).into_iter().chain([p.pid]))
        .collect();
    let below = descendants(root, &processes);
    processes
        .iter()
        // Zombies too: a process whose main thread ended shows as one while its other
        // threads run on (and fork); a signal to a true zombie does nothing.
        .filter(|p| below.contains(&p.pid) && p.pid != own)
        .filter(|p| !spared.contains(&p.pid) && !hit.contains(&(p.pid, p.start)))
        .map(|p| (p.pid, p.start))
        .collect()
}

/// Sends `signal` to every process below `root` (but those `spare` picks), round after
/// round until a round finds none it has not hit yet; adds them to `hit`.
fn signal_below(
    root: u32,
    spare: &impl Fn(&ProcessEntry) -> bool,
    signal: Signal,
    hit: &mut HashSet<(u32, u64)>,
) {
    for _ in 0..KILL_ROUNDS {
        let mut found = false;
        for (pid, start) in targets(root, spare, hit) {
            if let Some(target) = Pid::from_raw(pid as i32) {
                if kill_process(target, signal).is_ok() {
                    found = true;
                    hit.insert((pid, start));
                }
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILLs every process below `root` but the children `spare` picks and their trees.
///
/// A fork bomb regrows as fast as its processes die (each death frees a pid under the
/// pids limit, and frees a core for the rest), so the tree is stopped first: a stopped
/// process forks no more and keeps its pid, so round after round the stopped set only
/// grows until nothing below `root` runs. Then everything stopped is killed, and what
/// forked in between (a fork racing the last round) is killed the same way.
fn kill_below_except(root: u32, spare: impl Fn(&ProcessEntry) -> bool) -> usize {
    let mut stopped = HashSet::new();
    signal_below(root, &spare, Signal::STOP, &mut stopped);
    for &(pid, start) in &stopped {
        if process(pid).is_some_and(|p| p.start == start) {
            kill_one(pid);
        }
    }
    let mut killed = stopped;
    signal_below(root, &spare, Signal::KILL, &mut killed);
    killed.len()
}

/// SIGKILLs one process.
pub fn kill_one(pid: u32) {
    if let Some(target) = Pid::from_raw(pid as i32) {
        let _ = kill_process(target, Signal::KILL);
    }
}

/// Kills every process below a sandbox's init (PID 1): in a sandbox whose init is the
/// stub they are orphans whose supervisor died (see the module comment). Only for such
/// sandboxes: in a one-shot container the command itself is below the init.
///
/// In a sandbox with an exec socket, the init's children also include the supervisors
/// it started, which only the init can tell from orphans (nothing a command cannot
/// forge, argv or age, tells them apart): there the init's own sweep, every 50 ms, is
/// the one that runs (`sweep_orphans_except`), and this does nothing.
pub fn sweep_orphans() -> usize {
    if std::path::Path::new(crate::stub::EXEC_SOCKET_DIR).is_dir() {
        return 0;
    }
    kill_below(1)
}

/// The init's own sweep: kills every process below it but the supervisors it started,
/// `(pid, start)`, with their trees.
pub fn sweep_orphans_except(supervisors: &HashSet<(u32, u64)>, spawning: &[u32]) -> usize {
    kill_below_except(1, |process| {
        supervisors.contains(&(process.pid, process.start))
            || spawning
                .iter()
                .any(|thread| children_of_thread(*thread).contains(&(process.pid, process.start)))
    })
}

/// Whether the init can still see its processes: its open-files limit is what it was
/// at start (`open_files`), and `/proc` lists at least itself.
pub fn can_sweep(open_files: Option<u64>) -> bool {
    let now = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    now == open_files && process(std::process::id()).is_some()
}

/// The calling thread's id, from `/proc/thread-self`.
pub fn current_thread() -> std::io::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|name| name.to_str()?.parse().ok())
        .ok_or_else(|| std::io::Error::other("cannot read /proc/thread-self"))
}

/// The children one thread of ours forked, `(pid, start)`, from its `children` list.
pub fn children_of_thread(thread: u32) -> Vec<(u32, u64)> {
    std::fs::read_to_string(format!("/proc/self/task/{thread}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| process(pid.parse().ok()?))
        .map(|child| (child.pid, child.start))
        .collect()
}

/// Whether the init has a child it did not start as a supervisor (an orphan, or a
/// fork on its way to becoming one): only then is a sweep's `/proc` scan worth it.
/// Reads the children lists of its own threads, not all of `/proc`.
pub fn has_unknown_children(supervisors: &HashSet<(u32, u64)>) -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return true;
    };
    let known: HashSet<u32> = supervisors.iter().map(|(pid, _)| *pid).collect();
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("children"))
            .map(|children| {
                children
                    .split_whitespace()
                    .filter_map(|pid| pid.parse::<u32>().ok())
                    .any(|pid| !known.contains(&pid))
            })
            .unwrap_or(true)
    })
}

/// Whether this process has a child, living or not yet reaped.
pub fn has_children() -> bool {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let options = WaitIdOptions::NOHANG | WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    // ECHILD when there is none; with WNOHANG, `Ok(None)` when they all still run.
    waitid(WaitId::All, options).is_ok()
}

/// Reaps children until none is left: a supervisor whose command ended stays as long
/// as anything the command left in the background runs (as a child subreaper, every
/// such process is below it), so that they die with it if it is killed.
pub fn reap_until_childless() {
    use rustix::process::{wait, WaitOptions};
    loop {
        match wait(WaitOptions::empty()) {
            Ok(Some(_)) => {}
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            // ECHILD: nothing below us any more.
            Err(_) => return,
        }
    }
}

/// `agentkernel stub --kill-exec PID START`: the server's kill of an exec whose stub it
/// cannot reach (stopped, killed, or past its deadline without an answer). `PID` and
/// `START` are what that stub reported when it started; it is killed only if it is
/// still that process, an exec root (parent 0) running the stub, so a reused pid is
/// never hit. Its whole tree goes first, then it, then every orphan below the init.
pub fn kill_exec(pid: u32, start: u64) -> i32 {
    // An exec root (parent 0), or a supervisor the init started for its exec socket
    // (for the exec, or ahead of it: `stub --spare`).
    let argv = argv_of(pid);
    let is_that_stub = process(pid)
        .is_some_and(|p| matches!(p.parent, 0 | 1) && p.start == start && !p.zombie)
        && pid != 1
        && matches!(
            argv.iter().skip(1).map(String::as_str).collect::<Vec<_>>()[..],
            ["stub"] | ["stub", "--spare"]
        );
    if is_that_stub {
        kill_below(pid);
        kill_one(pid);
    }
    sweep_orphans();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_is_called() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    123456 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(ProcessEntry {
                pid: 42,
                parent: 7,
                start: 123456,
                zombie: false,
                stopped: false,
            })
        );
        let zombie = "43 (sh) Z 1 43 43 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 99 0 0 0";
        assert!(parse_stat(zombie).unwrap().zombie);
        let stopped = "44 (sh) T 1 43 43 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 99 0 0 0";
        assert!(parse_stat(stopped).unwrap().stopped);
        assert_eq!(parse_stat("1 (init"), None);
        let own = process(std::process::id()).unwrap();
        assert_eq!(own.pid, std::process::id());
        assert!(own.start > 0);
    }

    #[test]
    fn a_threads_forks_are_its_children_and_no_other_threads() {
        let main = current_thread().unwrap();
        let (thread, child) = std::thread::spawn(|| {
            let child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            (current_thread().unwrap(), child)
        })
        .join()
        .unwrap();
        let mut child = child;
        // The thread ended: its child went to another thread of ours.
        assert_ne!(thread, main);
        let pid = child.id();
        let on_some_thread = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .any(|task| {
                let thread: u32 = task.file_name().to_str().unwrap().parse().unwrap();
                children_of_thread(thread).iter().any(|(p, _)| *p == pid)
            });
        assert!(on_some_thread);
        let here = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut here = here;
        assert!(children_of_thread(current_thread().unwrap())
            .iter()
            .any(|(p, _)| *p == here.id()));
        for process in [&mut child, &mut here] {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    #[test]
    fn an_init_whose_open_files_limit_changed_cannot_sweep() {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let before = getrlimit(Resource::Nofile);
        assert!(can_sweep(before.current));
        // A limit one lower (raised back at once: other tests run in this process).
        let mut lowered = before;
        lowered.current = before.current.map(|limit| limit - 1);
        setrlimit(Resource::Nofile, lowered).unwrap();
        let changed = !can_sweep(before.current);
        setrlimit(Resource::Nofile, before).unwrap();
        assert!(changed);
    }

    #[test]
    fn descendants_follow_parent_links_in_any_order() {
        let entry = |pid, parent| ProcessEntry {
            pid,
            parent,
            start: 0,
            zombie: false,
            stopped: false,
        };
        let processes = [
            entry(9, 5),
            entry(1, 0),
            entry(5, 3),
            entry(3, 1),
            entry(4, 0),
            entry(8, 4),
        ];
        assert_eq!(descendants(3, &processes), HashSet::from([5, 9]));
        assert_eq!(descendants(1, &processes), HashSet::from([3, 5, 9]));
        assert_eq!(descendants(9, &processes), HashSet::new());
    }
}
