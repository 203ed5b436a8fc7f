#!/bin/sh
# Builds spore's no_std test guest (resources/test-guest) into
# target/guest/test-guest.elf. Idempotent: cargo rebuilds only what changed.
#
# `--qemu` builds the variant QEMU's `-M microvm` can boot (PVH entry, QEMU's
# virtio-mmio addresses) into target/guest/test-guest-qemu.elf instead.
#
# The guest is its own cargo workspace with its own target directories
# (target/test-guest, target/test-guest-qemu), so it never disturbs the main
# workspace's build.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
crate="$root/resources/test-guest"
out="$root/target/guest/test-guest.elf"
target_dir="$root/target/test-guest"
features=""
if [ "${1:-}" = "--qemu" ]; then
    out="$root/target/guest/test-guest-qemu.elf"
    # Its own target dir: the two builds never overwrite each other's binary.
    target_dir="$root/target/test-guest-qemu"
    features="--features=qemu"
fi

# The guest's flags live in resources/test-guest/.cargo/config.toml; flags from
# the environment (e.g. an outer cargo's) would replace them.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_TARGET_DIR CARGO_BUILD_TARGET

cd "$crate"
cargo build --release --quiet $features --target-dir "$target_dir"
built="$target_dir/x86_64-unknown-linux-gnu/release/spore-test-guest"

# The guest's CPL0 code runs in KVM's instruction emulator on kvm_pvm hosts
# (/work/shared/notes/kvm-pvm.md): refuse a binary using SSE or instructions
# the emulator is known to lack. (int3 appears only as padding between
# functions, so it is not checked.)
if command -v objdump >/dev/null 2>&1; then
    forbidden='xmm|ymm|zmm|cmpxchg16b|popcnt|lzcnt|tzcnt|xsave|xrstor|fxsave|fxrstor|fwait|fnclex|vmcall|rdrand'
    bad=$(objdump -d -M intel --no-show-raw-insn "$built" |
        awk -F'\t' 'NF >= 2 { print $2 }' | grep -Ew "$forbidden" | sort -u || true)
    if [ -n "$bad" ]; then
        echo "$bad" >&2
        echo "build-test-guest: $built uses instructions KVM's emulator lacks" >&2
        exit 1
    fi
fi

mkdir -p "$(dirname "$out")"
if ! cmp -s "$built" "$out" 2>/dev/null; then
    # A private temp name and a rename: concurrent runs never see half a file.
    cp "$built" "$out.tmp.$$"
    mv "$out.tmp.$$" "$out"
fi
echo "$out"
