"""gunicorn's gevent worker, with these changes.

- Between two requests of a keep-alive connection it yields to the hub, so that every connection is served in turn
  (see _IdleWait.__enter__).
- At shutdown, idle keep-alive connections close at once. Stock gunicorn waits for every open connection
  before a worker exits, and a client that holds an idle keep-alive connection (keep-alive is 200 s here) makes
  each stop last the whole graceful timeout. This worker still lets every in-flight request finish; it only ends
  connections that sit between requests.
- What gunicorn answers itself, before the app sees a request (a malformed request line, a request line or
  header over its limits), is JSON `{"error": ...}` like every other error here, not gunicorn's HTML page.
- Over HTTPS, a failed TLS handshake (plain HTTP on the port, an old TLS version, a client that does not trust
  the certificate) is one log line, not a greenlet's traceback.
- An answer whose body is one block of its Content-Length (every JSON answer, every v2 answer up to 64 KB) goes
  out in one send with its head, not two (`Response`), and the Date header is made once a second, not per answer.
"""
import json
import logging
import ssl
import time

import gevent
from gevent import getcurrent
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from . import drain
from .settings import Settings

log = logging.getLogger("serving.worker")


def write_error(sock, status_int, reason, mesg):
    body = json.dumps({"error": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


util.write_error = write_error   # gunicorn's workers answer their own errors through this name (on an upgrade:
                                 # check they still call util.write_error)


def wrap_socket_and_handle(server, client_socket, address):
    """gevent's StreamServer.wrap_socket_and_handle (TLS), with a failed handshake logged in one line."""
    try:
        tls_socket = server.wrap_socket(client_socket, **server.ssl_args)
    except (ssl.SSLError, OSError) as exc:
        client_socket.close()
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        hint = " (plain HTTP on the HTTPS port)" if reason == "HTTP_REQUEST" else ""
        log.info("TLS handshake with %s failed: %s%s", address[0] if address else "?", reason, hint)
        return None
    try:
        return server.handle(tls_socket, address)
    finally:
        tls_socket.close()


StreamServer.wrap_socket_and_handle = wrap_socket_and_handle   # on a gevent upgrade: check its signature

class Response(wsgi.Response):
    """gunicorn's response, with the head and a whole body sent together. gunicorn writes the head, then each body
    block, each with its own send: two system calls (and two segments for the client to wake up for) per answer.
    A profile of the v2 pass-through under perf_analyzer had those sends at a quarter of the worker's time."""

    def write(self, arg):
        if (self.headers_sent or self.chunked or self._omits_body or type(arg) is not bytes
                or self.response_length is None or len(arg) != self.response_length):
            return super().write(arg)
        # gunicorn's send_headers, with the body appended (on a gunicorn upgrade: compare with send_headers and
        # write in gunicorn/http/wsgi.py, and check that wsgi.create still makes its response from wsgi.Response)
        head = self.default_headers()
        head.extend(["%s: %s\r\n" % (k, v) for k, v in self.headers])
        self.headers_sent = True
        self.sent = len(arg)
        util.write(self.sock, ("%s\r\n" % "".join(head)).encode("latin-1") + arg)


wsgi.Response = Response

_http_date = util.http_date
_date = [0, ""]


def http_date(timestamp=None):
    """gunicorn's Date header, made once a second (it formats the time on every answer)."""
    if timestamp is not None:
        return _http_date(timestamp)
    now = int(time.time())
    if _date[0] != now:
        _date[:] = now, _http_date(now)
    return _date[1]


util.http_date = http_date   # gunicorn's Response.default_headers calls util.http_date() (check on an upgrade)

SHUTDOWN_IDLE_S = 1.0   # a connection accepted during shutdown still gets its first request served
# At shutdown an idle connection is closed this long after the signal, not at once: a request a client sent just
# before (closed-loop clients send the next one as soon as an answer arrives) is then read and served, with
# "Connection: close", instead of being cut off unread.
SHUTDOWN_LINGER_S = 0.25


class _IdleWait(gevent.Timeout):
    """The wait for a connection's next request. Ends silently on keep-alive expiry, or when thrown at shutdown."""

    def __init__(self, worker):
        super().__init__(worker.cfg.keepalive if worker.alive else SHUTDOWN_IDLE_S, False)
        self.worker = worker
        self.owner = None

    def __enter__(self):
        self.owner = getcurrent()
        self.worker.idle[self.owner] = self
        # Yield once before reading the next request of a connection. A client that sends its next request as
        # soon as an answer arrives (a closed-loop client, a busy upstream) has it in the socket already, so
        # recv() would return without ever letting the hub run: those connections were served back to back while
        # the others waited. Stock gunicorn gevent, a Flask echo at c=16: p50 0.5 ms, p99 889 ms. With one
        # connection there is no one to yield to.
        if self.worker.connections > 1:
            gevent.sleep(0)
        return super().__enter__()

    def __exit__(self, typ, value, tb):
        self.worker.idle.pop(self.owner, None)
        return super().__exit__(typ, value, tb)


class GeventWorker(_GeventWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.idle = {}
        self.connections = 0   # open client connections of this worker

    def handle(self, listener, client, addr):
        self.connections += 1
        try:
            return super().handle(listener, client, addr)
        finally:
            self.connections -= 1

    def timeout_ctx(self):
        return _IdleWait(self)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self._linger = gevent.get_hub().loop.timer(SHUTDOWN_LINGER_S)
        self._linger.start(self._close_idle)
        if Settings.from_env().request_mode == "async" and not hasattr(self, "_cut"):
            # Long calls: those still running just before gunicorn's drain ends get a clear error (drain.py)
            self._cut = gevent.get_hub().loop.timer(max(0.0, self.cfg.graceful_timeout - drain.CUT_MARGIN_S))
            self._cut.start(self._cut_calls)

    def _cut_calls(self):
        n = drain.cut()
        if n:
            self.log.warning("the drain ends in %.0f s: %d call(s) still running ended with an error and cancelled "
                             "in the model", drain.CUT_MARGIN_S, n)

    def handle_quit(self, sig, frame):
        """SIGQUIT and SIGINT (gunicorn's quick stop, which a terminal's Ctrl-C asks for) end the worker as SIGTERM
        does: its requests in flight finish, then it exits. gunicorn's own quit calls sys.exit() from a greenlet,
        which cuts those requests off and prints a traceback ending `SystemExit: 0`."""
        self.handle_exit(sig, frame)

    def _close_idle(self):
        # Runs in the hub: a greenlet still registered as idle is parked inside its wait, so throwing its
        # own timeout ends that wait the way keep-alive expiry would (the connection closes cleanly).
        for owner, wait in list(self.idle.items()):
            if self.idle.get(owner) is wait and not owner.dead:
                owner.throw(wait)
