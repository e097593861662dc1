"""The KServe v2 pass-through on the proxy's port: allowed endpoints answer as Triton does, byte for byte; the
admin API is refused before it reaches Triton; bodies stream; perf_analyzer and tritonclient work through it."""
import base64
import csv
import json
import re
import os
import socket
import struct
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import requests

from conftest import ROOT, body

with open(os.path.join(ROOT, "tests", "data", "seven.jpg"), "rb") as _f:
    SEVEN = _f.read()


def direct(stack):
    return f"http://127.0.0.1:{stack.env['TRITON_HTTP_PORT']}"


def mnist_binary(image=SEVEN):
    """An infer request with the binary tensor extension: (body, headers)."""
    raw = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1, 1],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "mnist_result", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def same(stack, method, path, **kw):
    """The proxy's answer and Triton's own: status, Content-Type, binary header length and body, all equal."""
    a = requests.request(method, stack.url + path, timeout=30, **kw)
    b = requests.request(method, direct(stack) + path, timeout=30, **kw)
    seen = [(r.status_code, r.headers.get("Content-Type"), r.headers.get("Inference-Header-Content-Length"),
             r.content) for r in (a, b)]
    assert seen[0] == seen[1], (path, seen)
    return a


@pytest.mark.parametrize("path", [
    "/v2", "/v2/health/live", "/v2/health/ready",
    "/v2/models/mnist", "/v2/models/mnist/versions/1", "/v2/models/mnist/ready", "/v2/models/mnist/versions/1/ready",
    "/v2/models/mnist/config", "/v2/models/text_embedding/config", "/v2/models/mnist/versions/1/stats",
    "/v2/models/stats", "/v2/models/mnist/stats",
    # Triton's own errors come back as they are: an unknown model, an unknown version.
    "/v2/models/nope", "/v2/models/nope/config", "/v2/models/mnist/versions/9/ready",
])
def test_allowed_gets_answer_exactly_as_triton(stack, path):
    resp = same(stack, "GET", path)
    if "nope" not in path and "versions/9" not in path:
        assert resp.status_code == 200


def test_infer_with_the_binary_extension_is_byte_for_byte(stack):
    data, headers = mnist_binary()
    resp = same(stack, "POST", "/v2/models/mnist/infer", data=data, headers=headers)
    n = int(resp.headers["Inference-Header-Content-Length"])
    head = json.loads(resp.content[:n])
    assert head["outputs"][0]["name"] == "mnist_result"
    assert np.frombuffer(resp.content[n:], dtype=np.int64).tolist() == [7]


def test_infer_json_and_triton_errors_pass_through(stack):
    resp = same(stack, "POST", "/v2/models/text_embedding/infer", json={"inputs": [
        {"name": "texts", "datatype": "BYTES", "shape": [1, 1], "data": ["A man is riding a horse."]}]})
    vec = np.array(body(resp)["outputs"][0]["data"])
    assert vec.shape == (384,) and abs(np.linalg.norm(vec) - 1) < 1e-3
    # Triton's own errors: a body that is not JSON (Triton 2.51 answers 500 to that), an input that does not exist.
    resp = same(stack, "POST", "/v2/models/mnist/infer", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 500 and "error" in body(resp)
    resp = same(stack, "POST", "/v2/models/mnist/infer", json={"inputs": [
        {"name": "nope", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]}]})
    assert resp.status_code == 400


def test_large_bodies_stream_both_ways(stack):
    # 1 MB of JSON in (whitespace that Triton's parser skips), 64 x 384 floats out (over 64 KB): both streamed.
    texts = [f"sentence number {i} about horses" for i in range(64)]
    doc = json.dumps({"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [64, 1], "data": texts}]})
    data = (doc[:-1] + " " * (1 << 20) + "}").encode()
    a = requests.post(stack.url + "/v2/models/text_embedding/infer", data=data, timeout=60,
                      headers={"Content-Type": "application/json"})
    b = requests.post(direct(stack) + "/v2/models/text_embedding/infer", data=data, timeout=60,
                      headers={"Content-Type": "application/json"})
    assert a.status_code == b.status_code == 200
    assert len(a.content) > 65536
    va, vb = (np.array(body(r)["outputs"][0]["data"]).reshape(64, 384) for r in (a, b))
    assert np.allclose(va, vb, atol=1e-5)
    # A chunked request body (no Content-Length) is read up to the limit, then sent with a length.
    data, headers = mnist_binary()
    resp = requests.post(stack.url + "/v2/models/mnist/infer", data=iter([data[:100], data[100:]]), headers=headers,
                         timeout=30)
    n = int(resp.headers["Inference-Header-Content-Length"])
    assert np.frombuffer(resp.content[n:], dtype=np.int64).tolist() == [7]


REFUSED = [
    ("GET", "/v2/repository/index"), ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/mnist/load"), ("POST", "/v2/repository/models/mnist/unload"),
    ("GET", "/v2/systemsharedmemory/status"), ("POST", "/v2/systemsharedmemory/region/r/register"),
    ("POST", "/v2/systemsharedmemory/region/r/unregister"), ("POST", "/v2/systemsharedmemory/unregister"),
    ("GET", "/v2/cudasharedmemory/status"), ("POST", "/v2/cudasharedmemory/region/r/register"),
    ("POST", "/v2/cudasharedmemory/unregister"),
    ("GET", "/v2/trace/setting"), ("POST", "/v2/trace/setting"), ("POST", "/v2/models/mnist/trace/setting"),
    ("GET", "/v2/logging"), ("POST", "/v2/logging"),
    ("POST", "/v2/models/mnist/generate"), ("GET", "/v2/anything"), ("GET", "/v2/models/mnist/versions/1/nope"),
    ("GET", "/v2/models/../repository/index"), ("GET", "/v2/models/%2e%2e/repository/index"),
]


@pytest.mark.parametrize("method,path", REFUSED)
def test_admin_and_unknown_endpoints_are_refused(stack, method, path):
    resp = requests.request(method, stack.url + path, data=b"{}", timeout=10)
    assert resp.status_code == 403, (path, resp.status_code, resp.text[:200])
    assert list(body(resp)) == ["error"]


def test_refused_calls_never_reach_triton(stack):
    before = requests.get(direct(stack) + "/v2/logging", timeout=10).json()
    assert requests.post(stack.url + "/v2/repository/models/mnist/unload", timeout=10).status_code == 403
    assert requests.post(stack.url + "/v2/logging", json={"log_verbose_level": 3}, timeout=10).status_code == 403
    assert requests.get(direct(stack) + "/v2/models/mnist/ready", timeout=10).status_code == 200   # still loaded
    assert requests.get(direct(stack) + "/v2/logging", timeout=10).json() == before


def test_wrong_method_on_an_allowed_endpoint_is_405(stack):
    resp = requests.get(stack.url + "/v2/models/mnist/infer", timeout=10)
    assert resp.status_code == 405 and "POST" in body(resp)["error"]
    resp = requests.delete(stack.url + "/v2/models/mnist", timeout=10)
    assert resp.status_code == 405


def test_body_over_the_limit_is_413_before_it_is_read(stack):
    # Only the head is sent: the answer comes back without the 20 MB body.
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 20000000\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"Content-Length: (\d+)", answer.split(b"\r\n\r\n", 1)[0]).group(1)):
            chunk = s.recv(65536)   # the head and the body may come in separate segments
            assert chunk, answer
            answer += chunk
        answer = answer.decode()
    status, _, rest = answer.partition("\r\n")
    assert status == "HTTP/1.1 413 REQUEST ENTITY TOO LARGE"
    assert json.loads(rest.split("\r\n\r\n", 1)[1]) == {"error": "request body over 16 MB"}


def test_tritonclient_http_works_through_the_proxy(stack):
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}")
    assert client.is_server_ready() and client.is_model_ready("mnist")
    assert client.get_model_metadata("mnist")["name"] == "mnist"
    images = httpclient.InferInput("images", [1, 1], "BYTES")
    images.set_data_from_numpy(np.array([[SEVEN]], dtype=np.object_), binary_data=True)
    result = client.infer("mnist", [images], outputs=[httpclient.InferRequestedOutput("mnist_result")])
    assert result.as_numpy("mnist_result").tolist() == [[7]]
    with pytest.raises(Exception, match="403|not available"):
        client.unload_model("mnist")


def test_perf_analyzer_runs_through_the_proxy(stack, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "perf_analyzer")
    assert os.path.exists(exe), "perf_analyzer is missing: `make test` installs tritonclient 2.51's wheel"
    import base64
    data = tmp_path / "input.json"
    data.write_text(json.dumps({"data": [{"images": {"b64": base64.b64encode(struct.pack("<I", len(SEVEN)) + SEVEN).decode()}}]}))
    out = tmp_path / "pa.csv"
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cuda_runtime", "lib"))
    proc = subprocess.run([exe, "-m", "mnist", "-i", "http", "-u", f"127.0.0.1:{stack.port}", "--input-data", str(data),
                           "--concurrency-range", "4:4", "--measurement-interval", "1500", "--stability-percentage", "100",
                           "--max-trials", "3", "-f", str(out)], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = next(csv.DictReader(out.open()))
    assert float(row["Inferences/Second"]) > 0
    assert "error" not in proc.stdout.lower(), proc.stdout[-3000:]


def test_make_perf_runs_perf_analyzer_both_sides_and_prints_the_ratio(stack):
    """The README's one command, against this stack's ports: the input built from the model's metadata and the
    sample, perf_analyzer found with its library path, both sides measured."""
    direct = f"127.0.0.1:{stack.env['TRITON_HTTP_PORT']}"
    proc = subprocess.run(["make", "-s", "perf", "MODEL=mnist", "CONCURRENCY=2", f"URL=127.0.0.1:{stack.port}",
                           f"DIRECT={direct}", "PERF_ARGS=--seconds 1.5"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith(f"direct {direct}") and "infer/s" in line for line in lines), proc.stdout
    assert any(line.startswith(f"proxy  127.0.0.1:{stack.port}") for line in lines), proc.stdout
    ratio = float(next(line for line in lines if line.startswith("through the service / direct:")).split()[5])
    assert ratio > 0
    doc = json.load(open(os.path.join(ROOT, "build", "perf", "mnist-input.json")))
    assert base64.b64decode(doc["data"][0]["images"]["b64"])[4:] == SEVEN
