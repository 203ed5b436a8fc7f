#!/usr/bin/env bash
# Builds the clone benchmark's Linux template initramfs: an /init that spins in
# user mode without a single syscall (`jmp .`), so a standard guest kernel gets
# to run it even on a kvm_pvm host, where a syscall from guest user mode faults
# (see shared/notes/kvm-pvm.md). The guest's kernel keeps taking timer
# interrupts underneath, which is what its clones are checked for.
#
# The binary is 122 bytes of hand-written ELF: a 64-byte ELF header, one 56-byte
# PT_LOAD program header mapping the file at 0x400000 read+execute, and the two
# bytes `eb fe` (jmp to itself) at the entry point 0x400078.
#
# Usage: resources/build-spin-init.sh [OUTPUT]
#   OUTPUT defaults to target/guest/spin-initramfs.cpio; prints its path.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/guest/spin-initramfs.cpio}
elf=$repo/target/guest/spin-init
mkdir -p "$(dirname "$elf")"

{
    # ELF header: magic, 64-bit, little endian, version 1, System V ABI.
    printf '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00'
    printf '\x02\x00\x3e\x00\x01\x00\x00\x00'          # ET_EXEC, x86-64, version 1
    printf '\x78\x00\x40\x00\x00\x00\x00\x00'          # e_entry 0x400078
    printf '\x40\x00\x00\x00\x00\x00\x00\x00'          # e_phoff 64
    printf '\x00\x00\x00\x00\x00\x00\x00\x00'          # e_shoff 0 (no sections)
    printf '\x00\x00\x00\x00\x40\x00\x38\x00'          # e_flags, e_ehsize 64, e_phentsize 56
    printf '\x01\x00\x00\x00\x00\x00\x00\x00'          # e_phnum 1, no section headers
    # Program header: PT_LOAD, R+X, the whole file at 0x400000.
    printf '\x01\x00\x00\x00\x05\x00\x00\x00'          # p_type, p_flags
    printf '\x00\x00\x00\x00\x00\x00\x00\x00'          # p_offset 0
    printf '\x00\x00\x40\x00\x00\x00\x00\x00'          # p_vaddr 0x400000
    printf '\x00\x00\x40\x00\x00\x00\x00\x00'          # p_paddr
    printf '\x7a\x00\x00\x00\x00\x00\x00\x00'          # p_filesz 122
    printf '\x7a\x00\x00\x00\x00\x00\x00\x00'          # p_memsz 122
    printf '\x00\x10\x00\x00\x00\x00\x00\x00'          # p_align 4096
    printf '\xeb\xfe'                                   # 0x400078: jmp .
} > "$elf"
chmod 0755 "$elf"
[[ $(stat -c %s "$elf") == 122 ]] || { echo "build-spin-init: $elf is not 122 bytes" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/root/dev"
cp "$elf" "$stage/root/init"
mknod -m 0600 "$stage/root/dev/console" c 5 1 2>/dev/null || true
find "$stage/root" -exec touch -h -d @0 {} +
(cd "$stage/root" && find . -mindepth 1 | LC_ALL=C sort | \
    cpio -o -H newc --quiet --reproducible --owner=0:0) > "$stage/initramfs.cpio"
mkdir -p "$(dirname "$out")"
if ! cmp -s "$stage/initramfs.cpio" "$out"; then
    mv "$stage/initramfs.cpio" "$out"
fi
echo "$out"
