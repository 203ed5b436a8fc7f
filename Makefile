# spore: the two commands a new machine needs are `make run` and `make test`.
# Everything is built from Debian packages and crates.io; expensive artifacts
# (the guest kernel, vhost-device-vsock) are cached in /var/cache/spore.

CARGO ?= cargo
SPORE := target/release/spore

.PHONY: all deps guest kernel agent initramfs rootfs test-guest spore run test check

all: guest spore

deps:
	bash resources/install-deps.sh

kernel: deps
	bash guest-kernel/build.sh

agent: deps
	bash resources/build-agent.sh

initramfs: agent
	bash resources/build-initramfs.sh

rootfs: deps
	bash resources/build-rootfs.sh
	sh resources/build-rootfs-image.sh

test-guest:
	bash resources/build-test-guest.sh

# The guest image: kernel, initramfs with the agent, the busybox rootfs.
guest: kernel initramfs rootfs

spore:
	$(CARGO) build --release -p spore-api -p spore-agent

# Build everything and run spore's main job on the built-in default.
run: all
	bash resources/run-default.sh $(SPORE)

# Build everything and run every test tier this host supports.
test: all test-guest
	$(CARGO) test --workspace --release --no-fail-fast -- --test-threads=2

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
