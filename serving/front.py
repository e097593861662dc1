"""The WSGI entry in front of Flask: the KServe v2 pass-through, /metrics, and the request metrics.

Predict routes, /health and /openapi.json go on to Flask. `/v2/...` goes to serving/v2.py without Flask's
routing and request context, since perf_analyzer measures exactly that path. Every request, whichever way it
goes, is counted and timed here when metrics are on.
"""
import json
import logging
import time

from . import metrics as metrics_mod
from . import v2
from .errors import MethodNotAllowed, ServingError

log = logging.getLogger("serving.front")
JSON = "application/json"


_REASONS = {400: "BAD REQUEST", 403: "FORBIDDEN", 404: "NOT FOUND", 405: "METHOD NOT ALLOWED",
            413: "REQUEST ENTITY TOO LARGE", 500: "INTERNAL SERVER ERROR", 503: "SERVICE UNAVAILABLE",
            504: "GATEWAY TIMEOUT"}


def _error(start_response, exc):
    body = json.dumps({"error": exc.message}).encode()
    start_response(f"{exc.status} {_REASONS.get(exc.status, '')}".rstrip(),
                   [("Content-Type", JSON), ("Content-Length", str(len(body)))])
    return [body]


class Front:
    def __init__(self, app, upstream=None, metrics=None, urls=()):
        self.app = app                # Flask's wsgi_app
        self.upstream = upstream      # v2.Upstream, or None when the pass-through is off
        self.metrics = metrics        # metrics.Metrics, or None when /metrics is off
        self.urls = {u: u for u in urls}   # the paths that are their own metric label

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        is_v2 = path.startswith("/v2") and (len(path) == 3 or path[3] == "/")
        if self.metrics is None:
            if is_v2 and self.upstream is not None:
                return self.v2(environ, start_response)
            return self.app(environ, start_response)
        return self.measured(environ, start_response, path, is_v2)

    def measured(self, environ, start_response, path, is_v2):
        m = self.metrics
        started = time.perf_counter()
        status = "500"

        def start(line, headers, exc_info=None):
            nonlocal status
            status = line[:3]
            return start_response(line, headers, exc_info)

        if path == metrics_mod.PATH:   # a scrape is not traffic: counted, timed, but not in flight
            body = self.scrape(environ, start)
            url = path
        else:
            m.inflight_now += 1
            try:
                if is_v2 and self.upstream is not None:
                    body = self.v2(environ, start)
                    url = environ.get("serving.v2_endpoint", "/v2 (refused)")
                else:
                    body = self.app(environ, start)
                    url = self.urls.get(path, "other")
            finally:
                m.inflight_now -= 1
        m.observe(url, environ.get("REQUEST_METHOD", ""), status, time.perf_counter() - started)
        return body

    def scrape(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _error(start_response, MethodNotAllowed(f"method {environ.get('REQUEST_METHOD')} is not "
                                                           f"allowed on {metrics_mod.PATH}"))
        body = self.metrics.render()
        start_response("200 OK", [("Content-Type", metrics_mod.CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] == "GET" else [b""]

    def v2(self, environ, start_response):
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        found = v2.route(method, path)
        if isinstance(found, ServingError):
            return _error(start_response, found)
        environ["serving.v2_endpoint"] = found
        try:
            status, headers, body = self.upstream.forward(environ, method, path)
        except ServingError as exc:
            if exc.status >= 500:
                log.warning("%s %s -> %d: %s", method, path, exc.status, exc.message)
            return _error(start_response, exc)
        start_response(status, headers)
        return body
