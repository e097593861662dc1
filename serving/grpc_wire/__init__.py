"""gRPC calls over HTTP/2 (h2c, prior knowledge) on gevent, with no threads: the worker's client to Triton, though
nothing here knows Triton. Unary calls, and server-streaming ones (one request, half-closed, then the answers as
they come: Triton's ModelStreamInfer for decoupled models).

grpcio under gevent sends every call's wait through gevent's native thread pool (two cross-thread wake-ups and GIL
hand-offs per call); this client speaks the wire protocol itself on one non-blocking socket per worker, so a call is
a few Python functions and, under load, a share of one `send` and one `recv`. It is split the sans-IO way:

- frames.py: the protocol as plain functions and small data. Frames out and in (FrameReader: bytes -> frames),
  header blocks (HPACK literals that never touch the server's table, so a route's block is built once; decoding
  with the dynamic table and a cache for blocks of indexed fields only), flow-control arithmetic, gRPC messages
  and statuses (trailers-only answers, percent-encoded grpc-message, HTTP statuses mapped as grpc does);
- protocol.py: ClientProtocol, the connection's state machine with no I/O. SETTINGS (acked, INITIAL_WINDOW_SIZE
  and MAX_CONCURRENT_STREAMS honoured), PING answered, WINDOW_UPDATE sent for what is received, RST_STREAM
  (REFUSED_STREAM is UNAVAILABLE and not processed), GOAWAY (streams above last_stream_id fail as not processed;
  the rest finish), CONTINUATION;
- connection.py: the gevent driver. The socket, the reader greenlet, writes of all greenlets in one turn of the
  hub joined into one `send`, a caller's wait on a bare `gevent.hub.Waiter` with one libev timer as its deadline.
  A deadline sends RST_STREAM(CANCEL) and fails with DEADLINE_EXCEEDED; a caller killed while waiting (a client
  that hung up) cancels its stream the same way; a dropped connection fails its streams as UNAVAILABLE;
- channel.py: one connection at a time to a server, a new one when the last is gone (or its stream ids ran out),
  and one transparent retry of a call the server never processed.

A protocol violation by the server ends the connection (or, where it concerns one stream, that stream), and the calls
it ends fail with UNAVAILABLE, which the proxy answers as 503: a call never hangs past its deadline and never leaks a
stream. It follows grpc's doc/PROTOCOL-HTTP2.md and RFC 9113, for what these calls need.
"""
from .channel import Channel
from .connection import Connection, ResponseStream
from .frames import (CANCELLED, CODE_NAMES, CONTINUATION, DATA, DEADLINE_EXCEEDED, END_HEADERS, END_STREAM, GOAWAY,
                     HEADERS, INTERNAL, INVALID_ARGUMENT, MAX_STREAM_ID, NOT_FOUND, OK, PADDED, PING, PUSH_PROMISE,
                     RECV_FRAME_SIZE, RESOURCE_EXHAUSTED, RST_STREAM, SETTINGS, UNAVAILABLE, UNIMPLEMENTED, UNKNOWN,
                     WINDOW_UPDATE, ProtocolError, RpcError, frame)

__all__ = ["Channel", "Connection", "ResponseStream", "RpcError", "ProtocolError", "frame", "CODE_NAMES", "OK",
           "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "RESOURCE_EXHAUSTED",
           "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA", "HEADERS", "RST_STREAM", "SETTINGS", "PUSH_PROMISE",
           "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION", "END_STREAM", "END_HEADERS", "PADDED", "MAX_STREAM_ID",
           "RECV_FRAME_SIZE"]
