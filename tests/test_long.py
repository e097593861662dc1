"""Long calls and ModelArts' request modes (docs/long-running.md), against the real Triton with tests/models/long:
in REQUEST_MODE=async a 75 s call gets its answer while /health and MNIST stay fast, calls past the model's limit
wait their turn in arrival order, and a stop refuses new calls (503, Retry-After), lets the ones that can finish
finish and ends the others with a clear error, cancelled in the model; in sync mode (the default) the deadline is
30 s and a call past it is a 504, cancelled in the model too."""
import os
import signal
import re
import subprocess
import sys
import threading
import time

import pytest
import requests

from conftest import ROOT, Stack, body, wait_for

LONG = os.path.join(ROOT, "tests", "models", "long")
SEVEN = open(os.path.join(ROOT, "tests", "data", "seven.jpg"), "rb").read()


def long_stack(tmp_path, **env):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "mnist").symlink_to(os.path.join(ROOT, "model_repository", "mnist"))
    (repo / "long").symlink_to(LONG)
    config = tmp_path / "config.json"
    config.write_text(subprocess.run([sys.executable, "-m", "serving.generate", str(repo)], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout)
    return Stack(tmp_path, MODEL_REPOSITORY=repo, MODELARTS_CONFIG=config, WORKERS="1", **env).start()


def in_thread(results, key, seconds, url):
    def call():
        started = time.monotonic()
        resp = requests.post(url + "/long", json={"seconds": [seconds]}, timeout=600)
        results[key] = (resp.status_code, body(resp), resp.headers.get("Retry-After"), time.monotonic())
        results.setdefault("took", {})[key] = time.monotonic() - started
    t = threading.Thread(target=call)
    t.start()
    return t


@pytest.mark.slow   # over a minute by design
def test_async_mode_serves_a_75_s_call_and_queued_calls_in_order_while_health_and_mnist_stay_fast(tmp_path):
    stack = long_stack(tmp_path, REQUEST_MODE="async", INFLIGHT_PER_MODEL="2")
    try:
        results = {}
        long = in_thread(results, "75 s", 75, stack.url)
        time.sleep(1)
        health, mnist = [], []
        for _ in range(10):
            started = time.monotonic()
            assert requests.get(stack.url + "/health", timeout=5).status_code == 200
            health.append(time.monotonic() - started)
            started = time.monotonic()
            assert body(requests.post(stack.url + "/", files={"images": ("seven.jpg", SEVEN)}, timeout=10)) == \
                {"mnist_result": 7}
            mnist.append(time.monotonic() - started)
        assert max(health) < 0.1 and max(mnist) < 1.0, (health, mnist)
        # One slot left beside the 75 s call (INFLIGHT_PER_MODEL=2): four calls take it in the order they came.
        queued = []
        for i in range(4):
            queued.append(in_thread(results, i, 4, stack.url))
            time.sleep(0.3)
        for t in queued:
            t.join(120)
        ends = [results[i][3] for i in range(4)]
        assert all(results[i][:2] == (200, {"worked": 4.0}) for i in range(4)), results
        assert ends == sorted(ends) and ends[-1] - ends[0] > 11, ends   # one after another, 4 s each
        long.join(120)
        assert results["75 s"][:2] == (200, {"worked": 75.0}), results["75 s"]
        assert 75 <= results["took"]["75 s"] < 90
        text = requests.get(stack.url + "/metrics", timeout=10).text
        # the histogram reaches past 60 s in async mode: the 75 s call is in le=120, not only in +Inf
        assert 'proxy_request_duration_seconds_bucket{le="60.0",url="/long"} 4.0' in text, text[:3000]
        assert 'proxy_request_duration_seconds_bucket{le="120.0",url="/long"} 5.0' in text
    finally:
        stack.terminate()


def test_sync_mode_keeps_its_deadline_and_cancels_the_call_in_the_model(tmp_path):
    stack = long_stack(tmp_path, REQUEST_TIMEOUT="3")
    try:
        started = time.monotonic()
        resp = requests.post(stack.url + "/long", json={"seconds": [20]}, timeout=60)
        assert (resp.status_code, body(resp)) == (504, {"error": "inference did not finish within 3 s"})
        assert time.monotonic() - started >= 2.9   # not before the deadline
        # The model itself says when the cancellation reached it: at the deadline, long before its 20 s were up.
        wait_for(lambda: "long: cancelled after" in stack.log(), 10, "the model sees the cancellation")
        cancelled_after = float(re.search(r"long: cancelled after ([0-9.]+)", stack.log()).group(1))
        assert cancelled_after < 10, cancelled_after
    finally:
        stack.terminate()


@pytest.mark.slow   # over a minute by design
def test_async_stop_refuses_new_calls_finishes_what_it_can_and_ends_the_rest_with_an_error(tmp_path):
    stack = long_stack(tmp_path, REQUEST_MODE="async", GRACE_PERIOD="2", GRACEFUL_TIMEOUT="12")
    try:
        results = {}
        short, long = in_thread(results, "short", 8, stack.url), in_thread(results, "long", 60, stack.url)
        time.sleep(1)
        stack.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: requests.get(stack.url + "/health", timeout=5).status_code == 503, 5, "the drain")
        refused = requests.post(stack.url + "/long", json={"seconds": [1]}, timeout=10)
        assert (refused.status_code, refused.headers.get("Retry-After")) == (503, "1")
        assert body(refused)["error"].startswith("the service is stopping (SIGTERM)")
        short.join(60)
        long.join(60)
        assert results["short"][:2] == (200, {"worked": 8.0}), results
        status, doc, retry, _ = results["long"]
        assert (status, retry) == (503, "1") and doc["error"].startswith("the service stopped before this call "
                                                                         "finished"), results["long"]
        # cut just before gunicorn's drain ends: 2 s grace + 12 s drain - 3 s margin
        assert 10 < results["took"]["long"] < 16, results["took"]
        assert stack.proc.wait(60) == 0
        log = stack.log()
        marks = ["stop requested", "long: cancelled after", "gunicorn stopped (exit 0)", "stopping Triton",
                 "Triton stopped (exit 0)"]
        positions = [log.find(m) for m in marks]
        assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(marks, positions))
    finally:
        stack.kill()


def test_the_request_mode_sets_the_default_deadline(monkeypatch):
    from serving.settings import Settings
    for mode, timeout, want in (("", None, 30.0), ("async", None, 3600.0), ("async", "900", 900.0),
                                ("sync", "10", 10.0)):
        monkeypatch.setenv("REQUEST_MODE", mode)
        if timeout is None:
            monkeypatch.delenv("REQUEST_TIMEOUT", raising=False)
        else:
            monkeypatch.setenv("REQUEST_TIMEOUT", timeout)
        assert Settings.from_env().request_timeout_s == want
    monkeypatch.setenv("REQUEST_MODE", "later")
    with pytest.raises(SystemExit, match="REQUEST_MODE='later' is not one of sync, async"):
        Settings.from_env()
