#!/usr/bin/env bash
# Builds spore's guest kernel (vmlinux) from Debian's linux-source-6.12.
#
# The result is cached under $SPORE_CACHE/kernel/<key>/vmlinux, where <key> hashes
# the source package version, the config fragment, the patches and this script, so a
# second run with the same inputs is instant. The built kernel is linked to
# target/guest/vmlinux in the repository.
#
# Usage: guest-kernel/build.sh [--print-path]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${SPORE_CACHE:-/var/cache/spore}
out_link="$repo/target/guest/vmlinux"
pkg=linux-source-6.12

log() { echo "guest-kernel: $*" >&2; }

if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
    log "installing $pkg and the kernel build tools (apt)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" flex bison bc libelf-dev cpio xz-utils make gcc >/dev/null
fi

version=$(dpkg-query -W -f='${Version}' "$pkg")
key=$( { echo "$pkg $version"; cat "$here/spore.fragment" "$here"/patches/*.patch "$here/build.sh"; } | sha256sum | cut -c1-16)
dest="$cache/kernel/$key"

if [[ ! -f "$dest/vmlinux" ]]; then
    start=$(date +%s)
    work="$cache/kernel/build-$key"
    rm -rf "$work"
    mkdir -p "$work"
    log "building $pkg $version (key $key) in $work with $(nproc) jobs; takes ~10 min"
    tar -xJf "/usr/src/$pkg.tar.xz" -C "$work"
    src="$work/$pkg"
    for p in "$here"/patches/*.patch; do
        log "applying $(basename "$p")"
        patch -s -p1 -d "$src" < "$p"
    done
    make -s -C "$src" ARCH=x86_64 tinyconfig >/dev/null
    (cd "$src" && KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -O . .config "$here/spore.fragment" >/dev/null)
    make -s -C "$src" ARCH=x86_64 olddefconfig >/dev/null
    # Every option the fragment asks for must have survived olddefconfig: a
    # dependency we missed would otherwise silently drop it.
    missing=0
    while IFS= read -r line; do
        [[ "$line" =~ ^CONFIG_ ]] || continue
        opt=${line%%=*}; want=${line#*=}
        if [[ "$want" == n ]]; then
            if grep -q "^$opt=" "$src/.config"; then log "option $opt is still on"; missing=1; fi
        elif ! grep -qx "$opt=$want" "$src/.config"; then
            log "option $line did not survive olddefconfig (got: $(grep "^$opt=" "$src/.config" || echo unset))"
            missing=1
        fi
    done < "$here/spore.fragment"
    [[ $missing == 0 ]] || { log "config check failed"; exit 1; }
    make -s -C "$src" ARCH=x86_64 -j"$(nproc)" vmlinux
    mkdir -p "$dest"
    cp "$src/vmlinux" "$dest/vmlinux.tmp"
    cp "$src/.config" "$dest/config"
    mv "$dest/vmlinux.tmp" "$dest/vmlinux"
    rm -rf "$work"
    log "built in $(( $(date +%s) - start )) s"
fi

mkdir -p "$(dirname "$out_link")"
ln -sfn "$dest/vmlinux" "$out_link"
[[ "${1:-}" == --print-path ]] && echo "$dest/vmlinux"
log "vmlinux: $out_link -> $dest/vmlinux"
