#!/usr/bin/env bash
# Builds a local Docker image holding the shepherd binary and the shared
# libraries it links (no registry, no Dockerfile base image): used by the
# multi-host tests to run a server and agents as containers.
#   scripts/build-shepherd-image.sh BINARY [IMAGE]   (default image shepherd:test)
set -euo pipefail
bin=${1:?usage: build-shepherd-image.sh BINARY [IMAGE]}
image=${2:-shepherd:test}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,usr/local/bin,tmp,etc,data}
chmod 1777 "$root/tmp"
cp "$bin" "$root/usr/local/bin/shepherd"
# The dynamic loader and every library the binary links, at the same paths.
for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
if [ -x /bin/busybox ]; then cp /bin/busybox "$root/bin/busybox"; ln -s busybox "$root/bin/sh"; fi
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
tar -C "$root" -c . | docker import --change 'ENTRYPOINT ["/usr/local/bin/shepherd"]' - "$image" >/dev/null
echo "build-shepherd-image: built $image from $bin" >&2
