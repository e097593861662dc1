"""The client's side of an HTTP/2 connection as a state machine with no I/O: what the server's frames do to the
streams, the windows and the header table, and which frames we owe it. The driver (connection.py) subclasses it,
feeds it frames and supplies the hooks that move bytes and wake callers; tests/test_grpc_frames.py feeds it frames
with no socket at all."""
from .frames import (ACK, ANSWER_LIMIT, CONNECTION_WINDOW, CONTINUATION, DATA, DEFAULT_FRAME_SIZE, DEFAULT_WINDOW,
                     END_HEADERS, END_STREAM, E_CANCEL, E_FLOW_CONTROL, E_PROTOCOL, GOAWAY, HEADERS, MAX_STREAM_ID,
                     PADDED, PING, PRIORITY_FLAG, PUSH_PROMISE, RESOURCE_EXHAUSTED, RST_STREAM, SETTINGS,
                     STREAM_WINDOW, S_INITIAL_WINDOW_SIZE, S_MAX_CONCURRENT_STREAMS, S_MAX_FRAME_SIZE, UNAVAILABLE,
                     WINDOW_UPDATE, HeaderDecoder, ProtocolError, RpcError, frame, grow, header_fragment,
                     parse_goaway, parse_ping, parse_rst_stream, parse_settings, parse_window_update, received,
                     refused, request_block, rst_stream, status_error, take_messages, timeout_field, unary_result,
                     unpad, window_update)

END = object()   # a streaming call's end, after its last message
TIMEOUTS_KEPT = 64   # whole blocks kept per connection (a route's constant deadline; never the varying ones)


class StreamState:
    """One call's stream, as the protocol sees it. `buf` is None for a unary call; a streaming call's bytes of an
    unfinished message wait there. `held`: a streaming call's bytes received but not yet taken by its caller,
    whose window is given back only as the caller takes them (backpressure: a slow reader holds the server);
    `size`: a unary call's answer so far (ANSWER_LIMIT bounds it)."""
    __slots__ = ("id", "send_window", "recv_unacked", "headers", "data", "done", "sending", "buf", "held", "size")

    def __init__(self, stream_id, send_window, streaming=False):
        self.id, self.send_window, self.recv_unacked, self.held, self.size = stream_id, send_window, 0, 0, 0
        self.headers, self.data, self.done, self.sending = None, [], False, False
        self.buf = bytearray() if streaming else None


class ClientProtocol:
    """The connection's state: open streams, both sides' windows and limits, the server's header table.

    Hooks for the driver: `_write(*parts)` queues bytes for the server; `_wake(stream, item)` hands a caller what
    came for it (a message's bytes, an RpcError, or END after a stream's last message); `_windows_changed()` and
    `_slots_changed()` say that senders waiting for a window, or for a stream under MAX_CONCURRENT_STREAMS, may
    look again; `close(why)` ends the connection."""

    def __init__(self, authority, first_stream_id=1):
        self.authority = authority
        self.closed = None            # why the connection ended, once it has
        self.streams, self.next_id = {}, first_stream_id
        self.goaway = False           # the server sent GOAWAY: no new streams here
        self.peer_max_streams = 2 ** 31
        self.peer_window = DEFAULT_WINDOW   # the server's initial stream window, until its SETTINGS say otherwise
        self.peer_frame_size = DEFAULT_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW   # the connection's send window
        self.recv_unacked = 0
        self.decoder = HeaderDecoder()
        self.blocks = {}              # path -> request HEADERS block without its grpc-timeout (one per method)
        self.whole = {}               # (path, timeout) -> the whole block, at most TIMEOUTS_KEPT of them
        self._continuation = None     # (stream id, flags, [fragments]) while a header block is open

    @property
    def usable(self):
        return not self.closed and not self.goaway and self.next_id <= MAX_STREAM_ID

    def block(self, path, timeout):
        """The HEADERS block of a call to `path` with `timeout`. Deadlines that vary per request (a call that waited
        for its slot or its model passes the time left) would make a cache keyed by the timeout grow without end:
        the path's part is built once and the grpc-timeout field added per call, and only the whole blocks of the
        first TIMEOUTS_KEPT (path, timeout) pairs, a route's constant deadlines, are kept."""
        whole = self.whole.get((path, timeout))
        if whole is not None:
            return whole
        block = self.blocks.get(path)
        if block is None:
            block = self.blocks[path] = request_block(self.authority, path)
        whole = block + timeout_field(timeout)
        if len(self.whole) < TIMEOUTS_KEPT:
            self.whole[(path, timeout)] = whole
        return whole

    # The driver's hooks (connection.py; the tests' recorder)

    def _write(self, *parts):
        raise NotImplementedError

    def _wake(self, stream, item):
        raise NotImplementedError

    def _windows_changed(self):
        raise NotImplementedError

    def _slots_changed(self):
        raise NotImplementedError

    def close(self, why):
        raise NotImplementedError

    # Streams

    def _finish(self, stream, result):
        """A stream's end: its caller gets `result`."""
        if stream.done:
            return
        stream.done = True
        self.streams.pop(stream.id, None)
        self._wake(stream, result)
        if stream.sending:
            self._windows_changed()
        self._stream_gone()

    def _stream_gone(self):
        self._slots_changed()
        if not self.streams and not self.closed and (self.goaway or self.next_id > MAX_STREAM_ID):
            self.close("every stream has finished on a connection that takes no new ones")

    def _reset(self, stream, code, why):
        self._write(rst_stream(stream.id, code))
        self._finish(stream, RpcError(UNAVAILABLE, f"a malformed answer from the server: {why}"))

    def receive(self, ftype, flags, stream_id, payload):
        """One frame from the server (FrameReader's tuple)."""
        if self._continuation is not None and ftype != CONTINUATION:
            raise ProtocolError("a header block was interrupted by another frame")
        if ftype == DATA:
            self._data(flags, stream_id, payload)
        elif ftype == HEADERS:
            if stream_id == 0:
                raise ProtocolError("HEADERS on stream 0")
            fragment = header_fragment(flags, payload) if flags & (PADDED | PRIORITY_FLAG) else payload
            if flags & END_HEADERS:
                self._headers(stream_id, flags, fragment)
            else:
                self._continuation = (stream_id, flags, [fragment])
        elif ftype == CONTINUATION:
            self._continued(flags, stream_id, payload)
        elif ftype == SETTINGS:
            self._settings(parse_settings(flags, stream_id, payload))
        elif ftype == PING:
            payload = parse_ping(stream_id, payload)
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif ftype == WINDOW_UPDATE:
            self._window_update(stream_id, parse_window_update(payload))
        elif ftype == RST_STREAM:
            result = parse_rst_stream(stream_id, payload)
            if stream_id in self.streams:
                self._finish(self.streams[stream_id], result)
        elif ftype == GOAWAY:
            self._goaway(parse_goaway(stream_id, payload))
        elif ftype == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE, which we disabled")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.

    def _continued(self, flags, stream_id, payload):
        if self._continuation is None or self._continuation[0] != stream_id:
            raise ProtocolError("CONTINUATION without its HEADERS")
        self._continuation[2].append(payload)
        if flags & END_HEADERS:
            sid, first_flags, parts = self._continuation
            self._continuation = None
            self._headers(sid, first_flags, b"".join(parts))

    def _data(self, flags, stream_id, payload):
        if stream_id == 0:
            raise ProtocolError("DATA on stream 0")
        n = len(payload)   # flow control counts the whole frame, padding included, even for gone streams
        self.recv_unacked, due = received(self.recv_unacked, n, CONNECTION_WINDOW)
        if due:
            self._write(window_update(0, due))
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id >= self.next_id:
                raise ProtocolError(f"DATA on stream {stream_id}, which was never opened")
            return   # a stream we cancelled: its late frames are dropped
        if stream.headers is None:
            return self._reset(stream, E_PROTOCOL, "DATA before the response headers")
        if stream.held + stream.recv_unacked + n > STREAM_WINDOW:
            raise ProtocolError("the server overran the stream's window", E_FLOW_CONTROL)
        data = unpad(flags, payload)
        if stream.buf is None:
            stream.data.append(data)
            stream.size += len(data)   # a unary answer, held whole until its trailers: bounded
            if stream.size > ANSWER_LIMIT:
                self._write(rst_stream(stream.id, E_CANCEL))
                return self._finish(stream, RpcError(RESOURCE_EXHAUSTED, f"the answer is over "
                                                                         f"{ANSWER_LIMIT >> 20} MB"))
        else:   # a streaming call: each whole message goes to its caller at once, its window when it takes it
            stream.buf += data
            stream.held += len(data)
            n -= len(data)   # the padding, if any, is given back now
            try:
                for message in take_messages(stream.buf):
                    self._wake(stream, message)
            except ProtocolError as exc:
                return self._reset(stream, E_PROTOCOL, exc.why)
        if flags & END_STREAM:
            return self._finish(stream, RpcError(UNAVAILABLE, "the server ended the stream without trailers"))
        self._give_back(stream, n)

    def _give_back(self, stream, n):
        stream.recv_unacked, due = received(stream.recv_unacked, n, STREAM_WINDOW)
        if due:
            self._write(window_update(stream.id, due))

    def consumed(self, stream, message):
        """A streaming call's caller took `message`: its bytes (and its 5-byte prefix) count against the stream's
        window no more."""
        n = len(message) + 5
        stream.held -= n
        if not stream.done:
            self._give_back(stream, n)

    def _headers(self, stream_id, flags, block):
        headers = self.decoder.decode(block)   # decoded even for a stream that is gone: the table must follow
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id >= self.next_id or not stream_id & 1:
                raise ProtocolError(f"HEADERS on stream {stream_id}, which we never opened")
            return
        if stream.headers is None:
            stream.headers = headers
            error = refused(headers)
            if error is not None:
                return self._finish(stream, error)
            if not flags & END_STREAM:
                return
        elif not flags & END_STREAM:
            return self._reset(stream, E_PROTOCOL, "a second header block that does not end the stream")
        if stream.buf is None:   # trailers (or trailers-only) of a unary call
            return self._finish(stream, unary_result(headers, stream.data))
        error = status_error(headers)
        if error is None and stream.buf:
            error = RpcError(UNAVAILABLE, f"a malformed answer from the server: {len(stream.buf)} bytes of an "
                                          "unfinished message at the end of the stream")
        self._finish(stream, error or END)

    def _settings(self, settings):
        if settings is None:   # an ACK of ours
            return
        for key, value in settings:
            if key == S_INITIAL_WINDOW_SIZE:
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                self.peer_frame_size = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            # HEADER_TABLE_SIZE is the size of the server's decoder table: our requests never add to it.
        self._write(frame(SETTINGS, ACK, 0))
        self._windows_changed()
        self._slots_changed()

    def _window_update(self, stream_id, increment):
        if stream_id == 0:
            self.send_window = grow(self.send_window, increment)
        elif stream_id in self.streams:
            stream = self.streams[stream_id]
            try:
                stream.send_window = grow(stream.send_window, increment, "the stream's window")
            except ProtocolError as exc:
                self._reset(stream, exc.code, "a bad WINDOW_UPDATE from the server")
        self._windows_changed()

    def _goaway(self, last_stream_id):
        self.goaway = True
        for stream in [s for s in self.streams.values() if s.id > last_stream_id]:
            self._finish(stream, RpcError(UNAVAILABLE, "the server is going away (GOAWAY) before this call",
                                          processed=False))
        self._slots_changed()
        if not self.streams:
            self.close("the server sent GOAWAY")
