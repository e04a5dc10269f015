#!/usr/bin/env bash
# `make test` after lint: unit and integration tests against the real engine, the
# published Python SDK and a short schemathesis pass (every operation in its examples
# and coverage phases, then fuzzing for what is left of AK_SCHEMATHESIS_SECONDS, 60 s
# here; `make schemathesis` fuzzes for longer) against a live server, then the check
# that no container of ours was left behind. Every step runs; any failure fails the
# whole. Prints how long each step took.
set -uo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"

# Four test threads on two cores by default: most of a test's time is the engine's
# (container starts, deadlines, sleeps), and each test has its own server and
# namespace; the tests that keep the cores busy take turns (`harness::exclusive`).
threads="${TEST_THREADS:-4}"
export AK_TEST_RUN=$$
export AK_SCHEMATHESIS_SECONDS="${AK_SCHEMATHESIS_SECONDS:-60}"

status=0
report=""
step() {
	local name=$1 started=$SECONDS result=0
	shift
	"$@" || result=$?
	[ "$result" -eq 0 ] || status=$result
	report+=$(printf '\n  %-14s %4d s  %s' "$name" $((SECONDS - started)) "$([ "$result" -eq 0 ] && echo ok || echo "FAILED ($result)")")
}

step "cargo test" cargo test -- --test-threads="$threads"
step "sdk" bash scripts/sdk-test.sh
step "schemathesis" bash scripts/schemathesis.sh
step "leftovers" bash scripts/check-leftovers.sh
echo "test: steps (after lint):$report"
echo "test: $SECONDS s in all, status $status"
exit "$status"
