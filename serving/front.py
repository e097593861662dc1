"""The WSGI entry in front of Flask: the predict routes, the KServe v2 pass-through, /metrics, the request metrics.

Every route of config.json skips Flask's routing and request context: a route whose method matches goes straight to
its handler (serving/predict.Predict, an SSE route of serving/sse.py, an OpenAI route of serving/openai.py; the
OpenAI routes' other /v1/ paths to openai.Elsewhere), and `/v2/...` to serving/v2.py (perf_analyzer measures exactly
that path). /health, /openapi.json and every answer Flask's routing gives (404, 405, HEAD, OPTIONS) go on to Flask.
Every request, whichever way it goes, is counted and timed here when metrics are on.
"""
import re
import time
from urllib.parse import unquote

from . import metrics as metrics_mod
from . import v2
from .errors import MethodNotAllowed, ServingError
from .predict import error_answer

# The v2 calls that need their model loaded (on-demand loading): infer, and the metadata and config that
# perf_analyzer and tritonclient read first.
_LOADS = {"/v2/models/{model}", "/v2/models/{model}/config", "/v2/models/{model}/infer"}
_V2_MODEL = re.compile(r"/v2/models/([^/]+)")


def _error(environ, start_response, exc, logged=True):
    """A ServingError as the JSON answer every route gives (predict.error_answer: Retry-After where it says)."""
    status, headers, body = error_answer(environ, exc, logged)
    start_response(status, headers)
    return [body]


class _Open:
    """A stream's answer, counted in flight (proxy_inflight_requests, an autoscaler's signal) until the server
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


class Front:
    def __init__(self, app, upstream=None, metrics=None, urls=(), predicts=None, hold=None, v1=None):
        self.app = app                # Flask's wsgi_app
        self.v1 = v1   # openai.Elsewhere: the other paths under the OpenAI routes' /v1/ (OpenAI-shaped 404, 405)
        self.predicts = predicts or {}   # (method, path) -> the route's handler (predict.Predict, sse.Route, openai.Route)
        self.hold = hold   # on-demand loading: hold(model) loads it if need be and returns its release, or None
        self.upstream = upstream      # v2.Upstream, or None when the pass-through is off
        self.metrics = metrics        # metrics.Metrics, or None when /metrics is off
        self.urls = {u: u for u in urls}   # the paths that are their own metric label

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if self.metrics is None:
            handler = self.predicts.get((environ.get("REQUEST_METHOD"), path))
            if handler is None and self.v1 is not None and self.v1.claims(path):
                handler = self.v1
            if handler is not None:
                return handler(environ, start_response)
            if path.startswith("/v2") and (len(path) == 3 or path[3] == "/") and self.upstream is not None:
                return self.v2(environ, start_response)
            return self.app(environ, start_response)
        return self.measured(environ, start_response, path)

    def measured(self, environ, start_response, path):
        m = self.metrics
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "")
        handler = self.predicts.get((method, path))
        label = path
        if handler is None and self.v1 is not None and self.v1.claims(path):
            handler, label = self.v1, "/v1/models/{id}" if "/v1/models/" in path else "other"
        if handler is not None and hasattr(handler, "answer"):   # a unary predict: no closure over start_response
            m.inflight_now += 1
            try:
                status, headers, body = handler.answer(environ)
            finally:
                m.inflight_now -= 1
            start_response(status, headers)
            m.observe(path, method, status[:3], time.perf_counter() - started)
            return [body]
        status = "500"
        is_v2 = path.startswith("/v2") and (len(path) == 3 or path[3] == "/")

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
                if handler is not None:   # a stream (SSE, OpenAI): timed to the start of its answer
                    body = _Open(handler(environ, start), m)   # in flight until its last byte
                    url = label
                elif is_v2 and self.upstream is not None:
                    body = self.v2(environ, start)
                    url = environ.get("serving.v2_endpoint", "/v2 (refused)")
                else:
                    body = self.app(environ, start)
                    url = self.urls.get(path, "other")
            finally:
                m.inflight_now -= 1
        m.observe(url, method, status, time.perf_counter() - started)
        return body

    def scrape(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _error(environ, start_response, MethodNotAllowed(f"method {environ.get('REQUEST_METHOD')} is not "
                                                           f"allowed on {metrics_mod.PATH}"))
        body = self.metrics.render()
        start_response("200 OK", [("Content-Type", metrics_mod.CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] == "GET" else [b""]

    def v2(self, environ, start_response):
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        found = v2.route(method, path)
        if isinstance(found, ServingError):
            return _error(environ, start_response, found)
        environ["serving.v2_endpoint"] = found
        release = None
        try:
            if self.hold is not None and found in _LOADS:
                release = self.hold(unquote(_V2_MODEL.match(path).group(1)))
            status, headers, body = self.upstream.forward(environ, method, path)
        except ServingError as exc:
            if release is not None:
                release()
            return _error(environ, start_response, exc, logged=False)
        except BaseException:
            if release is not None:
                release()
            raise
        start_response(status, headers)
        if release is None:
            return body
        if isinstance(body, list):   # read whole already
            release()
            return body
        return _Held(body, release)


class _Held:
    """A streamed v2 answer whose model stays held (on-demand loading) until the answer has gone out."""

    def __init__(self, body, release):
        self.body, self.release = body, release

    def __iter__(self):
        return iter(self.body)

    def close(self):
        try:
            self.body.close()
        finally:
            release, self.release = self.release, None
            if release is not None:
                release()
