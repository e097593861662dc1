"""MODEL_LOADING=on-demand against the real Triton (explicit model control): loads on first request, one load for
many concurrent first requests across workers, the LRU budget (never more loaded than MAX_LOADED_MODELS, polled from
Triton's own index), failures, nothing unloaded under a request, pinned models, and a stop during a load."""
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import ROOT, Stack, body, generated_config

NAMED = os.path.join(ROOT, "tests", "models", "named")
SIX = [f"m{i}" for i in range(1, 7)]


def make_repository(root):
    """Six copies of the named model, a `cold` one, one that fails to load and one that loads for 14 s."""
    repo = root / "repo"
    for name in SIX + ["cold", "broken", "slowload", "pinned"]:
        shutil.copytree(NAMED, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(ROOT, "tests", "models", "crashy"), repo / "crashy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    params = {"broken": ("fail_to_load", "1"), "slowload": ("initialize_sleep", "14")}
    for name, (key, value) in params.items():
        with open(repo / name / "config.pbtxt", "a") as f:
            f.write(f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n')
    generated_config(repo)
    return repo


def index(stack):
    """Triton's repository index, read from its own HTTP port on 127.0.0.1: {model: state}."""
    resp = requests.post(f"http://127.0.0.1:{stack.env['TRITON_HTTP_PORT']}/v2/repository/index", json={}, timeout=5)
    return {m["name"]: m.get("state", "") for m in resp.json()}


def held(states):
    return sorted(m for m, s in states.items() if s in ("READY", "LOADING", "UNLOADING"))


def ask(stack, model, sleep=0.0, timeout=30):
    return requests.post(f"{stack.url}/{model}", json={"sleep": sleep}, timeout=timeout)


def series(stack, name):
    """{labels: value} of one metric family from /metrics."""
    found = {}
    for line in requests.get(stack.url + "/metrics", timeout=10).text.splitlines():
        m = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            found[m.group(1) or ""] = float(m.group(2))
    return found


class Poller:
    """Polls Triton's index while a test runs: the most models it held at once."""

    def __init__(self, stack):
        self.stack, self.most, self.seen, self.stop = stack, [], set(), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            now = held(index(self.stack))
            self.seen.update(now)
            if len(now) > len(self.most):
                self.most = now
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("loading")
    repo = make_repository(d)
    stack = Stack(d, MODEL_REPOSITORY=repo, MODEL_LOADING="on-demand", MAX_LOADED_MODELS=2, REQUEST_TIMEOUT=10,
                  HEALTH_CACHE=0).start()
    yield stack
    stack.terminate()


def test_nothing_is_loaded_at_start_and_health_is_200(budget_stack):
    assert held(index(budget_stack)) == []
    resp = requests.get(budget_stack.url + "/health", timeout=5)
    assert (resp.status_code, body(resp)) == (200, {"health": "true"})
    assert "models load on demand: pinned none, at most 2 loaded" in budget_stack.log()


def test_first_requests_to_six_models_at_once_never_hold_more_than_two(budget_stack):
    """Every greenlet of a worker shares its lock file's descriptor, and flock lets them all in: the budget holds
    only if the worker serializes them too (it once loaded six at once)."""
    with Poller(budget_stack) as poll, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda m: (m, ask(budget_stack, m)), SIX * 2))
    assert len(poll.most) <= 2, poll.most
    # Six loads in turn take longer than the 10 s deadline: the last ones wait, then get a JSON 503 or 504.
    right = [m for m, r in answers if (r.status_code, r.json()) == (200, {"model": m})]
    late = [r for _, r in answers if r.status_code in (503, 504) and "error" in r.json()]
    assert len(right) + len(late) == 12 and len(set(right)) >= 2, [(m, r.status_code, r.text[:100]) for m, r in answers]


def test_32_concurrent_first_requests_in_two_workers_make_one_load(budget_stack):
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: ask(budget_stack, "cold"), range(32)))
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"model": "cold"})] * 32
    assert series(budget_stack, "proxy_model_loads_total")['{model="cold",result="ok"}'] == 1
    assert budget_stack.log().count('"loading: cold:1"') == 1   # Triton's own line, once


def test_a_model_that_fails_to_load_gets_503_naming_it_and_others_serve(budget_stack):
    resp = ask(budget_stack, "broken")
    assert resp.status_code == 503
    error = body(resp)["error"]
    assert error.startswith("model 'broken' failed to load: ") and "broken refuses to load (fail_to_load)" in error
    resp = ask(budget_stack, "broken")   # within LOAD_RETRY_S: the same answer, without a second load
    assert (resp.status_code, body(resp)["error"]) == (503, error)
    assert budget_stack.log().count('"loading: broken:1"') == 1
    assert (ask(budget_stack, "m1").status_code, ask(budget_stack, "m1").json()) == (200, {"model": "m1"})
    assert requests.get(budget_stack.url + "/health", timeout=5).status_code == 200


def test_a_load_past_the_deadline_gets_504_and_a_later_request_finds_it_loaded(budget_stack):
    started = time.monotonic()
    resp = ask(budget_stack, "slowload")   # loads for 14 s; the deadline is 10 s
    assert resp.status_code == 504 and "still loading" in body(resp)["error"]
    # Answered at the deadline, while the load was still under way (Triton's own index says so), not after it.
    assert index(budget_stack).get("slowload") != "READY" and time.monotonic() - started >= 9.5
    deadline = time.monotonic() + 20
    while True:
        resp = ask(budget_stack, "slowload")
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
    assert (resp.status_code, resp.json()) == (200, {"model": "slowload"})
    assert budget_stack.log().count('"loading: slowload:1"') == 1
    loads = series(budget_stack, "proxy_model_loads_total")
    assert loads['{model="slowload",result="timeout"}'] == 1 and '{model="slowload",result="ok"}' not in loads


def test_a_model_with_a_request_in_flight_is_not_unloaded_under_it(budget_stack):
    for m in ("m1", "m2"):
        assert ask(budget_stack, m).status_code == 200
    assert held(index(budget_stack)) == ["m1", "m2"]
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(ask, budget_stack, m, 2.5) for m in ("m1", "m2")]
        time.sleep(0.5)
        started = time.monotonic()
        third = pool.submit(ask, budget_stack, "m3")
        answers = [f.result() for f in busy]
        waited = time.monotonic() - started
        last = third.result()
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"model": "m1"}), (200, {"model": "m2"})]
    assert (last.status_code, last.json()) == (200, {"model": "m3"})
    assert waited >= 1.5   # m3's load waited for a slot to be free (then for the unload, about 2 s here)
    assert len(held(index(budget_stack))) == 2


def test_a_crashed_model_is_unloaded_and_loaded_again_on_its_next_request(budget_stack):
    url = budget_stack.url + "/crashy"
    assert requests.post(url, json={"x": 5}, timeout=30).json() == {"y": 5}
    resp = requests.post(url, json={"x": 1}, timeout=30)   # its process kills itself
    assert (resp.status_code, body(resp)) == (500, {"error": "inference failed: Stub process 'crashy_0' is not healthy."})
    # Triton 2.51 still calls it READY; the proxy unloads it and loads it again, and the container stays healthy.
    again = requests.post(url, json={"x": 7}, timeout=30)
    assert (again.status_code, again.json()) == (200, {"y": 7})
    assert requests.get(budget_stack.url + "/health", timeout=5).status_code == 200
    assert series(budget_stack, "proxy_model_unloads_total")['{model="crashy",reason="crashed"}'] == 1
    assert "model 'crashy' crashed: " in budget_stack.log()


@pytest.fixture
def pinned_stack(tmp_path):
    repo = make_repository(tmp_path)
    stack = Stack(tmp_path, MODEL_REPOSITORY=repo, MODEL_LOADING="on-demand", MAX_LOADED_MODELS=2,
                  MODELS_PINNED="pinned", REQUEST_TIMEOUT=30).start()
    yield stack
    if stack.proc.poll() is None:
        stack.kill()


def test_pinned_models_load_at_start_are_in_health_and_never_unload(pinned_stack):
    assert held(index(pinned_stack)) == ["pinned"]
    with Poller(pinned_stack) as poll:
        for m in ("m1", "m2", "m3", "m1"):
            assert ask(pinned_stack, m).json() == {"model": m}
            assert index(pinned_stack)["pinned"] == "READY"
    assert len(poll.most) <= 2
    assert not any('"pinned"' in k for k in series(pinned_stack, "proxy_model_unloads_total"))
    assert ask(pinned_stack, "pinned").json() == {"model": "pinned"}
    # /health watches the pinned model: unloaded behind the proxy's back, /health says so.
    port = pinned_stack.env["TRITON_HTTP_PORT"]
    requests.post(f"http://127.0.0.1:{port}/v2/repository/models/pinned/unload", json={}, timeout=30)
    deadline = time.monotonic() + 10
    while requests.get(pinned_stack.url + "/health", timeout=5).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    resp = requests.get(pinned_stack.url + "/health", timeout=5)
    assert (resp.status_code, body(resp)) == (503, {"health": "false", "reason": "model 'pinned' is not ready"})


def test_sigterm_during_a_load_stops_in_order_with_the_request_answered(pinned_stack):
    result = {}
    t = threading.Thread(target=lambda: result.update(resp=ask(pinned_stack, "slowload", timeout=60)))
    t.start()
    time.sleep(1.5)   # the load (14 s) is under way
    assert index(pinned_stack).get("slowload") == "LOADING"
    assert pinned_stack.terminate(timeout=120) == 0
    t.join(30)
    assert (result["resp"].status_code, result["resp"].json()) == (200, {"model": "slowload"})
    log = pinned_stack.log()
    marks = ["stop requested", "grace period over", "gunicorn stopped (exit 0)", "stopping Triton",
             "Triton stopped (exit 0)", "shutdown complete"]
    positions = [log.find(m) for m in marks]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(marks, positions))
    assert pinned_stack.pids("") == []


def test_a_memory_budget_unloads_by_what_models_hold(tmp_path):
    """MODEL_MEMORY_BUDGET=1 byte: no two models fit, so each load unloads the one before (a model over the budget
    on its own still loads, alone). Each load logs what the model holds: its stub processes' resident memory."""
    repo = make_repository(tmp_path)
    stack = Stack(tmp_path, MODEL_REPOSITORY=repo, MODEL_LOADING="on-demand", MODEL_MEMORY_BUDGET=1,
                  REQUEST_TIMEOUT=30).start()
    try:
        with Poller(stack) as poll:
            for m in ("m1", "m2", "m3"):
                assert ask(stack, m).json() == {"model": m}
        assert len(poll.most) <= 1, poll.most
        log = stack.log()
        sizes = [float(x) for x in re.findall(r"model 'm\d' holds ([\d.]+) MB", log)]
        assert len(sizes) == 3 and all(size > 10 for size in sizes), sizes   # two python processes each
        assert log.count("to stay within MODEL_MEMORY_BUDGET=1)") == 2
    finally:
        stack.terminate()
