#!/usr/bin/env bash
# spore's main job on the built-in default: run `echo hello` in a busybox
# container. With microVM isolation where the host's KVM can run a guest's user
# space; on a host that cannot (kvm_pvm, see `spore doctor`), say so and run it
# with the explicit `process` isolation instead (never silently).
set -euo pipefail
spore=${1:-target/release/spore}
if "$spore" doctor --json | grep -q '"guest_user_space":true'; then
    "$spore" vm run
    exec "$spore" run --rm busybox echo hello
fi
"$spore" doctor
echo
echo "+ $spore run --rm --isolation process busybox echo hello"
exec "$spore" run --rm --isolation process busybox echo hello
