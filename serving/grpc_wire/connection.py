"""One HTTP/2 connection to a gRPC server, driven by gevent: the socket, the reader greenlet, the stream table and
the callers' waits. What the bytes mean is frames.py; this module only moves them and wakes whoever waits."""
import _socket
import errno
import time

import gevent
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from gevent.queue import Empty, Queue

from .frames import (DATA, DEADLINE_EXCEEDED, E_CANCEL, END_HEADERS, END_STREAM, HEADERS, UNAVAILABLE, FrameReader,
                     ProtocolError, RpcError, call_frames, client_preface, frame, frame_head, goaway, message_prefix,
                     rst_stream, sendable)
from .protocol import END, ClientProtocol, StreamState

RECV_SIZE = 1 << 18
_TIMEOUT = object()


class Outbox:
    """The socket's send side. Writes of all greenlets in one turn of the hub go out in one `send` (the first
    write schedules the flush); what the socket does not take, a writer greenlet sends as the socket drains."""

    def __init__(self, sock, hub, lost):
        self.sock, self.hub, self.lost = sock, hub, lost
        self.watcher = hub.loop.io(sock.fileno(), 2)
        self.parts, self.due, self.pending, self.writer, self.stopped = [], False, None, None, False

    def write(self, *parts):
        """Queue bytes-like parts for the next flush."""
        self.parts += parts
        if not self.due:
            self.due = True
            self.hub.loop.run_callback(self.flush)

    def flush(self):
        self.due = False
        if self.writer is not None or self.stopped or not self.parts:
            return
        data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts = []
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.lost(f"send failed: {exc}")
            return
        if sent < len(data):
            self.pending = memoryview(data)[sent:]
            self.writer = gevent.spawn(self._drain)

    def _drain(self):
        try:
            while self.pending is not None and not self.stopped:
                try:
                    sent = self.sock.send(self.pending)
                except BlockingIOError:
                    self.hub.wait(self.watcher)
                    continue
                self.pending = self.pending[sent:]
                if not len(self.pending):
                    self.pending = None
                    if self.parts:
                        self.pending, self.parts = memoryview(b"".join(self.parts)), []
        except OSError as exc:
            self.lost(f"send failed: {exc}")
        finally:
            self.writer = None


class _Stream(StreamState):
    """A stream and its caller's wait: a unary call's Waiter, or a streaming call's queue of messages (then END,
    or an RpcError)."""
    __slots__ = ("waiter", "queue")

    def __init__(self, stream_id, send_window, streaming=False):
        StreamState.__init__(self, stream_id, send_window, streaming)
        self.waiter, self.queue = Waiter(), (Queue() if streaming else None)


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
            # A poll (idle 0: what has arrived already) takes no timer and no trip through the hub.
            item = self.stream.queue.get(timeout=wait) if wait > 0 else self.stream.queue.get_nowait()
        except Empty:
            if time.monotonic() < self.deadline:
                return None
            self.cancel()
            raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        if item is END:
            self.finished = True
            raise StopIteration
        if isinstance(item, RpcError):
            self.finished = True
            raise item
        self.conn.consumed(self.stream, item)   # its window back to the server only now: a slow reader holds it
        return item

    def cancel(self):
        if not self.finished:
            self.finished = True
            self.conn._cancel(self.stream)


class Connection(ClientProtocol):
    """One HTTP/2 connection (h2c, prior knowledge) on a non-blocking socket: ClientProtocol's state, driven by a
    reader greenlet; callers wait on a bare Waiter with one libev timer as the deadline."""

    def __init__(self, host, port, timeout, first_stream_id=1):
        super().__init__(f"{host}:{port}", first_stream_id)
        self.hub = get_hub()
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        self.sock = sock
        self._rw = self.hub.loop.io(sock.fileno(), 1)
        self.out = Outbox(sock, self.hub, self._lost)
        self._write = self.out.write
        try:
            self._connect((host, port), timeout)
        except BaseException:
            self._close_socket()
            raise
        self.window_open = Event()    # set when a window grows (or a stream ends): senders re-check
        self.slot_free = Event()      # set when a stream ends: callers waiting for MAX_CONCURRENT_STREAMS re-check
        self._windows_changed, self._slots_changed = self.window_open.set, self.slot_free.set   # the hooks
        self._write(client_preface())
        self.reader = gevent.spawn(self._read_loop)

    def _connect(self, address, timeout):
        err = self.sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            with gevent.Timeout(timeout, RpcError(UNAVAILABLE, f"connect to {self.authority} timed out")):
                self.hub.wait(self.out.watcher)
            err = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err:
            raise RpcError(UNAVAILABLE, f"cannot connect to {self.authority}: {errno.errorcode.get(err, err)}",
                           processed=False)

    # -- calls ----------------------------------------------------------------------------------------------------

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
        if len(self.streams) >= self.peer_max_streams or not self.usable:
            self._slot(deadline)
        stream = _Stream(self.next_id, self.peer_window, streaming)
        self.next_id += 2
        self.streams[stream.id] = stream
        block = self.whole.get((path, timeout)) or self.block(path, timeout)
        parts = message if isinstance(message, (list, tuple)) else (message,)
        n = 5 + sum(len(p) for p in parts)
        try:
            if n <= self.send_window and n <= stream.send_window and n <= self.peer_frame_size:
                # The common case: one piece for the frames, then the message's parts as they are (the flush
                # joins them once, into the send).
                self.send_window -= n
                stream.send_window -= n
                self._write(call_frames(stream.id, block, n - 5), *parts)
            else:
                self._write(frame(HEADERS, END_HEADERS, stream.id, block))
                self._send_data(stream, b"".join((message_prefix(n - 5), *parts)), deadline)
        except BaseException:   # a deadline while sending, or the caller killed (its client hung up)
            self._cancel(stream)
            raise
        return stream

    def _slot(self, deadline):
        """Wait until the server's MAX_CONCURRENT_STREAMS lets one more stream open here."""
        if not self.usable:
            raise RpcError(UNAVAILABLE, self.closed or "the connection takes no new streams", processed=False)
        while len(self.streams) >= self.peer_max_streams:
            self.slot_free.clear()
            if not self.slot_free.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded (waiting for a stream)")
            if not self.usable:
                raise RpcError(UNAVAILABLE, self.closed or "connection is going away", processed=False)

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
                size = sendable(n - at, self.send_window, stream.send_window, self.peer_frame_size)
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
                self._write(frame_head(DATA, END_STREAM if at + size == n else 0, stream.id, size),
                            view[at:at + size])
                at += size
        finally:
            stream.sending = False

    def _cancel(self, stream):
        if self.streams.pop(stream.id, None) is not None:
            if not stream.done and not self.closed:
                self._write(rst_stream(stream.id, E_CANCEL))
            self._stream_gone()

    # -- the protocol's hooks -------------------------------------------------------------------------------------

    def _wake(self, stream, item):
        if stream.queue is not None:
            stream.queue.put(item)
        else:
            self.hub.loop.run_callback(stream.waiter.switch, item)

    # -- reading --------------------------------------------------------------------------------------------------

    def _read_loop(self):
        sock, reader, receive = self.sock, FrameReader(), self.receive
        try:
            while True:
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    self.hub.wait(self._rw)
                    continue
                if not data:
                    raise ConnectionError("the server closed the connection")
                for ftype, flags, stream_id, payload in reader.feed(data):
                    receive(ftype, flags, stream_id, payload)
                    if self.closed:
                        return
        except ProtocolError as exc:
            self._write(goaway(exc.code))
            self.out.flush()
            self._lost(f"protocol error from the server: {exc.why}")
        except OSError as exc:
            self._lost(str(exc) or type(exc).__name__)
        except gevent.GreenletExit:
            self._lost("connection closed")
            raise
        except Exception as exc:   # a frame we could not make sense of: the connection cannot be trusted
            self._lost(f"protocol error from the server: {type(exc).__name__}: {exc}")

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
        if self.out.parts and self.out.writer is None:
            self.out.flush()
        self._lost(why)
        reader = getattr(self, "reader", None)
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)

    def _close_socket(self):
        self.out.stopped = True
        for watcher in (self._rw, self.out.watcher):   # a greenlet parked on the socket gets an error, not a hang
            self.hub.cancel_wait(watcher, ConnectionError("connection closed"), True)
        try:
            self.sock.close()
        except OSError:
            pass
