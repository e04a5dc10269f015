# Thin wrapper: every target calls cargo or scripts/*.sh.
TARGET   := x86_64-unknown-linux-gnu
RELEASE  := target/$(TARGET)/release/agentkernel
PORT     ?= 8080

.PHONY: build run test lint unit integration chaos gvisor static image cluster-test cluster-bench bench load images clean fuzz schemathesis

build:
	cargo build --release

# Build, make sure a default image exists locally (nothing is ever pulled), serve.
run: build
	bash scripts/check-engine.sh
	AGENTKERNEL_DEFAULT_IMAGE="$${AGENTKERNEL_DEFAULT_IMAGE:-$$(bash scripts/default-image.sh)}" \
		$(RELEASE) serve --port $(PORT)

# The whole suite: lint, then scripts/test.sh (unit and integration tests against the
# real engine, the published Python SDK and a short schemathesis pass against a live
# server, then the check that no container of ours was left behind; it prints each
# step's time). TEST_THREADS (default 4) sets the test threads.
test: lint
	bash scripts/check-engine.sh
	bash scripts/build-busybox-image.sh
	bash scripts/test.sh

# The API fuzzed against its OpenAPI description for longer than `make test`'s pass
# (about 3.5 minutes; .ci/run runs it). AK_SCHEMATHESIS_SECONDS (default 190) and
# AK_SCHEMATHESIS_EXAMPLES bound it.
schemathesis:
	bash scripts/check-engine.sh
	bash scripts/build-busybox-image.sh
	bash scripts/schemathesis.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --test chaos -- -D warnings
	python3 scripts/check-modules.py src
	python3 scripts/check-engine-boundary.py src
	python3 scripts/check-invariants.py src

unit:
	cargo test --lib

TEST_THREADS ?= 4
integration:
	cargo test --test integration -- --test-threads=$(TEST_THREADS)

# The engine goes away and comes back: each test starts a private Docker daemon (its
# own socket, dirs and network namespace; the machine's engine is never touched) and
# kills, freezes or restarts it. Needs root; fails, never skips, where it cannot run.
chaos:
	bash scripts/check-engine.sh
	bash scripts/build-busybox-image.sh
	cargo test --test chaos -- --test-threads=1

# gVisor alone (part of make chaos): a private daemon with runsc registered.
gvisor:
	bash scripts/check-engine.sh
	bash scripts/build-busybox-image.sh
	cargo test --test chaos -- --test-threads=1 gvisor

# A static binary: musl where that target is installed, else glibc crt-static.
static:
	bash scripts/build-static.sh

# The image a cluster runs from: our static binary alone (docker import, no base image).
image:
	bash scripts/build-image.sh

# Cluster mode deployed with deploy/swarm/stack.yml on a private single-node Swarm (its
# own daemon and network namespace), driven through its router; then three agents as
# containers behind one DNS alias on this engine, one killed, one cut off. Needs root.
cluster-test:
	bash scripts/check-engine.sh
	bash scripts/swarm-test.sh
	bash scripts/cluster-net-test.sh

# What a cluster's router costs against its agents direct, and three agents' throughput
# against one's (examples/cluster_bench.rs; about 2 minutes).
cluster-bench:
	bash scripts/check-engine.sh
	bash scripts/build-busybox-image.sh
	cargo build --release
	cargo run --release --example cluster_bench

# Every cargo-fuzz target (fuzz/) for FUZZ_SECONDS each.
FUZZ_SECONDS ?= 30
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

images:
	bash scripts/build-busybox-image.sh

clean:
	cargo clean

bench:
	bash scripts/check-engine.sh
	bash scripts/build-busybox-image.sh
	cargo build --release
	cargo run --release --example bench

# Sustained load (GET /health, POST /run at 1-16 clients, overload) for LOAD_SECONDS
# per phase (default 20); see examples/load.rs.
load:
	bash scripts/check-engine.sh
	bash scripts/build-busybox-image.sh
	cargo build --release
	cargo run --release --example load
