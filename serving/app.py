"""Flask app factory: what is mounted where. The config.json apis' handlers (serving/routes.py) are answered by
serving/front.py before Flask, as are /v2 and /metrics; Flask keeps /health, /openapi.json and what its routing
decides (HEAD, 405, 404), with every error as JSON.

Hot path: request -> codec -> one Triton gRPC call -> codec -> response. Everything else
(config parsing, model metadata, validation) happens once, in create_app().
"""
import json
import logging
import os
import time

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from . import codecs, drain, openai, openapi, routes, v2
from .errors import ServingError
from .front import Front
from .settings import Settings

log = logging.getLogger("serving.app")


def create_app(settings=None):
    parts = routes.Parts.build(settings or Settings.from_env())
    settings, config = parts.settings, parts.config
    handlers = routes.handlers(parts)   # (method, url) -> WSGI handler
    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes   # Werkzeug refuses a larger body before reading it
    app.add_url_rule(config.health_url, "health", health_view(parts))
    for (method, url), handler in handlers.items():
        app.add_url_rule(url, endpoint=f"{method} {url}", methods=[method], view_func=through_flask(handler))
    app.add_url_rule("/openapi.json", "openapi", openapi_view(parts))
    json_errors(app, settings)
    upstream = None
    if settings.kserve_v2:
        upstream = v2.Upstream("127.0.0.1", settings.triton_http_port, settings.v2_connections,
                               settings.request_timeout_s, settings.max_body_bytes, parts.on_error)
    urls = [config.health_url, "/openapi.json", "/metrics"] + [r.url for r in parts.routes]
    v1 = {key: h for key, h in handlers.items() if isinstance(h, openai.Handler)}
    app.wsgi_app = Front(app.wsgi_app, upstream, parts.metrics, urls, handlers, v2_hold(parts),
                         openai.Elsewhere(v1) if v1 else None)
    if settings.request_mode == "async":   # a stop refuses new calls at once (the platform's queue retries them)
        app.wsgi_app = drain.Refusing(app.wsgi_app, [url for _, url in handlers], settings.drain_file)
    app.extensions["serving.upstream"] = upstream
    return app


def _json(body, status=200):
    return Response(codecs.dumps(body), status=status, mimetype="application/json")


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


def health_view(parts):
    """GET /health: 503 once the drain file exists (SIGTERM) or while Triton or a watched model is not ready."""
    def health():
        if os.path.exists(parts.settings.drain_file):
            return _json({"health": "false", "reason": "shutting down"}, 503)
        reason = parts.readiness.check()
        if reason:
            return _json({"health": "false", "reason": reason}, 503)
        return _json({"health": "true"})
    return health


def openapi_view(parts):
    config = parts.config
    spec = json.dumps(openapi.document(config, parts.routes, title=f"{config.model_algorithm or 'Inference'} service",
                                       metrics=parts.settings.metrics, streaming=parts.streaming), indent=1).encode()
    return lambda: Response(spec, mimetype="application/json")


def v2_hold(parts):
    """On-demand loading: a v2 call's model, loaded and held for the call (None: nothing to hold)."""
    if parts.loader is None:
        return None
    loader, on_file, timeout = parts.loader, parts.on_file, parts.settings.request_timeout_s

    def hold(name):
        if name not in on_file:
            return None
        loader.enter(name, time.monotonic() + timeout)
        return lambda: loader.leave(name)
    return hold


def json_errors(app, settings):
    """Every error Flask answers is JSON: a ServingError with its status, an HTTP error, or a 500."""
    limit_mb = settings.max_body_bytes / (1024 * 1024)

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
