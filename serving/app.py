"""Flask app factory: what is mounted where, read in a minute.

Hot path: request -> serving/front.py (one table) -> a handler (serving/handlers/) -> schema decode -> one Triton
gRPC call (serving/triton/calls.py) -> schema encode -> response. Everything else (config parsing, binding, model
metadata, the prebuilt calls) happens once, here, in create_app(). Flask answers /health and /openapi.json, with
every error as JSON.
"""
import json
import logging
import os
import time

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from . import codecs, openapi
from .front import Framework, Front, Refusing, Table
from .handlers import openai, v2
from .service import Service, handlers
from .settings import Settings

log = logging.getLogger("serving.app")


def create_app(settings=None):
    service = Service.build(settings or Settings.from_env())
    settings, config = service.settings, service.config
    app = Flask("serving")
    app.add_url_rule(config.health_url, "health", health_view(service))
    app.add_url_rule("/openapi.json", "openapi", openapi_view(service))
    json_errors(app)
    table, flask = Table(), Framework(app.wsgi_app)
    table.add(config.health_url, "GET", flask)
    table.add("/openapi.json", "GET", flask)
    if service.metrics is not None:
        table.add("/metrics", "GET", service.metrics)
    built = handlers(service)   # (method, url) -> handler
    v1 = {key: h for key, h in built.items() if isinstance(h, openai.Handler)}
    elsewhere = openai.Elsewhere(v1) if v1 else None   # the OpenAI routes' 404 and 405, in OpenAI's shape
    for (method, url), handler in built.items():
        table.add(url, method, handler, elsewhere if (method, url) in v1 else None)
    upstream = None
    if settings.kserve_v2:
        upstream = v2.Upstream("127.0.0.1", settings.triton_http_port, settings.v2_connections,
                               settings.request_timeout_s, settings.max_body_bytes, service.on_error)
    app.wsgi_app = Front(table, v2.Passthrough(upstream, v2_hold(service)) if upstream else None, elsewhere,
                         service.metrics)
    if settings.request_mode == "async":   # a stop refuses new calls at once (the platform's queue retries them)
        app.wsgi_app = Refusing(app.wsgi_app, [url for _, url in built], settings.drain_file)
    app.extensions["serving.upstream"] = upstream
    return app


def _json(body, status=200):
    return Response(codecs.dumps(body), status=status, mimetype="application/json")


def health_view(service):
    """GET /health: 503 once the drain file exists (SIGTERM) or while Triton or a watched model is not ready."""
    def health():
        if os.path.exists(service.settings.drain_file):
            return _json({"health": "false", "reason": "shutting down"}, 503)
        reason = service.readiness.check()
        if reason:
            return _json({"health": "false", "reason": reason}, 503)
        return _json({"health": "true"})
    return health


def openapi_view(service):
    config = service.config
    spec = json.dumps(openapi.document(config, service.routes, title=f"{config.model_algorithm or 'Inference'} service",
                                       metrics=service.settings.metrics, streaming=service.streaming),
                      indent=1).encode()
    return lambda: Response(spec, mimetype="application/json")


def v2_hold(service):
    """On-demand loading: a v2 call's model, loaded and held for the call (None: nothing to hold)."""
    if service.loader is None:
        return None
    loader, on_file, timeout = service.loader, service.on_file, service.settings.request_timeout_s

    def hold(name):
        if name not in on_file:
            return None
        loader.enter(name, time.monotonic() + timeout)
        return lambda: loader.leave(name)
    return hold


def json_errors(app):
    """What Flask itself answers (its two routes) is JSON, errors included."""
    @app.errorhandler(HTTPException)
    def http_error(exc):
        return _json({"error": exc.description or exc.name}, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json({"error": "internal error"}, 500)
