"""The environment, read once at start-up into typed settings. Every knob of the proxy is here."""
import os
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _number(name, default, kind=int):
    raw = os.environ.get(name, "")
    try:
        return kind(raw) if raw.strip() else default
    except ValueError:
        raise SystemExit(f"settings: {name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None


def _int(name, default):
    return _number(name, default, int)


def _float(name, default):
    return _number(name, default, float)


def available_cpus():
    """CPUs this container may use: its CPU affinity, capped by a cgroup CPU quota (a ModelArts flavour's
    cores), which os.cpu_count() does not see."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:                       # cgroup v2: "<quota> <period>" or "max ..."
            quota, period = f.read().split()[:2]
            quota, period = (-1 if quota == "max" else int(quota)), int(period)
    except (OSError, ValueError):
        try:                                                           # cgroup v1
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
                quota, period = int(f.read()), int(g.read())
        except (OSError, ValueError):
            quota, period = -1, 1
    if quota > 0 and period > 0:
        cpus = min(cpus, max(1, -(-quota // period)))
    return max(1, cpus)


def _choice(name, choices):
    raw = os.environ.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise SystemExit(f"settings: {name}={raw!r} is not one of {', '.join(choices)}")
    return raw


def _bool(name, default):
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw in ("1", "true", "yes", "on")


ASYNC_TIMEOUT_S = 3600.0   # REQUEST_MODE=async: a call's default deadline


@dataclass(frozen=True)
class Settings:
    modelarts_config: str       # the ModelArts config.json whose apis become routes
    triton_grpc_url: str        # Triton's private gRPC endpoint
    triton_http_port: int       # Triton's private HTTP port, behind the KServe v2 pass-through
    triton_metrics_url: str     # Triton's private metrics, appended to /metrics
    request_mode: str           # "sync" (ModelArts' default: calls within 60 s) or "async" (its asynchronous request
                                # mode: long calls, docs/long-running.md)
    request_timeout_s: float    # deadline of one predict call to Triton (ModelArts fails sync calls at 60 s)
    health_timeout_s: float     # deadline of one readiness probe to Triton
    health_cache_s: float       # how long one readiness answer is reused, so /health stays cheap under load
    max_body_bytes: int         # larger request bodies get 413
    drain_file: str             # present => /health answers 503 (run.sh creates it on SIGTERM)
    listen_port: int
    workers: int
    graceful_timeout_s: int     # how long gunicorn lets in-flight requests finish on stop (<= 90)
    access_log: bool
    inflight_per_model: int     # gRPC calls in flight per model per worker; more wait their turn in the worker
    streams_per_model: int      # a decoupled model's open streams per worker (an LLM backend batches many at once)
    model_bindings: str         # explicit api -> model bindings, "/url=model[:version],..." (serving/binding.py)
    metrics: bool               # /metrics and the per-request series behind it
    kserve_v2: bool             # the /v2/... pass-through to Triton's HTTP API (serving/handlers/v2.py)
    v2_connections: int         # keep-alive connections to Triton's HTTP port per worker
    model_loading: str          # "all" (Triton loads every model at start-up) or "on-demand" (serving/loading/)
    models_pinned: tuple        # on-demand: models loaded at start-up that never unload
    max_loaded_models: int      # on-demand: at most this many models loaded at once (0: no limit)
    model_memory_budget: int    # on-demand: bytes the loaded models may hold (0: no limit; serving/loading.Memory)
    model_min_residency_s: float  # on-demand: a model just loaded is not unloaded for others before this long
    model_repository: str       # on-demand: the repository whose config.pbtxt files bind the routes
    loading_dir: str            # on-demand: the workers' lock files (run.sh makes one per run)
    stream_heartbeat_s: float   # a decoupled model's stream: a comment line after this long without a response
    triton_pid: int             # Triton's process (run.sh says), whose python models' processes /health watches

    @classmethod
    def from_env(cls):
        return cls(
            modelarts_config=os.environ.get("MODELARTS_CONFIG") or os.path.join(ROOT, "config.json"),
            triton_grpc_url=f"127.0.0.1:{_int('TRITON_GRPC_PORT', 8001)}",
            triton_http_port=_int("TRITON_HTTP_PORT", 8000),
            triton_metrics_url=f"http://127.0.0.1:{_int('TRITON_METRICS_PORT', 8002)}/metrics",
            request_mode=_choice("REQUEST_MODE", ("sync", "async")),
            # async: an hour, as long as SageMaker's asynchronous endpoints let one call run (InvocationTimeoutSeconds
            # at most 3600); the platform's own task timeout is the real limit (docs/long-running.md)
            request_timeout_s=_float("REQUEST_TIMEOUT", ASYNC_TIMEOUT_S if _choice("REQUEST_MODE", ("sync", "async"))
                                     == "async" else 30.0),
            health_timeout_s=_float("HEALTH_TIMEOUT", 2.0),
            health_cache_s=_float("HEALTH_CACHE", 1.0),
            max_body_bytes=_int("MAX_BODY_MB", 16) * 1024 * 1024,
            drain_file=os.environ.get("DRAIN_FILE") or "/tmp/serving.draining",
            listen_port=_int("PORT", 8080),
            workers=_int("WORKERS", available_cpus()),   # one per core: see benchmarks/results/workers.md
            graceful_timeout_s=min(_int("GRACEFUL_TIMEOUT", 85), 90),
            access_log=_bool("ACCESS_LOG", True),
            model_bindings=os.environ.get("MODEL_BINDINGS", ""),
            inflight_per_model=max(1, _int("INFLIGHT_PER_MODEL", 8)),
            streams_per_model=max(1, _int("STREAMS_PER_MODEL", 64)),
            metrics=_bool("METRICS", True),
            kserve_v2=_bool("KSERVE_V2", True),
            v2_connections=max(1, _int("V2_CONNECTIONS", 64)),
            model_loading=_choice("MODEL_LOADING", ("all", "on-demand")),
            models_pinned=tuple(m.strip() for m in os.environ.get("MODELS_PINNED", "").split(",") if m.strip()),
            max_loaded_models=max(0, _int("MAX_LOADED_MODELS", 0)),
            model_memory_budget=max(0, _int("MODEL_MEMORY_BUDGET", 0)),
            model_min_residency_s=max(0.0, _float("MODEL_MIN_RESIDENCY", 1.0)),
            model_repository=os.environ.get("MODEL_REPOSITORY") or os.path.join(ROOT, "model_repository"),
            loading_dir=os.environ.get("LOADING_DIR") or "/tmp/serving-loading",
            stream_heartbeat_s=max(0.1, _float("STREAM_HEARTBEAT", 5.0)),
            triton_pid=_int("TRITON_PID", 0),
        )
