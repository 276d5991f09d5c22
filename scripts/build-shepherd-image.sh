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
# The static warm-container runner beside it (where the node looks), so
# that machines made from this image run warm tasks too.
runner=${SHEPHERD_RUNNER_STATIC:-$(dirname "$bin")/../x86_64-unknown-linux-gnu/release/shepherd-runner}
if [ -f "$runner" ]; then
    cp "$runner" "$root/usr/local/bin/shepherd-runner"
else
    echo "build-shepherd-image: no static shepherd-runner at $runner: machines of this image run tasks with reuse cold" >&2
fi
# The dynamic loader and every library the binary links, at the same paths.
for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
if [ -x /bin/busybox ]; then cp /bin/busybox "$root/bin/busybox"; ln -s busybox "$root/bin/sh"; fi
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
tar -C "$root" -c . | docker import --change 'ENTRYPOINT ["/usr/local/bin/shepherd"]' - "$image" >/dev/null
echo "build-shepherd-image: built $image from $bin" >&2
