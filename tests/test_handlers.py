"""The dispatch table and a predict handler in this process, with a grpcio server as the far end (tests/grpc_peer.py,
whose "echo" model answers its inputs): what serving/front.py and serving/handlers/ do (decode, one call, encode,
every error through serving/http.py's one door; HEAD, OPTIONS, 404, 405, the metrics wrapper), not what Triton does.
"""
import io
import json
import sys

import pytest

from conftest import ROOT
from test_grpc_wire import Peer

sys.path.insert(0, ROOT)
from serving import modelarts  # noqa: E402
from serving.front import Front, Table  # noqa: E402
from serving.handlers.predict import Predict  # noqa: E402
from serving.metrics import Metrics  # noqa: E402
from serving.repository import ModelInfo  # noqa: E402
from serving.triton.calls import InferCall  # noqa: E402
from serving.triton.client import Client  # noqa: E402
from serving.triton.guard import Guard, model_slots  # noqa: E402

CONFIG = {"model_type": "PyTorch", "model_algorithm": "t", "apis": [{
    "url": "/", "method": "post",
    "request": {"Content-type": "application/json",
                "data": {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "number"}}}}},
    "response": {"Content-type": "application/json",
                 "data": {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "number"}}}}}}]}


def front(port, model="echo", metrics=None):
    """The table as create_app fills it for one predict api bound to the peer's `model`."""
    api = modelarts.parse(CONFIG).apis[0]
    info = ModelInfo(model, "", {"x": ("FP32", [-1, 4])}, {"x": ("FP32", [-1, 4])}, True, 8)
    call = InferCall(Client(f"127.0.0.1:{port}"), info, ["x"], Guard(info, 5.0, model_slots(1, 4)[0]))
    table = Table()
    table.add("/", "POST", Predict(api, info, call, 1024))
    if metrics is not None:
        table.add("/metrics", "GET", metrics)
    return Front(table, metrics=metrics)


def request(app, method, path, doc=None):
    """(status code, headers, body) of one WSGI call."""
    raw = json.dumps(doc).encode() if doc is not None else b""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw)}
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = int(status[:3]), dict(headers)
    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.close()


def test_a_predict_goes_through_the_table_one_call_and_back(peer):
    app = front(peer.port)
    status, headers, body = request(app, "POST", "/", {"x": [1, 2.5, -3, 4]})
    assert (status, json.loads(body)) == (200, {"x": [1.0, 2.5, -3.0, 4.0]})
    assert headers["Content-Type"] == "application/json" and headers["Content-Length"] == str(len(body))
    status, _, body = request(app, "POST", "/", {"x": [[1, 2, 3, 4], [5, 6, 7, 8]]})   # a batch in, a batch out
    assert (status, json.loads(body)) == (200, {"x": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]})


def test_the_table_answers_every_other_method_and_path(peer):
    app = front(peer.port)
    assert request(app, "GET", "/")[::2] == (405, b'{"error":"method GET is not allowed on /"}')
    assert request(app, "GET", "/")[1]["Allow"] == "OPTIONS, POST"
    status, headers, body = request(app, "OPTIONS", "/")
    assert (status, headers["Allow"], body) == (200, "OPTIONS, POST", b"")
    assert request(app, "POST", "/predict", {"x": [1, 2, 3, 4]})[::2] == (404, b'{"error":"no route for /predict"}')


def test_bad_input_and_a_failing_model_answer_through_the_one_error_door(peer):
    app = front(peer.port)
    status, _, body = request(app, "POST", "/", {"x": [1, 2, 3]})
    assert status == 400 and "x" in json.loads(body)["error"]
    status, _, body = request(app, "POST", "/", {"y": [1, 2, 3, 4]})
    assert (status, json.loads(body)) == (400, {"error": "missing field 'x'"})
    # The peer's "fail" model answers INVALID_ARGUMENT: the caller's error, a 400; "abort" an INTERNAL: a 500.
    assert request(front(peer.port, "fail"), "POST", "/", {"x": [1, 2, 3, 4]})[0] == 400
    status, _, body = request(front(peer.port, "abort"), "POST", "/", {"x": [1, 2, 3, 4]})
    assert status == 500 and json.loads(body)["error"].startswith("inference failed")


def test_a_peer_that_is_gone_is_a_503_and_the_handler_stays_usable():
    gone = Peer()
    app = front(gone.port)
    assert request(app, "POST", "/", {"x": [1, 2, 3, 4]})[0] == 200
    gone.close()
    gone.wait()
    status, _, body = request(app, "POST", "/", {"x": [1, 2, 3, 4]})
    assert (status, json.loads(body)) == (503, {"error": "inference server is not reachable"})
    back = Peer(port=gone.port)
    try:
        assert request(app, "POST", "/", {"x": [1, 2, 3, 4]})[::2] == (200, b'{"x":[1.0,2.0,3.0,4.0]}')
    finally:
        back.close()


def test_the_metrics_wrapper_counts_what_the_table_answered_without_changing_it(peer):
    metrics = Metrics("http://127.0.0.1:9/metrics", timeout=0.1)
    app = front(peer.port, metrics=metrics)
    assert request(app, "POST", "/", {"x": [1, 2, 3, 4]})[::2] == (200, b'{"x":[1.0,2.0,3.0,4.0]}')
    assert request(app, "GET", "/")[0] == 405
    assert request(app, "GET", "/nowhere")[0] == 404
    assert metrics.inflight_now == 0
    text = request(app, "GET", "/metrics")[2].decode()
    for line in ('proxy_requests_total{method="POST",status="200",url="/"} 1.0',
                 'proxy_requests_total{method="GET",status="405",url="/"} 1.0',
                 'proxy_requests_total{method="GET",status="404",url="other"} 1.0'):
        assert line in text, line
