"""The wire layer's protocol with no socket (serving/grpc_wire/frames.py and protocol.py): one test per rule of
RFC 9113 (HTTP/2), RFC 7541 (HPACK) and grpc's doc/PROTOCOL-HTTP2.md that the client relies on, by feeding bytes
and frames and reading what comes out. The same code against real peers (grpcio, hostile raw sockets, Triton) is
tests/test_grpc_wire.py."""
import random
import struct
import sys

import hpack
import pytest

from conftest import ROOT

sys.path.insert(0, ROOT)
from serving.grpc_wire import frames as f  # noqa: E402
from serving.grpc_wire.protocol import END, ClientProtocol, StreamState  # noqa: E402


# -- frames --------------------------------------------------------------------------------------------------------

def test_a_frame_is_a_nine_byte_header_then_its_payload():   # RFC 9113 4.1
    out = f.frame(f.HEADERS, f.END_HEADERS, 3, b"abc")
    assert out == b"\x00\x00\x03\x01\x04\x00\x00\x00\x03abc"
    big = f.frame(f.DATA, 0, 1, b"x" * 70000)
    assert big[:3] == (70000).to_bytes(3, "big")


def test_the_client_preface_disables_push_and_opens_our_windows():   # RFC 9113 3.4, 6.5.2
    out = f.client_preface()
    assert out.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    frames = f.FrameReader().feed(out[len(f.PREFACE):])
    assert [(t, fl, s) for t, fl, s, _ in frames] == [(f.SETTINGS, 0, 0), (f.WINDOW_UPDATE, 0, 0)]
    assert dict(f.parse_settings(0, 0, frames[0][3])) == {
        f.S_ENABLE_PUSH: 0, f.S_INITIAL_WINDOW_SIZE: f.STREAM_WINDOW, f.S_MAX_FRAME_SIZE: f.RECV_FRAME_SIZE}
    assert f.parse_window_update(frames[1][3]) == f.CONNECTION_WINDOW - 65535


def test_frames_come_out_whole_however_the_bytes_are_cut():
    rnd = random.Random(3)
    sent = [(rnd.choice((f.DATA, f.HEADERS, f.PING)), rnd.randrange(256), rnd.randrange(1, 99) | 1,
             rnd.randbytes(rnd.choice((0, 1, 8, 300, 70000)))) for _ in range(40)]
    data = b"".join(f.frame(*x) for x in sent)
    for _ in range(20):
        reader, got, at = f.FrameReader(), [], 0
        while at < len(data):
            step = rnd.choice((1, 2, 9, 10, 1000, 65536))
            got += reader.feed(data[at:at + step])
            at += step
        assert [(t, fl, s, bytes(p)) for t, fl, s, p in got] == sent
        assert reader.have == 0


def test_the_reserved_bit_of_a_stream_id_is_ignored():   # RFC 9113 4.1
    raw = struct.pack(">HBBBI", 0, 0, f.PING, 0, 0x80000005)
    assert f.FrameReader().feed(raw) == [(f.PING, 0, 5, b"")]


def test_a_frame_over_our_max_frame_size_is_a_frame_size_error():   # RFC 9113 4.2
    head = struct.pack(">HBBBI", (f.RECV_FRAME_SIZE + 1) >> 8, (f.RECV_FRAME_SIZE + 1) & 0xFF, f.DATA, 0, 1)
    with pytest.raises(f.ProtocolError) as caught:
        f.FrameReader().feed(head)
    assert caught.value.code == f.E_FRAME_SIZE


def test_padding_and_priority_are_removed_and_bad_padding_is_refused():   # RFC 9113 6.1, 6.2
    assert f.unpad(f.PADDED, b"\x02abc\0\0") == b"abc"
    assert f.header_fragment(f.PADDED | f.PRIORITY_FLAG, b"\x01" + b"\0\0\0\0\x10" + b"\x88" + b"\0") == b"\x88"
    for bad in (b"", b"\x05abc"):
        with pytest.raises(f.ProtocolError):
            f.unpad(f.PADDED, bad)


@pytest.mark.parametrize("payload, flags, stream_id, why", [
    (b"\0\x04\0\0\0", 0, 0, "malformed"),                              # not a multiple of 6
    (struct.pack(">HI", f.S_INITIAL_WINDOW_SIZE, 2 ** 31), 0, 0, "over"),
    (struct.pack(">HI", f.S_MAX_FRAME_SIZE, 16383), 0, 0, "MAX_FRAME_SIZE"),
    (struct.pack(">HI", f.S_MAX_FRAME_SIZE, 2 ** 24), 0, 0, "MAX_FRAME_SIZE"),
    (b"", 0, 1, "on a stream"),
])
def test_settings_out_of_range_are_protocol_errors(payload, flags, stream_id, why):   # RFC 9113 6.5.2
    with pytest.raises(f.ProtocolError, match=why):
        f.parse_settings(flags, stream_id, payload)


def test_settings_are_read_and_an_ack_carries_none():
    payload = struct.pack(">HIHI", f.S_MAX_CONCURRENT_STREAMS, 7, 0x99, 1)   # an unknown setting is ignored
    assert f.parse_settings(0, 0, payload) == [(f.S_MAX_CONCURRENT_STREAMS, 7), (0x99, 1)]
    assert f.parse_settings(f.ACK, 0, b"") is None


def test_control_frames_of_the_wrong_size_are_frame_size_errors():   # RFC 9113 6.4, 6.7, 6.8, 6.9
    for call in (lambda: f.parse_ping(0, b"1234567"), lambda: f.parse_ping(1, b"12345678"),
                 lambda: f.parse_window_update(b"\0\0\0"), lambda: f.parse_rst_stream(1, b"\0\0\0"),
                 lambda: f.parse_rst_stream(0, b"\0\0\0\0"), lambda: f.parse_goaway(0, b"\0" * 7)):
        with pytest.raises(f.ProtocolError) as caught:
            call()
        assert caught.value.code == f.E_FRAME_SIZE


def test_rst_stream_codes_become_grpc_statuses():   # PROTOCOL-HTTP2.md: "Errors"
    refused = f.parse_rst_stream(1, struct.pack(">I", f.E_REFUSED_STREAM))
    assert (refused.code, refused.processed) == (f.UNAVAILABLE, False)   # never processed: safe to retry
    assert f.parse_rst_stream(1, struct.pack(">I", f.E_CANCEL)).code == f.CANCELLED
    other = f.parse_rst_stream(1, struct.pack(">I", 2))
    assert (other.code, other.processed) == (f.INTERNAL, True)


def test_goaway_gives_the_last_stream_processed():   # RFC 9113 6.8
    assert f.parse_goaway(0, struct.pack(">II", 0x80000007, 0) + b"debug") == 7


# -- flow control --------------------------------------------------------------------------------------------------

def test_a_window_grows_and_may_not_pass_two_to_the_31():   # RFC 9113 6.9.1
    assert f.grow(100, 50) == 150
    assert f.grow(0, f.MAX_WINDOW) == f.MAX_WINDOW
    with pytest.raises(f.ProtocolError) as caught:
        f.grow(1, f.MAX_WINDOW)
    assert caught.value.code == f.E_FLOW_CONTROL
    with pytest.raises(f.ProtocolError) as caught:
        f.grow(100, 0)
    assert caught.value.code == f.E_PROTOCOL


def test_what_is_received_is_given_back_at_half_the_window():
    assert f.received(0, 10, 100) == (10, 0)
    assert f.received(10, 39, 100) == (49, 0)
    assert f.received(49, 1, 100) == (0, 50)


def test_a_data_frame_takes_the_smallest_of_what_is_left_and_the_limits():   # RFC 9113 6.9, 4.2
    assert f.sendable(1000, 500, 800, 16384) == 500
    assert f.sendable(1000, 5000, 800, 16384) == 800
    assert f.sendable(100000, 10 ** 6, 10 ** 6, 16384) == 16384
    assert f.sendable(10, 0, 800, 16384) == 0


# -- header blocks -------------------------------------------------------------------------------------------------

def test_hpack_integers_as_in_rfc_7541_appendix_c1():
    assert f.hpack_int(10, 5) == b"\x0a"
    assert f.hpack_int(1337, 5) == b"\x1f\x9a\x0a"
    assert f.hpack_int(42, 8) == b"\x2a"


def test_a_request_block_decodes_to_the_grpc_request_headers_and_leaves_the_table_empty():
    block = f.request_block("127.0.0.1:8001", "/inference.GRPCInferenceService/ModelInfer", 2.5)
    decoder = hpack.Decoder()
    assert decoder.decode(block) == [
        (":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", "127.0.0.1:8001"), ("content-type", "application/grpc"), ("te", "trailers"),
        ("grpc-timeout", "2500000u")]
    assert len(decoder.header_table.dynamic_entries) == 0   # literals without indexing: any connection reads it


def test_grpc_timeout_has_at_most_eight_digits_and_is_never_shorter():   # PROTOCOL-HTTP2.md: Timeout
    assert f.grpc_timeout(0.0000001) == "1u"
    assert f.grpc_timeout(99.999999) == "99999999u"
    assert f.grpc_timeout(100.0) == "100000m"
    assert f.grpc_timeout(10 ** 6) == "1000000S"
    for seconds in (0.0012345, 3.3, 123.4567, 10 ** 5 + 0.5):
        value, unit = int(f.grpc_timeout(seconds)[:-1]), f.grpc_timeout(seconds)[-1]
        assert len(str(value)) <= 8 and value * {"u": 1e-6, "m": 1e-3, "S": 1}[unit] >= seconds


def test_header_blocks_follow_a_changing_table_and_cache_only_indexed_blocks():   # RFC 7541 2.3, 4
    encoder, decoder = hpack.Encoder(), f.HeaderDecoder()
    first = encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
    assert decoder.decode(first) == {":status": "200", "content-type": "application/grpc"}
    again = encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
    assert min(again) >= 0x80 and decoder.decode(again) == {":status": "200", "content-type": "application/grpc"}
    assert again in decoder.cache
    # A new entry evicts the old ones from a small table: the same indexed bytes now mean something else.
    encoder.header_table_size = 64
    changed = encoder.encode([("x-big", "v" * 20)])
    assert decoder.decode(changed) == {"x-big": "v" * 20} and decoder.cache == {}


def test_a_broken_hpack_block_is_a_protocol_error():
    with pytest.raises(f.ProtocolError, match="HPACK"):
        f.HeaderDecoder().decode(b"\xff\xff\xff\x7f")


# -- gRPC answers --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, code", [
    ({":status": "503"}, f.UNAVAILABLE), ({":status": "404"}, f.UNIMPLEMENTED), ({":status": "400"}, f.INTERNAL),
    ({":status": "418"}, f.UNKNOWN), ({":status": "200", "content-type": "text/html"}, f.UNAVAILABLE)])
def test_an_answer_that_is_not_grpc_maps_as_grpc_does(headers, code):   # doc/http-grpc-status-mapping.md
    assert f.refused(headers).code == code


def test_a_grpc_status_wins_over_the_http_status():
    assert f.refused({":status": "503", "grpc-status": "8"}) is None
    assert f.refused({":status": "200", "content-type": "application/grpc+proto"}) is None


def test_grpc_status_and_a_percent_encoded_message():   # PROTOCOL-HTTP2.md: Status-Message
    assert f.status_error({"grpc-status": "0"}) is None
    error = f.status_error({"grpc-status": "13", "grpc-message": "boom %E2%9C%97 %zz"})
    assert (error.code, error.details) == (f.INTERNAL, "boom ✗ %zz")
    assert f.status_error({}).code == f.UNAVAILABLE
    assert f.status_error({"grpc-status": "x"}).code == f.UNAVAILABLE


def test_a_unary_answer_is_one_length_prefixed_message():   # PROTOCOL-HTTP2.md: Length-Prefixed-Message
    assert f.unary_result({"grpc-status": "0"}, [b"\0\0\0\0\x03ab", b"c"]) == b"abc"
    assert f.unary_result({"grpc-status": "0"}, [b"\0\0\0\0\0"]) == b""
    large = f.unary_result({"grpc-status": "0"}, [b"\0" + struct.pack(">I", 70000) + b"z" * 70000])
    assert isinstance(large, memoryview) and bytes(large) == b"z" * 70000
    for bad, why in (([], "no response message"), ([b"\x01\0\0\0\0"], "compressed"),
                     ([b"\0\0\0\0\x09abc"], "its prefix says 9")):
        error = f.unary_result({"grpc-status": "0"}, bad)
        assert isinstance(error, f.RpcError) and error.code == f.UNAVAILABLE and why in error.details


def test_streamed_messages_come_out_as_soon_as_they_are_whole():
    buf = bytearray(b"\0\0\0\0\x02hi\0\0\0\0\x03wo")
    assert f.take_messages(buf) == [b"hi"] and buf == b"\0\0\0\0\x03wo"
    buf += b"w"
    assert f.take_messages(buf) == [b"wow"] and buf == b""
    with pytest.raises(f.ProtocolError, match="compressed"):
        f.take_messages(bytearray(b"\x01\0\0\0\x01x"))


# -- the connection's state machine --------------------------------------------------------------------------------

class Recorder(ClientProtocol):
    """ClientProtocol with its hooks recording: what it wrote, what each stream got."""

    def __init__(self):
        super().__init__("127.0.0.1:1")
        self.written, self.woken, self.why_closed, self.window_events = [], [], None, 0

    def _write(self, *parts):
        self.written.append(b"".join(parts))

    def _wake(self, stream, item):
        self.woken.append((stream.id, item))

    def _windows_changed(self):
        self.window_events += 1

    def _slots_changed(self):
        pass

    def close(self, why):
        self.closed = self.why_closed = why

    def open(self, streaming=False):
        stream = StreamState(self.next_id, self.peer_window, streaming)
        self.streams[stream.id] = stream
        self.next_id += 2
        return stream

    def feed(self, *frames):
        for frame in f.FrameReader().feed(b"".join(frames)):
            self.receive(*frame)

    def sent(self):
        return [(t, fl, s, bytes(p)) for t, fl, s, p in f.FrameReader().feed(b"".join(self.written))]


def answer(encoder, stream_id, message, status="0"):
    return (f.frame(f.HEADERS, f.END_HEADERS, stream_id, encoder.encode([(":status", "200"),
                                                                          ("content-type", "application/grpc")]))
            + f.frame(f.DATA, 0, stream_id, f.message_prefix(len(message)) + message)
            + f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, stream_id, encoder.encode([("grpc-status", status)])))


def test_a_unary_answer_wakes_its_caller_with_the_message():
    proto, enc = Recorder(), hpack.Encoder()
    stream = proto.open()
    proto.feed(answer(enc, stream.id, b"hello"))
    assert proto.woken == [(1, b"hello")] and proto.streams == {} and stream.done


def test_a_header_block_split_over_continuation_frames():   # RFC 9113 6.10
    proto, enc = Recorder(), hpack.Encoder()
    stream = proto.open()
    block = enc.encode([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "5"),
                        ("grpc-message", "no such model")])
    proto.feed(f.frame(f.HEADERS, f.END_STREAM, 1, block[:3]), f.frame(f.CONTINUATION, 0, 1, block[3:6]),
               f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[6:]))
    (sid, error), = proto.woken
    assert (sid, error.code, error.details) == (stream.id, f.NOT_FOUND, "no such model")


def test_another_frame_inside_a_header_block_is_a_connection_error():   # RFC 9113 6.10
    proto = Recorder()
    proto.open()
    with pytest.raises(f.ProtocolError, match="interrupted"):
        proto.feed(f.frame(f.HEADERS, 0, 1, b"\x88"), f.frame(f.PING, 0, 0, b"12345678"))


def test_ping_is_answered_with_the_same_payload_and_settings_are_acked():   # RFC 9113 6.7, 6.5.3
    proto = Recorder()
    proto.feed(f.frame(f.PING, 0, 0, b"87654321"), f.frame(f.PING, f.ACK, 0, b"11111111"),
               f.frame(f.SETTINGS, 0, 0, struct.pack(">HI", f.S_MAX_CONCURRENT_STREAMS, 3)))
    assert proto.sent() == [(f.PING, f.ACK, 0, b"87654321"), (f.SETTINGS, f.ACK, 0, b"")]
    assert proto.peer_max_streams == 3


def test_a_new_initial_window_moves_every_open_streams_window():   # RFC 9113 6.9.2
    proto = Recorder()
    a, b = proto.open(), proto.open()
    a.send_window -= 1000
    proto.feed(f.frame(f.SETTINGS, 0, 0, struct.pack(">HI", f.S_INITIAL_WINDOW_SIZE, 100000)))
    assert (a.send_window, b.send_window, proto.peer_window) == (100000 - 1000, 100000, 100000)
    assert proto.window_events == 1


def test_window_updates_grow_the_connection_and_a_streams_window():   # RFC 9113 6.9
    proto = Recorder()
    stream = proto.open()
    proto.feed(f.window_update(0, 1000), f.window_update(stream.id, 7))
    assert (proto.send_window, stream.send_window) == (65535 + 1000, 65535 + 7)


def test_a_bad_window_update_on_a_stream_resets_only_that_stream():   # RFC 9113 6.9.1
    proto = Recorder()
    bad, good = proto.open(), proto.open()
    proto.feed(f.window_update(bad.id, f.MAX_WINDOW))
    assert proto.sent() == [(f.RST_STREAM, 0, bad.id, struct.pack(">I", f.E_FLOW_CONTROL))]
    assert [sid for sid, _ in proto.woken] == [bad.id] and good.id in proto.streams


def test_data_is_given_back_once_half_a_window_has_come():   # RFC 9113 6.9
    proto, enc = Recorder(), hpack.Encoder()
    stream = proto.open()
    proto.feed(f.frame(f.HEADERS, f.END_HEADERS, stream.id, enc.encode([(":status", "200"),
                                                                         ("content-type", "application/grpc")])))
    chunk = f.frame(f.DATA, 0, stream.id, b"x" * f.RECV_FRAME_SIZE)
    half = f.STREAM_WINDOW // 2 // f.RECV_FRAME_SIZE
    proto.feed(chunk * (half - 1))
    assert proto.sent() == []
    proto.feed(chunk)
    assert proto.sent() == [(f.WINDOW_UPDATE, 0, stream.id, struct.pack(">I", f.STREAM_WINDOW // 2))]
    assert stream.recv_unacked == 0 and proto.recv_unacked == f.STREAM_WINDOW // 2


def test_a_server_that_overruns_a_streams_window_breaks_the_connection():   # RFC 9113 6.9.1
    proto, enc = Recorder(), hpack.Encoder()
    stream = proto.open()
    proto.feed(f.frame(f.HEADERS, f.END_HEADERS, stream.id, enc.encode([(":status", "200"),
                                                                         ("content-type", "application/grpc")])))
    stream.recv_unacked = f.STREAM_WINDOW - 2
    with pytest.raises(f.ProtocolError) as caught:
        proto.feed(f.frame(f.DATA, 0, stream.id, b"abc"))
    assert caught.value.code == f.E_FLOW_CONTROL


def test_data_before_headers_resets_the_stream():   # PROTOCOL-HTTP2.md: Response-Headers come first
    proto = Recorder()
    stream = proto.open()
    proto.feed(f.frame(f.DATA, 0, stream.id, b"\0\0\0\0\0"))
    assert proto.sent() == [(f.RST_STREAM, 0, stream.id, struct.pack(">I", f.E_PROTOCOL))]
    assert proto.woken[0][1].code == f.UNAVAILABLE


def test_late_frames_of_a_cancelled_stream_are_dropped_but_never_opened_ones_are_errors():   # RFC 9113 5.1
    proto, enc = Recorder(), hpack.Encoder()
    stream = proto.open()
    del proto.streams[stream.id]                         # cancelled by its caller
    proto.feed(answer(enc, stream.id, b"late"))          # its headers are still decoded: the table follows
    assert proto.woken == [] and len(proto.decoder.cache) == 0
    with pytest.raises(f.ProtocolError, match="never opened"):
        proto.feed(f.frame(f.DATA, 0, 99, b"x"))
    with pytest.raises(f.ProtocolError, match="never opened"):
        Recorder().feed(f.frame(f.HEADERS, f.END_HEADERS, 2, enc.encode([(":status", "200")])))


def test_goaway_fails_the_streams_above_it_as_not_processed_and_lets_the_rest_finish():   # RFC 9113 6.8
    proto, enc = Recorder(), hpack.Encoder()
    first, second = proto.open(), proto.open()
    proto.feed(f.goaway(0, last_stream_id=first.id))
    (sid, error), = proto.woken
    assert (sid, error.code, error.processed) == (second.id, f.UNAVAILABLE, False)
    assert not proto.usable and proto.why_closed is None
    proto.feed(answer(enc, first.id, b"ok"))
    assert proto.woken[-1] == (first.id, b"ok")
    assert proto.why_closed == "every stream has finished on a connection that takes no new ones"


def test_trailers_only_and_a_second_block_that_does_not_end_the_stream():   # PROTOCOL-HTTP2.md: Trailers-Only
    proto, enc = Recorder(), hpack.Encoder()
    a, b = proto.open(), proto.open()
    proto.feed(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, a.id,
                       enc.encode([(":status", "200"), ("content-type", "application/grpc"),
                                   ("grpc-status", "3"), ("grpc-message", "bad%20shape")])))
    assert (proto.woken[0][1].code, proto.woken[0][1].details) == (f.INVALID_ARGUMENT, "bad shape")
    head = enc.encode([(":status", "200"), ("content-type", "application/grpc")])
    proto.feed(f.frame(f.HEADERS, f.END_HEADERS, b.id, head), f.frame(f.HEADERS, f.END_HEADERS, b.id, head))
    assert "second header block" in proto.woken[1][1].details


def test_a_stream_ends_after_its_messages_and_an_unfinished_one_is_an_error():
    proto, enc = Recorder(), hpack.Encoder()
    ok, cut = proto.open(streaming=True), proto.open(streaming=True)
    head = enc.encode([(":status", "200"), ("content-type", "application/grpc")])
    trailers = enc.encode([("grpc-status", "0")])
    proto.feed(f.frame(f.HEADERS, f.END_HEADERS, ok.id, head),
               f.frame(f.DATA, 0, ok.id, f.message_prefix(1) + b"a" + f.message_prefix(1) + b"b"),
               f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, ok.id, trailers))
    assert proto.woken == [(ok.id, b"a"), (ok.id, b"b"), (ok.id, END)]
    proto.feed(f.frame(f.HEADERS, f.END_HEADERS, cut.id, head), f.frame(f.DATA, 0, cut.id, f.message_prefix(9) + b"ab"),
               f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, cut.id, trailers))
    assert "unfinished message" in proto.woken[-1][1].details


def test_push_promise_is_refused_and_unknown_frames_are_ignored():   # RFC 9113 8.4, 5.5
    proto = Recorder()
    proto.feed(f.frame(0xFA, 0xFF, 0, b"whatever"), f.frame(f.PRIORITY, 0, 1, b"\0\0\0\0\x10"))
    assert proto.sent() == [] and proto.woken == []
    with pytest.raises(f.ProtocolError, match="PUSH_PROMISE"):
        proto.feed(f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\0\0\0\x02"))


def test_request_blocks_are_built_once_per_path_and_timeout():
    proto = Recorder()
    first = proto.block("/a/B", 1.0)
    assert proto.block("/a/B", 1.0) == first and proto.block("/a/B", 2.0) != first
    assert list(proto.blocks) == ["/a/B"] and set(proto.whole) == {("/a/B", 1.0), ("/a/B", 2.0)}


def test_request_blocks_do_not_grow_with_deadlines_that_vary_per_call():
    """On-demand loading passes each call the time left before its deadline: a new float every time. The blocks
    kept per connection stay one per method, the timeouts kept a bounded few, and each block is the same bytes as
    one built whole."""
    from serving.grpc_wire.frames import request_block
    from serving.grpc_wire.protocol import TIMEOUTS_KEPT
    p = Recorder()
    for i in range(10_000):
        timeout = 30.0 - i * 0.0017
        assert p.block("/inference.GRPCInferenceService/ModelInfer", timeout) == request_block(
            p.authority, "/inference.GRPCInferenceService/ModelInfer", timeout)
    assert len(p.blocks) == 1 and len(p.whole) == TIMEOUTS_KEPT


def test_a_streaming_calls_window_comes_back_only_as_its_caller_takes_the_messages():   # RFC 9113 5.2, 6.9
    """Backpressure: a caller that does not read (an SSE client that reads slowly) holds the server once the
    stream's window is used; what it takes is given back. Unary calls are given back as data comes."""
    proto, enc = Recorder(), hpack.Encoder()
    stream = proto.open(streaming=True)
    proto.feed(f.frame(f.HEADERS, f.END_HEADERS, stream.id, enc.encode([(":status", "200"),
                                                                         ("content-type", "application/grpc")])))
    size = f.RECV_FRAME_SIZE - 5
    message = struct.pack(">BI", 0, size) + b"m" * size
    frames = f.STREAM_WINDOW // 2 // f.RECV_FRAME_SIZE + 4   # past half the window
    proto.feed(f.frame(f.DATA, 0, stream.id, message) * frames)
    assert len(proto.woken) == frames and stream.held == frames * f.RECV_FRAME_SIZE
    assert [s for s in proto.sent() if s[2] == stream.id] == []   # nothing given back on the stream yet
    for _, taken in proto.woken:
        proto.consumed(stream, taken)
    given = [s for s in proto.sent() if s[2] == stream.id]
    assert given == [(f.WINDOW_UPDATE, 0, stream.id, struct.pack(">I", f.STREAM_WINDOW // 2))]
    assert stream.held == 0 and stream.recv_unacked == (frames * f.RECV_FRAME_SIZE) - f.STREAM_WINDOW // 2
    # A server that sends past the window while the caller holds it breaks the connection.
    stream.held = f.STREAM_WINDOW - stream.recv_unacked - 2
    with pytest.raises(f.ProtocolError) as caught:
        proto.feed(f.frame(f.DATA, 0, stream.id, b"abc"))
    assert caught.value.code == f.E_FLOW_CONTROL


def test_a_unary_answer_over_the_limit_is_refused_not_held(monkeypatch):
    """A unary answer is held whole until its trailers: past ANSWER_LIMIT the stream is reset (CANCEL) and the
    caller gets RESOURCE_EXHAUSTED saying so, instead of the worker holding whatever the server sends."""
    from serving.grpc_wire import protocol
    monkeypatch.setattr(protocol, "ANSWER_LIMIT", 3 * f.RECV_FRAME_SIZE)
    proto, enc = Recorder(), hpack.Encoder()
    stream = proto.open()
    proto.feed(f.frame(f.HEADERS, f.END_HEADERS, stream.id, enc.encode([(":status", "200"),
                                                                         ("content-type", "application/grpc")])))
    chunk = f.frame(f.DATA, 0, stream.id, b"x" * f.RECV_FRAME_SIZE)
    proto.feed(chunk * 3)
    assert proto.woken == [] and stream.id in proto.streams
    proto.feed(chunk)
    assert (f.RST_STREAM, 0, stream.id, struct.pack(">I", f.E_CANCEL)) in proto.sent()
    (sid, error), = proto.woken
    assert sid == stream.id and error.code == f.RESOURCE_EXHAUSTED and error.details == f"the answer is over {3 * f.RECV_FRAME_SIZE >> 20} MB"
    assert stream.id not in proto.streams
