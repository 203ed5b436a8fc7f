#!/bin/sh
# Packs the busybox rootfs tree (resources/build-rootfs.sh) into a read-only erofs
# image: the disk a guest container uses as its overlay lower layer (/dev/vda).
#
# Output: target/guest/rootfs.erofs (or $2 from tree $1). Rebuilt only when the
# tree's stamp is newer than the image; written to a temp file, then renamed.
set -eu
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
TREE=${1:-"$ROOT_DIR/target/guest/rootfs"}
OUT=${2:-"$ROOT_DIR/target/guest/rootfs.erofs"}
command -v mkfs.erofs >/dev/null || apt-get install -y -q erofs-utils >/dev/null
if [ -f "$OUT" ] && [ "$OUT" -nt "$TREE/.spore-rootfs" ]; then
    exit 0
fi
mkfs.erofs --quiet -T0 "$OUT.tmp.$$" "$TREE"
mv "$OUT.tmp.$$" "$OUT"
