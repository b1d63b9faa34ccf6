#!/usr/bin/env bash
# Builds the images the tests run, without any registry: a root filesystem
# holding Debian's static busybox, imported with `docker import`.
#
#   shoal-test/busybox:1          sleeps forever by default
#   shoal-test/busybox:2          the same, marked as version 2 (rolling updates)
#   shoal-test/busybox:unhealthy  with a HEALTHCHECK that always fails
#
# Quick when the images exist already; --force rebuilds them.
set -euo pipefail

busybox=/bin/busybox
if [[ ! -x "$busybox" ]] || ! file -L "$busybox" 2>/dev/null | grep -q static; then
    for candidate in /bin/busybox /usr/bin/busybox; do
        [[ -x "$candidate" ]] && busybox="$candidate"
    done
fi
if [[ ! -x "$busybox" ]]; then
    echo "build.sh: no busybox found; install it with: apt-get install -y busybox-static" >&2
    exit 1
fi

force=${1:-}
have() { docker image inspect "$1" >/dev/null 2>&1; }
if [[ "$force" != --force ]] && have shoal-test/busybox:1 && have shoal-test/busybox:2 && have shoal-test/busybox:unhealthy; then
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$rootfs/www"
cp "$busybox" "$rootfs/bin/busybox"
for applet in sh ash sleep echo cat ls true false date env hostname id nc wget httpd ps kill printf seq yes head tail grep; do
    ln -sf busybox "$rootfs/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" >"$rootfs/etc/passwd"
echo "hello from shoal" >"$rootfs/www/index.html"

build() {
    local tag=$1 version=$2; shift 2
    echo "$version" >"$rootfs/version"
    tar -C "$rootfs" -cf "$work/rootfs.tar" .
    docker import "$@" \
        --change "ENV PATH=/bin SHOAL_TEST_VERSION=$version" \
        --change 'CMD ["sleep", "infinity"]' \
        "$work/rootfs.tar" "$tag" >/dev/null
    echo "built $tag"
}
build shoal-test/busybox:1 1
build shoal-test/busybox:2 2
build shoal-test/busybox:unhealthy unhealthy \
    --change 'HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD false'
