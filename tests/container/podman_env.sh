# Sourced: podman with a private store under $W, runc, and ulimits this host accepts.
# Defines pm (podman with the store) and writes $W/docker, a docker-compatible wrapper for build scripts.
mkdir -p "$W"
W=$(cd "$W" && pwd)
n=$(ulimit -Hn)
cat >"$W/containers.conf" <<CONF
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=$n:$n", "nproc=32768:32768"]
CONF
export CONTAINERS_CONF="$W/containers.conf"
pm() { podman --root "$W/storage" --runroot "$W/run" "$@"; }
cat >"$W/docker" <<WRAP
#!/bin/sh
CONTAINERS_CONF="$W/containers.conf" exec podman --root "$W/storage" --runroot "$W/run" "\$@"
WRAP
chmod +x "$W/docker"
