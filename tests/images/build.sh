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

case "${1:-}" in
    "" | --force) force=${1:-} ;;
    *)
        echo "usage: $0 [--force]   (--force rebuilds images that exist)" >&2
        exit 2
        ;;
esac

if ! command -v docker >/dev/null; then
    echo "build.sh: the docker CLI is not installed; the test images are built with it" >&2
    exit 1
fi
have() { docker image inspect "$1" >/dev/null 2>&1; }
if [[ "$force" != --force ]] && have shoal-test/busybox:1 && have shoal-test/busybox:2 && have shoal-test/busybox:unhealthy; then
    exit 0
fi

# The images hold nothing but busybox, so it must be the static build: a
# dynamic one would find no C library inside them. ldd fails on static
# binaries.
busybox=
for candidate in /bin/busybox /usr/bin/busybox; do
    if [[ -x "$candidate" ]] && ! ldd "$candidate" >/dev/null 2>&1; then
        busybox=$candidate
        break
    fi
done
if [[ -z "$busybox" ]]; then
    echo "build.sh: no statically linked busybox in /bin or /usr/bin; install it with:" >&2
    echo "    apt-get install -y busybox-static" >&2
    exit 1
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
