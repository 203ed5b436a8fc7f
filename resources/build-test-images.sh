#!/bin/sh
# Build small OCI test images from Debian's busybox-static, each in three formats:
# an OCI image-layout directory, an OCI archive (tar of the layout) and a
# docker-archive (`docker save` layout: manifest.json, <id>.json, <id>/layer.tar).
#
#   busybox   one gzip'd layer: busybox and its applet symlinks, /etc/passwd.
#   twolayer  the busybox layer plus a plain-tar second layer that deletes
#             (.wh.) and replaces files of the first, makes /data opaque and
#             refills it, and adds a hardlink and a symlink; its config sets
#             Env, WorkingDir, User and Cmd.
#
# Usage: resources/build-test-images.sh [OUT]   (default target/test-images)
# Output: OUT/{busybox,twolayer}/ (layout), OUT/*-oci.tar, OUT/*-docker.tar.
# Needs root (files owned by uid 1000). Reproducible: fixed mtimes, sorted tars.
set -eu

ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-"$ROOT_DIR/target/test-images"}
BUSYBOX=/bin/busybox
MTIME=1700000000

if ! [ -x "$BUSYBOX" ] || ! "$BUSYBOX" --list >/dev/null 2>&1; then
    apt-get install -y busybox-static
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/spore-test-images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# pack DIR TAR: a reproducible tar of DIR's contents, owners kept as numbers.
pack() {
    tar --sort=name --mtime=@$MTIME --numeric-owner --format=pax \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$1" -cf "$2" .
}

# --- layer 1: busybox ------------------------------------------------------
L1="$WORK/l1"
mkdir -p "$L1/bin" "$L1/etc" "$L1/tmp" "$L1/root" "$L1/app" "$L1/data/sub" \
    "$L1/usr/share/doc" "$L1/secret"
install -m 0755 "$BUSYBOX" "$L1/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$L1/bin/$applet"
done
ln "$L1/bin/busybox" "$L1/bin/busybox-hard"
chmod 1777 "$L1/tmp"
chmod 0700 "$L1/root" "$L1/secret"
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/app:/bin/sh\n' > "$L1/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' > "$L1/etc/group"
echo base > "$L1/etc/motd"
echo doomed > "$L1/etc/remove-me"
echo keep > "$L1/data/keep"
echo old > "$L1/data/sub/old"
echo doc > "$L1/usr/share/doc/readme"
echo setuid > "$L1/bin/suid-file"
chmod 4755 "$L1/bin/suid-file"
echo hidden > "$L1/secret/key"
chmod 0600 "$L1/secret/key"
chown 1000:1000 "$L1/app"
pack "$L1" "$WORK/l1.tar"
gzip -n -9 -c "$WORK/l1.tar" > "$WORK/l1.tar.gz"

# --- layer 2: whiteouts, an opaque dir, replacements ------------------------
L2="$WORK/l2"
mkdir -p "$L2/etc" "$L2/data/sub" "$L2/usr/share" "$L2/app"
: > "$L2/etc/.wh.remove-me"
: > "$L2/usr/share/.wh.doc"
echo two > "$L2/etc/motd"
: > "$L2/data/.wh..wh..opq"
echo new > "$L2/data/new"
echo fresh > "$L2/data/sub/fresh"
printf '#!/bin/sh\necho "$GREETING from $(pwd) as $(id -u)"\n' > "$L2/app/hello.sh"
chmod 0755 "$L2/app/hello.sh"
ln "$L2/app/hello.sh" "$L2/app/hello-hard"
ln -s /app/hello.sh "$L2/app/hello-link"
chown 1000:1000 "$L2/app" "$L2/app/hello.sh"
pack "$L2" "$WORK/l2.tar"

# layout NAME CONFIG_BODY LAYERS...: each layer given as "tarfile:gzip|plain".
layout() {
    name=$1; config_body=$2; shift 2
    dir="$OUT/$name"
    rm -rf "$dir" "$OUT/$name-oci.tar" "$OUT/$name-docker.tar"
    mkdir -p "$dir/blobs/sha256"
    diff_ids=""; layers_json=""; docker_layers=""
    dock="$WORK/docker-$name"; rm -rf "$dock"; mkdir -p "$dock"
    for spec in "$@"; do
        tarfile=${spec%%:*}; kind=${spec##*:}
        diff=$(sha "$tarfile")
        if [ "$kind" = gzip ]; then
            blob="$tarfile.gz"; media=application/vnd.oci.image.layer.v1.tar+gzip
        else
            blob="$tarfile"; media=application/vnd.oci.image.layer.v1.tar
        fi
        digest=$(sha "$blob")
        cp "$blob" "$dir/blobs/sha256/$digest"
        diff_ids="$diff_ids${diff_ids:+,}\"sha256:$diff\""
        layers_json="$layers_json${layers_json:+,}{\"mediaType\":\"$media\",\"digest\":\"sha256:$digest\",\"size\":$(size "$blob")}"
        mkdir -p "$dock/$diff"
        cp "$tarfile" "$dock/$diff/layer.tar"
        docker_layers="$docker_layers${docker_layers:+,}\"$diff/layer.tar\""
    done
    printf '{"architecture":"amd64","os":"linux","config":{%s},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
        "$config_body" "$diff_ids" > "$WORK/config.json"
    config=$(sha "$WORK/config.json")
    cp "$WORK/config.json" "$dir/blobs/sha256/$config"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
        "$config" "$(size "$WORK/config.json")" "$layers_json" > "$WORK/manifest.json"
    manifest=$(sha "$WORK/manifest.json")
    cp "$WORK/manifest.json" "$dir/blobs/sha256/$manifest"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"spore-test/%s:latest"}}]}' \
        "$manifest" "$(size "$WORK/manifest.json")" "$name" > "$dir/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' > "$dir/oci-layout"
    tar --sort=name --mtime=@$MTIME --owner=0 --group=0 --numeric-owner \
        -C "$dir" -cf "$OUT/$name-oci.tar" oci-layout index.json blobs
    cp "$WORK/config.json" "$dock/$config.json"
    printf '[{"Config":"%s.json","RepoTags":["spore-test/%s:latest"],"Layers":[%s]}]' \
        "$config" "$name" "$docker_layers" > "$dock/manifest.json"
    tar --sort=name --mtime=@$MTIME --owner=0 --group=0 --numeric-owner \
        -C "$dock" -cf "$OUT/$name-docker.tar" .
    echo "$name: sha256:$config ($# layers) -> $dir, $OUT/$name-oci.tar, $OUT/$name-docker.tar"
}

layout busybox '"Cmd":["/bin/sh"]' "$WORK/l1.tar:gzip"
layout twolayer \
    '"Env":["PATH=/bin","GREETING=hello"],"WorkingDir":"/app","User":"1000:1000","Cmd":["/bin/sh","/app/hello.sh"]' \
    "$WORK/l1.tar:gzip" "$WORK/l2.tar:plain"
