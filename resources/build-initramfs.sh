#!/usr/bin/env bash
# Packs spore's guest initramfs: the static agent as /init plus the few entries the
# kernel and the agent expect (dev/, dev/console, proc/, sys/, tmp/, run/), as an
# UNCOMPRESSED newc cpio at target/guest/initramfs.cpio.
#
# Uncompressed on purpose: the guest kernel has no decompressors configured and
# unpacking is slow on emulated or instruction-emulating hosts (notes/kvm-pvm.md).
# /dev/console must exist in the archive: the kernel opens it for init's stdio before
# init runs, and devtmpfs is not auto-mounted on an initramfs root.
#
# Idempotent: the archive is reproducible (fixed owners and times) and is replaced
# only when its bytes change, so an unchanged agent leaves the file untouched.
#
# Usage: resources/build-initramfs.sh [AGENT_BINARY [OUTPUT]]
#   AGENT_BINARY defaults to target/guest/spore-agent (see build-agent.sh);
#   OUTPUT to target/guest/initramfs.cpio. (Tests pack other static inits this way.)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
agent=${1:-$repo/target/guest/spore-agent}
out=${2:-$repo/target/guest/initramfs.cpio}

log() { echo "build-initramfs: $*" >&2; }

[[ -f "$agent" ]] || { log "agent binary $agent not found — run resources/build-agent.sh"; exit 1; }
if readelf -lW "$agent" | grep -q 'Requesting program interpreter'; then
    log "$agent is dynamically linked; /init must be static — use resources/build-agent.sh"
    exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
mkdir -p "$root"/{dev,proc,sys,tmp,run}
chmod 1777 "$root/tmp"
# Debug info is dropped (a quarter of the size; symbols stay for backtraces).
strip --strip-debug -o "$root/init" "$agent"
chmod 0755 "$root/init"
if ! mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null; then
    log "cannot create dev/console here (need root or CAP_MKNOD); the guest's init gets no stdio until it mounts devtmpfs"
fi
# Fixed times make the archive depend only on its contents.
find "$root" -exec touch -h -d @0 {} +

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | \
    cpio -o -H newc --quiet --reproducible --owner=0:0) > "$stage/initramfs.cpio"

mkdir -p "$(dirname "$out")"
if ! cmp -s "$stage/initramfs.cpio" "$out"; then
    mv "$stage/initramfs.cpio" "$out"
fi
echo "$out"
