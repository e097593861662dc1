"""Predictions through the real stack: multipart upload -> proxy -> Triton gRPC -> the MNIST model."""
import concurrent.futures as cf
import json
import os

import numpy as np
import pytest
import requests

from conftest import ROOT, body, encode, post_image

# The model gets 12 of the 1000 held-out digits wrong; train.py lists them in metrics.json. The exact-match
# cases are the first 3 held-out digits of each class outside that list: 30 cases, every class.
with open(os.path.join(ROOT, "model_repository", "mnist", "metrics.json")) as _f:
    _WRONG = set(json.load(_f)["held_out_misclassified"])
FIXED = [i for c in range(10) for i in [j for j in range(c * 100, c * 100 + 100) if j not in _WRONG][:3]]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_held_out_digits_exact(stack, held_out, fmt):
    x, y = held_out
    for i in FIXED:
        resp = post_image(stack.url, encode(x[i], fmt), filename=f"d.{fmt.lower()}")
        assert resp.status_code == 200, resp.text
        assert body(resp) == {"mnist_result": int(y[i])}, f"held-out #{i} as {fmt}"


def test_held_out_accuracy_through_the_proxy(stack, held_out):
    """All 1000 held-out digits as PNG: the served path keeps the trained model's accuracy."""
    x, y = held_out
    with requests.Session() as session, cf.ThreadPoolExecutor(8) as pool:
        def predict(i):
            resp = session.post(stack.url + "/", files={"images": ("d.png", encode(x[i]))}, timeout=30)
            assert resp.status_code == 200, resp.text
            return body(resp)["mnist_result"]
        preds = np.array(list(pool.map(predict, range(len(y)))))
    accuracy = float((preds == y).mean())
    assert accuracy >= 0.97, accuracy
    # Every class is recognised, not only the easy ones.
    for digit in range(10):
        assert (preds[y == digit] == digit).mean() >= 0.9, digit


@pytest.mark.parametrize("variant", [
    dict(invert=True),                              # dark ink on light paper
    dict(invert=True, size=280, fmt="JPEG"),        # a big scan
    dict(size=56, mode="RGB"),                      # colour, light on dark
    dict(invert=True, mode="RGBA"),                 # with an alpha channel
    dict(fmt="BMP"),
])
def test_preprocessing_copes_with_real_uploads(stack, held_out, variant):
    x, y = held_out
    for i in FIXED[::3]:
        resp = post_image(stack.url, encode(x[i], **variant), filename="upload")
        assert resp.status_code == 200, resp.text
        assert body(resp) == {"mnist_result": int(y[i])}, (i, variant)


def test_readme_example_seven(stack):
    with open(os.path.join(ROOT, "tests", "data", "seven.jpg"), "rb") as f:
        resp = post_image(stack.url, f.read(), filename="seven.jpg")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert body(resp) == {"mnist_result": 7}


def test_health_ready(stack):
    resp = requests.get(stack.url + "/health", timeout=5)
    assert resp.status_code == 200
    assert body(resp) == {"health": "true"}


def test_logs_go_to_stdout(stack):
    log = stack.log()
    assert "run.sh: Triton ready" in log
    assert "Listening at: http://0.0.0.0:" in log
    assert "route POST / -> model 'mnist'" in log
    assert '"POST / HTTP/1.1" 200' in log   # access log


def test_the_models_openmp_threads_sleep_instead_of_spinning(stack):
    """run.sh gives Triton, and so every python model's process, OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads
    spinning between batches took the CPUs the proxy needs (docs/v2-and-perf-analyzer.md)."""
    stubs = stack.pids("triton_python_backend_stub")
    assert stubs
    for pid in stubs:
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert b"OMP_WAIT_POLICY=PASSIVE" in f.read().split(b"\0"), pid
