#!/usr/bin/env bash
# Builds spore's guest agent as a static x86_64 binary and links it at
# target/guest/spore-agent, where build-initramfs.sh picks it up as /init.
#
# The agent runs as PID 1 in a guest with no shared libraries, so it must be
# statically linked; the script refuses a dynamic result. An explicit --target keeps
# the static RUSTFLAGS away from build scripts and proc macros (they run on the host)
# and gives the agent its own directory, so host builds are not rebuilt each time.
#
# Usage: resources/build-agent.sh [--debug]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu
profile=release
[[ "${1:-}" == --debug ]] && profile=debug
out="$repo/target/guest/spore-agent"

log() { echo "build-agent: $*" >&2; }

flags=(-p spore-agent --bin spore-agent --target "$target")
[[ $profile == release ]] && flags+=(--release)
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q "${flags[@]}")

bin="$repo/target/$target/$profile/spore-agent"
[[ -x "$bin" ]] || { log "cargo did not produce $bin"; exit 1; }
# A static-pie or static binary has no PT_INTERP (no dynamic loader).
if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    log "$bin is dynamically linked (needs a loader); the guest has none"
    exit 1
fi
if readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    log "$bin needs shared libraries: $(readelf -dW "$bin" | grep '(NEEDED)' | tr -s ' ' | cut -d' ' -f6 | tr '\n' ' ')"
    exit 1
fi
mkdir -p "$(dirname "$out")"
ln -sfn "$bin" "$out"
echo "$out"
