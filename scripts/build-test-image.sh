#!/usr/bin/env bash
# Builds the local image `busybox:latest` that the quickstart, the README's
# examples and the Docker tests use. No registry is needed: the rootfs is
# Debian's busybox-static, loaded with `docker import`. Idempotent.
set -euo pipefail
image=${SHEPHERD_TEST_IMAGE:-busybox:latest}

if ! command -v docker >/dev/null 2>&1; then
    echo "build-test-image: docker CLI not found" >&2
    exit 1
fi
if docker image inspect "$image" >/dev/null 2>&1 && [ "${1:-}" != "--force" ]; then
    exit 0
fi
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    echo "build-test-image: installing busybox-static" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq busybox-static >/dev/null
fi
busybox=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/bin/busybox$' || echo /bin/busybox)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,work}
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
    --change 'CMD ["sh"]' \
    - "$image" >/dev/null
echo "build-test-image: built $image" >&2
