#!/usr/bin/env bash
# Part of `make cluster-test`: several hosts simulated on this machine's engine. Three
# agents (containers of `make image`'s image, namespaces of their own, the engine's
# socket mounted) on a private network behind one DNS alias, and a router that
# discovers them by that alias (`--discover agents:8080`). Then one agent is killed,
# one is cut off from the network (a partition), and both come back; placement spread,
# 503s naming the lost nodes, and recovery are checked. Everything it made is removed
# at the end, whatever happens, and it fails if any sandbox of its namespaces is left.
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"

image=${AK_CLUSTER_IMAGE:-agentkernel/agentkernel:cluster-test}
test_image=${AK_TEST_IMAGE:-agentkernel/busybox:latest}
run=ck$$
net=$run-net
key=cluster-key-$$
data=/tmp/$run-data

say() { echo "cluster-net-test: $*"; }
fail() {
	echo "cluster-net-test: FAILED: $*" >&2
	for name in $(docker ps -aq --filter "name=$run-"); do
		docker logs --tail 15 "$name" >&2 2>&1 || true
	done
	exit 1
}

cleanup() {
	set +e
	docker ps -aq --filter "name=$run-" | xargs -r timeout 60 docker rm -f >/dev/null 2>&1
	for n in 1 2 3; do
		docker ps -aq --filter "label=agentkernel.namespace=$run-a$n" |
			xargs -r timeout 60 docker rm -f >/dev/null 2>&1
	done
	timeout 30 docker network rm "$net" >/dev/null 2>&1
	rm -rf --one-file-system "$data"
	[[ $image == *:cluster-test ]] && docker image rm "$image" >/dev/null 2>&1
}
trap cleanup EXIT

for tool in curl python3 file; do
	command -v "$tool" >/dev/null || fail "$tool is not installed"
done
if [[ $image == *:cluster-test ]]; then
	bash scripts/build-image.sh "$image"
fi
bash scripts/build-busybox-image.sh
mkdir -p "$data"
docker network create "$net" >/dev/null

agent() {
	local n=$1
	mkdir -p "$data/a$n"
	docker run -d --name "$run-a$n" --network "$net" --network-alias agents \
		-v /var/run/docker.sock:/var/run/docker.sock -v "$data/a$n:$data/a$n" \
		-e AGENTKERNEL_DATA_DIR="$data/a$n" -e AGENTKERNEL_NAMESPACE="$run-a$n" \
		-e AGENTKERNEL_API_KEY="$key" -e AGENTKERNEL_DEFAULT_IMAGE="$test_image" \
		"$image" serve --host 0.0.0.0 --port 8080 --default-network none \
		--max-network none --no-disk-quota --pool-size 1 >/dev/null
}
for n in 1 2 3; do agent "$n"; done
docker run -d --name "$run-router" --network "$net" -p 127.0.0.1::9000 \
	-e AGENTKERNEL_API_KEY="$key" "$image" \
	serve --cluster --discover agents:8080 --host 0.0.0.0 --port 9000 >/dev/null
port=$(docker port "$run-router" 9000/tcp | head -1 | sed 's/.*://')
url="http://127.0.0.1:$port"
api() { curl -s -m 30 -H "X-API-Key: $key" "$@" || true; }
agents_up() {
	api "$url/health" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("agents_up",0))' 2>/dev/null || echo 0
}
wait_up() {
	local want=$1 seconds=$2
	for _ in $(seq "$((seconds * 5))"); do
		[ "$(agents_up)" = "$want" ] && return 0
		sleep 0.2
	done
	return 1
}
node_of() {
	api -o /dev/null -D - "$url/sandboxes/$1" | tr -d '\r' | sed -n 's/^x-agentkernel-node: //p'
}
address_of() {
	docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$run-a$1"
}
sandbox_is() { api -o /dev/null -w '%{http_code}' "$url/sandboxes/$1"; }

wait_up 3 60 || fail "the router did not find three agents behind the alias: $(api "$url/health")"
say "ok: the router found three agents behind one DNS alias"

names="s1 s2 s3 s4 s5 s6 s7 s8 s9"
for name in $names; do
	code=$(api -o /dev/null -w '%{http_code}' -X POST "$url/sandboxes" -d "{\"name\":\"$name\"}")
	[ "$code" = 201 ] || fail "create $name: $code"
done
declare -A placed
for name in $names; do placed[$name]=$(node_of "$name"); done
spread=$(printf '%s\n' "${placed[@]}" | sort -u | wc -l)
[ "$spread" -ge 2 ] || fail "every sandbox on one node: ${placed[*]}"
say "ok: nine sandboxes over $spread agents"

# The agent of s1, killed (s1 holds a file, to be found again after its restart).
api -X POST "$url/sandboxes/s1/exec" -d '{"command":["sh","-c","echo kept >/tmp/note"]}' >/dev/null
killed=""
for n in 1 2 3; do
	[ "$(address_of "$n"):8080" = "${placed[s1]}" ] && killed=$n
done
[ -n "$killed" ] || fail "no agent holds ${placed[s1]}"
lost=${placed[s1]}
docker kill "$run-a$killed" >/dev/null
wait_up 2 4 || fail "a killed agent was still up after 4 s: $(api "$url/health")"
for name in $names; do
	answer=$(api -w ' %{http_code}' "$url/sandboxes/$name")
	if [ "${placed[$name]}" = "$lost" ]; then
		[[ $answer == *"$lost"*' 503' ]] || fail "$name on the killed agent: $answer"
	else
		[[ $answer == *' 200' ]] || fail "$name on an agent up: $answer"
	fi
done
for _ in 1 2 3; do
	[[ $(api -X POST "$url/run" -d '{"command":["echo","hi"]}') == *'"stdout":"hi\n"'* ]] ||
		fail "a run with an agent killed"
done
say "ok: killed: out of rotation, its sandboxes 503 naming it, runs go on"

# Another agent, cut off from the network (a partition).
cut=""
for n in 1 2 3; do
	[ "$n" != "$killed" ] && cut=$n
done
cut_address="$(address_of "$cut"):8080"
docker network disconnect "$net" "$run-a$cut"
wait_up 1 4 || fail "a cut-off agent was still up after 4 s: $(api "$url/health")"
for name in $names; do
	if [ "${placed[$name]}" = "$cut_address" ]; then
		answer=$(api -w ' %{http_code}' "$url/sandboxes/$name")
		[[ $answer == *"$cut_address"*' 503' ]] || fail "$name on the cut-off agent: $answer"
	fi
done
say "ok: cut off: its sandboxes 503 naming it"

# Both come back (at the addresses the network gives them): every sandbox answers.
docker network connect --alias agents "$net" "$run-a$cut"
docker start "$run-a$killed" >/dev/null
wait_up 3 30 || fail "the agents did not come back: $(api "$url/health")"
for name in $names; do
	ok=no
	for _ in $(seq 30); do
		[ "$(sandbox_is "$name")" = 200 ] && ok=yes && break
		sleep 1
	done
	[ "$ok" = yes ] || fail "$name after recovery: $(api "$url/sandboxes/$name")"
done
answer=$(api -X POST "$url/sandboxes/s1/exec" -d '{"command":["cat","/tmp/note"]}')
[[ $answer == *'"stdout":"kept\n"'* ]] || fail "s1's file after its agent's restart: $answer"
say "ok: back: every sandbox answers again, the restarted agent's with its files"

for name in $names; do
	code=$(api -o /dev/null -w '%{http_code}' -X DELETE "$url/sandboxes/$name")
	[ "$code" = 200 ] || fail "delete $name: $code"
done
for n in 1 2 3; do
	left=$(docker ps -aq --filter "label=agentkernel.namespace=$run-a$n" --filter label=agentkernel.kind=sandbox)
	[ -z "$left" ] || fail "sandboxes of $run-a$n left: $left"
done
say "passed"
