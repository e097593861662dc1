"""gRPC calls over HTTP/2 (h2c, prior knowledge) on gevent, with no threads: the worker's client to Triton. Unary
calls, and server-streaming ones (one request, half-closed, then the answers as they come: Triton's ModelStreamInfer
for decoupled models).

grpcio under gevent sends every call's wait through gevent's native thread pool (two cross-thread wake-ups and GIL
hand-offs per call); this client speaks the wire protocol itself on one non-blocking socket per worker, so a call is
a few Python functions and, under load, a share of one `send` and one `recv`. It follows grpc's
doc/PROTOCOL-HTTP2.md and RFC 9113, for what a unary client needs:

- requests: a HEADERS frame (pseudo-headers first, `content-type: application/grpc`, `te: trailers`, `grpc-timeout`)
  written with HPACK literals that never touch the dynamic table, so a route's block is built once; then the message
  with its 5-byte prefix in DATA frames, within the server's windows and MAX_FRAME_SIZE;
- answers: HEADERS (+ CONTINUATION), DATA, trailers; or trailers-only (one HEADERS frame with END_STREAM); `:status`,
  `grpc-status`, percent-encoded `grpc-message`; RST_STREAM (REFUSED_STREAM is UNAVAILABLE); HPACK with its dynamic
  table and size updates (the `hpack` package), and a cache for blocks of indexed fields only, which leave the table
  as it was (Triton's answer headers repeat byte for byte once its table is warm);
- the connection: SETTINGS (acked, INITIAL_WINDOW_SIZE and MAX_CONCURRENT_STREAMS honoured), PING answered,
  WINDOW_UPDATE sent for what is received, GOAWAY (streams above last_stream_id fail as not processed and are retried
  once on a new connection; the rest finish), a dropped connection fails its streams as UNAVAILABLE, stream ids
  that run out open a new connection;
- a deadline sends RST_STREAM(CANCEL) and fails with DEADLINE_EXCEEDED; a caller killed while waiting (a client that
  hung up) cancels its stream the same way.

Writes of all greenlets in one turn of the hub are joined into one `send` (the first writer schedules the flush); a
caller waits on a bare `gevent.hub.Waiter` with one libev timer as its deadline; one reader greenlet per connection
parses frames and wakes callers through the hub.

A protocol violation by the server ends the connection (or, where it concerns one stream, that stream), and the calls
it ends fail with UNAVAILABLE, which the proxy answers as 503: a call never hangs past its deadline and never leaks a
stream.
"""
import _socket
import errno
import struct
import time
from urllib.parse import unquote

import gevent
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue
import hpack

# gRPC status codes (grpc's doc/statuscodes.md).
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4, 5
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14
CODE_NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
              6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
              10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
              15: "DATA_LOSS", 16: "UNAUTHENTICATED"}

# HTTP/2 frame types, flags, settings and error codes (RFC 9113).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 1, 2, 3, 4, 5
E_NO_ERROR, E_PROTOCOL, E_FLOW_CONTROL, E_FRAME_SIZE, E_REFUSED_STREAM, E_CANCEL = 0, 1, 3, 6, 7, 8

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAM_ID = 2 ** 31 - 1
MAX_WINDOW = 2 ** 31 - 1
RECV_FRAME_SIZE = 1 << 20          # what we let the server send in one frame (SETTINGS_MAX_FRAME_SIZE)
STREAM_WINDOW = 1 << 24            # our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE): 16 MiB
CONNECTION_WINDOW = 1 << 30        # our receive window for the connection (raised by WINDOW_UPDATE at start)
RECV_SIZE = 1 << 18

_FRAME = struct.Struct(">HBBBI")   # length (24 bits as 16 + 8), type, flags, stream id
_PREFIX = struct.Struct(">BI")     # the gRPC message prefix: compressed flag, length


def frame(ftype, flags, stream_id, payload=b""):
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def _hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name, value, name_index=0):
    """A header field as a literal without indexing (RFC 7541 6.2.2), no Huffman: the table is never touched."""
    head = _hpack_int(name_index, 4) if name_index else b"\x00" + _hpack_int(len(name), 7) + name
    return head + _hpack_int(len(value), 7) + value


def grpc_timeout(seconds):
    """The grpc-timeout value: at most 8 digits and a unit, never shorter than the deadline."""
    micros = max(1, int(seconds * 1e6 + 0.999))
    if micros < 10 ** 8:
        return f"{micros}u"
    millis = -(-micros // 1000)
    return f"{millis}m" if millis < 10 ** 8 else f"{min(-(-millis // 1000), 10 ** 8 - 1)}S"


def request_block(authority, path, timeout):
    """The HEADERS block of one call."""
    return b"".join((b"\x83\x86",                                           # :method POST, :scheme http
                     _literal(b":path", path.encode(), 4), _literal(b":authority", authority.encode(), 1),
                     _literal(b"content-type", b"application/grpc"), _literal(b"te", b"trailers"),
                     _literal(b"grpc-timeout", grpc_timeout(timeout).encode())))


# An HTTP status that is not 200 -> the gRPC code (grpc's doc/http-grpc-status-mapping.md).
_HTTP_STATUS = {400: INTERNAL, 401: 16, 403: 7, 404: UNIMPLEMENTED, 429: UNAVAILABLE, 502: UNAVAILABLE,
                503: UNAVAILABLE, 504: UNAVAILABLE}


class RpcError(Exception):
    """A call that did not return a message: its gRPC status code and details."""

    def __init__(self, code, details, processed=True):
        super().__init__(f"{CODE_NAMES.get(code, code)}: {details}")
        self.code, self.details = code, details
        self.processed = processed   # False: the server never saw it (GOAWAY above it, REFUSED_STREAM): safe to retry

    @property
    def name(self):
        return CODE_NAMES.get(self.code, str(self.code))


class ProtocolError(Exception):
    pass


class _Stream:
    __slots__ = ("id", "waiter", "send_window", "recv_unacked", "headers", "data", "done", "sending", "queue", "buf")

    def __init__(self, stream_id, send_window, streaming=False):
        self.id, self.waiter, self.send_window = stream_id, Waiter(), send_window
        self.recv_unacked, self.headers, self.data = 0, None, []
        self.done, self.sending = False, False
        # A streaming call's messages go to its queue as they complete (then _END, or an RpcError).
        self.queue, self.buf = (Queue(), bytearray()) if streaming else (None, None)


_TIMEOUT = object()
_END = object()


class ResponseStream:
    """The answers of a server-streaming call, as they come: `next(idle)` returns the next message's bytes, None
    when `idle` seconds pass without one, and raises StopIteration at the end or RpcError (DEADLINE_EXCEEDED past
    the call's deadline). `cancel()` resets the stream (the server sees the call cancelled)."""

    def __init__(self, conn, stream, deadline):
        self.conn, self.stream, self.deadline, self.finished = conn, stream, deadline, False

    def next(self, idle=None):
        if self.finished:
            raise StopIteration
        left = self.deadline - time.monotonic()
        wait = left if idle is None else min(idle, left)
        try:
            item = self.stream.queue.get(timeout=max(0.0, wait))
        except Empty:
            if time.monotonic() < self.deadline:
                return None
            self.cancel()
            raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        if item is _END:
            self.finished = True
            raise StopIteration
        if isinstance(item, RpcError):
            self.finished = True
            raise item
        return item

    def cancel(self):
        if not self.finished:
            self.finished = True
            self.conn._cancel(self.stream)


class Connection:
    """One HTTP/2 connection: its reader greenlet, its streams, its windows."""

    def __init__(self, host, port, timeout, first_stream_id=1):
        self.hub = get_hub()
        self.authority = f"{host}:{port}"
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        self.sock, self.fd = sock, sock.fileno()
        self._rw, self._ww = self.hub.loop.io(self.fd, 1), self.hub.loop.io(self.fd, 2)
        try:
            self._connect((host, port), timeout)
        except BaseException:
            self._close_socket()
            raise
        self.streams = {}
        self.next_id = first_stream_id
        self.closed = None            # why the connection ended, once it has
        self.goaway = False           # the server sent GOAWAY: no new streams here
        self.peer_max_streams = 2 ** 31
        self.peer_window = 65535      # the server's initial stream window, until its SETTINGS say otherwise
        self.peer_frame_size = 16384
        self.send_window = 65535      # the connection's send window
        self.recv_unacked = 0
        self.window_open = Event()    # set when a window grows (or a stream ends): senders re-check
        self.slot_free = Event()      # set when a stream ends: callers waiting for MAX_CONCURRENT_STREAMS re-check
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.indexed_cache = {}       # header blocks of indexed fields only -> decoded headers
        self.blocks = {}              # (path, timeout) -> request HEADERS block
        self._out, self._flush_due, self._pending, self._writer = [], False, None, None
        self._continuation = None     # (stream id, flags, [fragments]) while a header block is open
        self._write(PREFACE + frame(SETTINGS, 0, 0, struct.pack(
            ">HIHIHI", S_ENABLE_PUSH, 0, S_INITIAL_WINDOW_SIZE, STREAM_WINDOW, S_MAX_FRAME_SIZE, RECV_FRAME_SIZE))
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - 65535)))
        self.reader = gevent.spawn(self._read_loop)

    def _connect(self, address, timeout):
        err = self.sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            with gevent.Timeout(timeout, RpcError(UNAVAILABLE, f"connect to {self.authority} timed out")):
                self.hub.wait(self._ww)
            err = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err:
            raise RpcError(UNAVAILABLE, f"cannot connect to {self.authority}: {errno.errorcode.get(err, err)}",
                           processed=False)

    # -- writing --------------------------------------------------------------------------------------------------

    def _write(self, *parts):
        """Queue bytes-like parts for the next flush (one send for everything written in this turn of the hub)."""
        self._out += parts
        if not self._flush_due:
            self._flush_due = True
            self.hub.loop.run_callback(self._flush)

    def _flush(self):
        """In the hub: everything written this turn in one send; what the socket does not take goes to a writer."""
        self._flush_due = False
        if self._writer is not None or self.closed or not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(f"send failed: {exc}")
            return
        if sent < len(data):
            self._pending = memoryview(data)[sent:]
            self._writer = gevent.spawn(self._drain)

    def _drain(self):
        try:
            while self._pending is not None and not self.closed:
                try:
                    sent = self.sock.send(self._pending)
                except BlockingIOError:
                    self.hub.wait(self._ww)
                    continue
                self._pending = self._pending[sent:]
                if not len(self._pending):
                    self._pending = None
                    if self._out:
                        self._pending, self._out = memoryview(b"".join(self._out)), []
        except OSError as exc:
            self._lost(f"send failed: {exc}")
        finally:
            self._writer = None

    # -- calls ----------------------------------------------------------------------------------------------------

    @property
    def usable(self):
        return not self.closed and not self.goaway and self.next_id <= MAX_STREAM_ID

    def unary(self, path, message, timeout, deadline):
        """The response message's bytes, or RpcError. `message`: bytes, or a list of bytes-like parts."""
        stream = self._open(path, message, timeout, deadline)
        try:
            result = self._wait(stream, deadline)
        except BaseException:   # the caller killed (its client hung up)
            self._cancel(stream)
            raise
        if result is _TIMEOUT:
            self._cancel(stream)
            raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded")
        if isinstance(result, RpcError):
            raise result
        return result

    def server_stream(self, path, message, timeout, deadline):
        """Send one request message and half-close; the answers come as a ResponseStream."""
        return ResponseStream(self, self._open(path, message, timeout, deadline, streaming=True), deadline)

    def _open(self, path, message, timeout, deadline, streaming=False):
        """A new stream with the request written (HEADERS, then the message with END_STREAM)."""
        if not self.usable:
            raise RpcError(UNAVAILABLE, self.closed or "the connection takes no new streams", processed=False)
        while len(self.streams) >= self.peer_max_streams:
            self.slot_free.clear()
            if not self.slot_free.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded (waiting for a stream)")
            if not self.usable:
                raise RpcError(UNAVAILABLE, self.closed or "connection is going away", processed=False)
        stream = _Stream(self.next_id, self.peer_window, streaming)
        self.next_id += 2
        self.streams[stream.id] = stream
        block = self.blocks.get((path, timeout))
        if block is None:
            block = self.blocks[(path, timeout)] = request_block(self.authority, path, timeout)
        parts = message if isinstance(message, (list, tuple)) else (message,)
        n = 5 + sum(len(p) for p in parts)
        try:
            if n <= self.send_window and n <= stream.send_window and n <= self.peer_frame_size:
                # The common case: HEADERS, the DATA frame's header and the message prefix in one piece, then the
                # message's parts as they are: the flush joins them once, into the send.
                self.send_window -= n
                stream.send_window -= n
                self._write(frame(HEADERS, END_HEADERS, stream.id, block)
                            + _FRAME.pack(n >> 8, n & 0xFF, DATA, END_STREAM, stream.id) + _PREFIX.pack(0, n - 5), *parts)
            else:
                self._write(frame(HEADERS, END_HEADERS, stream.id, block))
                self._send_data(stream, b"".join((_PREFIX.pack(0, n - 5), *parts)), deadline)
        except BaseException:   # a deadline while sending, or the caller killed (its client hung up)
            self._cancel(stream)
            raise
        return stream

    def _wait(self, stream, deadline):
        remaining = deadline - time.monotonic()
        if stream.done or remaining <= 0:
            return stream.waiter.get() if stream.done else _TIMEOUT
        timer = self.hub.loop.timer(remaining)
        timer.start(stream.waiter.switch, _TIMEOUT)
        try:
            return stream.waiter.get()
        finally:
            timer.close()

    def _send_data(self, stream, body, deadline):
        view, at, n = memoryview(body), 0, len(body)
        stream.sending = True
        try:
            while at < n:
                if stream.done or self.closed:
                    return   # the server answered (or the connection ended) before the whole message went
                size = min(n - at, self.send_window, stream.send_window, self.peer_frame_size)
                if size <= 0:
                    self.window_open.clear()
                    left = deadline - time.monotonic()
                    if left <= 0 or not self.window_open.wait(left) and time.monotonic() >= deadline:
                        raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded (the server's flow-control window "
                                                          "stayed closed)")
                    continue
                self.send_window -= size
                stream.send_window -= size
                # The slice is copied once, when the flush joins it into the send.
                self._write(_FRAME.pack(size >> 8, size & 0xFF, DATA, END_STREAM if at + size == n else 0, stream.id),
                            view[at:at + size])
                at += size
        finally:
            stream.sending = False

    def _cancel(self, stream):
        if self.streams.pop(stream.id, None) is not None:
            if not stream.done and not self.closed:
                self._write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", E_CANCEL)))
            self._stream_gone()

    def _stream_gone(self):
        self.slot_free.set()
        if not self.streams and not self.closed and (self.goaway or self.next_id > MAX_STREAM_ID):
            self.close("every stream has finished on a connection that takes no new ones")

    def _finish(self, stream, result):
        """Deliver a stream's result to its caller (from the reader greenlet or the hub)."""
        if stream.done:
            return
        stream.done = True
        self.streams.pop(stream.id, None)
        if stream.queue is not None:
            stream.queue.put(result)
        else:
            self.hub.loop.run_callback(stream.waiter.switch, result)
        if stream.sending:
            self.window_open.set()
        self._stream_gone()

    # -- reading --------------------------------------------------------------------------------------------------

    def _read_loop(self):
        sock, unpack = self.sock, _FRAME.unpack_from
        pending, have, need = [], 0, 9   # received bytes not parsed yet; how many the next frame needs
        try:
            while True:
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    self.hub.wait(self._rw)
                    continue
                if not data:
                    raise ConnectionError("the server closed the connection")
                pending.append(data)
                have += len(data)
                if have < need:
                    continue
                buf = pending[0] if len(pending) == 1 else b"".join(pending)
                at, size = 0, len(buf)
                while size - at >= 9:
                    hi, lo, ftype, flags, stream_id = unpack(buf, at)
                    length = (hi << 8) | lo
                    if length > RECV_FRAME_SIZE:
                        raise ProtocolError(f"a frame of {length} bytes, over our MAX_FRAME_SIZE", E_FRAME_SIZE)
                    if size - at < 9 + length:
                        break
                    payload = buf[at + 9:at + 9 + length]
                    at += 9 + length
                    self._frame(ftype, flags, stream_id & MAX_STREAM_ID, payload)
                    if self.closed:
                        return
                rest = buf[at:] if at else buf
                pending, have = ([rest] if rest else []), len(rest)
                need = 9 + ((rest[0] << 16) | (rest[1] << 8) | rest[2]) if have >= 9 else 9
        except ProtocolError as exc:
            self._write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, exc.args[1] if len(exc.args) > 1 else E_PROTOCOL)))
            self._flush()
            self._lost(f"protocol error from the server: {exc.args[0]}")
        except OSError as exc:
            self._lost(str(exc) or type(exc).__name__)
        except gevent.GreenletExit:
            self._lost("connection closed")
            raise
        except Exception as exc:   # a frame we could not make sense of: the connection cannot be trusted
            self._lost(f"protocol error from the server: {type(exc).__name__}: {exc}")

    def _frame(self, ftype, flags, stream_id, payload):
        if self._continuation is not None and ftype != CONTINUATION:
            raise ProtocolError("a header block was interrupted by another frame")
        if ftype == DATA:
            self._data(flags, stream_id, payload)
        elif ftype == HEADERS:
            if stream_id == 0:
                raise ProtocolError("HEADERS on stream 0")
            payload = _unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, payload)
            else:
                self._continuation = (stream_id, flags, [payload])
        elif ftype == CONTINUATION:
            if self._continuation is None or self._continuation[0] != stream_id:
                raise ProtocolError("CONTINUATION without its HEADERS")
            self._continuation[2].append(payload)
            if flags & END_HEADERS:
                sid, first_flags, parts = self._continuation
                self._continuation = None
                self._headers(sid, first_flags, b"".join(parts))
        elif ftype == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif ftype == PING:
            if len(payload) != 8 or stream_id:
                raise ProtocolError("a malformed PING", E_FRAME_SIZE)
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif ftype == WINDOW_UPDATE:
            if len(payload) != 4:
                raise ProtocolError("a malformed WINDOW_UPDATE", E_FRAME_SIZE)
            increment = struct.unpack(">I", payload)[0] & MAX_STREAM_ID
            if stream_id == 0:
                if not increment:
                    raise ProtocolError("WINDOW_UPDATE of 0 on the connection")
                self.send_window += increment
                if self.send_window > MAX_WINDOW:
                    raise ProtocolError("the connection window overflowed", E_FLOW_CONTROL)
            else:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream.send_window += increment
                    if not increment or stream.send_window > MAX_WINDOW:
                        self._reset(stream, E_PROTOCOL if not increment else E_FLOW_CONTROL,
                                    "a bad WINDOW_UPDATE from the server")
            self.window_open.set()
        elif ftype == RST_STREAM:
            if len(payload) != 4 or stream_id == 0:
                raise ProtocolError("a malformed RST_STREAM", E_FRAME_SIZE)
            stream = self.streams.get(stream_id)
            if stream is not None:
                code = struct.unpack(">I", payload)[0]
                if code == E_REFUSED_STREAM:
                    result = RpcError(UNAVAILABLE, "the server refused the stream", processed=False)
                elif code == E_CANCEL:
                    result = RpcError(CANCELLED, "the server cancelled the call")
                else:
                    result = RpcError(INTERNAL, f"the server reset the stream (HTTP/2 error {code})")
                self._finish(stream, result)
        elif ftype == GOAWAY:
            if len(payload) < 8 or stream_id:
                raise ProtocolError("a malformed GOAWAY", E_FRAME_SIZE)
            last, code = struct.unpack_from(">II", payload)
            self.goaway = True
            for stream in [s for s in self.streams.values() if s.id > (last & MAX_STREAM_ID)]:
                self._finish(stream, RpcError(UNAVAILABLE, "the server is going away (GOAWAY) before this call",
                                              processed=False))
            self.slot_free.set()
            if not self.streams:
                self.close("the server sent GOAWAY")
        elif ftype == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE, which we disabled")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.

    def _data(self, flags, stream_id, payload):
        if stream_id == 0:
            raise ProtocolError("DATA on stream 0")
        n = len(payload)
        self.recv_unacked += n   # flow control counts the whole frame, padding included, even for gone streams
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.recv_unacked)))
            self.recv_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id >= self.next_id:
                raise ProtocolError(f"DATA on stream {stream_id}, which was never opened")
            return   # a stream we cancelled: its late frames are dropped
        if stream.headers is None:
            self._reset(stream, E_PROTOCOL, "DATA before the response headers")
            return
        stream.recv_unacked += n
        if stream.recv_unacked > STREAM_WINDOW:
            raise ProtocolError("the server overran the stream's window", E_FLOW_CONTROL)
        if stream.queue is not None:
            self._messages(stream, _unpad(flags, payload))
        else:
            stream.data.append(_unpad(flags, payload))
        if flags & END_STREAM:
            self._finish(stream, RpcError(UNAVAILABLE, "the server ended the stream without trailers"))
        elif stream.recv_unacked >= STREAM_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.recv_unacked)))
            stream.recv_unacked = 0

    def _messages(self, stream, payload):
        """A streaming call: complete length-prefixed messages go to its queue as soon as they are whole."""
        buf = stream.buf
        buf += payload
        at = 0
        while len(buf) - at >= 5:
            compressed, length = _PREFIX.unpack_from(buf, at)
            if compressed:
                self._reset(stream, E_PROTOCOL, "a compressed message, which was not asked for")
                return
            if len(buf) - at - 5 < length:
                break
            stream.queue.put(bytes(buf[at + 5:at + 5 + length]))
            at += 5 + length
        if at:
            del buf[:at]

    def _decode(self, block):
        """A header block -> {name: value} (read only: a cached dict is shared)."""
        cached = self.indexed_cache.get(block)
        if cached is not None:
            return cached
        try:
            headers = dict(self.decoder.decode(block))
        except hpack.HPACKError as exc:
            raise ProtocolError(f"HPACK: {exc}") from None
        if block and min(block) >= 0x80:   # indexed fields only: the table is unchanged, the block means this again
            self.indexed_cache[block] = headers
        else:
            self.indexed_cache.clear()      # the table may have changed: indexed blocks may mean something else now
        return headers

    def _headers(self, stream_id, flags, block):
        headers = self._decode(block)   # decoded even for a stream that is gone: the table must follow
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id >= self.next_id or not stream_id & 1:
                raise ProtocolError(f"HEADERS on stream {stream_id}, which we never opened")
            return
        if stream.headers is None:
            stream.headers = headers
            status = headers.get(":status")
            if status != "200":
                code = _HTTP_STATUS.get(int(status) if status and status.isdigit() else 0, UNKNOWN)
                if "grpc-status" not in headers:
                    self._finish(stream, RpcError(code, f"HTTP status {status} from the server"))
                    return
            ctype = headers.get("content-type", "")
            if not ctype.startswith("application/grpc") and "grpc-status" not in headers:
                self._finish(stream, RpcError(UNAVAILABLE, f"the server answered with content-type {ctype!r}"))
                return
            if not flags & END_STREAM:
                return
            trailers = headers   # trailers-only
        else:
            if not flags & END_STREAM:
                self._reset(stream, E_PROTOCOL, "a second header block that does not end the stream")
                return
            trailers = headers
        self._finish(stream, self._result(stream, trailers))

    def _result(self, stream, trailers):
        status = trailers.get("grpc-status")
        if status is None or not status.isdigit():
            return RpcError(UNAVAILABLE, f"a malformed answer from the server: grpc-status {status!r}")
        code = int(status)
        if code != OK:
            return RpcError(code, unquote(trailers.get("grpc-message", ""), errors="replace"))
        if stream.queue is not None:
            if stream.buf:
                return RpcError(UNAVAILABLE, f"a malformed answer from the server: {len(stream.buf)} bytes of an "
                                             "unfinished message at the end of the stream")
            return _END
        data = stream.data[0] if len(stream.data) == 1 else b"".join(stream.data)
        if len(data) < 5:
            return RpcError(UNAVAILABLE, "a malformed answer from the server: no response message")
        compressed, length = _PREFIX.unpack_from(data)
        if compressed:
            return RpcError(UNAVAILABLE, "a malformed answer from the server: compressed, which was not asked for")
        if len(data) != 5 + length:
            return RpcError(UNAVAILABLE, f"a malformed answer from the server: a message of {len(data) - 5} bytes, "
                                         f"its prefix says {length}")
        return memoryview(data)[5:] if length > 65536 else data[5:]   # a large message is not copied again

    def _settings(self, flags, stream_id, payload):
        if stream_id:
            raise ProtocolError("SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ProtocolError("a malformed SETTINGS frame", E_FRAME_SIZE)
        for at in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, at)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError("INITIAL_WINDOW_SIZE over 2^31-1", E_FLOW_CONTROL)
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise ProtocolError(f"MAX_FRAME_SIZE {value}")
                self.peer_frame_size = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == S_HEADER_TABLE_SIZE:
                pass   # the size of the server's decoder table: our requests never add to it
        self._write(frame(SETTINGS, ACK, 0))
        self.window_open.set()
        self.slot_free.set()

    def _reset(self, stream, code, why):
        self._write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))
        self._finish(stream, RpcError(UNAVAILABLE, f"a malformed answer from the server: {why}"))

    # -- the end ---------------------------------------------------------------------------------------------------

    def _lost(self, why):
        """The connection is gone: every call on it fails as UNAVAILABLE."""
        if self.closed:
            return
        self.closed = why
        for stream in list(self.streams.values()):
            self._finish(stream, RpcError(UNAVAILABLE, f"connection to {self.authority} lost: {why}"))
        self.window_open.set()
        self.slot_free.set()
        self._close_socket()

    def close(self, why="closed by the client"):
        if self.closed:
            return
        if self._out and self._writer is None:
            self._flush()
        self._lost(why)
        reader = getattr(self, "reader", None)
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)

    def _close_socket(self):
        for watcher in (self._rw, self._ww):   # a greenlet parked on the socket gets an error, not a hang
            self.hub.cancel_wait(watcher, ConnectionError("connection closed"), True)
        try:
            self.sock.close()
        except OSError:
            pass


def _unpad(flags, payload):
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("padding longer than the frame")
    return payload[1:len(payload) - payload[0]]


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
