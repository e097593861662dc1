"""The WSGI entry: one table dispatches every request to a handler, and one wrapper measures it.

A handler answers `answer(environ) -> (status line, headers, body iterable)` (serving/http.py). Dispatch, in order:
1. an exact path of the table: each config.json api (serving/handlers/), /health and /openapi.json (Flask, through
   `Framework`), /metrics. HEAD of a GET route is its GET answer without the body, OPTIONS lists the methods, and
   any other method is 405 (in OpenAI's shape on an OpenAI route);
2. `/v2` and below: the KServe v2 pass-through (handlers/v2.py, which has its own allow-list, HEAD and 405);
3. the other paths under an OpenAI route's `/v1/`: /v1/models/{id}, else 404 and 405 in OpenAI's shape;
4. anything else: 404.
With metrics on, `measured` counts and times the handler that dispatch chose; it never changes which one runs.
"""
import os
import time

from . import drain
from .errors import MethodNotAllowed, NotFound, Unavailable
from .handlers import v2
from .http import error_answer


class Framework:
    """The Flask app as a handler: what the app factory mounts on it (/health, /openapi.json)."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def answer(self, environ):
        started = []

        def start_response(status, headers, exc_info=None):
            started[:] = (status, headers)

        body = self.wsgi_app(environ, start_response)
        return started[0], started[1], body


class Head:
    """HEAD of a GET route: the GET handler's status and headers, with no body."""

    def __init__(self, get):
        self.get = get

    def answer(self, environ):
        status, headers, body = self.get.answer(environ)
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return status, headers, [b""]


class Options:
    def __init__(self, allow):
        self.allow = allow

    def answer(self, environ):
        return "200 OK", [("Allow", self.allow), ("Content-Length", "0")], [b""]


class NotAllowed:
    """405 on a path of the table, with the methods it takes."""

    def __init__(self, allow):
        self.allow = allow

    def answer(self, environ):
        status, headers, body = error_answer(environ, MethodNotAllowed(
            f"method {environ.get('REQUEST_METHOD')} is not allowed on {environ.get('PATH_INFO')}"))
        return status, headers + [("Allow", self.allow)], body


class Unknown:
    def answer(self, environ):
        return error_answer(environ, NotFound(f"no route for {environ.get('PATH_INFO')}"))


class Table:
    """{path: {method: handler}}, each path completed by `seal`: HEAD, OPTIONS, and its refusal of any other
    method (stored under the method None)."""

    def __init__(self):
        self.paths, self.refusals = {}, {}

    def add(self, path, method, handler, refusal=None):
        """`refusal`: the path's answer to a method it does not take (else a JSON 405)."""
        self.paths.setdefault(path, {})[method] = handler
        if refusal is not None:
            self.refusals[path] = refusal

    def seal(self):
        for path, methods in self.paths.items():
            if "GET" in methods:
                methods.setdefault("HEAD", Head(methods["GET"]))
            allow = ", ".join(sorted({*methods, "OPTIONS"}))
            methods.setdefault("OPTIONS", Options(allow))
            methods[None] = self.refusals.get(path) or NotAllowed(allow)
        return self.paths


class Front:
    def __init__(self, table, v2=None, v1=None, metrics=None):
        self.paths = table.seal()
        self.v2 = v2            # handlers.v2.Passthrough, or None when the pass-through is off
        self.v1 = v1            # handlers.openai.Elsewhere: the other paths under the OpenAI routes' /v1/, or None
        self.metrics = metrics  # metrics.Metrics (also /metrics' handler), or None when /metrics is off
        self.unknown = Unknown()

    def find(self, environ):
        """(the handler, its metric label) of a request."""
        path = environ.get("PATH_INFO", "")
        methods = self.paths.get(path)
        if methods is not None:
            handler = methods.get(environ.get("REQUEST_METHOD"))
            return methods[None] if handler is None else handler, path
        if self.v2 is not None and path.startswith("/v2") and (len(path) == 3 or path[3] == "/"):
            endpoint = environ[v2.ENDPOINT] = v2.route(environ.get("REQUEST_METHOD", ""), path)
            return self.v2, endpoint if isinstance(endpoint, str) else "/v2 (refused)"
        if self.v1 is not None and self.v1.claims(path):
            return self.v1, "/v1/models/{id}" if "/v1/models/" in path else "other"
        return self.unknown, "other"

    def __call__(self, environ, start_response):
        handler, label = self.find(environ)
        if self.metrics is None:
            status, headers, body = handler.answer(environ)
        else:
            status, headers, body = self.measured(handler, label, environ)
        start_response(status, headers)
        return body

    def measured(self, handler, label, environ):
        m = self.metrics
        started = time.perf_counter()
        traffic = handler is not m   # a scrape is counted and timed, but not in flight
        if traffic:
            m.inflight_now += 1
        try:
            status, headers, body = handler.answer(environ)
        finally:
            if traffic:
                m.inflight_now -= 1
        if traffic and type(body) is not list:   # a stream (SSE, OpenAI, a large v2 answer): timed to its start,
            body = _Open(body, m)                # in flight until its last byte
        m.observe(label, environ.get("REQUEST_METHOD", ""), status[:3], time.perf_counter() - started)
        return status, headers, body


class _Open:
    """A streamed answer, counted in flight (proxy_inflight_requests, an autoscaler's signal) until the server
    closes it: its last byte sent, or its client gone."""
    __slots__ = ("body", "metrics")

    def __init__(self, body, metrics):
        self.body, self.metrics = body, metrics
        metrics.inflight_now += 1

    def __iter__(self):
        return iter(self.body)

    def close(self):
        if self.metrics is not None:
            self.metrics.inflight_now -= 1
            self.metrics = None
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


class Refusing:
    """In front of Front in async mode (serving/drain.py): once run.sh has begun the stop (its drain file exists), a
    new call to a route or to /v2's models gets 503 with Retry-After; /health, /metrics and the rest go on."""

    def __init__(self, app, paths, drain_file):
        self.app, self.paths, self.drain_file = app, frozenset(paths), drain_file

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if (path in self.paths or path.startswith("/v2/models/")) and os.path.exists(self.drain_file):
            status, headers, body = error_answer(environ, Unavailable(drain.STOPPING, retry_after=1))
            start_response(status, headers)
            return body
        return self.app(environ, start_response)
