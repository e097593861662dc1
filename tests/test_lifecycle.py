"""run.sh's lifecycle, on stacks of their own: SIGTERM order, in-flight requests, dead children, a stalled Triton."""
import json
import os
import re
import signal
import socket
import time

import pytest
import requests

from conftest import Stack, body, encode, wait_for

BOUNDARY = "lifecycle-test-boundary"


def multipart(field, filename, data):
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest[:length])


def test_sigterm_drains_then_stops_gunicorn_then_triton(new_stack, held_out):
    x, y = held_out
    stack = new_stack(GRACE_PERIOD="3", GRACEFUL_TIMEOUT="30")
    # A request that is in flight when gunicorn is told to stop: headers and half the body now, the rest later.
    payload = multipart("images", "d.png", encode(x[300]))
    inflight = socket.create_connection(("127.0.0.1", stack.port), timeout=60)
    inflight.sendall((f"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {len(payload)}\r\n"
                      f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode())
    inflight.sendall(payload[:len(payload) // 2])
    # An idle keep-alive connection: it must not hold the stop up (keep-alive is 200 s).
    idle = requests.Session()
    assert idle.get(stack.url + "/health", timeout=5).status_code == 200
    gunicorn_master = stack.pids("gunicorn")[0]

    stack.proc.send_signal(signal.SIGTERM)

    # 1. /health flips to 503 at once, while predictions go on being served through the grace period.
    wait_for(lambda: requests.get(stack.url + "/health", timeout=5).status_code == 503, 2, "/health 503")
    resp = requests.get(stack.url + "/health", timeout=5)
    assert (resp.status_code, body(resp)) == (503, {"health": "false", "reason": "shutting down"})
    resp = requests.post(stack.url + "/", files={"images": ("d.png", encode(x[100]))}, timeout=10)
    assert (resp.status_code, body(resp)) == (200, {"mnist_result": int(y[100])})

    # 2. After the grace period gunicorn is stopping, but it waits for the request in flight, and Triton is up.
    wait_for(lambda: "grace period over" in stack.log(), 10, "the end of the grace period")
    time.sleep(1.0)
    assert stack.proc.poll() is None
    assert stack.pids("gunicorn") and stack.pids("tritonserver")
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.url + "/health", timeout=5)   # no longer accepting
    inflight.sendall(payload[len(payload) // 2:])
    assert read_response(inflight) == (200, {"mnist_result": int(y[300])})
    inflight.close()
    answered = time.monotonic()

    # The idle keep-alive connection does not hold gunicorn for its 30 s graceful timeout (stock gevent would).
    wait_for(lambda: "gunicorn stopped" in stack.log(), 10, "gunicorn to stop")
    assert time.monotonic() - answered < 10

    # 3. Then everything stops, in order, and run.sh exits 0 with nothing left behind.
    assert stack.proc.wait(60) == 0
    log = stack.log()
    marks = ["stop requested: /health now answers 503", "grace period over", "Handling signal: term",
             "Shutting down: Master", "gunicorn stopped (exit 0)", "stopping Triton", "Signal (15) received",
             "Triton stopped (exit 0)", "shutdown complete"]
    positions = [log.find(m) for m in marks]
    assert all(p >= 0 for p in positions), dict(zip(marks, positions))
    assert positions == sorted(positions), dict(zip(marks, positions))
    assert not stack.pids(""), "processes left behind"
    with pytest.raises(ProcessLookupError):
        os.kill(gunicorn_master, 0)
    assert not os.path.exists(stack.env["DRAIN_FILE"])


@pytest.mark.parametrize("victim", ["tritonserver", "gunicorn"])
def test_a_child_dying_stops_the_other_and_fails(new_stack, victim):
    stack = new_stack()
    os.kill(stack.pids(victim)[0], signal.SIGKILL)
    assert stack.proc.wait(60) == 1
    name = "Triton" if victim == "tritonserver" else "gunicorn"
    assert f"{name} exited on its own" in stack.log()
    wait_for(lambda: not stack.pids(""), 10, "no processes left")


def test_stalled_triton_gives_503_health_and_504_predict_then_recovers(new_stack, held_out):
    x, y = held_out
    stack = new_stack(REQUEST_TIMEOUT="2", HEALTH_TIMEOUT="1", HEALTH_CACHE="0")
    triton = stack.triton_pid()
    os.kill(triton, signal.SIGSTOP)
    try:
        resp = requests.get(stack.url + "/health", timeout=10)
        got = body(resp)
        assert resp.status_code == 503 and got["health"] == "false", got
        assert got["reason"].startswith("inference server is not reachable"), got
        resp = requests.post(stack.url + "/", files={"images": ("d.png", encode(x[0]))}, timeout=10)
        assert (resp.status_code, body(resp)) == (504, {"error": "inference did not finish within 2 s"})
    finally:
        os.kill(triton, signal.SIGCONT)
    wait_for(lambda: requests.get(stack.url + "/health", timeout=5).status_code == 200, 10, "/health 200 again")
    resp = requests.post(stack.url + "/", files={"images": ("d.png", encode(x[0]))}, timeout=10)
    assert (resp.status_code, body(resp)) == (200, {"mnist_result": int(y[0])})
    assert stack.terminate() == 0


def test_a_hung_gunicorn_is_killed_after_its_limit_and_triton_still_stops(new_stack):
    stack = new_stack(GRACE_PERIOD="1", GRACEFUL_TIMEOUT="2")   # run.sh's limit for gunicorn: 2 + 15 s
    master = stack.pids("gunicorn")[0]
    os.kill(master, signal.SIGSTOP)                            # it can no longer act on SIGTERM
    started = time.monotonic()
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(60) == 0
    assert 17 <= time.monotonic() - started < 40
    log = stack.log()
    marks = ["gunicorn still running after 17s; killing it", "gunicorn stopped (exit 137)", "stopping Triton",
             "Triton stopped (exit 0)", "shutdown complete"]
    positions = [log.find(m) for m in marks]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(marks, positions))
    wait_for(lambda: not stack.pids(""), 10, "no processes left")


def test_ctrl_c_stops_everything_at_once_and_exits_0(new_stack):
    """Ctrl-C in a terminal sends SIGINT to every process of the foreground group: run.sh, gunicorn, Triton. A stop
    asked for is not a fault: no grace period, every process gone, exit 0 (make serve then ends without an error),
    and the log says so plainly: no worker traceback (gunicorn's own quick stop ended with `SystemExit: 0`)."""
    stack = new_stack(GRACE_PERIOD="30")
    wait_for(lambda: len(stack.pids("gunicorn")) == 3, 30, "the master and both workers")
    # both workers through create_app (its last route logged), so that the SIGINT does not land in a worker's boot
    wait_for(lambda: stack.log().count("route GET /v1/models -> model") >= 2, 60, "both workers booted")
    time.sleep(1)
    started = time.monotonic()
    os.killpg(stack.proc.pid, signal.SIGINT)
    rc = stack.proc.wait(60)
    took = time.monotonic() - started
    log = stack.log()
    assert rc == 0, log[-3000:]
    assert took < 20, took   # not the 30 s grace period
    assert "shutdown complete" in log and "exited on its own" not in log
    assert "no grace period, stopping now" in log and "grace period over" not in log
    assert "Traceback" not in log and "SystemExit" not in log, log[-3000:]
    wait_for(lambda: not stack.pids(""), 10, "no process of the stack left")


def test_a_taken_port_stops_the_start_before_triton_naming_the_setting(tmp_path):
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    stack = Stack(tmp_path, PORT=port)
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as err:
            stack.start()
    finally:
        taken.close()
    assert f"port {port} is taken (another service listens on it): stop that one, or set PORT to a free port" in \
        str(err.value)
    assert "starting Triton" not in stack.log() and time.monotonic() - started < 10


def test_the_grace_period_says_when_it_ends_and_that_it_is_under_way(new_stack):
    stack = new_stack(GRACE_PERIOD="12")
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(60) == 0
    log = stack.log()
    assert re.search(r"serving on for the 12s grace period \(until \d\d:\d\d:\d\dZ\)", log), log[-2000:]
    assert "grace period: 2s left, still serving" in log
