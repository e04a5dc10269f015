#!/usr/bin/env bash
# Prints on stdout, as one line, the image the server should use by default:
# alpine:3.20 if the local engine has it (nothing is ever pulled), otherwise
# agentkernel/busybox:latest, which it builds first if missing (build output on stderr).
set -euo pipefail

die() { printf 'default-image: error: %s\n' "$*" >&2; exit 1; }

readonly preferred_image=alpine:3.20
readonly fallback_image=agentkernel/busybox:latest
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case "${1:-}" in
    "") ;;
    -h | --help) echo "usage: scripts/default-image.sh   (prints the default image name)"; exit 0 ;;
    *) die "unexpected argument '$1'" ;;
esac

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (apt-get install -y docker.io)"
timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker Engine answers; run: bash scripts/check-engine.sh --start"

if docker image inspect "$preferred_image" >/dev/null 2>&1; then
    echo "$preferred_image"
    exit 0
fi

# stdout must carry only the image name, so the build's own line goes to stderr.
bash "$script_dir/build-busybox-image.sh" "$fallback_image" >&2 \
    || die "could not build $fallback_image"
echo "$fallback_image"
