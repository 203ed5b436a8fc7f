#!/usr/bin/env bash
# Installs what spore's build scripts and tests need on a Debian host: the kernel
# build tools, busybox, QEMU (for the TCG guest tests), crun, the image tools, and
# the vhost-user vsock backend `vhost-device-vsock` that the TCG tests put between
# QEMU and a unix socket.
#
# Idempotent and quiet: when everything is present it only checks and returns
# (well under a second). `apt-get update` runs only if an apt package is missing.
# vhost-device-vsock is built once per version with `cargo install` and cached under
# $SPORE_CACHE/tools/vhost-device-vsock-<version>/bin/ (takes minutes the first time).
#
# Usage: resources/install-deps.sh [--print-vsock-path]
#   --print-vsock-path   after installing, print the vhost-device-vsock binary path
set -euo pipefail

cache=${SPORE_CACHE:-/var/cache/spore}
vsock_version=0.3.0
vsock_root="$cache/tools/vhost-device-vsock-$vsock_version"
vsock_bin="$vsock_root/bin/vhost-device-vsock"
apt_packages=(
    linux-source-6.12 flex bison bc libelf-dev cpio xz-utils make gcc
    busybox-static qemu-system-x86 crun erofs-utils e2fsprogs
)

log() { echo "install-deps: $*" >&2; }

# 1. apt packages: ask dpkg which are missing, update and install only those.
missing=()
for p in "${apt_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        missing+=("$p")
    fi
done
if (( ${#missing[@]} > 0 )); then
    log "installing ${missing[*]} (apt)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. vhost-device-vsock, cached by version. Built in a private target dir so a
#    half-finished build never leaves a binary at the cached path.
if [[ ! -x "$vsock_bin" ]]; then
    command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
    log "building vhost-device-vsock $vsock_version into $vsock_root (several minutes)"
    mkdir -p "$cache/tools"
    tmp_root=$(mktemp -d "$cache/tools/.vhost-device-vsock-$vsock_version.XXXXXX")
    trap 'rm -rf "$tmp_root"' EXIT
    if ! cargo install -q --locked vhost-device-vsock --version "$vsock_version" --root "$tmp_root" 2>/dev/null; then
        log "--locked build failed; retrying with freshly resolved dependencies"
        cargo install -q vhost-device-vsock --version "$vsock_version" --root "$tmp_root"
    fi
    chmod 755 "$tmp_root"
    rm -rf "$vsock_root"
    mv "$tmp_root" "$vsock_root"
    trap - EXIT
fi

if [[ "${1:-}" == --print-vsock-path ]]; then
    echo "$vsock_bin"
fi
