#!/usr/bin/env bash
# Checks that a Docker Engine answers GET /_ping on $DOCKER_HOST (default /var/run/docker.sock)
# and that dockerd's init binary (docker-init) exists: the server creates containers with Init=true.
# --start: if none answers, install docker.io if needed and start dockerd (log /tmp/dockerd.log).
set -euo pipefail

readonly DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
readonly START_TIMEOUT_SECONDS=60

die() { printf 'check-engine: error: %s\n' "$*" >&2; exit 1; }
note() { printf 'check-engine: %s\n' "$*" >&2; }

usage() {
    cat <<'EOF'
usage: scripts/check-engine.sh [--start]
  Exits 0 if a Docker Engine answers on $DOCKER_HOST (or /var/run/docker.sock).
  --start  if none answers: install docker.io (apt-get) if dockerd is missing,
           start dockerd in the background (log: /tmp/dockerd.log), wait up to 60 s.
EOF
}

start=false
for argument in "$@"; do
    case "$argument" in
        --start) start=true ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$argument'" ;;
    esac
done

# Where the engine should answer. Only unix sockets are probed with curl; any
# other DOCKER_HOST (tcp://, ssh://) is left to the docker CLI.
docker_host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
socket_path=""
case "$docker_host" in
    unix://*) socket_path="${docker_host#unix://}" ;;
esac

# Returns 0 if the engine answers within a few seconds.
engine_answers() {
    if [[ -n "$socket_path" ]] && command -v curl >/dev/null 2>&1; then
        [[ -S "$socket_path" ]] || return 1
        curl --silent --fail --max-time 3 --unix-socket "$socket_path" \
            http://localhost/_ping >/dev/null 2>&1
        return
    fi
    command -v docker >/dev/null 2>&1 || return 1
    DOCKER_HOST="$docker_host" timeout 10 docker version >/dev/null 2>&1
}

# Prints the engine version, or '?' (only for the summary line).
engine_version() {
    local version=""
    if [[ -n "$socket_path" ]] && command -v curl >/dev/null 2>&1; then
        version="$(curl --silent --max-time 3 --unix-socket "$socket_path" http://localhost/version 2>/dev/null \
            | sed -n 's/^{.*"Version":"\([^"]*\)".*/\1/p')" || true
    else
        version="$(DOCKER_HOST="$docker_host" timeout 10 docker version --format '{{.Server.Version}}' 2>/dev/null)" || true
    fi
    printf '%s\n' "${version:-?}"
}

print_start_advice() {
    cat >&2 <<EOF
check-engine: error: no Docker Engine answers on $docker_host
  To start one (as root, Debian 12):
    apt-get update && apt-get install -y docker.io tini
    setsid nohup dockerd >$DOCKERD_LOG 2>&1 </dev/null &
  or run: bash scripts/check-engine.sh --start
EOF
}

# Runs apt-get install quietly (with --update: refresh the package lists first).
# Without --update a failed install refreshes the lists once and retries.
# On failure shows apt's output.
apt_install() {
    local update=false apt_log
    if [[ "$1" == --update ]]; then update=true; shift; fi
    apt_log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    if [[ "$update" == true ]] || ! apt-get install -y -qq "$@" </dev/null >"$apt_log" 2>&1; then
        if ! { apt-get update -qq && apt-get install -y -qq "$@"; } </dev/null >"$apt_log" 2>&1; then
            cat "$apt_log" >&2
            rm -f "$apt_log"
            die "apt-get install $* failed"
        fi
    fi
    rm -f "$apt_log"
}

# dockerd looks the init binary up as 'docker-init' in its PATH and in these
# libexec directories (daemon/config lookup order in Engine 20.10).
find_docker_init() {
    local directory
    command -v docker-init 2>/dev/null && return 0
    for directory in /usr/local/libexec/docker /usr/libexec/docker /usr/local/lib/docker /usr/lib/docker; do
        if [[ -x "$directory/docker-init" ]]; then
            printf '%s\n' "$directory/docker-init"
            return 0
        fi
    done
    return 1
}

start_engine() {
    [[ "$(id -u)" == 0 ]] || die "--start needs root (apt-get, dockerd)"
    if ! command -v dockerd >/dev/null 2>&1; then
        note "dockerd not found; installing docker.io with apt-get"
        apt_install --update docker.io tini
    fi
    # A dockerd that is running but not answering yet is probably still starting;
    # a second one would fail on its pid file, so wait for the first instead.
    local running_pid
    if running_pid="$(pgrep -x dockerd | head -n 1)" && [[ -n "$running_pid" ]]; then
        case "$socket_path" in
            /var/run/docker.sock | /run/docker.sock)
                note "dockerd is running (pid $running_pid) but not answering yet; waiting" ;;
            *)
                die "a dockerd (pid $running_pid) is running but nothing answers on $docker_host; not starting a second one" ;;
        esac
    else
        local -a dockerd_arguments=()
        if [[ -n "${DOCKER_HOST:-}" ]]; then
            [[ -n "$socket_path" ]] || die "--start only supports a unix:// DOCKER_HOST, not '$DOCKER_HOST'"
            dockerd_arguments+=(--host "$docker_host")
        fi
        printf '=== %s check-engine.sh: starting dockerd %s\n' "$(date -Is)" "${dockerd_arguments[*]}" >>"$DOCKERD_LOG"
        # setsid + nohup: dockerd must outlive this script and its session. Both
        # exec, so $! is dockerd's own pid.
        setsid nohup dockerd "${dockerd_arguments[@]}" >>"$DOCKERD_LOG" 2>&1 </dev/null &
        running_pid=$!
    fi
    local waited=0
    until engine_answers; do
        if ! kill -0 "$running_pid" 2>/dev/null; then
            note "dockerd (pid $running_pid) exited; last lines of $DOCKERD_LOG:"
            tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "dockerd exited before answering on $docker_host"
        fi
        if ((waited >= START_TIMEOUT_SECONDS)); then
            note "dockerd (pid $running_pid) did not answer within ${START_TIMEOUT_SECONDS} s; last lines of $DOCKERD_LOG:"
            tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "no Docker Engine answers on $docker_host"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    started_note=" (started dockerd, waited ${waited} s, log $DOCKERD_LOG)"
}

started_note=""
if ! engine_answers; then
    if [[ "$start" == true ]]; then
        start_engine
    else
        print_start_advice
        exit 1
    fi
fi

# The init check only makes sense when the engine runs on this machine.
init_note=""
if [[ -n "$socket_path" ]]; then
    if ! init_path="$(find_docker_init)"; then
        if [[ "$start" == true ]] && [[ "$(id -u)" == 0 ]]; then
            command -v tini >/dev/null 2>&1 || apt_install tini
            # Debian's tini package ships tini and tini-static but not the
            # docker-init name that dockerd looks for (docker.io adds that link).
            tini_path="$(command -v tini-static || command -v tini)"
            ln -sf "$tini_path" /usr/local/bin/docker-init
            note "installed tini and linked /usr/local/bin/docker-init -> $tini_path"
            init_path=/usr/local/bin/docker-init
        elif tini_path="$(command -v tini 2>/dev/null)"; then
            die "dockerd needs 'docker-init' for HostConfig.Init; found only $tini_path. Fix: ln -s $tini_path /usr/local/bin/docker-init (or run with --start)"
        else
            die "no docker-init or tini found; containers with HostConfig.Init=true will fail. Fix: apt-get install -y tini && ln -s /usr/bin/tini-static /usr/local/bin/docker-init (or run with --start)"
        fi
    fi
    init_note=", init $init_path"
fi

echo "check-engine: Docker Engine $(engine_version) answers on $docker_host${init_note}${started_note}"
