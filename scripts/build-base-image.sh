#!/usr/bin/env bash
# Build a local Python 3.11 base image without Docker Hub.
#
# debootstrap a minimal Debian bookworm root (its python3 is 3.11), add python3-venv, python3-pip
# and ca-certificates, and `docker import` the tree as memorytransit-base:bookworm. The Dockerfile
# takes it as `--build-arg BASE_IMAGE=memorytransit-base:bookworm` in place of python:3.11-slim;
# it only needs `python3 -m venv`, which both images provide.
#
# Idempotent: does nothing when the image already exists (pass --force to rebuild).
#
# Environment:
#   BASE_IMAGE_TAG   image to create        (default memorytransit-base:bookworm)
#   DEBIAN_MIRROR    debootstrap mirror     (default http://deb.debian.org/debian)
#   DEBIAN_SUITE     Debian release         (default bookworm)
set -euo pipefail

tag="${BASE_IMAGE_TAG:-memorytransit-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"
force=0

for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build-base-image: unknown argument '$arg' (expected --force or --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[build-base-image] %s\n' "$*" >&2; }

need_pkgs=()
command -v docker >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if ((${#need_pkgs[@]})); then
    if [[ $EUID -ne 0 ]]; then
        log "missing ${need_pkgs[*]} and not root: install them first"
        exit 1
    fi
    log "installing ${need_pkgs[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
fi

if ! docker info >/dev/null 2>&1; then
    log "the Docker daemon is not reachable (start dockerd first)"
    exit 1
fi

if [[ $force -eq 0 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag already exists; skipping (use --force to rebuild)"
    exit 0
fi

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/mt-rootfs.XXXXXX")"
cleanup() {
    # debootstrap may leave /proc or /sys mounted inside the tree when it fails half way.
    for m in proc sys dev/pts dev; do
        if mountpoint -q "$rootfs/$m" 2>/dev/null; then umount -l "$rootfs/$m" || true; fi
    done
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

start=$SECONDS
log "debootstrap $suite (minbase) from $mirror into $rootfs"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$rootfs" "$mirror"

# Updates and security fixes for the same release, then trim what a runtime image never reads.
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://security.debian.org/debian-security $suite-security main
EOF
chroot "$rootfs" /bin/sh -c '
    set -e
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get upgrade -y -q --no-install-recommends
    apt-get clean
'
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/var/log/*.log "$rootfs"/tmp/* "$rootfs"/root/.cache

py_version="$(chroot "$rootfs" python3 -c 'import platform; print(platform.python_version())')"
log "python3 in the image is $py_version"

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian $suite minbase + python3 $py_version (debootstrap, no Docker Hub)\"" \
    --message "debootstrap $suite minbase + python3 $py_version" \
    - "$tag" >/dev/null

log "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | numfmt --to=iec) ) in $((SECONDS - start))s"
