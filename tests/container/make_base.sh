#!/bin/sh
# Make the test base image localhost/triton-base:24.10 with podman, from nothing but Debian's mirror and the
# nvidia-pytriton wheel in the project's venv. Usage: make_base.sh WORKDIR PYTHON
#   WORKDIR  podman's private store and scratch space (build/podman)
#   PYTHON   the venv python whose site-packages hold pytriton/tritonserver
set -eu
W=$1
PY=$2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/podman_env.sh"

if ! pm image exists localhost/debian-minbase:bookworm; then
    # The mirror apt already uses on this host.
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n 1)
    mirror=${mirror:-http://deb.debian.org/debian}
    rm -rf "$W/rootfs"
    debootstrap --variant=minbase bookworm "$W/rootfs" "$mirror" >"$W/debootstrap.log" 2>&1 \
        || { tail -n 20 "$W/debootstrap.log"; exit 1; }
    rm -rf "$W/rootfs/var/cache/apt/archives/"*.deb "$W/rootfs/var/lib/apt/lists/"*
    tar -C "$W/rootfs" -c . | pm import - localhost/debian-minbase:bookworm
    rm -rf "$W/rootfs"
fi

if ! pm image exists localhost/triton-base:24.10; then
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    ctx="$W/base-context"
    rm -rf "$ctx"
    mkdir -p "$ctx/tritonserver/backends/python" "$ctx/tritonserver/lib"
    cp -a "$site/pytriton/tritonserver/bin" "$site/pytriton/tritonserver/caches" "$ctx/tritonserver/"
    cp -a "$site/pytriton/tritonserver/backends/python/libtriton_python.so" \
          "$site/pytriton/tritonserver/backends/python/triton_python_backend_utils.py" "$ctx/tritonserver/backends/python/"
    # Debian 12's python3 is 3.11: its stub, where the NGC image has 3.10's.
    cp "$site/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" "$ctx/tritonserver/backends/python/"
    cp -a "$site/nvidia_pytriton.libs/." "$ctx/tritonserver/lib/"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/build-host-ca.crt"
    cp "$HERE/Dockerfile.base" "$ctx/Dockerfile"
    pm build --network host -t localhost/triton-base:24.10 "$ctx"
    rm -rf "$ctx"
fi
