"""The gRPC-over-HTTP/2 client protocol as plain functions and small data: frames in and out, header blocks built
and decoded, flow-control windows, gRPC messages and statuses. No sockets, no greenlets: every rule here is tested
by feeding it bytes (tests/test_grpc_frames.py); connection.py moves the bytes and wakes the callers.

It follows grpc's doc/PROTOCOL-HTTP2.md, RFC 9113 (HTTP/2) and RFC 7541 (HPACK), for what a client of unary and
server-streaming calls needs."""
import struct
from urllib.parse import unquote

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
DEFAULT_WINDOW = 65535             # a window before SETTINGS say otherwise (RFC 9113 6.9.2)
DEFAULT_FRAME_SIZE = 16384
RECV_FRAME_SIZE = 1 << 20          # what we let the server send in one frame (SETTINGS_MAX_FRAME_SIZE)
STREAM_WINDOW = 1 << 24            # our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE): 16 MiB
ANSWER_LIMIT = 1 << 28             # a unary answer over this (256 MiB) is refused, not held in the worker
CONNECTION_WINDOW = 1 << 30        # our receive window for the connection (raised by WINDOW_UPDATE at start)

_FRAME = struct.Struct(">HBBBI")   # length (24 bits as 16 + 8), type, flags, stream id
_PREFIX = struct.Struct(">BI")     # the gRPC message prefix: compressed flag, length
_U32 = struct.Struct(">I")
_DATA_AND_PREFIX = struct.Struct(">HBBBIBI")   # a DATA frame's header, then the gRPC prefix of its one message


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
    """The server broke the protocol: args are (why, the HTTP/2 error code for our GOAWAY or RST_STREAM)."""

    def __init__(self, why, code=E_PROTOCOL):
        super().__init__(why, code)
        self.why, self.code = why, code


# -- frames out ------------------------------------------------------------------------------------------------------

def frame(ftype, flags, stream_id, payload=b""):
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def frame_head(ftype, flags, stream_id, length):
    """A frame's 9-byte header alone, for a payload written after it as it is."""
    return _FRAME.pack(length >> 8, length & 0xFF, ftype, flags, stream_id)


def client_preface():
    """What a connection opens with: the preface, our SETTINGS (no push, our windows and frame size) and the
    connection window raised to CONNECTION_WINDOW."""
    return (PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HIHIHI", S_ENABLE_PUSH, 0, S_INITIAL_WINDOW_SIZE,
                                                         STREAM_WINDOW, S_MAX_FRAME_SIZE, RECV_FRAME_SIZE))
            + window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW))


def window_update(stream_id, increment):
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id, code):
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(code, last_stream_id=0):
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code))


def call_frames(stream_id, block, length):
    """The start of a call whose message fits in one DATA frame: HEADERS, then the DATA frame's header and the
    message's gRPC prefix; the message's `length` bytes follow as they are."""
    n = length + 5
    return frame(HEADERS, END_HEADERS, stream_id, block) + _DATA_AND_PREFIX.pack(n >> 8, n & 0xFF, DATA, END_STREAM,
                                                                                 stream_id, 0, length)


def message_prefix(length):
    return _PREFIX.pack(0, length)


# -- frames in -------------------------------------------------------------------------------------------------------

class FrameReader:
    """Bytes as they arrive -> whole frames, as (type, flags, stream id, payload) tuples. Bytes of a frame not yet
    whole wait, without being joined again on every arrival (a 16 MB message comes in many reads)."""
    __slots__ = ("pending", "have", "need", "max_size")

    def __init__(self, max_size=RECV_FRAME_SIZE):
        self.pending, self.have, self.need, self.max_size = [], 0, 9, max_size

    def feed(self, data):
        self.pending.append(data)
        self.have += len(data)
        if self.have < self.need:
            return ()
        buf = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        frames, at, size, unpack = [], 0, len(buf), _FRAME.unpack_from
        while size - at >= 9:
            hi, lo, ftype, flags, stream_id = unpack(buf, at)
            length = (hi << 8) | lo
            if length > self.max_size:
                raise ProtocolError(f"a frame of {length} bytes, over our MAX_FRAME_SIZE", E_FRAME_SIZE)
            if size - at < 9 + length:
                break
            frames.append((ftype, flags, stream_id & MAX_STREAM_ID, buf[at + 9:at + 9 + length]))
            at += 9 + length
        rest = buf[at:] if at else buf
        self.pending, self.have = ([rest] if rest else []), len(rest)
        self.need = 9 + ((rest[0] << 16) | (rest[1] << 8) | rest[2]) if len(rest) >= 9 else 9
        return frames


def unpad(flags, payload):
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("padding longer than the frame")
    return payload[1:len(payload) - payload[0]]


def header_fragment(flags, payload):
    """A HEADERS frame's payload -> its header block fragment (padding and priority removed)."""
    payload = unpad(flags, payload)
    return payload[5:] if flags & PRIORITY_FLAG else payload


def parse_settings(flags, stream_id, payload):
    """A SETTINGS frame -> [(key, value)], checked; None for an ACK."""
    if stream_id:
        raise ProtocolError("SETTINGS on a stream")
    if flags & ACK:
        return None
    if len(payload) % 6:
        raise ProtocolError("a malformed SETTINGS frame", E_FRAME_SIZE)
    settings = [struct.unpack_from(">HI", payload, at) for at in range(0, len(payload), 6)]
    for key, value in settings:
        if key == S_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise ProtocolError("INITIAL_WINDOW_SIZE over 2^31-1", E_FLOW_CONTROL)
        if key == S_MAX_FRAME_SIZE and not 16384 <= value <= 16777215:
            raise ProtocolError(f"MAX_FRAME_SIZE {value}")
    return settings


def parse_ping(stream_id, payload):
    if len(payload) != 8 or stream_id:
        raise ProtocolError("a malformed PING", E_FRAME_SIZE)
    return payload


def parse_window_update(payload):
    """The increment of a WINDOW_UPDATE (its reserved bit dropped)."""
    if len(payload) != 4:
        raise ProtocolError("a malformed WINDOW_UPDATE", E_FRAME_SIZE)
    return _U32.unpack(payload)[0] & MAX_STREAM_ID


def parse_rst_stream(stream_id, payload):
    """RST_STREAM -> the RpcError its call ends with."""
    if len(payload) != 4 or stream_id == 0:
        raise ProtocolError("a malformed RST_STREAM", E_FRAME_SIZE)
    code = _U32.unpack(payload)[0]
    if code == E_REFUSED_STREAM:
        return RpcError(UNAVAILABLE, "the server refused the stream", processed=False)
    if code == E_CANCEL:
        return RpcError(CANCELLED, "the server cancelled the call")
    return RpcError(INTERNAL, f"the server reset the stream (HTTP/2 error {code})")


def parse_goaway(stream_id, payload):
    """GOAWAY -> the last stream id the server may have processed."""
    if len(payload) < 8 or stream_id:
        raise ProtocolError("a malformed GOAWAY", E_FRAME_SIZE)
    return struct.unpack_from(">I", payload)[0] & MAX_STREAM_ID


# -- flow control ----------------------------------------------------------------------------------------------------

def grow(window, increment, what="the connection window"):
    """A send window after a WINDOW_UPDATE: an increment of 0, or a window past 2^31-1, breaks the protocol."""
    if not increment:
        raise ProtocolError(f"WINDOW_UPDATE of 0 on {what}")
    window += increment
    if window > MAX_WINDOW:
        raise ProtocolError(f"{what} overflowed", E_FLOW_CONTROL)
    return window


def received(unacked, n, window):
    """Bytes received against one of our windows -> (what stays unacknowledged, the WINDOW_UPDATE increment due
    now, or 0): half a window used is given back at once."""
    unacked += n
    return (0, unacked) if unacked >= window // 2 else (unacked, 0)


def sendable(left, connection_window, stream_window, frame_size):
    """How much of a message the next DATA frame may carry (0: wait for a window to open)."""
    return min(left, connection_window, stream_window, frame_size)


# -- header blocks ---------------------------------------------------------------------------------------------------

def hpack_int(value, prefix_bits, first=0):
    """An HPACK integer (RFC 7541 5.1)."""
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


def literal(name, value, name_index=0):
    """A header field as a literal without indexing (RFC 7541 6.2.2), no Huffman: the table is never touched."""
    head = hpack_int(name_index, 4) if name_index else b"\x00" + hpack_int(len(name), 7) + name
    return head + hpack_int(len(value), 7) + value


def grpc_timeout(seconds):
    """The grpc-timeout value: at most 8 digits and a unit, never shorter than the deadline."""
    micros = max(1, int(seconds * 1e6 + 0.999))
    if micros < 10 ** 8:
        return f"{micros}u"
    millis = -(-micros // 1000)
    return f"{millis}m" if millis < 10 ** 8 else f"{min(-(-millis // 1000), 10 ** 8 - 1)}S"


def request_block(authority, path, timeout=None):
    """The HEADERS block of one call: it never touches the server's table, so it means the same on any
    connection. Without `timeout` it lacks its grpc-timeout field (timeout_field(), added per call)."""
    return b"".join((b"\x83\x86",                                           # :method POST, :scheme http
                     literal(b":path", path.encode(), 4), literal(b":authority", authority.encode(), 1),
                     literal(b"content-type", b"application/grpc"), literal(b"te", b"trailers"),
                     b"" if timeout is None else timeout_field(timeout)))


def timeout_field(timeout):
    """The grpc-timeout header field of a call (a literal, so it may follow the rest of the block)."""
    return literal(b"grpc-timeout", grpc_timeout(timeout).encode())


class HeaderDecoder:
    """The server's header blocks -> {name: value}, through HPACK's dynamic table (the `hpack` package). A block
    of indexed fields only leaves the table as it was, so its dict is cached and shared (read only): Triton's
    answer headers repeat byte for byte once its table is warm. Any other block may change the table, and clears
    the cache."""

    def __init__(self, max_header_list_size=1 << 20):
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = max_header_list_size
        self.cache = {}

    def decode(self, block):
        cached = self.cache.get(block)
        if cached is not None:
            return cached
        try:
            headers = dict(self.decoder.decode(block))
        except hpack.HPACKError as exc:
            raise ProtocolError(f"HPACK: {exc}") from None
        if block and min(block) >= 0x80:
            self.cache[block] = headers
        else:
            self.cache.clear()
        return headers


# -- gRPC answers ----------------------------------------------------------------------------------------------------

# An HTTP status that is not 200 -> the gRPC code (grpc's doc/http-grpc-status-mapping.md).
HTTP_STATUS = {400: INTERNAL, 401: 16, 403: 7, 404: UNIMPLEMENTED, 429: UNAVAILABLE, 502: UNAVAILABLE,
               503: UNAVAILABLE, 504: UNAVAILABLE}


def refused(headers):
    """The RpcError of an answer's first header block that is not gRPC (an HTTP error, another content-type),
    or None."""
    if "grpc-status" in headers:
        return None
    status = headers.get(":status")
    if status != "200":
        code = HTTP_STATUS.get(int(status) if status and status.isdigit() else 0, UNKNOWN)
        return RpcError(code, f"HTTP status {status} from the server")
    ctype = headers.get("content-type", "")
    if not ctype.startswith("application/grpc"):
        return RpcError(UNAVAILABLE, f"the server answered with content-type {ctype!r}")
    return None


def status_error(trailers):
    """The trailers' grpc-status -> None for OK, else the RpcError the call ends with."""
    status = trailers.get("grpc-status")
    if status is None or not status.isdigit():
        return RpcError(UNAVAILABLE, f"a malformed answer from the server: grpc-status {status!r}")
    code = int(status)
    if code == OK:
        return None
    return RpcError(code, unquote(trailers.get("grpc-message", ""), errors="replace"))


def unary_result(trailers, parts):
    """A unary answer's trailers and DATA payloads -> its one message's bytes, or the RpcError it ends with."""
    if trailers.get("grpc-status") != "0":
        error = status_error(trailers)
        if error is not None:
            return error
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(data) < 5:
        return RpcError(UNAVAILABLE, "a malformed answer from the server: no response message")
    compressed, length = _PREFIX.unpack_from(data)
    if compressed:
        return RpcError(UNAVAILABLE, "a malformed answer from the server: compressed, which was not asked for")
    if len(data) != 5 + length:
        return RpcError(UNAVAILABLE, f"a malformed answer from the server: a message of {len(data) - 5} bytes, "
                                     f"its prefix says {length}")
    return memoryview(data)[5:] if length > 65536 else data[5:]   # a large message is not copied again


def take_messages(buf):
    """The whole length-prefixed messages at the start of `buf` (a bytearray), removed from it; the rest of a
    message stays. Raises ProtocolError on a compressed message, which was not asked for."""
    messages, at = [], 0
    while len(buf) - at >= 5:
        compressed, length = _PREFIX.unpack_from(buf, at)
        if compressed:
            raise ProtocolError("a compressed message, which was not asked for")
        if len(buf) - at - 5 < length:
            break
        messages.append(bytes(buf[at + 5:at + 5 + length]))
        at += 5 + length
    if at:
        del buf[:at]
    return messages
