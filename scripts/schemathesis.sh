#!/usr/bin/env bash
# Checks a live server against its own OpenAPI document (GET /openapi.json) with
# schemathesis (pinned, from PyPI, in a venv kept at target/venv-schemathesis): no 5xx,
# every status, content type and body as documented. The server runs with an API key,
# a fresh namespace and short command timeouts (generated commands are arbitrary); the
# sandboxes the run creates are removed through the API, and no container of the
# namespace may be left. Bounded: AK_SCHEMATHESIS_EXAMPLES per operation and round
# (default 10) and AK_SCHEMATHESIS_SECONDS in all (default 190); AK_SCHEMATHESIS_SEED
# (default 1) picks the draw. With --max-time the fuzzing phase draws new rounds until
# the budget is spent, so the budget is the run's length: 190 s keeps this step (a
# fresh venv takes about 30 s more) within 4 minutes on a 2-core machine, as a step of
# `make test`.
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"

SCHEMATHESIS_VERSION=4.32.5
venv=target/venv-schemathesis
binary="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/debug/agentkernel"
image="${AK_TEST_IMAGE:-agentkernel/busybox:latest}"
examples="${AK_SCHEMATHESIS_EXAMPLES:-10}"
seconds="${AK_SCHEMATHESIS_SECONDS:-190}"
started=$SECONDS

# Reused while it holds the pinned version; a failure to install is a failure.
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
	rm -rf "$venv"
	# Python 3.11's ast.parse can fail deep in hypothesis' recursion ("AST constructor
	# recursion depth mismatch"): a newer Python where there is one.
	python=python3
	for candidate in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[23]*/bin/python3; do
		if "$candidate" -c '' 2>/dev/null; then
			python=$candidate
			break
		fi
	done
	"$python" -m venv "$venv"
	"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --quiet
bash scripts/build-busybox-image.sh "$image" >/dev/null

namespace="t-${AK_TEST_RUN:-0}-st-$$"
key="st-key-$$"
log=$(mktemp)
data=$(mktemp -d)
report=$(mktemp -d)
AGENTKERNEL_API_KEY="$key" AGENTKERNEL_DATA_DIR="$data" \
	"$binary" serve --port 0 --namespace "$namespace" --default-image "$image" \
	--pool-size 1 --default-timeout-ms 2000 --max-timeout-ms 2000 2>"$log" &
server=$!
# What the fuzzed requests made and left in the namespace: containers, then the
# snapshots and volumes they used (the API's own objects, which outlive a sandbox).
# A snapshot of a restored sandbox is a child image of the first snapshot, which the
# engine keeps until its children go: rounds, until none is left.
remove_namespace() {
	docker ps -aq --filter "label=agentkernel.namespace=$namespace" | xargs -r docker rm -f >/dev/null
	for _ in 1 2 3 4 5 6 7 8; do
		images=$(docker images -q --filter "label=agentkernel.namespace=$namespace" | sort -u)
		[ -z "$images" ] && break
		echo "$images" | xargs -r docker rmi -f >/dev/null 2>&1 || true
	done
	docker volume ls -q --filter "label=agentkernel.namespace=$namespace" |
		xargs -r docker volume rm >/dev/null 2>&1 || true
}
cleanup() {
	kill -TERM "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	remove_namespace
	rm -rf "$log" "$data" "$report"
}
trap cleanup EXIT

# shellcheck source=scripts/server-port.sh
. scripts/server-port.sh
port=$(server_port "$log" schemathesis)
base="http://127.0.0.1:$port"
api() { curl -sS -H "X-API-Key: $key" "$@"; }

# The document's example sandbox name, so that the examples reach a real sandbox.
api -X POST "$base/sandboxes" -d '{"name":"st-box"}' >/dev/null

status=0
"$venv/bin/st" run "$base/openapi.json" \
	--header "X-API-Key: $key" \
	--checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,unsupported_method,allow_header_conformance,ignored_auth \
	--phases examples,coverage,fuzzing \
	--max-examples "$examples" --max-time "$seconds" --request-timeout 60 \
	--workers 1 --seed "${AK_SCHEMATHESIS_SEED:-1}" || status=$?

# Every sandbox the run created, through the API; then the server must leave nothing.
for name in $(api "$base/sandboxes" | python3 -c 'import json,sys; print(" ".join(s["name"] for s in json.load(sys.stdin)["data"]))'); do
	api -X DELETE "$base/sandboxes/$name" >/dev/null || status=1
done
kill -TERM "$server"
wait "$server" || status=1
trap - EXIT
left=$(docker ps -aq --filter "label=agentkernel.namespace=$namespace" | wc -l)
if [ "$left" -ne 0 ]; then
	echo "schemathesis: $left containers left in namespace $namespace" >&2
	status=1
fi
# Snapshots and volumes are the API's to keep: the fuzzer made them, they go too.
remove_namespace
if [ "$status" -ne 0 ]; then
	echo "schemathesis: the server's log:" >&2
	grep -v '\[INFO\]' "$log" | tail -n 40 >&2 || true
fi
rm -rf "$log" "$data" "$report"
echo "schemathesis: $SCHEMATHESIS_VERSION, $((SECONDS - started)) s, status $status"
exit "$status"
