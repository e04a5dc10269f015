#!/usr/bin/env bash
# Fails if any container made by the test suite is still on the engine: every test
# must clean up what it creates. With a run id (AK_TEST_RUN, set by make test) only
# that run's namespaces ("t-<run>-...") count, so suites sharing an engine do not
# blame each other; without one, every "t-" namespace does.
# A server shared by several tests (tests/integration/harness.rs `shared`) is stopped
# when the test process exits, so its shutdown may still be removing containers: what
# is left is looked at again for up to 15 s before it counts.
set -euo pipefail

left_now() {
	docker ps -a --filter label=agentkernel.managed=true \
		--format '{{.Label "agentkernel.namespace"}} {{.Names}} {{.Status}}' | grep "^t-${AK_TEST_RUN:+$AK_TEST_RUN-}" || true
}
left=$(left_now)
for _ in $(seq 15); do
	[ -z "$left" ] && break
	sleep 1
	left=$(left_now)
done
if [ -n "$left" ]; then
	echo "check-leftovers: containers left behind by the tests:" >&2
	echo "$left" >&2
	exit 1
fi
# A snapshot's repository names its namespace (src/snapshot.rs `reference`).
images=$(docker images --filter label=agentkernel.kind=snapshot \
	--format '{{.Repository}}:{{.Tag}}' | grep "^agentkernel-snapshot/t-${AK_TEST_RUN:+$AK_TEST_RUN-}" || true)
if [ -n "$images" ]; then
	echo "check-leftovers: snapshots left behind by the tests:" >&2
	echo "$images" >&2
	exit 1
fi
volumes=$(docker volume ls --filter label=agentkernel.kind=volume --format '{{.Name}}' |
	grep "^ak_t-${AK_TEST_RUN:+$AK_TEST_RUN-}" || true)
if [ -n "$volumes" ]; then
	echo "check-leftovers: volumes left behind by the tests:" >&2
	echo "$volumes" >&2
	exit 1
fi
# A container's disk (src/containers/disk.rs) goes with it: a disk file whose container
# the engine no longer has was left behind.
disks_dir="${TMPDIR:-/tmp}/agentkernel-test-data/disks"
orphans=""
for entry in "$disks_dir"/*; do
	[ -e "$entry" ] || continue
	id=$(basename "$entry" .img)
	docker inspect --type container "$id" >/dev/null 2>&1 || orphans="$orphans $id"
done
# Mounts of disks whose file is gone count too.
for point in $(awk '{print $5}' /proc/self/mountinfo | grep "^$disks_dir/" || true); do
	id=$(basename "$point")
	docker inspect --type container "$id" >/dev/null 2>&1 || orphans="$orphans $id(mounted)"
done
# And loop devices of disk files, deleted or not, whose container is gone.
for backing in /sys/block/loop*/loop/backing_file; do
	[ -e "$backing" ] || continue
	file=$(sed 's/ (deleted)$//' "$backing")
	case "$file" in "$disks_dir"/*.img) ;; *) continue ;; esac
	id=$(basename "$file" .img)
	docker inspect --type container "$id" >/dev/null 2>&1 ||
		orphans="$orphans $id(attached to $(basename "$(dirname "$(dirname "$backing")")"))"
done
if [ -n "$orphans" ]; then
	echo "check-leftovers: disks left behind by the tests (their containers are gone):$orphans" >&2
	exit 1
fi
echo "check-leftovers: no test container, snapshot, volume or disk left behind"
