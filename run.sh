#!/bin/sh
# Container entry (CMD ["sh", "/home/run.sh"]); POSIX sh, since that is dash on Debian and Ubuntu.
# Lifecycle only: start Triton, wait until it is ready, start gunicorn, then watch both.
# On SIGTERM (or SIGINT): /health -> 503, keep serving for GRACE_PERIOD s, stop gunicorn gracefully
# (in-flight requests finish), then stop Triton, and exit 0. If either child dies on its own, stop
# the other and exit 1.
set -eu

APP_HOME=${APP_HOME:-$(cd "$(dirname "$0")" && pwd)}
MODEL_REPOSITORY=${MODEL_REPOSITORY:-$APP_HOME/model_repository}
MODELARTS_CONFIG=${MODELARTS_CONFIG:-$APP_HOME/config.json}
TRITON_HOME=${TRITON_HOME:-/opt/tritonserver}
MODEL_PYTHON=${MODEL_PYTHON:-python3}   # the python3 that Triton's python backend embeds
PROXY_PYTHON=${PROXY_PYTHON:-python3}   # the python3 that runs gunicorn
TRITON_HTTP_PORT=${TRITON_HTTP_PORT:-8000}
TRITON_GRPC_PORT=${TRITON_GRPC_PORT:-8001}
TRITON_METRICS_PORT=${TRITON_METRICS_PORT:-8002}
TRITON_ARGS=${TRITON_ARGS:-}
GRACE_PERIOD=${GRACE_PERIOD:-60}
GRACEFUL_TIMEOUT=${GRACEFUL_TIMEOUT:-85}   # gunicorn's drain of in-flight requests (serving/gunicorn.conf.py)
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-600}
DRAIN_FILE=${DRAIN_FILE:-/tmp/serving.draining}
# The workers' metric files (serving/metrics.py): one fresh folder per run, removed on exit.
PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-${TMPDIR:-/tmp}/serving-metrics.$$}
export MODELARTS_CONFIG TRITON_GRPC_PORT TRITON_HTTP_PORT TRITON_METRICS_PORT DRAIN_FILE PROMETHEUS_MULTIPROC_DIR
export PYTHONPATH="$APP_HOME${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) run.sh: $*"; }

triton_pid=
gunicorn_pid=
# Past these, a child that was asked to stop is killed: gunicorn's own drain plus a margin, and Triton's
# --exit-timeout-secs plus a margin.
gunicorn_limit=$(( GRACEFUL_TIMEOUT + 15 ))
triton_limit=45
nap_pid=
stopping=
trap 'stopping=1' TERM INT

# Sleep in the background so that a signal interrupts the wait at once.
nap() { sleep "$1" & nap_pid=$!; wait "$nap_pid" || true; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# stop NAME PID LIMIT: SIGTERM, then up to LIMIT s for PID to exit (a second signal does not cut this short),
# then SIGKILL. PID is gone when this returns.
stop() {
    alive "$2" || return 0
    kill -TERM "$2" 2>/dev/null || true
    ticks=0
    while alive "$2"; do
        if [ "$ticks" -ge $(( $3 * 5 )) ]; then
            log "$1 still running after $3s; killing it"
            kill -KILL "$2" 2>/dev/null || true
        fi
        nap 0.2
        ticks=$(( ticks + 1 ))
    done
    rc=0
    wait "$2" || rc=$?
    log "$1 stopped (exit $rc)"
}

# died NAME PID: PID has exited on its own; stop everything else and fail.
died() {
    rc=0
    wait "$2" || rc=$?
    log "$1 exited on its own (exit $rc); stopping"
    stop gunicorn "$gunicorn_pid" "$gunicorn_limit"
    stop Triton "$triton_pid" "$triton_limit"
    exit 1
}

check_children() {
    alive "$triton_pid" || died Triton "$triton_pid"
    [ -z "$gunicorn_pid" ] || alive "$gunicorn_pid" || died gunicorn "$gunicorn_pid"
}

shutdown() {
    : >"$DRAIN_FILE"
    log "stop requested: /health now answers 503; serving on for the ${GRACE_PERIOD}s grace period"
    # Whole seconds counted, not `date +%s` compared: that made the grace period up to a second short.
    # sleep runs in the foreground, so a second signal does not cut the grace period short either.
    waited=0
    while [ "$waited" -lt "$GRACE_PERIOD" ]; do
        check_children
        sleep 1
        waited=$(( waited + 1 ))
    done
    log "grace period over: stopping gunicorn (in-flight requests finish first)"
    stop gunicorn "$gunicorn_pid" "$gunicorn_limit"
    log "stopping Triton"
    stop Triton "$triton_pid" "$triton_limit"
    rm -f "$DRAIN_FILE"
    [ -z "$nap_pid" ] || kill "$nap_pid" 2>/dev/null || true
    log "shutdown complete"
    exit 0
}

rm -f "$DRAIN_FILE" "$DRAIN_FILE".crashed.*   # crash marks of a model (serving/triton.py) are per run
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
trap 'rm -rf "$PROMETHEUS_MULTIPROC_DIR"' EXIT
model_bin=$(dirname "$(command -v "$MODEL_PYTHON")")
log "starting Triton: repository $MODEL_REPOSITORY, models' python $model_bin/python3"
# Triton's python backend embeds the python3 found first on PATH, hence the PATH.
# shellcheck disable=SC2086 # TRITON_ARGS is a list of extra flags
PATH="$model_bin:$PATH" "$TRITON_HOME/bin/tritonserver" \
    --model-repository="$MODEL_REPOSITORY" \
    --backend-directory="$TRITON_HOME/backends" \
    --http-address=127.0.0.1 --http-port="$TRITON_HTTP_PORT" \
    --grpc-address=127.0.0.1 --grpc-port="$TRITON_GRPC_PORT" \
    --metrics-address=127.0.0.1 --metrics-port="$TRITON_METRICS_PORT" \
    --exit-timeout-secs=30 \
    $TRITON_ARGS 2>&1 &
triton_pid=$!

started=$(date +%s)
while :; do
    rc=0
    why=$("$PROXY_PYTHON" -m serving.triton 2>&1) || rc=$?
    [ "$rc" -ne 0 ] || break
    if [ "$rc" -eq 2 ]; then
        log "$why"
        stop Triton "$triton_pid" "$triton_limit"
        exit 1
    fi
    [ -z "$stopping" ] || shutdown
    check_children
    if [ $(( $(date +%s) - started )) -ge "$STARTUP_TIMEOUT" ]; then
        log "Triton not ready after ${STARTUP_TIMEOUT}s ($why); stopping"
        stop Triton "$triton_pid" "$triton_limit"
        exit 1
    fi
    nap 0.5
done
log "Triton ready after $(( $(date +%s) - started ))s; starting gunicorn"

# Bind, gevent workers, keep-alive 200 and the graceful timeout are in serving/gunicorn.conf.py.
"$PROXY_PYTHON" -m gunicorn --config "$APP_HOME/serving/gunicorn.conf.py" --chdir "$APP_HOME" \
    "serving.app:create_app()" 2>&1 &
gunicorn_pid=$!

while :; do
    [ -z "$stopping" ] || shutdown
    check_children
    nap 0.5   # a child that dies is noticed within half a second
done
