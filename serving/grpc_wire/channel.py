"""Calls to one gRPC server over one connection at a time: a new connection when the last is gone, and one
transparent retry of a call the server never processed."""
import time

from gevent.lock import Semaphore

from .connection import Connection
from .frames import DEADLINE_EXCEEDED, UNAVAILABLE, RpcError


class Channel:
    """Unary calls to one server, over one connection at a time (a new one when the last is gone).

    `call(service_method, request, response_type, timeout)`: `service_method` is "/package.Service/Method"."""

    def __init__(self, host, port, connect_timeout=5.0):
        self.host, self.port, self.connect_timeout = host, int(port), connect_timeout
        self.conn = None
        self._connecting = Semaphore()

    def _connection(self, deadline):
        conn = self.conn
        if conn is not None and conn.usable:
            return conn
        with self._connecting:
            conn = self.conn
            if conn is None or not conn.usable:
                if conn is not None and not conn.streams:
                    conn.close("replaced")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded (connecting)")
                conn = self.conn = Connection(self.host, self.port, min(left, self.connect_timeout))
            return conn

    def call(self, path, request, response_type, timeout):
        """The response message; `request` is a message, or its serialized form (bytes, or a list of parts)."""
        deadline = time.monotonic() + timeout
        message = request if isinstance(request, (bytes, list, tuple)) else request.SerializeToString()
        for attempt in (0, 1):
            try:
                raw = self._connection(deadline).unary(path, message, timeout, deadline)
            except RpcError as exc:
                # A call the server never processed (refused, above a GOAWAY, or no connection at all) is safe to
                # send again once, on a new connection, as grpc's transparent retry does.
                if exc.processed or attempt or time.monotonic() >= deadline:
                    raise
                continue
            try:
                return response_type.FromString(raw)
            except Exception as exc:
                raise RpcError(UNAVAILABLE, f"a malformed answer from the server: {exc}") from None

    def stream(self, path, request, timeout):
        """A server-streaming call: one request (a message or its serialized parts), then a ResponseStream of the
        answers' bytes until the server's trailers; `timeout` bounds the whole call."""
        deadline = time.monotonic() + timeout
        message = request if isinstance(request, (bytes, list, tuple)) else request.SerializeToString()
        for attempt in (0, 1):
            try:
                return self._connection(deadline).server_stream(path, message, timeout, deadline)
            except RpcError as exc:
                if exc.processed or attempt or time.monotonic() >= deadline:
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
