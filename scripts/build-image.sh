#!/usr/bin/env bash
# Builds the image agentkernel runs from in a cluster: our static binary alone
# (`docker import` of a one-file root, no base image, nothing pulled).
# Usage: build-image.sh [TAG]   (default agentkernel/agentkernel:latest)
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"

tag=${1:-agentkernel/agentkernel:latest}
bash scripts/build-static.sh >&2
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0755 dist/agentkernel "$root/agentkernel"
tar -C "$root" -cf - . | docker import \
	--change 'ENTRYPOINT ["/agentkernel"]' \
	--change 'CMD ["serve", "--host", "0.0.0.0"]' \
	--change 'LABEL org.opencontainers.image.title=agentkernel' \
	- "$tag" >/dev/null
echo "build-image: $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
