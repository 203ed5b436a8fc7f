#!/usr/bin/env bash
# spore's main job on the built-in default: boot the guest in a microVM and print
# the agent's hello. On a host whose KVM cannot run a guest's user space
# (kvm_pvm), say so and show how far the guest gets instead.
set -euo pipefail
spore=${1:-target/release/spore}
if "$spore" doctor --json | grep -q '"guest_user_space":true'; then
    exec "$spore" vm run
fi
"$spore" doctor
echo
echo "This host cannot run microVM user space; booting the guest to init with every device attached:"
exec "$spore" doctor --boot
