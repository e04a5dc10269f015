#!/usr/bin/env bash
# Installs the published Python SDK (agentkernel-sdk, from PyPI) into a fresh scratch venv
# and drives a live server through it (tests/sdk/drive.py), with an API key set so
# the SDK's Bearer auth is exercised. A failure to install is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"

SDK_VERSION="${AK_SDK_VERSION:-0.21.0}"
venv=$(mktemp -d)
binary="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/debug/agentkernel"
image="${AK_TEST_IMAGE:-agentkernel/busybox:latest}"

python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "agentkernel-sdk==$SDK_VERSION"
[ -x "$binary" ] || cargo build --quiet

namespace="t-${AK_TEST_RUN:-0}-sdk-$$"
key="sdk-key-$$"
log=$(mktemp)
data=$(mktemp -d)
AGENTKERNEL_API_KEY="$key" AGENTKERNEL_DATA_DIR="$data" \
	"$binary" serve --port 0 --namespace "$namespace" --default-image "$image" \
	--pool-size 1 2>"$log" &
server=$!
cleanup() {
	kill -TERM "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	rm -rf "$log" "$data" "$venv"
}
trap cleanup EXIT

# shellcheck source=scripts/server-port.sh
. scripts/server-port.sh
port=$(server_port "$log" sdk-test)

AGENTKERNEL_URL="http://127.0.0.1:$port" AGENTKERNEL_API_KEY="$key" \
	"$venv/bin/python" tests/sdk/drive.py

kill -TERM "$server"
wait "$server"
trap - EXIT
rm -rf "$log" "$data" "$venv"
left=$(docker ps -aq --filter "label=agentkernel.namespace=$namespace" | wc -l)
if [ "$left" -ne 0 ]; then
	echo "sdk-test: $left containers left in namespace $namespace" >&2
	exit 1
fi
echo "sdk-test: the published Python SDK $SDK_VERSION works against this server"
