#!/usr/bin/env bash
# Builds agentkernel/busybox:latest (or TAG) with no registry: a rootfs holding Debian's
# static busybox, a link per applet and root/nobody(65534) users, fed to `docker import`.
# Usage: build-busybox-image.sh [--force] [TAG]. Skips the build if TAG exists, unless --force.
set -euo pipefail

die() { printf 'build-busybox-image: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: scripts/build-busybox-image.sh [--force] [TAG]
  Builds TAG (default agentkernel/busybox:latest) from the Debian package
  busybox-static with `docker import`. Skips the build if TAG exists, unless --force.
EOF
}

tag=agentkernel/busybox:latest
force=false
tag_given=false
for argument in "$@"; do
    case "$argument" in
        --force) force=true ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option '$argument'" ;;
        *)
            [[ "$tag_given" == false ]] || die "only one TAG may be given"
            tag="$argument"
            tag_given=true
            ;;
    esac
done

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (apt-get install -y docker.io)"
timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker Engine answers; run: bash scripts/check-engine.sh --start"

old_image_id="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null)" || old_image_id=""
if [[ -n "$old_image_id" && "$force" == false ]]; then
    echo "build-busybox-image: $tag already exists (${old_image_id:7:12}); use --force to rebuild"
    exit 0
fi

started_seconds=$SECONDS

# Runs apt-get install quietly; on failure refreshes the package lists once and
# retries; on a second failure shows apt's output.
apt_install() {
    local apt_log
    apt_log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "$@" </dev/null >"$apt_log" 2>&1; then
        if ! { apt-get update -qq && apt-get install -y -qq "$@"; } </dev/null >"$apt_log" 2>&1; then
            cat "$apt_log" >&2
            rm -f "$apt_log"
            die "apt-get install $* failed"
        fi
    fi
    rm -f "$apt_log"
}

# busybox-static provides a statically linked /bin/busybox. It conflicts with
# (and replaces) the dynamically linked 'busybox' package, whose binary would
# not run in an image without libc.
busybox=/bin/busybox
if ! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
    [[ "$(id -u)" == 0 ]] || die "busybox-static is not installed and installing it needs root"
    apt_install busybox-static
fi
[[ -x "$busybox" ]] || die "$busybox missing although busybox-static is installed"
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; it would not run in the image"
fi

work_dir="$(mktemp -d /tmp/agentkernel-busybox.XXXXXX)"
trap 'rm -rf "$work_dir"' EXIT
rootfs="$work_dir/rootfs"

mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/local/sbin,etc,root,home,work,tmp,var/tmp,proc,sys,dev}
chmod 0755 "$rootfs"
chmod 0700 "$rootfs/root"
# /tmp, /var/tmp and /work are writable by any user, so commands that run as
# nobody (65534) have somewhere to write even without a mount.
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp" "$rootfs/work"

cp "$busybox" "$rootfs/bin/busybox"
chmod 0755 "$rootfs/bin/busybox"

# Every applet gets a link in /bin (all of PATH then works from /bin alone), and
# also at busybox's own install path (/usr/bin/env, /sbin/ifconfig, ...) so that
# absolute paths like `#!/usr/bin/env sh` resolve too.
applet_count=0
while IFS= read -r applet_path; do
    [[ -n "$applet_path" ]] || continue
    applet="${applet_path##*/}"
    [[ "$applet" == busybox ]] && continue
    ln -sf /bin/busybox "$rootfs/bin/$applet"
    applet_count=$((applet_count + 1))
    if [[ "$applet_path" != "bin/$applet" && "$applet_path" == */* ]]; then
        mkdir -p "$rootfs/${applet_path%/*}"
        ln -sf /bin/busybox "$rootfs/$applet_path"
    fi
done < <("$busybox" --list-full)
((applet_count > 100)) || die "busybox --list-full listed only $applet_count applets"

# Same shape as Alpine's entries, so both default images behave alike.
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"

# Numeric root ownership and a fixed mtime make the layer independent of who
# builds it and when.
tar -C "$rootfs" --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["sh"]' \
        --change 'LABEL org.agentkernel.image=busybox' \
        --message "agentkernel busybox image, built by scripts/build-busybox-image.sh" \
        - "$tag" >/dev/null \
    || die "docker import of $tag failed"

new_image_id="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null)" \
    || die "docker import finished but $tag does not exist"
label="$(docker image inspect --format '{{index .Config.Labels "org.agentkernel.image"}}' "$tag")"
[[ "$label" == busybox ]] || die "$tag lacks the label org.agentkernel.image=busybox"

# A forced rebuild leaves the previous image untagged; remove it unless a
# container still uses it.
if [[ -n "$old_image_id" && "$old_image_id" != "$new_image_id" ]]; then
    docker image rm "$old_image_id" >/dev/null 2>&1 || true
fi

size_bytes="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "build-busybox-image: built $tag (${new_image_id:7:12}, $((size_bytes / 1024)) KiB, $applet_count applets) in $((SECONDS - started_seconds)) s"
