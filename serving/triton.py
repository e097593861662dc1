"""The one Triton gRPC client of a worker process: model info read once, readiness, and the infer call.

One HTTP/2 connection per worker (serving/grpc_wire/, gevent-native), made after fork, carrying tritonclient's
generated KServe v2 messages. Each predict
route gets an `InferCall` at start-up: its ModelInferRequest is prebuilt once (model, version, input names and
types, requested outputs), and a request only adds shapes and raw tensor bytes. Outputs are read from
`raw_output_contents` without a second copy.

Run as `python -m serving.triton` it is run.sh's readiness probe: exit 0 once Triton and every model that
config.json binds are ready.
"""
import logging
import os
import sys
import time

from gevent import getcurrent
from gevent.lock import Semaphore
from tritonclient.grpc import service_pb2

from . import codecs, drain, grpc_wire
from .errors import BadRequest, DeadlineExceeded, ServingError, Unavailable
from .grpc_wire import RpcError
from .repository import ModelInfo, read_repository
from .slots import Slots

SERVICE = "/inference.GRPCInferenceService/"
log = logging.getLogger("serving.triton")

_client = None


def slots(models, per_model):
    """One semaphore per model: each model has `per_model` calls in flight from this worker, so that a busy model
    queues its own requests and never holds what another model needs (one busy model once stalled all others:
    MNIST's p50 went from 8 ms to 312 ms while /embeddings took 64 clients, 23 ms straight to Triton)."""
    return [Slots(per_model) for _ in range(models)]


class Client:
    """This worker's connection to Triton's gRPC port (serving/grpc_wire/), shared by all its greenlets.

    `call("ModelInfer", request, timeout)` makes one unary call of GRPCInferenceService with tritonclient's
    generated messages and returns the response message, or raises grpc_wire.RpcError.
    """

    def __init__(self, url):
        host, _, port = url.rpartition(":")
        self.channel = grpc_wire.Channel(host, int(port))
        self.paths = {}

    def call(self, method, request, timeout):
        path = self.paths.get(method)
        if path is None:
            path = self.paths[method] = (SERVICE + method, getattr(service_pb2, method + "Response"))
        return self.channel.call(path[0], request, path[1], timeout)

    def stream(self, method, request, timeout):
        """A server-streaming call (grpc_wire.ResponseStream of the answers' bytes)."""
        return self.channel.stream(SERVICE + method, request, timeout)

    def close(self):
        self.channel.close()


def connect(url):
    """Create this process's client. Call it after fork (gunicorn's post_fork), never before."""
    global _client
    _client = Client(url)
    return _client


def close():
    global _client
    if _client is not None:
        _client.close()
        _client = None


def client(url):
    return _client if _client is not None else connect(url)


def model_info(c, name, version="", timeout=10.0):
    try:
        meta = c.call("ModelMetadata", service_pb2.ModelMetadataRequest(name=name, version=version), timeout)
        config = c.call("ModelConfig", service_pb2.ModelConfigRequest(name=name, version=version), timeout)
    except RpcError as exc:
        raise translate(exc, timeout) from None

    def tensors(items):
        return {t.name: (t.datatype, [int(d) for d in t.shape]) for t in items}

    return ModelInfo(name=name, version=version, inputs=tensors(meta.inputs), outputs=tensors(meta.outputs),
                     batched=config.config.max_batch_size > 0, max_batch_size=config.config.max_batch_size,
                     decoupled=config.config.model_transaction_policy.decoupled)


def repository(c, timeout=10.0):
    """{name: ModelInfo} of every ready model in Triton's repository (what serving/binding.py chooses from)."""
    try:
        index = c.call("RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=True), timeout)
    except RpcError as exc:
        raise translate(exc, timeout) from None
    return {name: model_info(c, name, "", timeout) for name in sorted({m.name for m in index.models})}


def bound_routes(c, config, overrides, timeout=10.0, models=None):
    """config.json's routes bound to Triton's models, and the ModelInfo of each (model, version) they use.
    `models`: {name: ModelInfo} read from the repository's files (on-demand loading); else Triton's ready ones."""
    from . import binding
    on_file = models is not None
    models = models if on_file else repository(c, timeout)
    routes = binding.bind(config.routes, models, overrides)
    infos = {}
    for r in routes:
        if (r.model, r.version) not in infos:
            infos[(r.model, r.version)] = (models[r.model] if not r.version or on_file
                                           else model_info(c, r.model, r.version, timeout))
    return routes, infos


def loaded_models(settings):
    """On-demand loading: the info of every model in the repository, loaded or not, from its config.pbtxt files
    (so that routes bind without loading anything); else None (ask Triton). The name is historical: the models
    are those that may be loaded, not those that are."""
    if settings.model_loading != "on-demand":
        return None
    return read_repository(settings.model_repository)


# gRPC status -> the HTTP error the caller sees.
_STATUS = {
    grpc_wire.INVALID_ARGUMENT: BadRequest,
    grpc_wire.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc_wire.UNAVAILABLE: Unavailable,
    grpc_wire.NOT_FOUND: Unavailable,
    grpc_wire.RESOURCE_EXHAUSTED: Unavailable,
    grpc_wire.CANCELLED: Unavailable,
}


_KIND = {grpc_wire.DEADLINE_EXCEEDED: "deadline", grpc_wire.UNAVAILABLE: "unavailable",
         grpc_wire.CANCELLED: "unavailable"}


def crashed(exc):
    """True when the model's Python process died (a segfault, an OOM kill). Triton 2.51 keeps such a model READY
    and fails each of its requests after about a second, for good: it does not start the process again."""
    details = exc.details or ""
    return exc.code == grpc_wire.INTERNAL and "Stub process" in details and "not healthy" in details


def translate(exc, timeout):
    """A grpc_wire.RpcError -> the ServingError the caller sees."""
    code = exc.code
    kind = _STATUS.get(code)
    if kind is DeadlineExceeded:
        return DeadlineExceeded(f"inference did not finish within {timeout:g} s")
    if code in (grpc_wire.UNAVAILABLE, grpc_wire.CANCELLED):
        return Unavailable("inference server is not reachable")
    if kind is not None:
        return kind(exc.details)
    return ServingError(f"inference failed: {exc.details}")


def _field(number, length):
    """The key and length of a length-delimited protobuf field."""
    out, value = bytearray([number << 3 | 2]), length
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Guard:
    """What every call to one model goes through, unary or streaming (composed into both, so neither skips it):
    the deadline, the on-demand hold (the model loaded first, within the deadline, and held until the call ends),
    the model's in-flight slots in this worker, and what a failure means (counted in the metrics; a model whose
    process died reported to /health or to the loader)."""

    def __init__(self, info, timeout, slots, on_error=None, on_crash=None, loader=None, track=False):
        self.info, self.timeout, self.slots, self.loader = info, timeout, slots, loader
        self.track = track   # REQUEST_MODE=async: calls in flight are known, to be ended at the drain's end (drain.py)
        self.on_error = on_error or (lambda kind: None)   # metrics: proxy_triton_errors_total{kind}
        self.on_crash = on_crash or (lambda detail: None)  # the model's process died: Readiness.mark_crashed

    def enter(self):
        """Hold the model and a slot; the time left for the call. Raises ServingError (a 503 with Retry-After when
        every slot stays taken until the deadline)."""
        if self.loader is None and self.slots.take():
            left = self.timeout   # the common case: the route's constant timeout (its grpc-timeout field is cached)
        else:
            deadline = time.monotonic() + self.timeout
            if self.loader is not None:
                self.loader.enter(self.info.name, deadline)
            if not self.slots.acquire(deadline):
                if self.loader is not None:
                    self.loader.leave(self.info.name)
                raise Unavailable(f"model {self.info.name!r} is busy: every call this worker may have in flight to "
                                  f"it was taken for {self.timeout:g} s", retry_after=1)
            left = max(0.001, deadline - time.monotonic())
        if self.track:
            if drain.over:   # the drain has ended (drain.cut): nothing new starts
                self.leave()
                raise Unavailable(drain.CUT, retry_after=1)
            drain.calls.add(getcurrent())
        return left

    def leave(self):
        self.slots.release()
        if self.loader is not None:
            self.loader.leave(self.info.name)
        if self.track:
            drain.calls.discard(getcurrent())

    def failed(self, exc):
        """A gRPC error of this model's call -> the ServingError the caller sees."""
        self.on_error(_KIND.get(exc.code) or exc.name.lower())
        if crashed(exc):
            self.on_crash(exc.details)
        return translate(exc, self.timeout)

    def failed_in_stream(self, message):
        """An error inside a stream (Triton's stream carries the message, no status code)."""
        self.on_error("internal")
        if "Stub process" in message and "not healthy" in message:
            self.on_crash(message)
        return ServingError(f"inference failed: {message}")


class InferCall:
    """One route's call to its model: the request prebuilt once, filled per request."""

    def __init__(self, c, info, output_names, guard):
        self.call, self.info, self.guard = c.call, info, guard   # guard: Guard, shared by the model's calls' kinds
        # The request is written as bytes: serialized protobuf messages concatenate as a merge, and repeated fields
        # keep their order, so the prebuilt part (model, version, requested outputs), then per input its
        # InferInputTensor (cached per shape) and its raw_input_contents, make the ModelInferRequest.
        self.prefix = service_pb2.ModelInferRequest(
            model_name=info.name, model_version=info.version,
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in output_names]
        ).SerializeToString()
        self.heads = {}

    @property
    def timeout(self):
        return self.guard.timeout

    def parts(self, tensors):
        parts = [self.prefix]
        inputs = self.info.inputs
        for name, arr in tensors.items():
            raw = codecs.raw_view(arr, inputs[name][0])
            parts += (self.head(name, arr.shape), _field(7, len(raw)), raw)
        return parts

    def head(self, name, shape):
        head = self.heads.get((name, shape))
        if head is None:
            if len(self.heads) > 256:   # inputs with variable dimensions: keep the cache small
                self.heads.clear()
            tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=self.info.inputs[name][0],
                                                                    shape=shape).SerializeToString()
            head = self.heads[(name, shape)] = _field(5, len(tensor)) + tensor
        return head

    def __call__(self, tensors):
        """{input name: numpy array} -> {output name: numpy array}, in one gRPC call."""
        parts = self.parts(tensors)
        left = self.guard.enter()
        try:
            response = self.call("ModelInfer", parts, left)
        except RpcError as exc:
            raise self.guard.failed(exc) from None
        finally:
            self.guard.leave()
        return {out.name: codecs.from_raw(raw, out.datatype, out.shape)
                for out, raw in zip(response.outputs, response.raw_output_contents)}


class StreamCall(InferCall):
    """A decoupled model's call: one request on Triton's ModelStreamInfer, its responses as they come. The same
    Guard as a unary call: a stream holds its model and a slot until it ends.

    The request asks for an explicit final response (`triton_enable_empty_final_response`), and is half-closed, so
    Triton ends the stream once the final response is out."""

    def __init__(self, client, info, output_names, guard, raw=False):
        super().__init__(client, info, output_names, guard)
        self.client = client
        self.raw = raw   # responses as {name: (datatype, raw bytes)}: a caller that reads a few small outputs per
                         # token (the OpenAI routes) skips numpy
        request = service_pb2.ModelInferRequest(
            model_name=info.name, model_version=info.version,
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in output_names])
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        self.prefix = request.SerializeToString()

    def responses(self, tensors, idle=None, coalesce=False):
        """Yields {output name: array} per response (with `coalesce`, a list of them: every response that has
        arrived by then), and None after each `idle` seconds without one; ends after the final response. Raises
        ServingError (a deadline, Triton's error for the request, a busy model). Closing it (a client that hung up)
        cancels the request in Triton. The model is held, and a slot taken, until the stream ends: nothing unloads
        it under an open stream."""
        left = self.guard.enter()
        try:
            yield from self._responses(tensors, idle, coalesce, left)
        finally:
            self.guard.leave()

    def _responses(self, tensors, idle, coalesce, timeout):
        try:
            stream = self.client.stream("ModelStreamInfer", self.parts(tensors), timeout)
        except RpcError as exc:
            raise self.guard.failed(exc) from None
        try:
            while True:
                try:
                    raw = stream.next(idle)
                except StopIteration:
                    return
                if raw is None:
                    yield None
                    continue
                batch, ended = [raw], False
                if coalesce:   # what has already arrived goes out with it, so that a busy stream sends fewer writes
                    try:
                        while (more := stream.next(0)) is not None:
                            batch.append(more)
                    except StopIteration:
                        ended = True
                found = []
                for raw in batch:
                    message = service_pb2.ModelStreamInferResponse.FromString(raw)
                    if message.error_message:
                        if found:   # the responses before the error go out first
                            yield found
                        raise self.guard.failed_in_stream(message.error_message)
                    response = message.infer_response
                    if response.outputs and self.raw:
                        found.append({out.name: (out.datatype, data)
                                      for out, data in zip(response.outputs, response.raw_output_contents)})
                    elif response.outputs:
                        found.append({out.name: codecs.from_raw(data, out.datatype, out.shape)
                                      for out, data in zip(response.outputs, response.raw_output_contents)})
                if found:
                    yield found if coalesce else found[0]
                if ended:
                    return
                # After the final response (triton_final_response) Triton ends the stream, since the one request
                # was half-closed: the end of the loop is StopIteration, after the trailers.
        except RpcError as exc:
            raise self.guard.failed(exc) from None
        finally:
            stream.cancel()


def stub_processes(triton_pid, proc="/proc"):
    """{(model, instance name): pid} of the python-backend processes that Triton (`triton_pid`) started: their argv
    is `triton_python_backend_stub <repository>/<model>/<version>/model.py <shm region> <sizes> <parent pid>
    <backend dir> <size> <instance> ...` (a model's folder is named as the model: Triton requires it)."""
    found = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid != triton_pid:
                continue
            with open(f"{proc}/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 8:
            model = os.path.basename(os.path.dirname(os.path.dirname(argv[1].decode(errors="replace"))))
            found[(model, argv[8].decode(errors="replace"))] = int(entry)
    return found


def _alive(pid, proc="/proc"):
    """Whether a process runs: a killed child that its parent has not reaped yet (a zombie) does not."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


class Readiness:
    """Triton readiness for /health: server ready, every bound model ready, and no model whose process died.

    One probe per `ttl` seconds per worker, however many /health calls arrive; the others reuse its answer.
    A crashed model is marked with a file (`<marks>.<model>`), so that every worker's /health reports it: Triton
    still calls the model READY, and only a restart of the container brings it back (docs/reliability.md, "When a
    model's process dies").
    """

    def __init__(self, c, models, timeout, ttl, marks=None, triton_pid=None, proc="/proc"):
        self.client, self.models, self.timeout, self.ttl = c, list(models), timeout, ttl
        self.marks = marks
        self.lock = Semaphore()   # a greenlet lock: the probe waits on gRPC while holding it
        self.checked_at, self.reason = float("-inf"), "not checked yet"
        # The python models' processes (Triton's children), watched so that a death shows at once, not when a
        # request first fails on it: {(model, instance): pid} of the watched models, recorded once they are ready.
        self.triton_pid, self.proc, self.stubs = triton_pid, proc, None

    def probe(self):
        """None when ready, else why not."""
        try:
            c = self.client
            if not c.call("ServerReady", service_pb2.ServerReadyRequest(), self.timeout).ready:
                return "inference server is not ready"
            for name, version in self.models:
                request = service_pb2.ModelReadyRequest(name=name, version=version)
                if not c.call("ModelReady", request, self.timeout).ready:
                    return f"model {name!r} is not ready"
        except RpcError as exc:
            return f"inference server is not reachable: {exc.details or exc.name}"
        self.watch_stubs()
        return self.crash_marked()

    def crash_marked(self):
        """Why not ready when a watched model is marked crashed (by any worker), else None."""
        for name, _ in self.models:
            if self.marks and os.path.exists(f"{self.marks}.{name}"):
                return (f"model {name!r} crashed (its process died) and the inference server does not restart it: "
                        "this container needs a restart")
        return None

    def watch_stubs(self):
        """Mark a watched model crashed when a process of its instances is gone with no process in its place
        (Triton 2.51 keeps such a model READY and never restarts it). Cheap while nothing changes: one small read
        of /proc/<pid>/stat per instance; the rest of /proc is read only when one of them is gone."""
        if not self.triton_pid:
            return
        names = {name for name, _ in self.models}
        if self.stubs is None:
            self.stubs = {key: pid for key, pid in stub_processes(self.triton_pid, self.proc).items()
                          if key[0] in names}
            return
        if all(_alive(pid, self.proc) for pid in self.stubs.values()):
            return
        now = stub_processes(self.triton_pid, self.proc)
        for key, pid in list(self.stubs.items()):
            if _alive(pid, self.proc):
                continue
            if key in now:   # started again (a reload): watch the new one
                self.stubs[key] = now[key]
                continue
            del self.stubs[key]
            log.error("model %r crashed: its process (instance %s, pid %d) is gone; /health now answers 503",
                      key[0], key[1], pid)
            self.mark_crashed(key[0], f"its process (instance {key[1]}, pid {pid}) is gone")

    def mark_crashed(self, name, detail):
        """Record that `name`'s process died; /health answers 503 from the next probe on, in every worker."""
        if self.marks and not os.path.exists(f"{self.marks}.{name}"):
            with open(f"{self.marks}.{name}", "w") as f:
                f.write(detail + "\n")
            self.checked_at = float("-inf")

    def check(self):
        if time.monotonic() - self.checked_at < self.ttl:
            # Another worker may have found a model crashed since: every worker says so at once (a stat per model).
            return self.reason or self.crash_marked()
        with self.lock:
            if time.monotonic() - self.checked_at >= self.ttl:
                self.reason = self.probe()
                self.checked_at = time.monotonic()
            return self.reason


def main():
    """Exit 0 when ready, 1 when not yet, 2 when config.json cannot be served (waiting will not help)."""
    from . import binding, modelarts
    from .errors import ConfigError
    from .settings import Settings
    settings = Settings.from_env()
    try:
        config = modelarts.load(settings.modelarts_config)
        overrides = binding.parse_overrides(settings.model_bindings)
    except ConfigError as exc:
        print(f"config.json: {exc}")
        return 2
    c = connect(settings.triton_grpc_url)
    try:
        reason = Readiness(c, [], settings.health_timeout_s, 0).probe()
        if reason is None:
            try:
                on_file = loaded_models(settings)
                routes, _ = bound_routes(c, config, overrides, settings.health_timeout_s, on_file)
            except ConfigError as exc:
                print(f"config.json: {exc}")
                return 2
            except ServingError as exc:
                reason = exc.message
            else:
                models = (sorted({(r.model, r.version) for r in routes}) if on_file is None
                          else [(m, "") for m in settings.models_pinned])
                reason = Readiness(c, models, settings.health_timeout_s, 0).probe()
                if reason is None:   # ready: say which models no api serves (a 404 the user would meet)
                    served = {r.model for r in routes}
                    known = on_file if on_file is not None else repository(c, settings.health_timeout_s)
                    for name in sorted(set(known) - served):
                        print(f"warning: model {name!r} is {'in the repository' if on_file else 'ready in Triton'} "
                              f"but no api of {settings.modelarts_config} "
                              f"serves it: add an api for it (make config writes one per model), or bind an "
                              f"api's url to it with MODEL_BINDINGS='/url={name}'")
    finally:
        close()
    if reason:
        print(f"not ready: {reason}")
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
