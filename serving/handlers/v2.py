"""The KServe v2 pass-through: `/v2/...` on the proxy's port reaches Triton's HTTP API, for what is safe.

perf_analyzer, tritonclient and curl then work against :8080 with the same flags as against Triton itself.
Allowed (GET unless said): server health and readiness, server metadata, model metadata, readiness, config and
statistics, and POST infer (with the binary tensor extension). Everything else under /v2 is refused with
403 JSON before it reaches Triton: the repository API (index, load, unload), system and CUDA shared memory,
trace and log settings, and any path not on the list.

serving/front.py hands every `/v2` request to `Passthrough` (its own HEAD and 405: the allow-list says them).
Bodies stream both ways in 64 KB blocks over pooled keep-alive connections to Triton's HTTP port; the answer,
its status and its headers come back as Triton gave them, byte for byte.
"""
import errno
import re
import socket
import time
from urllib.parse import quote, unquote

import gevent
from gevent import socket as gsocket
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError, HTTPSocketPoolResponse

from .. import errors
from ..errors import ServingError
from ..http import error_answer
from ..slots import Slots

BLOCK = 64 * 1024
_MODEL = r"/v2/models/(?!\.\.?/)[^/]+(?:/versions/(?!\.\.?/)[^/]+)?"

# (method, path pattern, the metric label of the endpoint). Order does not matter: the patterns do not overlap.
ALLOWED = [
    ("GET", r"/v2/health/live", "/v2/health/live"),
    ("GET", r"/v2/health/ready", "/v2/health/ready"),
    ("GET", r"/v2", "/v2"),
    ("GET", r"/v2/models/stats", "/v2/models/stats"),
    ("GET", _MODEL, "/v2/models/{model}"),
    ("GET", _MODEL + r"/ready", "/v2/models/{model}/ready"),
    ("GET", _MODEL + r"/config", "/v2/models/{model}/config"),
    ("GET", _MODEL + r"/stats", "/v2/models/{model}/stats"),
    ("POST", _MODEL + r"/infer", "/v2/models/{model}/infer"),
]
# Refused, listed so the 403 can say what it is (docs/v2-and-perf-analyzer.md).
REFUSED = [
    (r"/v2/repository(/.*)?", "the model repository API (index, load, unload)"),
    (r"/v2/systemsharedmemory(/.*)?", "system shared memory"),
    (r"/v2/cudasharedmemory(/.*)?", "CUDA shared memory"),
    (r"/v2/trace/setting|/v2/models/[^/]+(/versions/[^/]+)?/trace/setting", "trace settings"),
    (r"/v2/logging", "log settings"),
]
_ALLOWED = [(method, re.compile(pattern + r"\Z"), label) for method, pattern, label in ALLOWED]
_REFUSED = [(re.compile(pattern + r"\Z"), what) for pattern, what in REFUSED]

# Request headers that describe the body or the answer wanted; the rest (hop-by-hop, Host, cookies) stay here.
_FORWARD = {"CONTENT_TYPE": "Content-Type", "HTTP_INFERENCE_HEADER_CONTENT_LENGTH": "Inference-Header-Content-Length",
            "HTTP_CONTENT_ENCODING": "Content-Encoding", "HTTP_ACCEPT_ENCODING": "Accept-Encoding",
            "HTTP_ACCEPT": "Accept"}
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class Forbidden(ServingError):
    status = 403


def route(method, path):
    """The endpoint label of an allowed v2 call, or the ServingError that refuses it (403 or 405)."""
    allowed_methods = []
    for m, pattern, label in _ALLOWED:
        if pattern.match(path):
            if m == method or (method == "HEAD" and m == "GET"):
                return label
            allowed_methods.append(m)
    if allowed_methods:
        return errors.MethodNotAllowed(f"method {method} is not allowed on {path} (allowed: {', '.join(allowed_methods)})")
    for pattern, what in _REFUSED:
        if pattern.match(path):
            return Forbidden(f"{path}: {what} is not available through this port")
    return Forbidden(f"{path} is not an allowed KServe v2 endpoint on this port")


class _Stream:
    """A WSGI body iterable over the rest of Triton's answer; gives the connection back when done or dropped."""

    def __init__(self, response):
        self.response = response

    def __iter__(self):
        while True:
            block = self.response.read(BLOCK)
            if not block:
                break
            yield bytes(block)   # gunicorn writes bytes only

    def close(self):
        response, self.response = self.response, None
        if response is not None:
            response.release()   # back to the pool when read to the end; closed when the client left mid-answer


class Pool:
    """Keep-alive connections to Triton's HTTP port: at most `size` in use, the others waiting first come first
    served within their deadline (serving/slots.py: no timer per call), idle ones reused last in, first out.

    An idle connection that Triton may have closed meanwhile is checked (a peek: EOF means closed, bytes would answer
    nothing we asked) unless it came back within FRESH_S. `return_socket` and `release_socket` are the calls by
    which geventhttpclient's response gives a connection back (kept, or closed)."""
    FRESH_S = 1.0

    def __init__(self, host, port, size, connect_timeout):
        self.address, self.connect_timeout = (host, port), connect_timeout
        self.slots = Slots(size)
        self.idle = []   # [(socket, when it came back)]

    def get(self, deadline):
        """A connection, or None when every one stayed in use until `deadline`. Raises OSError (connect)."""
        if not self.slots.take() and not self.slots.acquire(deadline):
            return None
        now = time.monotonic()
        while self.idle:
            sock, since = self.idle.pop()
            if now - since < self.FRESH_S or _unread(sock):
                return sock
            sock.close()
        try:
            sock = gsocket.create_connection(self.address, timeout=self.connect_timeout)
        except BaseException:
            self.slots.release()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def return_socket(self, sock):
        self.idle.append((sock, time.monotonic()))
        self.slots.release()

    def release_socket(self, sock):
        sock.close()
        self.slots.release()

    def close(self):
        for sock, _ in self.idle:
            sock.close()
        self.idle.clear()


def _unread(sock):
    """True when an idle connection is still open and has nothing to read."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)   # gevent then answers at once instead of waiting for data
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)
    return False


class Upstream:
    """Keep-alive connections to Triton's HTTP port, shared by the greenlets of one worker."""

    def __init__(self, host, port, size, timeout, max_body, on_error=None):
        self.host, self.port = host, port
        self.timeout, self.max_body = timeout, max_body
        self.pool = Pool(host, port, size, min(timeout, 5.0))
        self.hostheader = f"Host: {host}:{port}\r\n"
        self.on_error = on_error or (lambda kind: None)

    def close(self):
        self.pool.close()

    def _socket(self):
        """A pooled connection, within the deadline (when all V2_CONNECTIONS are busy, a wait)."""
        try:
            sock = self.pool.get(time.monotonic() + self.timeout)
        except OSError as exc:
            raise self._fail("unavailable", exc) from None
        if sock is None:
            self.on_error("busy")
            raise errors.Unavailable(f"every connection to the inference server's HTTP port was busy for "
                                     f"{self.timeout:g} s (V2_CONNECTIONS)", retry_after=1)
        sock.settimeout(self.timeout)
        return sock

    def _fail(self, kind, exc):
        self.on_error(kind)
        if kind == "deadline":
            return errors.DeadlineExceeded(f"inference server did not answer within {self.timeout:g} s")
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            return errors.Unavailable("inference server is not reachable")
        return errors.Unavailable(f"inference server connection failed: {exc}")

    def forward(self, environ, method, path):
        """Send the request to Triton; (status line, headers, body iterable) of its answer."""
        length, first = self._body_start(environ, method)
        request = self._head(environ, method, path, length) + first
        response = self._exchange(request, length - len(first), environ["wsgi.input"], method)
        return self._answer(response, method)

    def _body_start(self, environ, method):
        """(the body's length, its first block) of the request, within MAX_BODY_MB."""
        length = environ.get("CONTENT_LENGTH")
        body_in = environ["wsgi.input"]
        too_large = f"request body over {self.max_body / (1024 * 1024):g} MB"
        if length:
            try:
                length = int(length)
            except ValueError:
                raise errors.BadRequest("Content-Length is not a number") from None
            if length > self.max_body:
                raise errors.PayloadTooLarge(too_large)
            return length, body_in.read(min(length, BLOCK))
        if method == "POST":   # chunked: read up to the limit, then send it with a length
            first = body_in.read(self.max_body + 1)
            if len(first) > self.max_body:
                raise errors.PayloadTooLarge(too_large)
            return len(first), first
        return 0, b""

    def _head(self, environ, method, path, length):
        query = environ.get("QUERY_STRING")
        head = [f"{method} {quote(path)}{'?' + query if query else ''} HTTP/1.1\r\n", self.hostheader]
        for key, name in _FORWARD.items():
            value = environ.get(key)
            if value:
                head.append(f"{name}: {value}\r\n")
        if length or method == "POST":
            head.append(f"Content-Length: {length}\r\n")
        head.append("\r\n")
        return "".join(head).encode("latin-1")

    def _exchange(self, request, rest, body_in, method):
        """Send the request (and the `rest` of its body, from `body_in`) on a pooled connection; its response.
        A request wholly in hand goes again once on a fresh connection if the pooled one had closed."""
        retry = rest == 0
        while True:
            sock = self._socket()
            try:
                sock.sendall(request)
                while rest > 0:
                    block = body_in.read(min(rest, BLOCK))
                    if not block:
                        raise errors.BadRequest("request body shorter than its Content-Length")
                    sock.sendall(block)
                    rest -= len(block)
            except ConnectionError as exc:
                self.pool.release_socket(sock)
                if retry:
                    retry = False
                    continue
                raise self._fail("unavailable", exc) from None
            except (socket.timeout, gevent.Timeout) as exc:
                self.pool.release_socket(sock)
                raise self._fail("deadline", exc) from None
            except BaseException:
                self.pool.release_socket(sock)
                raise
            try:   # from here the response owns the socket, and gives it back itself on any error
                return HTTPSocketPoolResponse(sock, self.pool, block_size=BLOCK, method=method)
            except (HTTPConnectionClosed, ConnectionError) as exc:
                if retry:
                    retry = False
                    continue
                raise self._fail("unavailable", exc) from None
            except (socket.timeout, gevent.Timeout) as exc:
                raise self._fail("deadline", exc) from None
            except (HTTPParseError, OSError) as exc:
                raise self._fail("protocol", exc) from None

    def _answer(self, response, method):
        status = f"{response.status_code} {response.status_message or ''}".rstrip()
        headers = [(k.title(), v) for k, v in response.items() if k not in _HOP]   # names come lower-cased
        size = response.content_length
        if method == "HEAD" or (size is not None and size <= BLOCK):
            try:
                data = response.read() if method != "HEAD" else b""
            except (socket.timeout, gevent.Timeout) as exc:
                raise self._fail("deadline", exc) from None
            except OSError as exc:
                raise self._fail("protocol", exc) from None
            response.release()
            return status, headers, [bytes(data)]
        return status, headers, _Stream(response)


# The v2 calls that need their model loaded (on-demand loading): infer, and the metadata and config that
# perf_analyzer and tritonclient read first.
_LOADS = {"/v2/models/{model}", "/v2/models/{model}/config", "/v2/models/{model}/infer"}
_V2_MODEL = re.compile(r"/v2/models/([^/]+)")
ENDPOINT = "serving.v2_endpoint"   # environ: the request's endpoint (`route`), as serving/front.py's dispatch found it


class Passthrough:
    """The handler of every /v2 path: the allow-list, the on-demand hold of the call's model, Triton's answer."""

    def __init__(self, upstream, hold=None):
        self.upstream = upstream
        self.hold = hold   # on-demand loading: hold(model) loads it if need be and returns its release, or None

    def answer(self, environ):
        endpoint = environ[ENDPOINT]
        if isinstance(endpoint, ServingError):
            return error_answer(environ, endpoint)
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        release = None
        try:
            if self.hold is not None and endpoint in _LOADS:
                release = self.hold(unquote(_V2_MODEL.match(path).group(1)))
            status, headers, body = self.upstream.forward(environ, method, path)
        except BaseException as exc:
            if release is not None:
                release()
            if isinstance(exc, ServingError):
                return error_answer(environ, exc)
            raise
        if release is not None:
            if isinstance(body, list):   # read whole already
                release()
            else:
                body = _Held(body, release)
        return status, headers, body


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
