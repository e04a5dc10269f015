#!/usr/bin/env bash
# Fails if any container made by the test suite is still on the engine: every test
# must clean up what it creates. With a run id (AK_TEST_RUN, set by make test) only
# that run's namespaces ("t-<run>-...") count, so suites sharing an engine do not
# blame each other; without one, every "t-" namespace does.
set -euo pipefail

left=$(docker ps -a --filter label=agentkernel.managed=true \
	--format '{{.Label "agentkernel.namespace"}} {{.Names}} {{.Status}}' | grep "^t-${AK_TEST_RUN:+$AK_TEST_RUN-}" || true)
if [ -n "$left" ]; then
	echo "check-leftovers: containers left behind by the tests:" >&2
	echo "$left" >&2
	exit 1
fi
echo "check-leftovers: no test container left behind"
