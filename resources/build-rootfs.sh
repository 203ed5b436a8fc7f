#!/bin/sh
# Build a busybox root filesystem tree for the container engine's tests.
#
# Output: target/guest/rootfs (or $1). Uses Debian's busybox-static; installs it
# with apt-get when missing. Idempotent: re-running only refreshes what changed,
# and returns at once when the tree is newer than the busybox binary.
set -eu

ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-"$ROOT_DIR/target/guest/rootfs"}
BUSYBOX=/bin/busybox

if [ ! -x "$BUSYBOX" ] || ! "$BUSYBOX" --help 2>/dev/null | head -1 | grep -q BusyBox \
    || ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
    if ! dpkg -s busybox-static >/dev/null 2>&1; then
        apt-get install -y busybox-static
    fi
fi

STAMP="$OUT/.spore-rootfs"
if [ -f "$STAMP" ] && [ "$STAMP" -nt "$BUSYBOX" ] && [ "$STAMP" -nt "$0" ]; then
    exit 0
fi

mkdir -p "$OUT/bin" "$OUT/etc" "$OUT/tmp" "$OUT/proc" "$OUT/sys" "$OUT/dev" \
    "$OUT/root" "$OUT/home/spore" "$OUT/usr/bin" "$OUT/sbin" "$OUT/usr/sbin"
chmod 1777 "$OUT/tmp"
install -m 0755 "$BUSYBOX" "$OUT/bin/busybox"

# One symlink per applet, the layout `busybox --install -s` would create, but
# relative so the tree works wherever it is mounted.
for applet in $("$OUT/bin/busybox" --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$OUT/bin/$applet"
done

cat > "$OUT/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
spore:x:1000:1000:spore:/home/spore:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$OUT/etc/group" <<'GROUP'
root:x:0:
tty:x:5:
wheel:x:10:spore
spore:x:1000:
nogroup:x:65534:
GROUP
chown 1000:1000 "$OUT/home/spore" 2>/dev/null || true
echo spore > "$OUT/etc/hostname"
: > "$OUT/etc/hosts"
touch "$STAMP"
