"""The service's assembly, once per worker: `Service` holds what every route shares (the config, the Triton
client, the bound models, readiness, slots, metrics, the on-demand loader), and `handlers` builds each config.json
api's handler with its prebuilt Triton call: a predict (serving/handlers/predict.py), a stream (stream.py) or an
OpenAI route (openai.py)."""
import logging
import os
from dataclasses import dataclass

from . import binding, modelarts
from .errors import ConfigError
from .handlers import openai
from .handlers.predict import Predict
from .handlers.stream import Stream
from .metrics import BUCKETS, LONG_BUCKETS, Metrics
from .repository import embedding_tensors, is_embedding, is_llm, read_repository
from .settings import Settings
from .triton import client as triton_client
from .triton.calls import InferCall, StreamCall
from .triton.guard import Guard, model_slots
from .triton.models import repository
from .triton.readiness import Readiness

log = logging.getLogger("serving.service")


def check_binding(route, info):
    """Refuse at start-up a route whose fields do not match its model's tensors."""
    where = f"{route.method} {route.url} -> model {route.model!r}"
    names = {f.name for f in route.inputs}
    for f in route.inputs:
        if f.name not in info.inputs:
            raise ConfigError(f"{where}: request property {f.name!r} is not a model input {sorted(info.inputs)}")
        datatype, shape = info.inputs[f.name]
        item = shape[1:] if info.batched else shape
        if f.type == "file" and (datatype != "BYTES" or any(d != 1 for d in item)):
            raise ConfigError(f"{where}: file property {f.name!r} needs a BYTES input of one element")
    missing = set(info.inputs) - names
    if missing:
        raise ConfigError(f"{where}: model inputs {sorted(missing)} have no request property")
    for f in route.outputs:
        if f.name not in info.outputs:
            raise ConfigError(f"{where}: response property {f.name!r} is not a model output {sorted(info.outputs)}")


def make_loader(settings, client, metrics):
    """On-demand loading's Loader (serving/loading/)."""
    from .loading import Loader, Memory
    memory = (Memory(settings.model_memory_budget, settings.model_repository, settings.triton_metrics_url,
                     settings.loading_dir) if settings.model_memory_budget else None)
    return Loader(client, settings.loading_dir, settings.models_pinned, settings.max_loaded_models, metrics,
                  settings.health_timeout_s, memory, settings.model_min_residency_s)


def models_on_file(settings):
    """On-demand loading: {name: ModelInfo} of every model in the repository, loaded or not, read from its
    config.pbtxt (so that routes bind without loading anything); else None (Triton's ready models are asked)."""
    if settings.model_loading != "on-demand":
        return None
    return read_repository(settings.model_repository)


@dataclass
class Service:
    """What the routes share, made once per worker."""
    settings: Settings
    config: modelarts.ModelArtsConfig
    client: object
    routes: list
    infos: dict                 # (model, version) -> ModelInfo
    on_file: dict               # on-demand loading: the models read from config.pbtxt (None: Triton loads all)
    readiness: Readiness
    slots: dict
    metrics: Metrics
    loader: object

    @classmethod
    def build(cls, settings):
        config = modelarts.load(settings.modelarts_config)
        client = triton_client.client(settings.triton_grpc_url)
        on_file = models_on_file(settings)   # on-demand loading: bound from config.pbtxt, nothing loaded yet
        routes, infos = binding.bound_routes(client, config, binding.parse_overrides(settings.model_bindings),
                                             models=on_file)
        for route in routes:
            if not openai.kind(route.url):
                check_binding(route, infos[(route.model, route.version)])
        # /health: every bound model; with on-demand loading, the pinned ones (the others load when asked for).
        watched = infos if on_file is None else [(m, "") for m in settings.models_pinned]
        readiness = Readiness(client, watched, settings.health_timeout_s, settings.health_cache_s,
                                     marks=settings.drain_file + ".crashed", triton_pid=settings.triton_pid)
        slots = dict(zip(infos, model_slots(len(infos), settings.inflight_per_model)))
        metrics = Metrics(settings.triton_metrics_url, on_demand=on_file is not None,
                          buckets=LONG_BUCKETS if settings.request_mode == "async" else BUCKETS) \
            if settings.metrics else None
        if metrics is not None:
            metrics.watch(slots, settings.drain_file)
            from gevent import monkey
            if monkey.is_module_patched("socket"):   # a gunicorn worker; elsewhere (tests) each scrape flushes
                metrics.run_flusher()
        loader = make_loader(settings, client, metrics) if on_file is not None else None
        return cls(settings, config, client, routes, infos, on_file, readiness, slots, metrics, loader)

    def guard(self, info, streaming=False):
        """What a call to `info`'s model goes through (serving/triton/guard.py): its deadline, the on-demand hold,
        its slots in this worker (unary calls share INFLIGHT_PER_MODEL, streams STREAMS_PER_MODEL), errors and
        crash reports."""
        key = (info.name, info.version, "stream") if streaming else (info.name, info.version)
        if key not in self.slots:
            per = self.settings.streams_per_model if streaming else self.settings.inflight_per_model
            self.slots[key] = model_slots(1, per)[0]
        timeout = self.stream_timeout if streaming else self.settings.request_timeout_s
        return Guard(info, timeout, self.slots[key], self.on_error, self.on_crash_of(info.name), self.loader,
                     track=self.settings.request_mode == "async")

    @property
    def on_error(self):
        return self.metrics.triton_error if self.metrics else None

    @property
    def stream_timeout(self):
        # A stream ends before gunicorn's drain does (GRACEFUL_TIMEOUT), so that a stop never cuts one without
        # its final event (serving/handlers/stream.py).
        return max(1.0, min(self.settings.request_timeout_s, self.settings.graceful_timeout_s - 5))

    @property
    def streaming(self):
        """The urls of routes to decoupled models."""
        return {r.url for r in self.routes if self.infos[(r.model, r.version)].decoupled}

    def on_crash_of(self, name):
        def on_crash(detail):
            if self.loader is not None:
                log.error("model %r crashed: %s; it is unloaded and loaded again on its next request", name, detail)
                self.loader.crashed(name, detail)
                return
            log.error("model %r crashed: %s; /health now answers 503 until the container restarts", name, detail)
            self.readiness.mark_crashed(name, detail)
        return on_crash


def predict_route(service, route, info):
    call = InferCall(service.client, info, [f.name for f in route.outputs], service.guard(info))
    return Predict(route, info, call, service.settings.max_body_bytes)


def stream_route(service, route, info):
    call = StreamCall(service.client, info, [f.name for f in route.outputs], service.guard(info, streaming=True))
    return Stream(route, info, call, service.settings.max_body_bytes, service.settings.stream_heartbeat_s)


def openai_route(service, route, info):
    """An OpenAI route: generation over the repository's LLM models, embeddings over its embedding models, or the
    list of both; the route's own model is the default."""
    which = openai.kind(route.url)
    known = dict(service.on_file if service.on_file is not None else repository(service.client))
    known[info.name] = info
    llms = {name: i for name, i in known.items() if is_llm(i)}
    embedders = {name: i for name, i in known.items() if is_embedding(i)}
    if which == "models":
        return openai.Models(list(llms) + list(embedders))
    if which == "embeddings":
        if info.name not in embedders:
            raise ConfigError(f"{route.method} {route.url} -> model {info.name!r}: /v1/embeddings needs an embedding "
                              "model (one text input, one FP32 vector output)")
        calls = {name: InferCall(service.client, i, [n for n in (*embedding_tensors(i)[1:], "num_input_tokens")
                                                      if n in i.outputs], service.guard(i))
                 for name, i in embedders.items()}
        log.info("route %s %s: OpenAI embeddings for models %s", route.method, route.url, sorted(calls))
        return openai.Embeddings(info.name, calls, service.settings.max_body_bytes)
    if info.name not in llms:
        raise ConfigError(f"{route.method} {route.url} -> model {info.name!r}: an OpenAI route needs an LLM model "
                          "(decoupled, with inputs text_input and outputs text_output)")
    wanted = ("text_output", "finish_reason", "logprobs") + openai.COUNTS
    models = {name: openai.Generator(
        StreamCall(service.client, i, [n for n in wanted if n in i.outputs], service.guard(i, streaming=True),
                   raw=True),
        openai.Template(os.path.join(service.settings.model_repository, name)))
        for name, i in llms.items()}
    for name, g in models.items():
        log.info("route %s %s: OpenAI %s for model %r (chat template: %s)", route.method, route.url, which, name,
                 g.template.source)
    return openai.Generation(which, info.name, models, service.settings.max_body_bytes)


def handlers(service):
    """{(method, url): handler (serving/front.py's interface)} of every config.json api."""
    built = {}
    for route in service.routes:
        info = service.infos[(route.model, route.version)]
        make = openai_route if openai.kind(route.url) else stream_route if info.decoupled else predict_route
        built[(route.method, route.url)] = make(service, route, info)
        log.info("route %s %s -> model %r (inputs %s; outputs %s)", route.method, route.url, route.model,
                 [f.name for f in route.inputs], [f.name for f in route.outputs])
    return built
