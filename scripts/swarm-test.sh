#!/usr/bin/env bash
# `make cluster-test`: agentkernel deployed with deploy/swarm/stack.yml on a private
# single-node Docker Swarm, driven through its router: the seed API, the published
# Python SDK, then an agent task killed (Swarm starts it again) and its sandbox found
# again with its file. The daemon is private (its own dirs, socket and network
# namespace, where `swarm init` cannot touch the host's network); everything it
# started is stopped and removed at the end, whatever happens.
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"

image=agentkernel/agentkernel:swarm-test
test_image=${AK_TEST_IMAGE:-agentkernel/busybox:latest}
dir=/tmp/ak-swarm-$$
netns=aksw$$
key=swarm-key-$$
port=19000
venv=""
SDK_VERSION="${AK_SDK_VERSION:-0.21.0}"

say() { echo "cluster-test: $*"; }
fail() {
	echo "cluster-test: FAILED: $*" >&2
	exit 1
}
D() { timeout 120 docker -H "unix://$dir/d.sock" "$@"; }
N() { ip netns exec "$netns" "$@"; }
api() { N curl -s -m 60 -H "X-API-Key: $key" "$@"; }

cleanup() {
	set +e
	if [ -S "$dir/d.sock" ]; then
		D stack rm ak >/dev/null 2>&1
		for _ in $(seq 30); do
			[ -z "$(D ps -aq --filter label=com.docker.stack.namespace=ak)" ] && break
			sleep 1
		done
		D ps -aq | xargs -r timeout 60 docker -H "unix://$dir/d.sock" rm -f >/dev/null 2>&1
		D swarm leave --force >/dev/null 2>&1
	fi
	if [ -f "$dir/d.pid" ]; then
		pid=$(cat "$dir/d.pid")
		kill -TERM "$pid" 2>/dev/null
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
	fi
	# Whatever still names the dir (containerd, shims), never this script.
	for cmdline in /proc/[0-9]*/cmdline; do
		p=${cmdline#/proc/}
		p=${p%/cmdline}
		[[ $p == "$$" ]] && continue
		if { tr '\0' ' ' <"$cmdline"; } 2>/dev/null | grep -qF -- "$dir/"; then
			kill -KILL "$p" 2>/dev/null
		fi
	done
	sleep 0.5
	{ awk '{print $5}' /proc/self/mountinfo | grep -F -- "$dir/" || true; } | sort -r |
		while read -r point; do umount -l "$point" 2>/dev/null; done
	rm -rf --one-file-system "$dir"
	ip netns delete "$netns" 2>/dev/null
	[ -n "$venv" ] && rm -rf "$venv"
	docker image rm "$image" >/dev/null 2>&1
}
trap cleanup EXIT

for tool in ip nsenter curl python3 file; do
	command -v "$tool" >/dev/null || fail "$tool is not installed"
done
say "building the image (our static binary alone) and the test image"
bash scripts/build-image.sh "$image"
bash scripts/build-busybox-image.sh
venv=$(mktemp -d)
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "agentkernel-sdk==$SDK_VERSION"

say "starting a private Docker daemon in network namespace $netns"
mkdir -p "$dir"
ip netns add "$netns"
N ip link set lo up
# Swarm needs an address to advertise that is not loopback.
N ip link add ak0 type veth peer name ak1
N ip addr add 10.231.0.1/24 dev ak0
N ip link set ak0 up
N ip link set ak1 up
printf '{"data-root": "%s/root", "storage-driver": "%s", "live-restore": false}\n' \
	"$dir" "$(docker info -f '{{.Driver}}')" >"$dir/daemon.json"
nsenter --net="/var/run/netns/$netns" dockerd --config-file "$dir/daemon.json" \
	--host "unix://$dir/d.sock" --exec-root "$dir/exec" --pidfile "$dir/d.pid" \
	>"$dir/dockerd.log" 2>&1 </dev/null &
for _ in $(seq 150); do
	D version >/dev/null 2>&1 && break
	sleep 0.2
done
D version >/dev/null 2>&1 || {
	tail -5 "$dir/dockerd.log" >&2
	fail "the private daemon did not start"
}
docker save "$image" "$test_image" | docker -H "unix://$dir/d.sock" load >/dev/null

say "swarm init, stack deploy"
# The stack as it is, but an agent restarted 8 s after it dies (not 1 s): a window in
# which its sandboxes must be a 503 naming it, whatever the machine's speed.
cat >"$dir/slow-restart.yml" <<'YAML'
version: "3.8"
services:
  agent:
    deploy:
      restart_policy:
        delay: 8s
YAML
D swarm init --advertise-addr 10.231.0.1 >/dev/null
mkdir -p "$dir/data"
AGENTKERNEL_API_KEY="$key" AGENTKERNEL_IMAGE="$image" AGENTKERNEL_DEFAULT_IMAGE="$test_image" \
	AGENTKERNEL_PORT="$port" DOCKER_SOCKET="$dir/d.sock" AGENTKERNEL_DATA_DIR="$dir/data" \
	D stack deploy --resolve-image never -c deploy/swarm/stack.yml -c "$dir/slow-restart.yml" ak \
	>/dev/null
# The published port, on the node's address (as a client elsewhere would reach it).
url="http://10.231.0.1:$port"
up=0
for _ in $(seq 120); do
	up=$(api "$url/health" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("agents_up",0))' 2>/dev/null || echo 0)
	[ "$up" = 1 ] && break
	sleep 1
done
if [ "$up" != 1 ]; then
	D service ps --no-trunc ak_agent ak_router >&2 || true
	D service logs ak_agent 2>&1 | tail -20 >&2 || true
	D service logs ak_router 2>&1 | tail -20 >&2 || true
	fail "the router did not see its agent within 120 s"
fi
say "ok: the router answers and sees its agent"

run=$(api -X POST "$url/run" -d '{"command":["echo","hi"]}') || true
[[ $run == *'"stdout":"hi\n"'* ]] || fail "run: $run"
say "ok: /run through the router"
[[ $(api -o /dev/null -w '%{http_code}' "$url/sandboxes") == 200 ]] || fail "list"

say "the published Python SDK $SDK_VERSION through the router"
AGENTKERNEL_URL="$url" AGENTKERNEL_API_KEY="$key" N "$venv/bin/python" tests/sdk/drive.py |
	tail -3

say "an agent task killed: Swarm starts it again, its sandbox is found with its file"
created=$(api -o /dev/null -w '%{http_code}' -X POST "$url/sandboxes" -d '{"name":"keep"}') || true
[[ $created == 201 ]] || fail "create: $created"
api -X POST "$url/sandboxes/keep/exec" -d '{"command":["sh","-c","echo kept >/tmp/note"]}' >/dev/null
agent=$(D ps -q --filter label=com.docker.swarm.service.name=ak_agent | head -1)
[ -n "$agent" ] || fail "no agent task found"
D kill "$agent" >/dev/null
killed=$(date +%s)
# Until it is back: each answer within 3 s, a 503 naming the node or the file (never
# another answer, never a hang), and the 503 seen within 3 s of the kill.
seen_503=""
for _ in $(seq 90); do
	started=$(date +%s%N)
	answer=$(api -m 5 -w ' %{http_code}' "$url/sandboxes/keep/exec" -X POST \
		-d '{"command":["cat","/tmp/note"]}') || true
	took=$((($(date +%s%N) - started) / 1000000))
	((took < 3000)) || fail "an answer took ${took} ms while the agent was down: $answer"
	case "$answer" in
	*'on node '*' 503') [ -n "$seen_503" ] || seen_503=$(($(date +%s) - killed)) ;;
	*'"stdout":"kept\n"'*' 200') [ -n "$seen_503" ] && break ;;
	*) fail "while the agent was down: $answer" ;;
	esac
	sleep 0.5
done
[ -n "$seen_503" ] || fail "no 503 naming the node while the agent was down"
((seen_503 <= 4)) || fail "the first 503 came ${seen_503} s after the kill"
[[ $answer == *'"stdout":"kept\n"'*' 200' ]] || fail "after the agent's restart: $answer"
say "ok: a 503 naming the node ${seen_503} s after the kill, found again after the restart"

[[ $(api -o /dev/null -w '%{http_code}' -X DELETE "$url/sandboxes/keep") == 200 ]] ||
	fail "delete"
left=$(D ps -aq --filter label=agentkernel.kind=sandbox)
[ -z "$left" ] || fail "sandboxes left: $left"
say "passed"
