"""serving/grpc_wire/ against real peers: a grpcio server (gRPC C-core) with hostile settings (tests/grpc_peer.py),
and a raw socket that sends truncated, oversized and out-of-order frames. Triton itself is the peer of every other
test of the stack; its restart under load is in test_faults.py.

The client runs here on gevent's hub (greenlets, not patched threads), as it does in a worker."""
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import gevent
import hpack
import pytest
from tritonclient.grpc import service_pb2

from conftest import ROOT, free_port

sys.path.insert(0, ROOT)
from serving import grpc_wire  # noqa: E402
from serving.grpc_wire import RpcError  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"
METADATA = "/inference.GRPCInferenceService/ServerMetadata"
PEER = os.path.join(ROOT, "tests", "grpc_peer.py")


class Peer:
    def __init__(self, *args, port=None):
        self.port = port or free_port()
        self.proc = subprocess.Popen([sys.executable, PEER, str(self.port), *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line + self.proc.stdout.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def peer_factory():
    peers = []

    def make(*args, port=None):
        peers.append(Peer(*args, port=port))
        return peers[-1]
    yield make
    for p in peers:
        p.close()


def infer(channel, model, raw=(), timeout=10.0, **params):
    request = service_pb2.ModelInferRequest(model_name=model, id=str(random.random()))
    for i, data in enumerate(raw):
        request.inputs.add(name=f"IN{i}", datatype="UINT8", shape=[len(data)])
        request.raw_input_contents.append(data)
    for key, value in params.items():
        if isinstance(value, str):
            request.parameters[key].string_param = value
        else:
            request.parameters[key].double_param = value
    response = channel.call(INFER, request, service_pb2.ModelInferResponse, timeout)
    assert response.id == request.id and response.model_name == model
    return response


class ClosedLoop:
    """`n` greenlets, each making its next call as soon as the last one ended. `call(k, i)` returns whether the
    answer is right or raises RpcError. Outcomes: "ok", "wrong" or the gRPC status name; no call may outlive its 5 s
    deadline."""

    def __init__(self, n, call):
        self.outcomes, self.stop = [], False
        self.jobs = [gevent.spawn(self.client, k, call) for k in range(n)]

    def client(self, k, call):
        i = 0
        while not self.stop:
            started = time.monotonic()
            try:
                self.outcomes.append("ok" if call(k, i) else "wrong")
            except RpcError as exc:
                self.outcomes.append(exc.name)
                gevent.sleep(0.05)
            assert time.monotonic() - started < 5.5
            i += 1

    def finish(self):
        self.stop = True
        gevent.joinall(self.jobs, timeout=10, raise_error=True)
        assert all(j.dead for j in self.jobs)


def stats(channel):
    return json.loads(channel.call(METADATA, service_pb2.ServerMetadataRequest(), service_pb2.ServerMetadataResponse,
                                   5).name)


def test_sixteen_megabytes_both_ways_through_small_windows_and_frames(peer_factory):
    # A 64 KB stream window that never grows (no BDP probing) and 16 KB frames: the 16 MB message must go out in
    # window-sized pieces as the server's WINDOW_UPDATEs arrive, and the 16 MB answer must be read within ours.
    peer = peer_factory("--window", 65536, "--max-frame", 16384)
    channel = grpc_wire.Channel("127.0.0.1", peer.port)
    data = os.urandom(16 * 1024 * 1024 + 7)
    response = infer(channel, "echo", [data], timeout=60)
    assert response.raw_output_contents[0] == data
    # Eight at once, 1 MB each, sharing the connection's window.
    pieces = [os.urandom(1024 * 1024 + i) for i in range(8)]
    jobs = [gevent.spawn(infer, channel, "echo", [p], 60) for p in pieces]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value.raw_output_contents[0] for j in jobs] == pieces
    assert channel.conn.streams == {}
    channel.close()


def test_trailers_only_error_with_a_long_non_ascii_message(peer_factory):
    peer = peer_factory()
    channel = grpc_wire.Channel("127.0.0.1", peer.port)
    message = "输入张量形状不对 — формат неверен: ünïcödé % 100%25 " * 200   # about 12 KB percent-encoded
    with pytest.raises(RpcError) as caught:
        infer(channel, "fail", message=message)
    assert caught.value.code == grpc_wire.INVALID_ARGUMENT
    assert caught.value.details == message
    with pytest.raises(RpcError) as caught:
        infer(channel, "abort", message="boom ✗")
    assert (caught.value.code, caught.value.details) == (grpc_wire.INTERNAL, "boom ✗")
    assert infer(channel, "echo", [b"after"]).raw_output_contents[0] == b"after"
    channel.close()


def test_a_deadline_cancels_the_stream_on_the_server(peer_factory):
    peer = peer_factory()
    channel = grpc_wire.Channel("127.0.0.1", peer.port)
    started = time.monotonic()
    with pytest.raises(RpcError) as caught:
        infer(channel, "slow", timeout=0.3, seconds=5.0)
    took = time.monotonic() - started
    assert caught.value.code == grpc_wire.DEADLINE_EXCEEDED
    assert 0.25 <= took < 1.0, took
    deadline = time.monotonic() + 5
    while stats(channel)["cancelled"] < 1 and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert stats(channel)["cancelled"] == 1   # the server saw the RST_STREAM(CANCEL)
    assert channel.conn.streams == {}
    channel.close()


def test_a_killed_caller_cancels_its_stream(peer_factory):
    peer = peer_factory()
    channel = grpc_wire.Channel("127.0.0.1", peer.port)
    job = gevent.spawn(infer, channel, "slow", seconds=5.0)
    gevent.sleep(0.3)
    job.kill()   # what gevent does to a request's greenlet whose client hung up
    deadline = time.monotonic() + 5
    while stats(channel)["cancelled"] < 1 and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert stats(channel)["cancelled"] == 1
    assert channel.conn.streams == {}
    channel.close()


def test_max_concurrent_streams_is_honoured(peer_factory):
    peer = peer_factory("--max-streams", 2)
    channel = grpc_wire.Channel("127.0.0.1", peer.port)
    infer(channel, "echo", [b"x"])   # the server's SETTINGS have arrived
    jobs = [gevent.spawn(infer, channel, "slow", [bytes([i])], 10, seconds=0.1) for i in range(12)]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value.raw_output_contents[0] for j in jobs] == [bytes([i]) for i in range(12)]
    assert stats(channel)["max_in_flight"] == 2
    channel.close()


def test_a_changing_hpack_table_with_a_tiny_encoder_table(peer_factory):
    # Trailers differ per call and the server's table is small: entries are evicted and indices shift all the time,
    # so any header block cached by its bytes would be misread if the cache outlived a table change.
    peer = peer_factory("--hpack-table", 96)
    channel = grpc_wire.Channel("127.0.0.1", peer.port)

    def run(k):
        for i in range(60):
            data = f"{k}-{i}".encode()
            assert infer(channel, "churn", [data]).raw_output_contents[0] == data
    gevent.joinall([gevent.spawn(run, k) for k in range(8)], raise_error=True)
    for i in range(50):
        assert infer(channel, "echo", [b"%d" % i]).raw_output_contents[0] == b"%d" % i
    channel.close()


def test_stream_ids_that_run_out_open_a_new_connection(peer_factory):
    peer = peer_factory()
    channel = grpc_wire.Channel("127.0.0.1", peer.port)
    first = channel.conn = grpc_wire.Connection("127.0.0.1", peer.port, 5, first_stream_id=grpc_wire.MAX_STREAM_ID - 2)
    assert infer(channel, "echo", [b"a"]).raw_output_contents[0] == b"a"   # stream 2^31-3
    assert infer(channel, "echo", [b"b"]).raw_output_contents[0] == b"b"   # stream 2^31-1, the last
    assert channel.conn is first and not first.usable
    assert infer(channel, "echo", [b"c"]).raw_output_contents[0] == b"c"
    assert channel.conn is not first and first.closed
    channel.close()


def test_server_stop_under_load_then_restart(peer_factory):
    """server.stop(grace) under load: GOAWAY; calls in flight finish, later ones fail as UNAVAILABLE (never hang),
    and once a server listens again on the port the same channel serves again."""
    peer = peer_factory("--grace", 2)
    port = peer.port
    channel = grpc_wire.Channel("127.0.0.1", port)

    def call(k, i):
        data = f"{k}:{i}".encode()
        return infer(channel, "slow", [data], timeout=5, seconds=0.05).raw_output_contents[0] == data

    load = ClosedLoop(16, call)
    outcomes = load.outcomes
    gevent.sleep(1.0)
    before = len(outcomes)
    peer.stop()
    while peer.proc.poll() is None:
        gevent.sleep(0.05)
    gevent.sleep(0.5)
    # C-core resets streams that arrive during its shutdown with CANCEL (grpc's own client reports CANCELLED too);
    # the proxy answers both as 503 (serving/triton/status.py: translate).
    assert set(outcomes[before:]) <= {"ok", "UNAVAILABLE", "CANCELLED"}, set(outcomes[before:])
    failed_while_down = outcomes.count("UNAVAILABLE")
    assert failed_while_down > 0
    peer_factory(port=port)
    gevent.sleep(1.0)
    load.finish()
    assert outcomes[-16:] == ["ok"] * 16, outcomes[-40:]
    assert "wrong" not in outcomes and set(outcomes) <= {"ok", "UNAVAILABLE", "CANCELLED"}
    assert outcomes.count("ok") > 100
    assert channel.conn.streams == {}
    channel.close()


# -- a raw peer: frames the client must survive --------------------------------------------------------------------

def frame(ftype, flags, stream_id, payload=b""):
    return grpc_wire.frame(ftype, flags, stream_id, payload)


def good_answer(encoder, stream_id=1, message=b"", trailers=True):
    head = frame(grpc_wire.HEADERS, grpc_wire.END_HEADERS, stream_id,
                 encoder.encode([(":status", "200"), ("content-type", "application/grpc")]))
    body = frame(grpc_wire.DATA, 0 if trailers else grpc_wire.END_STREAM, stream_id,
                 struct.pack(">BI", 0, len(message)) + message)
    tail = frame(grpc_wire.HEADERS, grpc_wire.END_HEADERS | grpc_wire.END_STREAM, stream_id,
                 encoder.encode([("grpc-status", "0")]))
    return head + body + (tail if trailers else b"")


class RawPeer:
    """Accepts connections; on each, reads what the client sends, then sends `script(encoder)` bytes and either
    closes or keeps the connection open."""

    def __init__(self, script, close_after=True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.script, self.close_after = script, close_after
        self.conns = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.settimeout(2)
            try:
                got = b""
                while len(got) < 100:   # the preface, SETTINGS, WINDOW_UPDATE, HEADERS and DATA
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                conn.sendall(frame(grpc_wire.SETTINGS, 0, 0) + self.script(hpack.Encoder()))
                if self.close_after:
                    conn.close()
            except OSError:
                pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def _oversized(enc):
    return struct.pack(">HBBBI", (grpc_wire.RECV_FRAME_SIZE + 1) >> 8, (grpc_wire.RECV_FRAME_SIZE + 1) & 0xFF, 0, 0, 1)


HOSTILE = {
    "closed at once": lambda enc: b"",
    "truncated frame header": lambda enc: good_answer(enc)[:5],
    "truncated payload": lambda enc: good_answer(enc)[:30],
    "no trailers": lambda enc: good_answer(enc, trailers=False),
    "oversized frame": _oversized,
    "DATA before HEADERS": lambda enc: frame(grpc_wire.DATA, grpc_wire.END_STREAM, 1, b"\0\0\0\0\0"),
    "CONTINUATION without HEADERS": lambda enc: frame(grpc_wire.CONTINUATION, grpc_wire.END_HEADERS, 1, b"\x88"),
    "HEADERS interrupted": lambda enc: frame(grpc_wire.HEADERS, 0, 1, enc.encode([(":status", "200")]))
    + frame(grpc_wire.DATA, 0, 1, b"\0\0\0\0\0"),
    "bad HPACK index": lambda enc: frame(grpc_wire.HEADERS, grpc_wire.END_HEADERS, 1, b"\xff\xff\xff\x7f"),
    "frames on a stream never opened": lambda enc: frame(grpc_wire.HEADERS, grpc_wire.END_HEADERS, 9,
                                                          enc.encode([(":status", "200")])),
    "PUSH_PROMISE": lambda enc: frame(grpc_wire.PUSH_PROMISE, grpc_wire.END_HEADERS, 1, b"\0\0\0\x02"),
    "bad padding": lambda enc: frame(grpc_wire.HEADERS, grpc_wire.END_HEADERS | grpc_wire.PADDED, 1, b"\x50\x88"),
    "HTTP 502 without gRPC": lambda enc: frame(grpc_wire.HEADERS, grpc_wire.END_HEADERS | grpc_wire.END_STREAM, 1,
                                                enc.encode([(":status", "502")])),
    "random bytes": lambda enc: random.Random(7).randbytes(4096),
    "GOAWAY before the answer": lambda enc: frame(grpc_wire.GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
    "RST_STREAM(REFUSED_STREAM)": lambda enc: frame(grpc_wire.RST_STREAM, 0, 1, struct.pack(">I", 7)),
    "a window overflow": lambda enc: frame(grpc_wire.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2 ** 31 - 1)),
    "wrong message length": lambda enc: good_answer(enc, message=b"abc").replace(
        struct.pack(">BI", 0, 3) + b"abc", struct.pack(">BI", 0, 9) + b"abc"),
}

# What each case must end in: the HTTP side maps UNAVAILABLE to 503, so a broken server is a clear 503.
EXPECTED = {}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("keep_open", [False, True], ids=["then-close", "then-silence"])
def test_hostile_frames_end_in_a_clear_error(case, keep_open):
    peer = RawPeer(HOSTILE[case], close_after=not keep_open)
    channel = grpc_wire.Channel("127.0.0.1", peer.port)
    started = time.monotonic()
    try:
        with pytest.raises(RpcError) as caught:
            channel.call(INFER, service_pb2.ModelInferRequest(model_name="m"), service_pb2.ModelInferResponse, 1.0)
        took = time.monotonic() - started
        expected = EXPECTED.get(case, grpc_wire.UNAVAILABLE)
        silent = keep_open and case in ("RST_STREAM(REFUSED_STREAM)", "GOAWAY before the answer", "a window overflow",
                                        "truncated frame header", "truncated payload", "closed at once")
        # A peer that goes silent on an open connection leaves only the deadline to end the call.
        assert caught.value.code in ((expected, grpc_wire.DEADLINE_EXCEEDED) if silent else (expected,)), \
            (case, caught.value)
        assert took < 1.5, took
        conn = channel.conn
        assert conn is None or conn.streams == {}
    finally:
        channel.close()
        peer.close()


def test_fuzzed_answers_never_hang_and_never_leak():
    """Valid answers with random bytes flipped, cut or repeated: every call ends by its deadline, no stream is left,
    and the greenlets of the client (reader, writer) are gone once the channel is closed."""
    rng = random.Random(2026)
    for i in range(150):
        seed = rng.random()

        def script(enc, seed=seed):
            r = random.Random(seed)
            data = bytearray(frame(grpc_wire.PING, 0, 0, b"12345678") + good_answer(enc, message=b"\x0a\x01m"))
            for _ in range(r.randint(1, 6)):
                op = r.random()
                at = r.randrange(len(data))
                if op < 0.5:
                    data[at] = r.randrange(256)
                elif op < 0.75:
                    del data[at:at + r.randint(1, 8)]
                else:
                    data[at:at] = data[at:at + r.randint(1, 20)]
            return bytes(data)

        peer = RawPeer(script, close_after=bool(i % 2))
        channel = grpc_wire.Channel("127.0.0.1", peer.port)
        started = time.monotonic()
        try:
            channel.call(INFER, service_pb2.ModelInferRequest(model_name="m"), service_pb2.ModelInferResponse, 0.5)
        except RpcError:
            pass
        assert time.monotonic() - started < 1.0
        conn = channel.conn
        assert conn is None or conn.streams == {}
        channel.close()
        peer.close()
        if conn is not None:
            gevent.sleep(0.01)
            assert conn.reader.dead


# -- Triton itself, stopped and started again under load ------------------------------------------------------------

def start_triton(repo, grpc_port, log):
    home = os.environ["TRITON_HOME"]
    env = dict(os.environ, PATH=os.path.dirname(os.environ["MODEL_PYTHON"]) + os.pathsep + os.environ["PATH"])
    ports = [free_port(), free_port()]
    return subprocess.Popen([f"{home}/bin/tritonserver", f"--model-repository={repo}",
                             f"--backend-directory={home}/backends", "--http-address=127.0.0.1",
                             f"--http-port={ports[0]}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
                             "--allow-metrics=false", "--exit-timeout-secs=5"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.skipif("TRITON_HOME" not in os.environ, reason="needs the embedded Triton (make test sets TRITON_HOME)")
def test_triton_stopped_and_started_again_under_load(tmp_path):
    """SIGTERM to Triton under load (it sends GOAWAY and drains), then a new Triton on the same port: calls end in
    right answers or UNAVAILABLE, none hangs, and the same channel serves the new server."""
    import numpy as np
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["cp", "-r", os.path.join(ROOT, "benchmarks", "models", "identity"), str(repo)], check=True)
    port = free_port()
    log = open(tmp_path / "triton.log", "wb")
    channel = grpc_wire.Channel("127.0.0.1", port)
    ready = lambda: channel.call("/inference.GRPCInferenceService/ModelReady",  # noqa: E731
                                 service_pb2.ModelReadyRequest(name="identity"), service_pb2.ModelReadyResponse, 1).ready

    def wait_ready():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except RpcError:
                pass
            gevent.sleep(0.2)
        raise AssertionError("Triton not ready:\n" + (tmp_path / "triton.log").read_text()[-3000:])

    triton = start_triton(repo, port, log)
    load = None
    try:
        wait_ready()

        def call(k, i):
            x = np.full((1, 16), k * 1000 + i, dtype=np.float32)
            request = service_pb2.ModelInferRequest(model_name="identity")
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
            request.raw_input_contents.append(x.tobytes())
            return channel.call(INFER, request, service_pb2.ModelInferResponse, 5).raw_output_contents[0] == x.tobytes()

        load = ClosedLoop(8, call)
        outcomes = load.outcomes
        gevent.sleep(1.5)
        triton.send_signal(signal.SIGTERM)
        while triton.poll() is None:
            gevent.sleep(0.05)
        down = len(outcomes)
        gevent.sleep(0.5)
        assert set(outcomes[down:]) == {"UNAVAILABLE"}
        triton = start_triton(repo, port, log)
        wait_ready()
        gevent.sleep(1.0)
        load.finish()
        # While it drains, Triton unloads the model and answers NOT_FOUND; the proxy answers it, UNAVAILABLE and
        # CANCELLED alike, as 503 (serving/triton/status.py: translate).
        assert "wrong" not in outcomes and set(outcomes) <= {"ok", "UNAVAILABLE", "CANCELLED", "NOT_FOUND"}, \
            set(outcomes)
        assert outcomes[-8:] == ["ok"] * 8
        assert outcomes.count("ok") > 200
        assert channel.conn.streams == {}
    finally:
        if load is not None:
            load.stop = True
        channel.close()
        triton.kill()
        triton.wait()


STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def stream_request(count, **params):
    request = service_pb2.ModelInferRequest(model_name="stream", id="s")
    request.parameters["count"].int64_param = count
    for key, value in params.items():
        if isinstance(value, float):
            request.parameters[key].double_param = value
        else:
            request.parameters[key].int64_param = value
    return request


def read_all(responses, idle=None):
    got, idles = [], 0
    while True:
        try:
            raw = responses.next(idle)
        except StopIteration:
            return got, idles
        if raw is None:
            idles += 1
            continue
        got.append(service_pb2.ModelStreamInferResponse.FromString(raw).infer_response)


def test_a_server_stream_arrives_in_order_through_small_windows_and_frames(peer_factory):
    """200 answers of 0 to 300 KB through a 64 KB window and 16 KB frames: each whole, in order, as it comes."""
    peer = peer_factory("--window", 65536, "--max-frame", 16384)
    channel = grpc_wire.Channel("127.0.0.1", peer.port)

    def run():
        responses = channel.stream(STREAM, stream_request(200, size=300_000), 60)
        return read_all(responses)[0]

    got = gevent.spawn(run).get(timeout=90)
    assert [r.id for r in got] == [f"s:{i}" for i in range(200)]
    assert all(r.raw_output_contents == [bytes([i % 256]) * 300_000] for i, r in enumerate(got))
    assert unary_still_works(channel)
    channel.close()


def unary_still_works(channel):
    return infer(channel, "echo", [b"abc"]).raw_output_contents == [b"abc"]


def test_answers_come_as_they_are_sent_and_idle_waits_return_none(peer_factory):
    peer = peer_factory()
    channel = grpc_wire.Channel("127.0.0.1", peer.port)

    def run():
        started = time.monotonic()
        responses = channel.stream(STREAM, stream_request(3, delay=0.3), 10)
        times, idles = [], 0
        while True:
            try:
                raw = responses.next(0.1)
            except StopIteration:
                return times, idles
            if raw is None:
                idles += 1
            else:
                times.append(time.monotonic() - started)

    times, idles = gevent.spawn(run).get(timeout=30)
    assert len(times) == 3 and 0.25 < times[0] < 0.6 and times[2] - times[0] > 0.5   # not held back to the end
    assert idles >= 4
    channel.close()


def test_a_failure_mid_stream_comes_after_the_answers_before_it(peer_factory):
    peer = peer_factory()
    channel = grpc_wire.Channel("127.0.0.1", peer.port)

    def run():
        responses = channel.stream(STREAM, stream_request(10, fail_at=4), 10)
        got = []
        with pytest.raises(RpcError) as err:
            while True:
                got.append(service_pb2.ModelStreamInferResponse.FromString(responses.next()).infer_response.id)
        return got, err.value

    got, err = gevent.spawn(run).get(timeout=30)
    assert got == ["s:0", "s:1", "s:2", "s:3"]
    assert (err.code, err.details) == (grpc_wire.INTERNAL, "failed at response 4")
    channel.close()


def test_cancel_and_deadline_mid_stream_are_seen_by_the_server(peer_factory):
    peer = peer_factory()
    channel = grpc_wire.Channel("127.0.0.1", peer.port)

    def run():
        responses = channel.stream(STREAM, stream_request(100, delay=0.05), 30)
        for _ in range(3):
            responses.next()
        responses.cancel()   # a client that hung up after 3 answers
        late = channel.stream(STREAM, stream_request(2, then_wait=5.0), 0.5)
        read = [responses.next() for responses in [late] for _ in range(2)]
        with pytest.raises(RpcError) as err:
            late.next()
        return read, err.value.code

    read, code = gevent.spawn(run).get(timeout=30)
    assert len(read) == 2 and code == grpc_wire.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while stats(channel)["cancelled"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(channel)["cancelled"] == 2
    assert not channel.conn.streams   # nothing left open on the connection
    channel.close()
