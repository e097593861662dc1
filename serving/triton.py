"""The one Triton gRPC client of a worker process: model info cached at start-up, readiness, infer.

Run as `python -m serving.triton` it is run.sh's readiness probe: exit 0 once Triton and every
model that config.json binds are ready.
"""
import logging
import sys
import threading
import time
from dataclasses import dataclass

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .errors import BadRequest, DeadlineExceeded, ServingError, Unavailable

log = logging.getLogger("serving.triton")

_client = None


class _Client(grpcclient.InferenceServerClient):
    def __del__(self):
        # Closed by close(), while gevent's hub still runs. Closing again from __del__ at interpreter exit
        # hangs in grpc's Channel.close() under gevent, and the worker never exits.
        pass


def connect(url):
    """Create this process's client. Call it after fork (gunicorn's post_fork), never before."""
    global _client
    _client = _Client(url)
    return _client


def close():
    global _client
    if _client is not None:
        _client.close()
        _client = None


def client(url):
    return _client if _client is not None else connect(url)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    inputs: dict        # name -> (datatype, shape); shape has -1 for the batch dimension when batched
    outputs: dict       # name -> (datatype, shape)
    batched: bool       # max_batch_size > 0


def model_info(c, name, version="", timeout=10.0):
    meta = c.get_model_metadata(name, version, as_json=True, client_timeout=timeout)
    config = c.get_model_config(name, version, as_json=True, client_timeout=timeout)["config"]

    def tensors(items):
        return {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in items}

    return ModelInfo(name=name, version=version, inputs=tensors(meta.get("inputs", [])),
                     outputs=tensors(meta.get("outputs", [])), batched=int(config.get("max_batch_size", 0)) > 0)


# gRPC status -> the HTTP error the caller sees.
_STATUS = {
    "StatusCode.INVALID_ARGUMENT": BadRequest,
    "StatusCode.DEADLINE_EXCEEDED": DeadlineExceeded,
    "StatusCode.UNAVAILABLE": Unavailable,
    "StatusCode.NOT_FOUND": Unavailable,
    "StatusCode.RESOURCE_EXHAUSTED": Unavailable,
    "StatusCode.CANCELLED": Unavailable,
}


def translate(exc, timeout):
    status = exc.status() or ""
    kind = _STATUS.get(status)
    if kind is DeadlineExceeded:
        return DeadlineExceeded(f"inference did not finish within {timeout:g} s")
    if kind is Unavailable and status in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"):
        return Unavailable("inference server is not reachable")
    if kind is not None:
        return kind(exc.message())
    return ServingError(f"inference failed: {exc.message()}")


def requested_outputs(names):
    return [grpcclient.InferRequestedOutput(n) for n in names]


def infer(c, info, tensors, outputs, timeout):
    """One gRPC call. `tensors` maps input name -> numpy array, `outputs` comes from requested_outputs();
    returns output name -> numpy array."""
    inputs = []
    for name, arr in tensors.items():
        item = grpcclient.InferInput(name, list(arr.shape), info.inputs[name][0])
        item.set_data_from_numpy(arr)
        inputs.append(item)
    try:
        result = c.infer(info.name, inputs, model_version=info.version, outputs=outputs, client_timeout=timeout)
    except InferenceServerException as exc:
        raise translate(exc, timeout) from None
    return {o.name(): result.as_numpy(o.name()) for o in outputs}


class Readiness:
    """Triton readiness for /health: server ready and every bound model ready.

    One probe per `ttl` seconds per worker, however many /health calls arrive; the others reuse its answer.
    """

    def __init__(self, c, models, timeout, ttl):
        self.client, self.models, self.timeout, self.ttl = c, list(models), timeout, ttl
        self.lock = threading.Lock()
        self.checked_at, self.reason = float("-inf"), "not checked yet"

    def probe(self):
        """None when ready, else why not."""
        try:
            if not self.client.is_server_ready(client_timeout=self.timeout):
                return "inference server is not ready"
            for name, version in self.models:
                if not self.client.is_model_ready(name, version, client_timeout=self.timeout):
                    return f"model {name!r} is not ready"
        except InferenceServerException as exc:
            return f"inference server is not reachable: {exc.message() or exc.status()}"
        return None

    def check(self):
        if time.monotonic() - self.checked_at < self.ttl:
            return self.reason
        with self.lock:
            if time.monotonic() - self.checked_at >= self.ttl:
                self.reason = self.probe()
                self.checked_at = time.monotonic()
            return self.reason


def main():
    """Exit 0 when ready, 1 when not yet, 2 when config.json is unusable (waiting will not help)."""
    from . import modelarts
    from .errors import ConfigError
    from .settings import Settings
    settings = Settings.from_env()
    try:
        routes = modelarts.load(settings.modelarts_config).routes
    except ConfigError as exc:
        print(f"config.json: {exc}")
        return 2
    models = sorted({(r.model, r.version) for r in routes})
    reason = Readiness(connect(settings.triton_grpc_url), models, settings.health_timeout_s, 0).probe()
    if reason:
        print(f"not ready: {reason}")
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
