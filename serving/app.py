"""Flask app factory: /health, and one predict route per config.json api.

Hot path: request -> codec -> one Triton gRPC call -> codec -> response. Everything else
(config parsing, model metadata, validation) happens once, in create_app().
"""
import json
import logging
import os
import time

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from . import binding, codecs, modelarts, openai, openapi, sse, triton, v2
from .front import Front
from .metrics import Metrics
from .errors import ConfigError, ServingError
from .predict import Predict
from .settings import Settings

log = logging.getLogger("serving.app")


def _json(body, status=200):
    return Response(codecs.dumps(body), status=status, mimetype="application/json")


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


def through_flask(handler):
    """A route's WSGI handler as a Flask view: Flask answers what serving/front.py leaves to it for the route (HEAD
    of a GET route; a wrong method is Flask's 405)."""
    def view():
        started = {}

        def start_response(status, headers, exc_info=None):
            started.update(status=status, headers=headers)

        body = handler(request.environ, start_response)
        return Response(body, status=int(started["status"][:3]), headers=started["headers"])
    return view


def create_app(settings=None):
    settings = settings or Settings.from_env()
    config = modelarts.load(settings.modelarts_config)
    client = triton.client(settings.triton_grpc_url)
    on_file = triton.loaded_models(settings)   # on-demand loading: bound from config.pbtxt, nothing loaded yet
    routes, infos = triton.bound_routes(client, config, binding.parse_overrides(settings.model_bindings),
                                        models=on_file)
    for route in routes:
        if not openai.kind(route.url):
            check_binding(route, infos[(route.model, route.version)])
    # /health: every bound model; with on-demand loading, the pinned ones (the others load when asked for).
    watched = infos if on_file is None else [(m, "") for m in settings.models_pinned]
    readiness = triton.Readiness(client, watched, settings.health_timeout_s, settings.health_cache_s,
                                 marks=settings.drain_file + ".crashed")
    slots = dict(zip(infos, triton.slots(len(infos), settings.inflight_per_model)))
    metrics = Metrics(settings.triton_metrics_url, on_demand=on_file is not None) if settings.metrics else None
    loader = None
    if on_file is not None:
        from .loading import Loader, Memory
        memory = (Memory(settings.model_memory_budget, settings.model_repository, settings.triton_metrics_url,
                         settings.loading_dir) if settings.model_memory_budget else None)
        loader = Loader(client, settings.loading_dir, settings.models_pinned, settings.max_loaded_models, metrics,
                        settings.health_timeout_s, memory, settings.model_min_residency_s)
    if metrics is not None:
        from gevent import monkey
        if monkey.is_module_patched("socket"):   # a gunicorn worker; elsewhere (tests) each scrape flushes
            metrics.run_flusher()
    on_error = metrics.triton_error if metrics else None
    streaming = {r.url for r in routes if infos[(r.model, r.version)].decoupled}
    spec = json.dumps(openapi.document(config, routes, title=f"{config.model_algorithm or 'Inference'} service",
                                       metrics=settings.metrics, streaming=streaming), indent=1).encode()

    handlers = {}   # (method, url) -> its WSGI handler, answered by serving/front.py before Flask
    app = Flask("serving")
    # Werkzeug refuses a larger body (413, via http_error below) before reading it.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    limit_mb = settings.max_body_bytes / (1024 * 1024)

    @app.get(config.health_url)
    def health():
        if os.path.exists(settings.drain_file):
            return _json({"health": "false", "reason": "shutting down"}, 503)
        reason = readiness.check()
        if reason:
            return _json({"health": "false", "reason": reason}, 503)
        return _json({"health": "true"})

    def on_crash_of(name):
        def on_crash(detail):
            if loader is not None:
                log.error("model %r crashed: %s; it is unloaded and loaded again on its next request", name, detail)
                loader.crashed(name, detail)
                return
            log.error("model %r crashed: %s; /health now answers 503 until the container restarts", name, detail)
            readiness.mark_crashed(name, detail)
        return on_crash

    def predict_route(route, info):
        call = triton.InferCall(client, info, [f.name for f in route.outputs], settings.request_timeout_s,
                                slots[(info.name, info.version)], on_error, on_crash_of(info.name), loader)
        return Predict(route, info, call, settings.max_body_bytes)

    # A stream ends before gunicorn's drain does (GRACEFUL_TIMEOUT), so that a stop never cuts one without its
    # final event (serving/sse.py).
    stream_timeout = max(1.0, min(settings.request_timeout_s, settings.graceful_timeout_s - 5))

    def stream_route(route, info):
        call = triton.StreamCall(client, info, [f.name for f in route.outputs], stream_timeout, on_error, loader)
        return sse.Route(route, info, call, settings.max_body_bytes, settings.stream_heartbeat_s)

    def openai_route(route, info):
        if not openai.is_llm(info):
            raise ConfigError(f"{route.method} {route.url} -> model {info.name!r}: an OpenAI route needs an LLM model "
                              "(decoupled, with inputs text_input and outputs text_output)")
        known = on_file if on_file is not None else triton.repository(client)
        llms = {name: i for name, i in known.items() if openai.is_llm(i)}
        llms[info.name] = info
        outputs = ["text_output"] + [n for n in ("num_input_tokens", "num_output_tokens") if n in info.outputs]
        models = {name: (triton.StreamCall(client, i, [n for n in outputs if n in i.outputs], stream_timeout,
                                           on_error, loader),
                         openai.Template(os.path.join(settings.model_repository, name)))
                  for name, i in llms.items()}
        for name, (_, template) in models.items():
            log.info("route %s %s: OpenAI %s for model %r (chat template: %s)", route.method, route.url,
                     openai.kind(route.url), name, template.source)
        return openai.Route(openai.kind(route.url), info.name, models, settings.max_body_bytes)

    for route in routes:
        info = infos[(route.model, route.version)]
        make = openai_route if openai.kind(route.url) else stream_route if info.decoupled else predict_route
        handler = handlers[(route.method, route.url)] = make(route, info)
        app.add_url_rule(route.url, endpoint=f"{route.method} {route.url}", methods=[route.method],
                         view_func=through_flask(handler))
        log.info("route %s %s -> model %r (inputs %s; outputs %s)", route.method, route.url, route.model,
                 [f.name for f in route.inputs], [f.name for f in route.outputs])

    @app.get("/openapi.json")
    def openapi_json():
        return Response(spec, mimetype="application/json")

    @app.errorhandler(ServingError)
    def serving_error(exc):
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        resp = _json({"error": exc.message}, exc.status)
        if getattr(exc, "retry_after", None):
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if exc.code == 413:
            length = request.content_length
            if length is not None and length <= settings.max_body_bytes:   # Werkzeug's cap on multipart parts
                return _json({"error": f"too many parts in the multipart body (at most "
                                       f"{app.config['MAX_FORM_PARTS']})"}, 413)
            return _json({"error": f"request body over {limit_mb:g} MB"}, 413)
        if exc.code == 405:
            resp = _json({"error": f"method {request.method} is not allowed on {request.path}"}, 405)
            if getattr(exc, "valid_methods", None):
                resp.headers["Allow"] = ", ".join(exc.valid_methods)
            return resp
        if exc.code == 404:
            return _json({"error": f"no route for {request.path}"}, 404)
        return _json({"error": exc.description or exc.name}, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json({"error": "internal error"}, 500)

    upstream = None
    if settings.kserve_v2:
        upstream = v2.Upstream("127.0.0.1", settings.triton_http_port, settings.v2_connections,
                               settings.request_timeout_s, settings.max_body_bytes, on_error)
    urls = [config.health_url, "/openapi.json", "/metrics"] + [r.url for r in routes]
    def hold(name, timeout=settings.request_timeout_s):   # a v2 call's model, loaded and held (on-demand loading)
        if name not in on_file:
            return None
        loader.enter(name, time.monotonic() + timeout)
        return lambda: loader.leave(name)

    app.wsgi_app = Front(app.wsgi_app, upstream, metrics, urls, handlers, hold if loader is not None else None)
    app.extensions["serving.upstream"] = upstream
    return app
