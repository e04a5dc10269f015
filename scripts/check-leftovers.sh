#!/usr/bin/env bash
# Fails if any container made by the test suite (namespaces starting with "t-") is
# still on the engine: every test must clean up what it creates.
set -euo pipefail

left=$(docker ps -a --filter label=agentkernel.managed=true \
	--format '{{.Label "agentkernel.namespace"}} {{.Names}} {{.Status}}' | grep '^t-' || true)
if [ -n "$left" ]; then
	echo "check-leftovers: containers left behind by the tests:" >&2
	echo "$left" >&2
	exit 1
fi
echo "check-leftovers: no test container left behind"
