#!/usr/bin/env bash
# Builds a static agentkernel binary into dist/: a musl build where the
# x86_64-unknown-linux-musl target is installed, else a glibc crt-static build
# (the default of .cargo/config.toml). Prints which one it made.
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"

mkdir -p dist
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
	cargo build --release --target x86_64-unknown-linux-musl
	cp target/x86_64-unknown-linux-musl/release/agentkernel dist/agentkernel
	kind="musl"
else
	cargo build --release
	cp target/x86_64-unknown-linux-gnu/release/agentkernel dist/agentkernel
	kind="glibc crt-static (the musl target is not installed)"
fi
if ! file dist/agentkernel | grep -q 'static'; then
	echo "build-static: dist/agentkernel is not statically linked" >&2
	exit 1
fi
echo "build-static: dist/agentkernel is a static $kind binary"
