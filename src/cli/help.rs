//! Help text: one `Topic` per command, its usage line(s) and the details `--help`
//! adds. Usage errors print a topic's usage alone.

/// The help of one command: its usage line(s), printed alone on a usage error, and the
/// details `--help` adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic {
    pub usage: &'static str,
    pub details: &'static str,
}

impl Topic {
    pub fn help(&self) -> String {
        format!("Usage: {}\n\n{}", self.usage, self.details)
    }
}

pub const MAIN: Topic = Topic {
    usage: "agentkernel [--server URL] [-v|-q] COMMAND [ARGS...]",
    details: "\
Run untrusted commands in isolated Docker containers.

Commands:
  run [OPTIONS] [--] CMD [ARGS...]        run a command in a fresh container
  exec [OPTIONS] NAME [--] CMD [ARGS...]  run a command in a running sandbox
  sandbox create|list|info|start|stop|remove
                                          manage persistent sandboxes
  health                                  check that the engine (or server) answers
  serve [OPTIONS]                         serve the HTTP API

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
};

pub const RUN: Topic = Topic {
    usage: "agentkernel run [--image I] [--profile P] [--no-fast] [--timeout SECS] \
[-e K=V]... [-w DIR] [--json] [--] CMD [ARGS...]",
    details: "\
Runs CMD with exactly these arguments (no shell) in a fresh container, removed
afterwards. Its stdout and stderr arrive on ours as it produces them; stdin is
passed through when it is not a terminal. Exits with the command's exit code:
124 on timeout, 128+N if killed by signal N, 125 if agentkernel itself failed.

  --image I        image (default: chosen from CMD's name, else the default image)
  --profile P      permissive, moderate (default) or restrictive
  --no-fast        a freshly started container instead of a warm one
  --timeout SECS   kill the command after SECS seconds (default: 30)
  -e, --env K=V    set an environment variable (-e K passes our own K)
  -w, --workdir DIR  absolute working directory
  --json           print the API's result object at the end instead of streaming
",
};

pub const EXEC: Topic = Topic {
    usage: "agentkernel exec [-e K=V]... [-w DIR] [--timeout SECS] [--json] NAME [--] \
CMD [ARGS...]",
    details: "\
Runs CMD in the running sandbox NAME, streaming its output; exit codes as for run.

  -e, --env K=V    set an environment variable (-e K passes our own K)
  -w, --workdir DIR  absolute working directory
  --timeout SECS   kill the command after SECS seconds (default: 30)
  --json           print the API's result object at the end instead of streaming
",
};

pub const SANDBOX: Topic = Topic {
    usage: "agentkernel sandbox create|list|info|start|stop|remove ...",
    details: "\
Persistent sandboxes: containers that keep their files across stop and start.

  agentkernel sandbox create NAME [--image I] [--profile P] [--memory-mb N]
                                  [--vcpus N] [--pids N] [--json]
  agentkernel sandbox list [--json]        an aligned table, or the API's JSON
  agentkernel sandbox info NAME [--json]
  agentkernel sandbox start|stop|remove NAME [--json]
",
};

pub const SANDBOX_CREATE: Topic = Topic {
    usage: "agentkernel sandbox create NAME [--image I] [--profile P] [--memory-mb N] \
[--vcpus N] [--pids N] [--json]",
    details: "\
Creates and starts a sandbox; prints its name (or the API's object with --json).
Limits default to the profile's; memory 16-16384 MiB, vcpus 1-16, pids 16-4096.
",
};

pub const SANDBOX_LIST: Topic = Topic {
    usage: "agentkernel sandbox list [--json]",
    details: "Lists the sandboxes of the namespace as an aligned table.\n",
};

pub const SANDBOX_INFO: Topic = Topic {
    usage: "agentkernel sandbox info NAME [--json]",
    details: "One sandbox, with the limits the engine applied, as `key  value` lines.\n",
};

pub const SANDBOX_CHANGE: Topic = Topic {
    usage: "agentkernel sandbox start|stop|remove NAME [--json]",
    details: "Starts, stops (files are kept) or removes a sandbox; prints its name.\n",
};

pub const HEALTH: Topic = Topic {
    usage: "agentkernel health",
    details: "\
Prints ok when the Docker Engine answers (local mode) or the server does (--server).
",
};

pub const SERVE: Topic = Topic {
    usage: "agentkernel serve [--host ADDR] [--port N] [--workers N] [--queue N]
                    [--namespace NS] [--default-image IMAGE] [--image RUNTIME=IMAGE]...
                    [--default-profile P] [--max-body-bytes N]
                    [--pool IMAGE[:PROFILE]=N]... [--pool-size N] [--pool-dynamic-size N]
                    [--no-stub] [--default-timeout-ms N] [--max-timeout-ms N]
                    [--max-output-bytes N] [--max-file-bytes N] [--client-timeout-secs N]
                    [--max-connections N] [--idle-timeout-secs N] [--head-timeout-secs N]",
    details: "\
Serves the HTTP API on 127.0.0.1:8080 until SIGTERM or SIGINT. See README.md.
",
};
