#!/usr/bin/env bash
# A private Docker daemon (never the machine's own): its own config, data root, exec
# root, socket and network namespace (so that it can never touch the host's docker0 or
# rules), with gVisor's runsc registered where it is installed, and the test image
# loaded from the host's engine. Used by `make bench` for its gVisor rows.
# Usage: private-engine.sh start DIR   (prints the socket's DOCKER_HOST)
#        private-engine.sh stop DIR    (stops everything it started, removes DIR)
set -euo pipefail

die() { printf 'private-engine: error: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: private-engine.sh start|stop DIR"
action=$1
dir=$2
# Only a dir of its own under /tmp: what it stops and removes is found by that path.
[[ "$dir" =~ ^/tmp/[A-Za-z0-9._-]+$ ]] || die "DIR must be /tmp/NAME (letters, digits, . _ -), got '$dir'"
netns="ak$(basename "$dir" | tr -cd 'a-z0-9' | tail -c 12)"

stop() {
    if [[ -f "$dir/d.pid" ]]; then
        local pid
        pid=$(cat "$dir/d.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
    # Whatever still names the dir (containerd, shims, gVisor's sandboxes and gofers).
    # Whatever names a path under the dir (containerd, shims, gVisor's sandboxes and
    # gofers), found by its command line, never this script.
    for cmdline in /proc/[0-9]*/cmdline; do
        pid=${cmdline#/proc/}
        pid=${pid%/cmdline}
        [[ $pid == "$$" || $pid == "$PPID" ]] && continue
        if { tr '\0' ' ' <"$cmdline"; } 2>/dev/null | grep -qF -- "$dir/"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    sleep 0.5
    { awk '{print $5}' /proc/self/mountinfo | grep -F -- "$dir/" || true; } | sort -r | while read -r point; do
        umount -l "$point" 2>/dev/null || true
    done
    rm -rf "$dir"
    ip netns delete "$netns" 2>/dev/null || true
}

case "$action" in
    stop) stop ;;
    start)
        command -v dockerd >/dev/null || die "dockerd is not installed"
        command -v ip >/dev/null || die "ip (iproute2) is not installed"
        mkdir -p "$dir"
        trap 'stop' ERR
        driver=$(docker info -f '{{.Driver}}')
        runtimes=""
        if [[ -x /usr/bin/runsc ]]; then
            runtimes=', "runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=none", "--file-access=shared"]}}'
        fi
        printf '{"data-root": "%s/root", "storage-driver": "%s", "live-restore": false%s}\n' \
            "$dir" "$driver" "$runtimes" >"$dir/daemon.json"
        ip netns add "$netns"
        nsenter --net="/var/run/netns/$netns" sh -c "ip link set lo up && exec dockerd \
            --config-file '$dir/daemon.json' --host 'unix://$dir/d.sock' \
            --exec-root '$dir/exec' --pidfile '$dir/d.pid' --bridge none \
            --iptables=false --ip6tables=false" \
            >"$dir/dockerd.log" 2>&1 </dev/null &
        for _ in $(seq 150); do
            docker -H "unix://$dir/d.sock" version >/dev/null 2>&1 && break
            sleep 0.2
        done
        docker -H "unix://$dir/d.sock" version >/dev/null 2>&1 ||
            { tail -5 "$dir/dockerd.log" >&2; stop; die "the private daemon did not start"; }
        image=${AK_BENCH_IMAGE:-agentkernel/busybox:latest}
        docker save "$image" | docker -H "unix://$dir/d.sock" load >/dev/null
        echo "unix://$dir/d.sock"
        ;;
    *) die "usage: private-engine.sh start|stop DIR" ;;
esac
