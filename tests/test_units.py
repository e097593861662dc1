"""Unit tests of the pure parts: config.json parsing and the codecs. No Triton needed."""
import copy
import io
import json
import os

import numpy as np
import pytest

from serving import codecs, modelarts
from serving.errors import BadRequest, ConfigError
from serving.repository import ModelInfo
from serving.service import check_binding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(ROOT, "config.json")) as f:
    SHIPPED = json.load(f)


def test_shipped_config_serves_mnist_at_root_and_embeddings():
    config = modelarts.parse(SHIPPED)
    assert config.health_url == "/health"
    mnist, generate, embeddings, chat, completions, v1_embeddings, models = config.apis
    assert [(r.method, r.url) for r in (generate, chat, completions, v1_embeddings, models)] == [
        ("POST", "/generate"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"), ("GET", "/v1/models")]
    assert models.inputs == ()   # a GET api: no body
    assert (mnist.url, mnist.method, mnist.model, mnist.version) == ("/", "POST", "", "")   # bound at start-up
    assert mnist.content_type == "multipart/form-data"
    assert mnist.inputs == (modelarts.Field("images", "file", True),)
    assert mnist.outputs == (modelarts.Field("mnist_result", "integer", True),)
    assert (embeddings.url, embeddings.content_type) == ("/embeddings", "application/json")
    assert embeddings.inputs == (modelarts.Field("texts", "array", True, depth=1),)
    assert embeddings.outputs == (modelarts.Field("embeddings", "array", True, depth=2),
                                  modelarts.Field("num_input_tokens", "array", True, depth=1))


def test_shipped_config_has_only_documented_modelarts_keys():
    assert set(SHIPPED) <= {"model_algorithm", "model_type", "runtime", "swr_location", "apis", "metrics",
                            "dependencies", "health"}
    assert SHIPPED["model_type"] == "Image"
    assert SHIPPED["health"]["url"] == "/health"
    for api in SHIPPED["apis"]:
        assert set(api) == {"protocol", "url", "method", "request", "response"}
        assert set(api["request"]) == set(api["response"]) == {"Content-type", "data"}


def test_shipped_config_is_what_make_config_writes():
    from serving import generate
    assert generate.generate(os.path.join(ROOT, "model_repository")) == SHIPPED


def test_several_models_each_behind_its_url():
    doc = copy.deepcopy(SHIPPED)
    doc["apis"].append({
        "url": "/embed", "method": "post", "x-triton": {"model": "minilm", "version": "2"},
        "request": {"Content-type": "application/json",
                    "data": {"type": "object", "properties": {"text": {"type": "string"}}}},
        "response": {"Content-type": "application/json",
                     "data": {"type": "object", "properties": {"embedding": {"type": "array"}}}},
    })
    routes = modelarts.parse(doc).apis
    assert [(r.url, r.model, r.version) for r in routes] == [
        ("/", "", ""), ("/generate", "", ""), ("/embeddings", "", ""), ("/v1/chat/completions", "", ""),
        ("/v1/completions", "", ""), ("/v1/embeddings", "", ""), ("/v1/models", "", ""), ("/embed", "minilm", "2")]


def _broken(mutate):
    doc = copy.deepcopy(SHIPPED)
    mutate(doc)
    return doc


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("model_type"), "'model_type' is required"),
    (lambda d: d.update(apis=[]), "'apis' must be a non-empty list"),
    (lambda d: d["apis"][0].update({"x-triton": "mnist"}), '"x-triton" must be {"model"'),
    (lambda d: d["apis"][0].update(url="predict"), "must be a path starting with '/'"),
    (lambda d: d["apis"][0].update(method="delete"), "method 'DELETE'"),
    (lambda d: d["apis"].append(copy.deepcopy(d["apis"][0])), "declared twice"),
    (lambda d: d["apis"][0]["request"].update({"Content-type": "text/plain"}), "Content-type must be"),
    (lambda d: d["apis"][0]["request"]["data"].update(properties={}), "at least one property"),
    (lambda d: d["apis"][0]["request"].update({"Content-type": "application/json"}), "'file' properties need"),
])
def test_bad_configs_are_refused_with_the_reason(mutate, message):
    with pytest.raises(ConfigError, match=None) as err:
        modelarts.parse(_broken(mutate))
    assert message in str(err.value)


MNIST = ModelInfo("mnist", "", inputs={"images": ("BYTES", [-1, 1])},
                  outputs={"mnist_result": ("INT64", [-1, 1])}, batched=True)


def test_binding_matches_the_model():
    check_binding(modelarts.parse(SHIPPED).apis[0], MNIST)


@pytest.mark.parametrize("info,message", [
    (ModelInfo("mnist", "", {"image": ("BYTES", [-1, 1])}, MNIST.outputs, True), "is not a model input"),
    (ModelInfo("mnist", "", {"images": ("FP32", [-1, 1])}, MNIST.outputs, True), "needs a BYTES input"),
    (ModelInfo("mnist", "", {**MNIST.inputs, "extra": ("FP32", [-1, 3])}, MNIST.outputs, True),
     "have no request property"),
    (ModelInfo("mnist", "", MNIST.inputs, {"digit": ("INT64", [-1, 1])}, True), "is not a model output"),
])
def test_binding_mismatch_is_refused_at_start(info, message):
    with pytest.raises(ConfigError) as err:
        check_binding(modelarts.parse(SHIPPED).apis[0], info)
    assert message in str(err.value)


def test_file_tensor_is_bytes_with_the_batch_dimension():
    t = codecs.file_tensor("images", b"\x89PNG...", [-1, 1], True)
    assert t.shape == (1, 1) and t.dtype == np.object_ and t[0, 0] == b"\x89PNG..."


@pytest.mark.parametrize("value,datatype,shape,batched,expected", [
    (3, "FP32", [-1, 1], True, np.array([[3.0]], np.float32)),
    ([1, 2, 3], "INT64", [-1, 3], True, np.array([[1, 2, 3]], np.int64)),
    ([[1.5, 2]], "FP64", [-1, 2], True, np.array([[1.5, 2.0]])),
    ([[1, 2], [3, 4]], "FP32", [2, 2], False, np.array([[1, 2], [3, 4]], np.float32)),
    ([1, 2, 3, 4, 5], "INT32", [-1, -1], True, np.array([[1, 2, 3, 4, 5]], np.int32)),
    (True, "BOOL", [-1, 1], True, np.array([[True]])),
    (2.0, "INT8", [-1, 1], True, np.array([[2]], np.int8)),
])
def test_json_numbers_become_typed_tensors(value, datatype, shape, batched, expected):
    t = codecs.json_tensor("x", value, datatype, shape, batched)
    assert t.dtype == expected.dtype and t.shape == expected.shape
    np.testing.assert_array_equal(t, expected)


def test_json_strings_become_bytes():
    t = codecs.json_tensor("text", "héllo", "BYTES", [-1, 1], True)
    assert t.shape == (1, 1) and t[0, 0] == "héllo".encode()
    t = codecs.json_tensor("text", ["a", "b"], "BYTES", [-1, 2], True)
    assert t.shape == (1, 2) and t.tolist() == [[b"a", b"b"]]


@pytest.mark.parametrize("value,datatype,shape,message", [
    ("seven", "FP32", [-1, 1], "must hold numbers (FP32)"),
    ([1, "2"], "FP32", [-1, 2], "must hold numbers (FP32)"),
    ([1, None], "FP32", [-1, 2], "must hold numbers (FP32)"),
    (True, "FP32", [-1, 1], "not booleans"),
    ([[1, 2], [3]], "FP32", [-1, 2], "regular (non-ragged) array"),
    ([1, 2], "FP32", [-1, 3], "must have shape [3] (or a batch of them, [n, 3]), got [2]"),
    (1.5, "INT64", [-1, 1], "must hold integers (INT64)"),
    (300, "INT8", [-1, 1], "does not fit INT8"),
    ([1e40, 2, 3], "FP32", [-1, 3], "does not fit FP32: its values must lie within +-3.403e+38"),
    (70000, "FP16", [-1, 1], "does not fit FP16: its values must lie within +-6.55e+04"),
    (2 ** 40, "INT32", [-1, 1], "does not fit INT32"),
    (7, "BYTES", [-1, 1], "must hold strings"),
    ([["a"], "b"], "BYTES", [-1, 2], "regular array of strings"),
])
def test_json_values_that_do_not_fit_are_400(value, datatype, shape, message):
    with pytest.raises(BadRequest) as err:
        codecs.json_tensor("x", value, datatype, shape, True)
    assert message in err.value.message


@pytest.mark.parametrize("raw,message", [
    (b"", "empty request body"),
    (b"{not json", "malformed JSON body"),
    (b"[1, 2]", "must be an object"),
    (b"\xff\xfe", "malformed JSON body"),
])
def test_json_bodies_that_are_not_objects_are_400(raw, message):
    with pytest.raises(BadRequest) as err:
        codecs.parse_json_body(raw)
    assert message in err.value.message


def out(*args, **kwargs):
    """output_value as the client reads it: through the JSON answer."""
    return json.loads(codecs.dumps({"v": codecs.output_value(*args, **kwargs)}))["v"]


def test_outputs_follow_the_response_schema():
    assert out(np.array([[7]], np.int64), "integer", batched=True) == 7
    assert type(out(np.array([[7]], np.int64), "integer", batched=True)) is int
    assert out(np.array([[0.5, 0.25]], np.float32), "array", batched=True) == [0.5, 0.25]
    assert out(np.array([[0.5]], np.float32), "array", batched=True) == [0.5]
    assert out(np.array([[b"seven"]], np.object_), "string", batched=True) == "seven"
    assert out(np.array([b"a", b"b"], np.object_), "array", batched=False) == ["a", "b"]
    assert out(np.array([[1, 2], [3, 4]], np.int32), "array", batched=False) == [[1, 2], [3, 4]]
    assert out(np.array([[True]]), "boolean", batched=True) is True


def test_float32_outputs_are_written_at_their_shortest_repr():
    values = np.array([[1 / 7, 0.1, -2.5e-8, 3e38]], np.float32)
    text = codecs.dumps({"v": codecs.output_value(values, "array", batched=True)})
    assert text == b'{"v":[0.14285715,0.1,-2.5e-8,3e+38]}'
    assert np.array_equal(np.array(json.loads(text)["v"], np.float32), values[0])   # the same float32 values
    assert json.loads(codecs.dumps({"v": codecs.output_value(np.array([[0.5, 1.5]], np.float16), "array",
                                                   batched=True)})) \
        == {"v": [0.5, 1.5]}
    nan = codecs.output_value(np.array([[np.nan]], np.float32), "number", batched=True)
    assert codecs.dumps({"v": nan}) == b'{"v":null}'


@pytest.mark.parametrize("value,expect_batch,answer", [
    ([1, 2, 3, 4], False, [2, 4, 6, 8]),                       # one item in, one item out
    ([[1, 2, 3, 4]], True, [[2, 4, 6, 8]]),                    # a batch of one in, a batch of one out
    ([[1, 2, 3, 4], [5, 6, 7, 8]], True, [[2, 4, 6, 8], [10, 12, 14, 16]]),
])
def test_answers_follow_the_request_shape(value, expect_batch, answer):
    """The /scale case: FP32 [4], max_batch_size 8."""
    t, is_batch = codecs.json_batch("x", value, "FP32", [-1, 4], True)
    assert is_batch is expect_batch and t.shape == (len(value) if expect_batch else 1, 4)
    assert out(t * 2, "array", batched=True, depth=1, batch_in=is_batch) == answer
    top = np.argmax(t, axis=1)[:, None]                          # a one-element output per item
    assert out(top, "integer", batched=True, depth=0, batch_in=is_batch) == ([3] * len(value) if expect_batch else 3)


def test_one_element_items_as_a_list_are_a_batch_and_a_scalar_is_one_item():
    t, is_batch = codecs.json_batch("x", [1.0, 2.0], "FP32", [-1, 1], True)
    assert is_batch and t.shape == (2, 1)
    assert out(t, "number", batched=True, depth=0, batch_in=is_batch) == [1.0, 2.0]
    t, is_batch = codecs.json_batch("x", [1.0], "FP32", [-1, 1], True)
    assert is_batch and out(t, "number", batched=True, depth=0, batch_in=is_batch) == [1.0]
    t, is_batch = codecs.json_batch("x", 1.0, "FP32", [-1, 1], True)
    assert not is_batch and out(t, "number", batched=True, depth=0, batch_in=is_batch) == 1.0
    t, is_batch = codecs.json_batch("text", "one", "BYTES", [-1, 1], True)
    assert not is_batch and t.shape == (1, 1)
    # An output whose schema nests as deep as the output (embeddings: an array of vectors) stays a batch.
    assert out(np.ones((1, 3), np.float32), "array", batched=True, depth=2, batch_in=False) == [[1.0, 1.0, 1.0]]


def test_shape_errors_speak_of_what_the_user_sent():
    with pytest.raises(BadRequest) as err:
        codecs.json_tensor("x", [1, 2, 3], "FP32", [-1, 4], True)
    assert err.value.message == "field 'x' must have shape [4] (or a batch of them, [n, 4]), got [3]"
    with pytest.raises(BadRequest) as err:
        codecs.json_tensor("x", [[1, 2, 3]], "FP32", [-1, 4], True)
    assert err.value.message == "field 'x' must have shape [4] (or a batch of them, [n, 4]), got [1, 3]"


@pytest.mark.parametrize("arr,datatype,shape", [
    (np.arange(16, dtype=np.float32).reshape(1, 16), "FP32", [1, 16]),
    (np.array([[7]], np.int64), "INT64", [1, 1]),
    (np.array([[True, False]]), "BOOL", [1, 2]),
    (np.array([[b"\x89PNG\x00\xff"]], np.object_), "BYTES", [1, 1]),
    (np.array([[b"a", b"", "héllo".encode()]], np.object_), "BYTES", [1, 3]),
])
def test_raw_tensor_bytes_round_trip(arr, datatype, shape):
    raw = codecs.to_raw(arr, datatype)
    back = codecs.from_raw(raw, datatype, shape)
    assert back.shape == tuple(shape)
    assert back.tolist() == arr.tolist()


def test_raw_bytes_layout_is_kserve_v2():
    # Each BYTES element: 4-byte little-endian length, then the bytes.
    assert codecs.to_raw(np.array([[b"ab", b"c"]], np.object_), "BYTES") == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    assert codecs.to_raw(np.array([[1.5]], np.float32), "FP32") == np.float32(1.5).tobytes()


def test_base64_string_on_a_numeric_input_carries_raw_values():
    import base64
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = codecs.json_tensor("x", base64.b64encode(values.tobytes()).decode(), "FP32", [-1, 2, 3], True, b64=True)
    assert t.shape == (1, 2, 3) and t.tolist() == [values.tolist()]
    with pytest.raises(BadRequest, match=r"must hold 24 bytes \(FP32 \[2, 3\], little-endian\), got 4"):
        codecs.json_tensor("x", base64.b64encode(b"abcd").decode(), "FP32", [-1, 2, 3], True, b64=True)
    with pytest.raises(BadRequest, match="needs a fixed shape"):
        codecs.json_tensor("x", base64.b64encode(b"abcd").decode(), "FP32", [-1, -1], True, b64=True)


def test_every_folder_in_the_model_repository_is_a_model():
    # Triton takes every folder for a model and stops on one that is not (a stray __pycache__ did this).
    repo = os.path.join(ROOT, "model_repository")
    folders = [d for d in os.listdir(repo) if os.path.isdir(os.path.join(repo, d))]
    assert folders and all(os.path.isfile(os.path.join(repo, d, "config.pbtxt")) for d in folders), folders


# --- serving/handlers/v2.py: the allow-list (a pure function of method and path)

@pytest.mark.parametrize("method,path,label", [
    ("GET", "/v2", "/v2"), ("GET", "/v2/health/ready", "/v2/health/ready"), ("HEAD", "/v2/health/live", "/v2/health/live"),
    ("GET", "/v2/models/mnist", "/v2/models/{model}"), ("GET", "/v2/models/mnist/versions/3", "/v2/models/{model}"),
    ("GET", "/v2/models/mnist/versions/3/config", "/v2/models/{model}/config"),
    ("GET", "/v2/models/stats", "/v2/models/stats"), ("POST", "/v2/models/a.b-c_d/infer", "/v2/models/{model}/infer"),
])
def test_v2_allowed(method, path, label):
    from serving.handlers import v2
    assert v2.route(method, path) == label


@pytest.mark.parametrize("method,path,status,start", [
    ("POST", "/v2/repository/index", 403, "/v2/repository/index: the model repository API"),
    ("POST", "/v2/repository/models/m/load", 403, "/v2/repository/models/m/load: the model repository API"),
    ("GET", "/v2/systemsharedmemory/region/r/status", 403, "/v2/systemsharedmemory/region/r/status: system shared"),
    ("POST", "/v2/cudasharedmemory/unregister", 403, "/v2/cudasharedmemory/unregister: CUDA shared memory"),
    ("POST", "/v2/models/m/versions/1/trace/setting", 403, "/v2/models/m/versions/1/trace/setting: trace settings"),
    ("GET", "/v2/logging", 403, "/v2/logging: log settings"),
    ("GET", "/v2/models/../repository/index", 403, "/v2/models/../repository/index is not an allowed"),
    ("GET", "/v2/models/m/versions/../config", 403, "/v2/models/m/versions/../config is not an allowed"),
    ("POST", "/v2/models/m/generate_stream", 403, "/v2/models/m/generate_stream is not an allowed"),
    ("DELETE", "/v2/models/m", 405, "method DELETE is not allowed on /v2/models/m (allowed: GET)"),
    ("GET", "/v2/models/m/infer", 405, "method GET is not allowed on /v2/models/m/infer (allowed: POST)"),
])
def test_v2_refused(method, path, status, start):
    from serving.handlers import v2
    err = v2.route(method, path)
    assert (err.status, err.message[:len(start)]) == (status, start)


# --- serving/metrics.py: per-request counting published in batches, as prometheus_client would count it

def test_metrics_batches_match_prometheus_semantics(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    from serving.metrics import Metrics
    m = Metrics("http://127.0.0.1:9/metrics", timeout=0.2)   # nothing listens there
    for seconds in (0.0005, 0.001, 0.003, 0.2, 75.0):
        m.observe("/", "POST", "200", seconds)
    m.observe("/", "BREW", "405", 0.002)
    m.inflight_now = 3
    text = m.render().decode()
    assert 'proxy_requests_total{method="POST",status="200",url="/"} 5.0' in text
    assert 'proxy_requests_total{method="other",status="405",url="/"} 1.0' in text
    # Cumulative buckets: 0.0005 and 0.001 are <= 0.001 (bounds are inclusive), 75 only in +Inf.
    for le, n in (("0.001", 2), ("0.0025", 3), ("0.005", 4), ("0.25", 5), ("60.0", 5), ("+Inf", 6)):
        assert f'proxy_request_duration_seconds_bucket{{le="{le}",url="/"}} {n}.0' in text, le
    assert 'proxy_request_duration_seconds_count{url="/"} 6.0' in text
    assert "proxy_inflight_requests 3.0" in text
    assert "# Triton's metrics (http://127.0.0.1:9/metrics) are unavailable" in text
    m.observe("/", "POST", "200", 0.01)   # a second flush adds to the first
    assert 'proxy_requests_total{method="POST",status="200",url="/"} 6.0' in m.render().decode()


# --- serving/openapi.py

def test_openapi_document_from_a_config():
    from openapi_spec_validator import validate
    from serving import modelarts, openapi
    config = modelarts.parse({"model_algorithm": "x", "model_type": "Image", "apis": [
        {"url": "/a", "method": "post", "request": {"Content-type": "multipart/form-data", "data": {
            "type": "object", "properties": {"img": {"type": "file"}, "n": {"type": "integer"}}, "required": ["img"]}},
         "response": {"Content-type": "application/json", "data": {"type": "object", "properties": {
             "y": {"type": "array", "items": {"type": "number"}}}}}}]})
    doc = openapi.document(config, metrics=False)
    validate(doc)
    body = doc["paths"]["/a"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body == {"type": "object", "required": ["img"], "properties": {
        "img": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"},
        "n": {"type": "integer"}}}
    assert set(doc["paths"]) == {"/a", "/health"}


@pytest.mark.parametrize("url", ["/metrics", "/openapi.json", "/v2", "/v2/models/x/infer"])
def test_the_proxys_own_paths_are_refused_as_api_urls(url):
    from serving import modelarts
    from serving.errors import ConfigError
    with pytest.raises(ConfigError, match="is the proxy's own"):
        modelarts.parse({"model_algorithm": "x", "model_type": "Image", "apis": [
            {"url": url, "request": {"Content-type": "application/json", "data": {"properties": {"a": {"type": "string"}}}},
             "response": {"Content-type": "application/json", "data": {"properties": {"b": {"type": "string"}}}}}]})


def test_infer_request_written_as_bytes_equals_the_protobuf_message():
    """InferCall writes ModelInferRequest as concatenated fields; protobuf must read it as the message it means."""
    from tritonclient.grpc import service_pb2
    from serving.triton.calls import InferCall
    from serving.triton.guard import Guard, model_slots
    info = ModelInfo("m", "2", {"a": ("FP32", [-1, 3]), "b": ("BYTES", [-1, 1])}, {"y": ("FP32", [-1, 3])}, True, 8)

    class Capture:
        def call(self, method, parts, timeout):
            self.parts = parts
            return service_pb2.ModelInferResponse()
    c = Capture()
    call = InferCall(c, info, ["y"], Guard(info, 1.0, model_slots(1, 1)[0]))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[b"x" * 200]], dtype=np.object_)
    call({"a": a, "b": b})
    got = service_pb2.ModelInferRequest.FromString(b"".join(bytes(p) for p in c.parts))
    want = service_pb2.ModelInferRequest(model_name="m", model_version="2", outputs=[
        service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="y")])
    want.inputs.add(name="a", datatype="FP32", shape=[2, 3])
    want.inputs.add(name="b", datatype="BYTES", shape=[1, 1])
    want.raw_input_contents.extend([a.tobytes(), codecs.to_raw(b, "BYTES")])
    assert got == want


def test_a_call_that_finds_no_free_slot_until_its_deadline_is_a_503_with_retry_after():
    import time
    from serving.errors import Unavailable
    from serving.slots import Slots
    from serving.triton.guard import Guard
    info = ModelInfo("busy", "", {}, {}, False)
    guard = Guard(info, 0.2, Slots(0))
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        guard.enter()
    assert 0.15 < time.monotonic() - started < 1
    assert (err.value.status, err.value.retry_after, err.value.message) == (
        503, 1, "model 'busy' is busy: every call this worker may have in flight to it was taken for 0.2 s")


def test_slots_are_handed_first_come_and_a_wait_ends_at_its_deadline():
    import time
    import gevent
    from serving.slots import Slots
    slots, order = Slots(2), []

    def call(i, hold, wait):
        ok = slots.acquire(time.monotonic() + wait)
        order.append((i, ok))
        if ok:
            gevent.sleep(hold)
            slots.release()
    started = time.monotonic()
    gevent.joinall([gevent.spawn(call, 0, 0.5, 1), gevent.spawn(call, 1, 0.5, 1), gevent.spawn(call, 2, 0, 0.2),
                    gevent.spawn(call, 3, 0, 1), gevent.spawn(call, 4, 0, 1)])
    # 2 gave up at its deadline (0.2 s) while 0 and 1 held both slots; 3 and 4 got theirs in their order at 0.5 s
    assert order == [(0, True), (1, True), (2, False), (3, True), (4, True)]
    assert 0.45 < time.monotonic() - started < 1.0
    assert (slots.free, slots.waiting) == (2, 0)
    gevent.sleep(0.3)
    assert slots.sweeper is None   # alive only while someone waits


def test_a_call_killed_while_it_waits_for_a_slot_leaves_the_slots_whole():
    import time
    import gevent
    from serving.slots import Slots
    slots = Slots(1)
    assert slots.acquire(time.monotonic() + 5)
    waiting = gevent.spawn(slots.acquire, time.monotonic() + 5)
    gevent.sleep(0.01)
    assert slots.waiting == 1
    waiting.kill()   # a client that hung up
    assert (slots.waiting, slots.free) == (0, 0)
    slots.release()
    assert (slots.waiting, slots.free, slots.in_use) == (0, 1, 0)
    # a release hands the slot to the first waiter directly: no one can take it in between
    assert slots.acquire(time.monotonic() + 5)
    handed = gevent.spawn(slots.acquire, time.monotonic() + 5)
    gevent.sleep(0.01)
    slots.release()
    assert (slots.free, slots.waiting, slots.acquire(time.monotonic())) == (0, 0, False)
    assert handed.get() is True
    slots.release()
    assert slots.free == 1


def test_a_v2_call_that_finds_every_connection_busy_until_its_deadline_is_a_503_with_retry_after():
    import time
    from serving.errors import Unavailable
    from serving.handlers import v2
    upstream = v2.Upstream("127.0.0.1", 9, 1, 0.2, 1024)
    assert upstream.pool.slots.take()   # the one connection is in use
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        upstream._socket()
    assert 0.15 < time.monotonic() - started < 2 and err.value.retry_after == 1
    assert err.value.message == ("every connection to the inference server's HTTP port was busy for 0.2 s "
                                 "(V2_CONNECTIONS)")


def test_the_v2_pool_reuses_a_fresh_connection_and_checks_an_older_one_before_reuse():
    """A connection back within FRESH_S is reused as it is; an older one is peeked at, and one the server closed
    meanwhile is dropped for a new connection."""
    import socket
    import time
    from serving.handlers import v2
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    pool = v2.Pool("127.0.0.1", server.getsockname()[1], 2, 1.0)
    a = pool.get(time.monotonic() + 1)
    pool.return_socket(a)
    assert pool.get(time.monotonic() + 1) is a and pool.slots.free == 1   # fresh: no peek
    pool.return_socket(a)
    peer, _ = server.accept()
    peer.close()                                                        # the server closes it
    pool.idle[-1] = (a, time.monotonic() - 2 * v2.Pool.FRESH_S)         # and it has been idle a while
    b = pool.get(time.monotonic() + 1)
    assert b is not a and a.fileno() == -1 and pool.slots.free == 1
    pool.release_socket(b)
    assert pool.slots.free == 2 and pool.idle == []
    server.close()


def test_a_stream_counts_in_flight_until_the_server_closes_it():
    """proxy_inflight_requests, an autoscaler's signal, holds an open stream until its last byte, once."""
    from serving.front import _Open

    class Metrics:
        inflight_now = 0

    class Body(list):
        closed = 0

        def close(self):
            self.closed += 1
    m, body = Metrics(), Body([b"data: 1\n\n", b"data: 2\n\n"])
    answer = _Open(body, m)
    assert m.inflight_now == 1 and list(answer) == list(body) and m.inflight_now == 1
    answer.close()
    answer.close()
    assert (m.inflight_now, body.closed) == (0, 2)


def test_a_503_with_a_retry_hint_carries_retry_after_on_the_sse_and_openai_routes():
    """The hint of a busy or loading model (Unavailable's retry_after) reaches the client on every route kind: the
    SSE routes' JSON error and the OpenAI routes' own error shape (predict and v2: tests/test_scheduling.py)."""
    import json
    from serving.errors import Unavailable
    from serving.handlers import openai, stream
    busy = Unavailable("model 'm' did not get its turn to load within the request's deadline", retry_after=1)

    class Busy:
        def responses(self, tensors, idle=None, coalesce=False):
            raise busy
    api = modelarts.parse({"model_algorithm": "t", "model_type": "PyTorch", "apis": [{
        "url": "/tokens", "method": "post",
        "request": {"Content-type": "application/json", "data": {"properties": {"text": {"type": "string"}}}},
        "response": {"Content-type": "application/json", "data": {"properties": {"token": {"type": "string"}}}}}]
    }).apis[0]
    info = ModelInfo("m", "", {"text": ("BYTES", [1])}, {"token": ("BYTES", [1])}, False, decoupled=True)
    handler = stream.Stream(api, info, Busy(), 1024, 1.0)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/tokens", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": "15", "wsgi.input": io.BytesIO(b'{"text": "abc"}')}
    status, headers, body = handler.answer(environ)
    assert (status[:3], dict(headers).get("Retry-After")) == ("503", "1")
    assert json.loads(b"".join(body)) == {"error": busy.message}

    class Loading(openai.Handler):
        def __init__(self):
            pass

        def handle(self, environ):
            raise busy
    status, headers, body = Loading().answer({"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/completions"})
    assert (status[:3], dict(headers).get("Retry-After")) == ("503", "1")
    assert json.loads(b"".join(body))["error"]["message"] == busy.message
