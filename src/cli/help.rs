//! Help text and the flags each command takes, defined once: the usage line, the
//! option list of `--help` and the set of flags the parser accepts all come from the
//! same `Flag` table, so help and parser cannot drift (`Topic::accepts` guards every
//! parser loop; a unit test parses every listed flag).

use lexopt::Arg;

/// One option of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    /// The value's placeholder, for flags that take one.
    pub value: Option<&'static str>,
    /// May be given more than once.
    pub repeats: bool,
    pub help: &'static str,
}

const fn flag(long: &'static str, value: Option<&'static str>, help: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        value,
        repeats: false,
        help,
    }
}

/// The help of one command: its usage line(s), printed alone on a usage error, and the
/// details `--help` adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic {
    /// `run`, `sandbox create`, ...; empty for the top level.
    pub command: &'static str,
    /// Operands before the flags in the usage line (`NAME`).
    pub lead: &'static str,
    pub flags: &'static [Flag],
    /// What follows the flags in the usage line (`NAME [--] CMD [ARGS...]`).
    pub operands: &'static str,
    /// A paragraph before the option list.
    pub about: &'static str,
    /// Text after the option list.
    pub more: &'static str,
}

impl Topic {
    /// `agentkernel COMMAND [--flag V]... OPERANDS`, wrapped under the command.
    pub fn usage(&self) -> String {
        let mut words: Vec<String> = self
            .flags
            .iter()
            .map(|flag| {
                let name = match flag.short {
                    Some(short) => format!("-{short}"),
                    None => format!("--{}", flag.long),
                };
                let value = flag.value.map(|v| format!(" {v}")).unwrap_or_default();
                let repeats = if flag.repeats { "..." } else { "" };
                format!("[{name}{value}]{repeats}")
            })
            .collect();
        if !self.operands.is_empty() {
            words.push(self.operands.to_string());
        }
        if !self.lead.is_empty() {
            words.insert(0, self.lead.to_string());
        }
        let lead = if self.command.is_empty() {
            "agentkernel".to_string()
        } else {
            format!("agentkernel {}", self.command)
        };
        let indent = " ".repeat(lead.len() + 1);
        let mut usage = lead;
        let mut line_length = usage.len();
        for word in words {
            if line_length + 1 + word.len() > 88 {
                usage.push('\n');
                usage.push_str(&indent);
                usage.push_str(&word);
                line_length = indent.len() + word.len();
            } else {
                usage.push(' ');
                usage.push_str(&word);
                line_length += 1 + word.len();
            }
        }
        usage
    }

    pub fn help(&self) -> String {
        let mut text = format!("Usage: {}\n\n{}", self.usage(), self.about);
        if !self.flags.is_empty() {
            text.push_str("\nOptions:\n");
            for flag in self.flags {
                let mut name = match flag.short {
                    Some(short) => format!("-{short}, --{}", flag.long),
                    None => format!("--{}", flag.long),
                };
                if let Some(value) = flag.value {
                    name.push(' ');
                    name.push_str(value);
                }
                if name.len() > 24 {
                    text.push_str(&format!("  {name}\n  {:24} {}\n", "", flag.help));
                } else {
                    text.push_str(&format!("  {name:24} {}\n", flag.help));
                }
            }
        }
        if !self.more.is_empty() {
            text.push('\n');
            text.push_str(self.more);
        }
        text
    }

    /// Whether the parser of this command may take `arg`: operands always, options
    /// only when listed (`--help` everywhere).
    pub fn accepts(&self, arg: &Arg) -> bool {
        match arg {
            Arg::Value(_) => true,
            Arg::Long("help") | Arg::Short('h') => true,
            Arg::Long(long) => self.flags.iter().any(|flag| flag.long == *long),
            Arg::Short(short) => self.flags.iter().any(|flag| flag.short == Some(*short)),
        }
    }
}

pub const MAIN: Topic = Topic {
    command: "",
    lead: "",
    flags: &[],
    operands: "[--server URL] [-v|-q] COMMAND [ARGS...]",
    about: "\
Run untrusted commands in isolated Docker containers.

Commands:
  run [OPTIONS] [--] CMD [ARGS...]        run a command in a fresh container
  exec [OPTIONS] NAME [--] CMD [ARGS...]  run a command in a running sandbox
  sandbox create|list|info|start|stop|pause|resume|remove|extend|stats
                                          manage persistent sandboxes
  snapshot create|list|info|remove|restore
                                          keep a sandbox's files, make sandboxes of them
  cp SRC DST                              copy between here and a sandbox (NAME:/path)
  health                                  check that the engine (or server) answers
  serve [OPTIONS]                         serve the HTTP API
  egress                                  put the public egress policy's host rules in place

Options, before or after the command:
  --server URL     send every command to a running server over HTTP instead of
                   driving the local Docker Engine (also AGENTKERNEL_URL)
  -v, --verbose    more log output on stderr (-vv for debug)
  -q, --quiet      only errors in the log
  -h, --help       this help; `agentkernel COMMAND --help` for one command
  -V, --version    the version

Exit status: 0 success, 1 failure, 2 usage error. run and exec exit with the
command's code: 124 on timeout, 128+N on signal N, 125 if agentkernel failed.

Environment:
  AGENTKERNEL_URL            server to use (same as --server)
  AGENTKERNEL_API_KEY        serve: require this key; clients: send it as X-API-Key
  AGENTKERNEL_NAMESPACE      namespace of our containers (default: default)
  AGENTKERNEL_DEFAULT_IMAGE  image for commands of no known runtime (default: alpine:3.20)
  AGENTKERNEL_IMAGE_<RUNTIME> image for a runtime, e.g. AGENTKERNEL_IMAGE_PYTHON
  AGENTKERNEL_STUB=off       never use the in-container stub (docker exec instead)
  AGENTKERNEL_LOG            log level: error, warn, info, debug, trace
                             (default: info for serve, warn otherwise)
  DOCKER_HOST                unix:///path/to/docker.sock (default: /var/run/docker.sock)
",
    more: "",
};

const ENV: Flag = Flag {
    long: "env",
    short: Some('e'),
    value: Some("K=V"),
    repeats: true,
    help: "set an environment variable (-e K passes our own K)",
};
const WORKDIR: Flag = Flag {
    long: "workdir",
    short: Some('w'),
    value: Some("DIR"),
    repeats: false,
    help: "absolute working directory",
};
const TIMEOUT: Flag = flag(
    "timeout",
    Some("SECS"),
    "kill the command after SECS seconds (default: 30)",
);
const JSON: Flag = flag(
    "json",
    None,
    "print the API's result object instead of text",
);

pub const RUN: Topic = Topic {
    command: "run",
    lead: "",
    flags: &[
        flag(
            "image",
            Some("I"),
            "image (default: chosen from CMD's name, else the default image)",
        ),
        flag(
            "profile",
            Some("P"),
            "permissive, moderate (default) or restrictive",
        ),
        flag(
            "network",
            Some("NET"),
            "none, public or full (default: the profile's: none, public, full)",
        ),
        flag(
            "disk-mb",
            Some("MIB"),
            "disk quota of what the command writes, MiB (default: the profile's)",
        ),
        flag(
            "runtime",
            Some("NAME"),
            "engine runtime: runc, runsc (gVisor), ... (default: the server's)",
        ),
        flag(
            "no-fast",
            None,
            "a freshly started container instead of a warm one",
        ),
        TIMEOUT,
        ENV,
        WORKDIR,
        JSON,
    ],
    operands: "[--] CMD [ARGS...]",
    about: "\
Runs CMD with exactly these arguments (no shell) in a fresh container, removed
afterwards. Its stdout and stderr arrive on ours as it produces them; stdin is
passed through when it is not a terminal. Exits with the command's exit code:
124 on timeout, 128+N if killed by signal N, 125 if agentkernel itself failed.
",
    more: "",
};

pub const EXEC: Topic = Topic {
    command: "exec",
    lead: "",
    flags: &[ENV, WORKDIR, TIMEOUT, JSON],
    operands: "NAME [--] CMD [ARGS...]",
    about: "\
Runs CMD in the running sandbox NAME, streaming its output; exit codes as for run.
",
    more: "",
};

pub const SANDBOX: Topic = Topic {
    command: "sandbox",
    lead: "",
    flags: &[],
    operands: "create|list|info|start|stop|pause|resume|remove|extend|stats ...",
    about: "\
Persistent sandboxes: containers that keep their files across stop and start.

  agentkernel sandbox create NAME [--image I] [--profile P] [--network NET]
                                  [--memory-mb N]
                                  [--vcpus N] [--pids N] [--ttl DURATION]
                                  [--idle-timeout DURATION] [--json]
  agentkernel sandbox list [--json]        an aligned table, or the API's JSON
  agentkernel sandbox info NAME [--json]
  agentkernel sandbox start|stop|pause|resume|remove NAME [--json]
  agentkernel sandbox extend NAME DURATION [--json]
  agentkernel sandbox stats NAME [--json]
",
    more: "",
};

pub const SANDBOX_CREATE: Topic = Topic {
    command: "sandbox create",
    lead: "NAME",
    flags: &[
        flag("image", Some("I"), "image (default: the default image)"),
        flag(
            "profile",
            Some("P"),
            "permissive, moderate (default) or restrictive",
        ),
        flag(
            "network",
            Some("NET"),
            "none, public or full (default: the profile's: none, public, full)",
        ),
        flag("memory-mb", Some("N"), "memory limit, 16-16384 MiB"),
        flag("vcpus", Some("N"), "CPUs, 1-16 (at most the engine host's)"),
        flag("pids", Some("N"), "process limit, 16-4096"),
        flag(
            "disk-mb",
            Some("MIB"),
            "disk quota of what the sandbox writes, MiB (default: the profile's)",
        ),
        flag(
            "runtime",
            Some("NAME"),
            "engine runtime: runc, runsc (gVisor), ... (default: the server's)",
        ),
        flag(
            "ttl",
            Some("DURATION"),
            "removed by itself this long after creation (like 30m, 2h, 1d)",
        ),
        flag(
            "idle-timeout",
            Some("DURATION"),
            "removed by itself after this long without a command or file operation",
        ),
        JSON,
    ],
    operands: "",
    about: "\
Creates and starts a sandbox; prints its name (or the API's object with --json).
Limits default to the profile's.
",
    more: "",
};

pub const SANDBOX_LIST: Topic = Topic {
    command: "sandbox list",
    lead: "",
    flags: &[JSON],
    operands: "",
    about: "Lists the sandboxes of the namespace as an aligned table.\n",
    more: "",
};

pub const SANDBOX_INFO: Topic = Topic {
    command: "sandbox info",
    lead: "NAME",
    flags: &[JSON],
    operands: "",
    about: "One sandbox, with the limits the engine applied, as `key  value` lines.\n",
    more: "",
};

pub const SANDBOX_CHANGE: Topic = Topic {
    command: "sandbox start|stop|pause|resume|remove",
    lead: "NAME",
    flags: &[JSON],
    operands: "",
    about: "Starts, stops (files are kept), pauses (processes frozen, memory kept), resumes or\nremoves a sandbox; prints its name.\n",
    more: "",
};

pub const SANDBOX_EXTEND: Topic = Topic {
    command: "sandbox extend",
    lead: "NAME DURATION",
    flags: &[JSON],
    operands: "",
    about: "\
Moves the sandbox's expiry DURATION (like 30m, 2h or 1d) later; prints the new
expiry.
",
    more: "",
};

pub const SANDBOX_STATS: Topic = Topic {
    command: "sandbox stats",
    lead: "NAME",
    flags: &[JSON],
    operands: "",
    about: "\
One reading of what a running sandbox uses (CPU as a percent of its limit, memory,
processes, network and block I/O), as `key  value` lines.
",
    more: "",
};

pub const SNAPSHOT: Topic = Topic {
    command: "snapshot",
    lead: "",
    flags: &[],
    operands: "create|list|info|remove|restore ...",
    about: "\
Snapshots: a sandbox's files kept as a local image, and new sandboxes made of them.

  agentkernel snapshot create SANDBOX [--name NAME] [--json]
  agentkernel snapshot list [--json]
  agentkernel snapshot info NAME [--json]
  agentkernel snapshot remove NAME [--json]
  agentkernel snapshot restore NAME [--as SANDBOX] [--json]
",
    more: "",
};

pub const SNAPSHOT_CREATE: Topic = Topic {
    command: "snapshot create",
    lead: "SANDBOX",
    flags: &[
        flag(
            "name",
            Some("NAME"),
            "the snapshot's name (default: the sandbox's and the time)",
        ),
        JSON,
    ],
    operands: "",
    about: "Snapshots a sandbox (paused meanwhile); prints the snapshot's name.\n",
    more: "",
};

pub const SNAPSHOT_LIST: Topic = Topic {
    command: "snapshot list",
    lead: "",
    flags: &[JSON],
    operands: "",
    about: "Lists the snapshots of the namespace as an aligned table.\n",
    more: "",
};

pub const SNAPSHOT_INFO: Topic = Topic {
    command: "snapshot info",
    lead: "NAME",
    flags: &[JSON],
    operands: "",
    about: "One snapshot, as `key  value` lines.\n",
    more: "",
};

pub const SNAPSHOT_REMOVE: Topic = Topic {
    command: "snapshot remove",
    lead: "NAME",
    flags: &[JSON],
    operands: "",
    about: "Removes a snapshot (refused while a sandbox made from it exists); prints its name.\n",
    more: "",
};

pub const SNAPSHOT_RESTORE: Topic = Topic {
    command: "snapshot restore",
    lead: "NAME",
    flags: &[
        flag(
            "as",
            Some("SANDBOX"),
            "the new sandbox's name (default: the snapshotted sandbox's)",
        ),
        JSON,
    ],
    operands: "",
    about: "Creates and starts a sandbox with the snapshot's files; prints its name.\n",
    more: "",
};

pub const CP: Topic = Topic {
    command: "cp",
    lead: "",
    flags: &[],
    operands: "SRC DST",
    about: "\
Copies a file or directory between this machine and a sandbox, like docker cp; one
side is a sandbox's absolute path, NAME:/path, the other a local path.

  agentkernel cp NAME:/dir LOCALDIR   the sandbox's /dir into LOCALDIR/dir
  agentkernel cp LOCALPATH NAME:/dir  LOCALPATH into the sandbox's /dir/<its name>

The sandbox's side is its root filesystem (not a tmpfs, /proc, /sys or /dev), and the
destination directory must exist. Down, nothing lands outside LOCALDIR or through a
symlink already there (a member that could, a hard link or a special file is left out
and said); up, regular files go with their directories (empty directories do not;
symlinks and special files are left out and said), as one archive of at most the
server's --max-file-bytes.
",
    more: "",
};

pub const HEALTH: Topic = Topic {
    command: "health",
    lead: "",
    flags: &[],
    operands: "",
    about: "\
Prints ok when the Docker Engine answers (local mode) or the server does (--server).
",
    more: "",
};

pub const EGRESS: Topic = Topic {
    command: "egress",
    lead: "",
    flags: &[],
    operands: "",
    about: "\
Makes the host's packet-filter rules of the public egress policy (and its network,
when the engine answers), as a server does before its first public container. Run it
at boot before the engine starts, so that public sandboxes the engine starts again
are never without their rules. Needs root. Exits 0 when they are in place.
",
    more: "",
};

pub const SERVE: Topic = Topic {
    command: "serve",
    lead: "",
    flags: &[
        flag("host", Some("ADDR"), "address to bind (default: 127.0.0.1)"),
        flag(
            "port",
            Some("N"),
            "port to bind, 0 for any free one (default: 8080)",
        ),
        flag(
            "workers",
            Some("N"),
            "worker threads running handlers (default: 8)",
        ),
        flag(
            "queue",
            Some("N"),
            "requests waiting for a worker; past it 503 (default: 64)",
        ),
        flag(
            "batch-concurrency",
            Some("N"),
            "commands of one /batch/run running at once (default: 4)",
        ),
        flag(
            "engine-timeout-secs",
            Some("N"),
            "longest wait for one Docker Engine call, at least 5 (default: 60)",
        ),
        flag(
            "namespace",
            Some("NS"),
            "namespace of our containers (default: default)",
        ),
        flag(
            "default-image",
            Some("IMAGE"),
            "image for commands of no known runtime",
        ),
        Flag {
            long: "image",
            short: None,
            value: Some("RUNTIME=IMAGE"),
            repeats: true,
            help: "image of one runtime (python, node, go, ...)",
        },
        flag(
            "default-profile",
            Some("P"),
            "profile of requests that name none (default: moderate)",
        ),
        flag(
            "max-body-bytes",
            Some("N"),
            "largest request body (default: 1048576)",
        ),
        Flag {
            long: "pool",
            short: None,
            value: Some("IMAGE[:PROFILE]=N"),
            repeats: true,
            help: "keep at least N warm containers of this image and profile",
        },
        flag(
            "pool-size",
            Some("N"),
            "least warm containers of the default image (default: 4)",
        ),
        flag(
            "pool-dynamic-size",
            Some("N"),
            "least warm containers of keys requests use (default: 2)",
        ),
        flag(
            "pool-max",
            Some("N"),
            "most warm containers of all keys together as they grow (default: 16)",
        ),
        flag(
            "sandbox-ttl",
            Some("DURATION"),
            "sandboxes without a ttl of their own expire this long after creation (90s, 30m, 2h, 1d)",
        ),
        flag(
            "sandbox-idle-timeout",
            Some("DURATION"),
            "sandboxes without an idle timeout of their own expire after this long unused",
        ),
        flag(
            "default-network",
            Some("NET"),
            "egress of containers whose request names none: none, public or full (default: the profile's)",
        ),
        flag(
            "max-network",
            Some("NET"),
            "the widest egress a request may ask for: none, public or full (default: full)",
        ),
        flag(
            "max-disk-mb",
            Some("MIB"),
            "the largest disk quota a request may ask for, in MiB (default: 16384)",
        ),
        flag(
            "runtimes",
            Some("LIST"),
            "runtimes requests may name, comma-separated (default: the default runtime and runsc)",
        ),
        flag(
            "egress-resolver",
            Some("ADDR"),
            "resolver allow-list names are asked of, IPv4[:PORT] (repeatable; default: the host's)",
        ),
        flag(
            "default-runtime",
            Some("NAME"),
            "engine runtime of containers whose request names none, e.g. runsc (default: the engine's)",
        ),
        flag(
            "cluster",
            None,
            "route every request to agents (other servers) instead of an engine of our own",
        ),
        flag(
            "nodes",
            Some("ADDRS"),
            "a cluster's agents, HOST:PORT comma-separated",
        ),
        flag(
            "discover",
            Some("NAME:PORT"),
            "a cluster's agents: every address NAME resolves to, resolved every 3 s",
        ),
        flag(
            "no-disk-quota",
            None,
            "run containers without disk quotas where they cannot be enforced (default: refuse them)",
        ),
        flag(
            "keys",
            Some("FILE"),
            "tenants: lines of 'SHA256-OF-KEY NAMESPACE [QUOTA=N]...' (max_sandboxes, max_memory_mb, max_concurrent_runs, max_snapshots, max_volumes, max_network); re-read on SIGHUP",
        ),
        flag(
            "no-stub",
            None,
            "never use the in-container stub (docker exec instead)",
        ),
        flag(
            "default-timeout-ms",
            Some("N"),
            "command timeout when a request names none (default: 30000)",
        ),
        flag(
            "max-timeout-ms",
            Some("N"),
            "largest command timeout (default: 3600000)",
        ),
        flag(
            "max-output-bytes",
            Some("N"),
            "largest output a command may keep (default: 16777216)",
        ),
        flag(
            "max-request-output-bytes",
            Some("N"),
            "output one request keeps, all its commands (default: 16777216)",
        ),
        flag(
            "max-output-memory-bytes",
            Some("N"),
            "output held at once, all requests; past it 503 (default: 50331648)",
        ),
        flag(
            "max-file-bytes",
            Some("N"),
            "largest file the files API moves (default: 16777216)",
        ),
        flag(
            "max-body-memory-bytes",
            Some("N"),
            "request bodies held at once; past it 503 (default: 268435456)",
        ),
        flag(
            "client-timeout-secs",
            Some("N"),
            "body arrival and each write to a client (default: 30)",
        ),
        flag(
            "max-connections",
            Some("N"),
            "open client connections; past it 503 (default: 1024)",
        ),
        flag(
            "idle-timeout-secs",
            Some("N"),
            "kept-alive connection's wait for a request (default: 15)",
        ),
        flag(
            "head-timeout-secs",
            Some("N"),
            "a request head's arrival (default: 10)",
        ),
        flag(
            "drain-timeout-secs",
            Some("N"),
            "on SIGTERM, longest wait for requests in flight (default: 5)",
        ),
    ],
    operands: "",
    about: "Serves the HTTP API until SIGTERM or SIGINT. See README.md.\n",
    more: "",
};
