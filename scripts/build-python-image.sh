#!/usr/bin/env bash
# Optional: builds agentkernel/python:3 (or TAG) with no registry: debootstrap
# --variant=minbase --include=python3 bookworm from apt's Debian mirror, then `docker import`.
# Usage: build-python-image.sh [--force] [TAG]. Skips the build if TAG exists, unless --force.
set -euo pipefail

die() { printf 'build-python-image: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: scripts/build-python-image.sh [--force] [TAG]
  Builds TAG (default agentkernel/python:3): debootstrap --variant=minbase
  --include=python3 bookworm, then docker import. Skips the build if TAG exists,
  unless --force. The mirror is the one apt uses (override with DEBIAN_MIRROR=URL).
EOF
}

readonly suite=bookworm
readonly fallback_mirror=http://deb.debian.org/debian

tag=agentkernel/python:3
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
    echo "build-python-image: $tag already exists (${old_image_id:7:12}); use --force to rebuild"
    exit 0
fi
[[ "$(id -u)" == 0 ]] || die "debootstrap needs root"

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

# Prints the first enabled 'deb' URI that apt uses for the suite itself (not
# -updates or -security), in apt's own file order: sources.list, then
# sources.list.d/*.list and *.sources (deb822) alphabetically. $1 is /etc/apt.
apt_mirror() {
    local apt_etc="$1"
    local -a files=()
    local file uri
    [[ -f "$apt_etc/sources.list" ]] && files+=("$apt_etc/sources.list")
    while IFS= read -r file; do
        files+=("$file")
    done < <(find "$apt_etc/sources.list.d" -maxdepth 1 -type f \( -name '*.list' -o -name '*.sources' \) 2>/dev/null | LC_ALL=C sort)
    for file in "${files[@]}"; do
        if [[ "$file" == *.sources ]]; then
            # deb822: blank-line separated stanzas of 'Field: value' lines.
            uri="$(awk -v suite="$suite" '
                function flush() {
                    if (types ~ /(^| )deb( |$)/ && suites ~ ("(^| )" suite "( |$)") && tolower(enabled) != "no" && uris != "") {
                        split(uris, first, " "); print first[1]; found = 1; exit
                    }
                    types = ""; suites = ""; uris = ""; enabled = ""
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                {
                    field = tolower($1); sub(/:$/, "", field)
                    value = $0; sub(/^[^:]*:[ \t]*/, "", value)
                    if (field == "types") types = value
                    else if (field == "suites") suites = value
                    else if (field == "uris") uris = value
                    else if (field == "enabled") enabled = value
                }
                END { if (!found) flush() }
            ' "$file")"
        else
            # One-line format: deb [options] URI SUITE COMPONENT...
            uri="$(sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$file" \
                | awk -v suite="$suite" '!found && $1 == "deb" && $3 == suite { print $2; found = 1 }')"
        fi
        if [[ -n "$uri" ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    return 0
}

mirror="${DEBIAN_MIRROR:-$(apt_mirror /etc/apt)}"
mirror="${mirror:-$fallback_mirror}"
mirror="${mirror%/}"

command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap

work_dir="$(mktemp -d /tmp/agentkernel-python.XXXXXX)"
rootfs="$work_dir/rootfs"
# debootstrap mounts /proc and /sys inside the target; if it dies half-way they
# stay mounted, and rm -rf must never descend into them.
cleanup() {
    local mount_point
    while read -r mount_point; do
        umount -l "$mount_point" 2>/dev/null || true
    done < <(awk -v prefix="$work_dir/" 'index($2, prefix) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$work_dir"
}
trap cleanup EXIT

debootstrap_log="$work_dir/debootstrap.log"
if ! debootstrap --variant=minbase --include=python3 "$suite" "$rootfs" "$mirror" \
    </dev/null >"$debootstrap_log" 2>&1; then
    tail -n 30 "$debootstrap_log" >&2
    [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap $suite from $mirror failed"
fi
[[ -x "$rootfs/usr/bin/python3" ]] || die "debootstrap finished but $rootfs/usr/bin/python3 is missing"

# Drop caches and host files that debootstrap copied in (the engine provides
# its own /etc/resolv.conf, /etc/hostname and /etc/hosts at run time).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/apt/* "$rootfs"/var/log/dpkg.log \
    "$rootfs"/var/log/alternatives.log "$rootfs"/var/log/bootstrap.log "$rootfs"/debootstrap
mkdir -p "$rootfs/var/lib/apt/lists/partial"
rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
find "$rootfs/dev" -mindepth 1 -delete
mkdir -p "$rootfs/work"
chmod 1777 "$rootfs/work"

tar -C "$rootfs" --numeric-owner -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change 'LABEL org.agentkernel.image=python' \
        --message "agentkernel python image ($suite minbase from $mirror), built by scripts/build-python-image.sh" \
        - "$tag" >/dev/null \
    || die "docker import of $tag failed"

new_image_id="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null)" \
    || die "docker import finished but $tag does not exist"

# A forced rebuild leaves the previous image untagged; remove it unless a
# container still uses it.
if [[ -n "$old_image_id" && "$old_image_id" != "$new_image_id" ]]; then
    docker image rm "$old_image_id" >/dev/null 2>&1 || true
fi

python_version="$(chroot "$rootfs" python3 --version 2>&1)" || python_version=python3
size_bytes="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "build-python-image: built $tag (${new_image_id:7:12}, $python_version, $((size_bytes / 1024 / 1024)) MiB, mirror $mirror) in $((SECONDS - started_seconds)) s"
