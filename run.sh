#!/bin/sh
# Container entry (CMD ["sh", "/home/run.sh"]); POSIX sh, since that is dash on Debian and Ubuntu.
# Lifecycle only: start Triton, wait until it is ready, start gunicorn, then watch both.
# On SIGTERM (or SIGINT): /health -> 503, keep serving for GRACE_PERIOD s, stop gunicorn gracefully
# (in-flight requests finish), then stop Triton, and exit 0. If either child dies on its own, stop
# the other and exit 1.
set -eu

APP_HOME=${APP_HOME:-$(cd "$(dirname "$0")" && pwd)}
# The model repository: MODEL_REPOSITORY, else a ModelArts model package at /home/mind/model when it holds a model,
# else the one in the image. Its config.json, when it carries one (as a model package does), is the one served.
MODEL_PACKAGE=${MODEL_PACKAGE:-/home/mind/model}
if [ -z "${MODEL_REPOSITORY:-}" ]; then
    MODEL_REPOSITORY=$APP_HOME/model_repository
    for f in "$MODEL_PACKAGE"/*/config.pbtxt; do
        [ -f "$f" ] && MODEL_REPOSITORY=$MODEL_PACKAGE
        break
    done
fi
if [ -z "${MODELARTS_CONFIG:-}" ]; then
    MODELARTS_CONFIG=$APP_HOME/config.json
    [ ! -f "$MODEL_REPOSITORY/config.json" ] || MODELARTS_CONFIG=$MODEL_REPOSITORY/config.json
fi
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
export MODEL_REPOSITORY MODELARTS_CONFIG TRITON_GRPC_PORT TRITON_HTTP_PORT TRITON_METRICS_PORT DRAIN_FILE PROMETHEUS_MULTIPROC_DIR
export PYTHONPATH="$APP_HOME${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

log() { printf '%s run.sh: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }

triton_pid=
gunicorn_pid=
# Past these, a child that was asked to stop is killed: gunicorn's own drain plus a margin, and Triton's
# --exit-timeout-secs plus a margin.
gunicorn_limit=$(( GRACEFUL_TIMEOUT + 15 ))
triton_limit=45
nap_pid=
stopping=
interrupted=
trap 'stopping=1' TERM
trap 'stopping=1; interrupted=1' INT

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
    if [ -n "$interrupted" ]; then   # Ctrl-C reached every process of the terminal: a stop asked for, not a fault
        log "interrupted (Ctrl-C): $1 stopped (exit $rc); stopping the rest"
        stop gunicorn "$gunicorn_pid" "$gunicorn_limit"
        stop Triton "$triton_pid" "$triton_limit"
        rm -f "$DRAIN_FILE"
        log "shutdown complete"
        exit 0
    fi
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
    # Whole seconds counted, not `date +%s` compared: that made the grace period up to a second short.
    # sleep runs in the foreground, so a second signal does not cut the grace period short either.
    waited=0
    if [ -n "$interrupted" ]; then   # Ctrl-C: no grace period, the terminal's user is here
        log "stop requested (Ctrl-C): /health now answers 503; no grace period, stopping now"
        waited=$GRACE_PERIOD
    else
        log "stop requested: /health now answers 503; serving on for the ${GRACE_PERIOD}s grace period" \
            "(until $(date -u -d "@$(( $(date +%s) + GRACE_PERIOD ))" +%H:%M:%SZ 2>/dev/null || echo "+${GRACE_PERIOD}s"))"
    fi
    while [ "$waited" -lt "$GRACE_PERIOD" ]; do
        check_children
        sleep 1
        waited=$(( waited + 1 ))
        # A line every 10 s, so that a user watching the log sees the stop is under way, not hung.
        if [ $(( waited % 10 )) -eq 0 ] && [ "$waited" -lt "$GRACE_PERIOD" ]; then
            log "grace period: $(( GRACE_PERIOD - waited ))s left, still serving"
        fi
    done
    if [ -n "$interrupted" ]; then
        log "stopping gunicorn"
    else
        log "grace period over: stopping gunicorn (in-flight requests finish first)"
    fi
    stop gunicorn "$gunicorn_pid" "$gunicorn_limit"
    log "stopping Triton"
    stop Triton "$triton_pid" "$triton_limit"
    rm -f "$DRAIN_FILE"
    [ -z "$nap_pid" ] || kill "$nap_pid" 2>/dev/null || true
    log "shutdown complete"
    exit 0
}

rm -f "$DRAIN_FILE" "$DRAIN_FILE".crashed.*   # crash marks of a model (serving/triton/readiness.py) are per run
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/serving-run.XXXXXX")   # Triton's output pipe and its load errors
trap 'rm -rf "$PROMETHEUS_MULTIPROC_DIR" "$run_dir"' EXIT
# The proxy's port, checked before anything starts (else gunicorn's "Address already in use" comes only after
# Triton has loaded every model).
PORT=${PORT:-8080}
if ! "$PROXY_PYTHON" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))' "$PORT" 2>/dev/null; then
    log "port $PORT is taken (another service listens on it): stop that one, or set PORT to a free port"
    exit 1
fi
# A config.json that cannot be served stops the start before Triton loads anything.
if ! why=$("$PROXY_PYTHON" -m serving.modelarts "$MODELARTS_CONFIG" 2>&1); then
    log "$why"
    exit 1
fi
# HTTPS when its apis say https (serving/tls.py): TLS_CERT and TLS_KEY checked, or a self-signed pair made.
if ! tls=$("$PROXY_PYTHON" -m serving.tls "$MODELARTS_CONFIG" "$run_dir/tls" 2>&1); then
    log "$tls"
    exit 1
fi
if [ -n "$tls" ]; then
    log "$(echo "$tls" | sed -n 1p)"
    SERVING_TLS_CERTFILE=$(echo "$tls" | sed -n 2p)
    SERVING_TLS_KEYFILE=$(echo "$tls" | sed -n 3p)
    export SERVING_TLS_CERTFILE SERVING_TLS_KEYFILE
fi
model_bin=$(dirname "$(command -v "$MODEL_PYTHON")")
log "starting Triton: repository $MODEL_REPOSITORY, config $MODELARTS_CONFIG, models' python $model_bin/python3"
# Without a GPU, Triton is told so (no GPU metrics, no CUDA memory pools) instead of logging four CUDA errors.
gpu_args=
if ! ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
    gpu_args="--allow-gpu-metrics=false --pinned-memory-pool-byte-size=0 --cuda-memory-pool-byte-size=0:0"
    log "no GPU on this machine (no /dev/nvidia*): Triton runs on the CPU, without GPU metrics or CUDA memory pools"
fi
# MODEL_LOADING=on-demand (serving/loading/): Triton loads only MODELS_PINNED at start-up; the proxy loads the
# others on their first request, and unloads the least recently used beyond MAX_LOADED_MODELS.
loading_args=
case ${MODEL_LOADING:-all} in
    all) ;;
    on-demand)
        # Not strict readiness: one model that failed to load must not make the whole server unready (the
        # proxy's /health watches the pinned models itself).
        loading_args="--model-control-mode=explicit --strict-readiness=false"
        for m in $(echo "${MODELS_PINNED:-}" | tr ',' ' '); do loading_args="$loading_args --load-model=$m"; done
        LOADING_DIR=$run_dir/loading
        mkdir -p "$LOADING_DIR"
        export LOADING_DIR MODEL_REPOSITORY
        log "models load on demand: pinned ${MODELS_PINNED:-none}, at most ${MAX_LOADED_MODELS:-0} loaded (0: no limit)"
        ;;
    *) log "MODEL_LOADING=$MODEL_LOADING: give all or on-demand"; exit 1 ;;
esac
# Triton's output passes through awk on its way to stdout: the lines that say why a model failed to load are also
# kept, for run.sh to repeat if Triton exits at start-up. Without a GPU, the one CUDA line no flag avoids is dropped.
load_errors=$run_dir/triton-load-errors
triton_out=$run_dir/triton-out
mkfifo "$triton_out"
# mawk (Debian's and Ubuntu's awk) reads a pipe in blocks unless told otherwise: Triton's lines would come late.
awk_opts=
awk -W version 2>&1 | grep -q mawk && awk_opts="-W interactive"
# shellcheck disable=SC2086
awk $awk_opts -v keep="$load_errors" -v gpu="${gpu_args:+none}" '
    gpu == "none" && /CudaDriverHelper has not been initialized/ { next }
    { print; fflush() }
    /failed to load .* version|[|] UNAVAILABLE: / { line = $0; sub(/\\n.*/, "", line); print line >>keep; fflush(keep) }
    ' <"$triton_out" &
# Triton's python backend embeds the python3 found first on PATH, hence the PATH.
# OMP_WAIT_POLICY=PASSIVE: a torch model's OpenMP threads sleep between parallel regions instead of spinning on CPUs
# that the proxy and Triton's front end need: MNIST on 2 cores took 1.5 ms of CPU per image instead of 2.4 to 2.8,
# and perf_analyzer through :8080 went from 0.85 to 1.0 of direct (docs/v2-and-perf-analyzer.md). Set it to override.
# shellcheck disable=SC2086 # the *_args and TRITON_ARGS are lists of flags
PATH="$model_bin:$PATH" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" "$TRITON_HOME/bin/tritonserver" \
    --model-repository="$MODEL_REPOSITORY" \
    --backend-directory="$TRITON_HOME/backends" \
    --http-address=127.0.0.1 --http-port="$TRITON_HTTP_PORT" \
    --grpc-address=127.0.0.1 --grpc-port="$TRITON_GRPC_PORT" \
    --metrics-address=127.0.0.1 --metrics-port="$TRITON_METRICS_PORT" \
    --exit-timeout-secs=30 \
    $gpu_args $loading_args $TRITON_ARGS >"$triton_out" 2>&1 &
triton_pid=$!

started=$(date +%s)
while :; do
    rc=0
    why=$("$PROXY_PYTHON" -m serving.probe 2>&1) || rc=$?
    [ "$rc" -ne 0 ] || break
    if [ "$rc" -eq 2 ]; then
        log "$why"
        stop Triton "$triton_pid" "$triton_limit"
        exit 1
    fi
    [ -z "$stopping" ] || shutdown
    if ! alive "$triton_pid" && [ -s "$load_errors" ]; then
        sleep 0.2   # the last of Triton's lines
        log "Triton stopped at start-up; why, from its log:"
        sort -u "$load_errors" | while IFS= read -r line; do log "  $line"; done
    fi
    check_children
    if [ $(( $(date +%s) - started )) -ge "$STARTUP_TIMEOUT" ]; then
        log "Triton not ready after ${STARTUP_TIMEOUT}s ($why); stopping"
        stop Triton "$triton_pid" "$triton_limit"
        exit 1
    fi
    nap 0.5
done
log "Triton ready after $(( $(date +%s) - started ))s; starting gunicorn"
[ -z "$why" ] || echo "$why" | while IFS= read -r line; do log "$line"; done   # models that no api serves

# Bind, gevent workers, keep-alive 200 and the graceful timeout are in serving/gunicorn.conf.py.
# TRITON_PID: /health watches the processes of Triton's python models (a model whose process died is reported
# before a request fails on it: serving/triton/readiness.py).
TRITON_PID=$triton_pid "$PROXY_PYTHON" -m gunicorn --config "$APP_HOME/serving/gunicorn.conf.py" \
    --chdir "$APP_HOME" "serving.app:create_app()" 2>&1 &
gunicorn_pid=$!

while :; do
    [ -z "$stopping" ] || shutdown
    check_children
    nap 0.5   # a child that dies is noticed within half a second
done
