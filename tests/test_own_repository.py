"""A user's own Triton repository, as the README walks it: `make config` writes config.json from it, then the
stack serves it, with no hand edits. The model is made here, on the spot."""
import json
import subprocess

import requests

from conftest import ROOT, Stack, body

CONFIG = '''name: "scaler"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "top" data_type: TYPE_INT64 dims: [ 1 ] } ]
'''
MODEL = '''import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("y", (x * 2).astype(np.float32)),
                pb_utils.Tensor("top", x.argmax(axis=1).astype(np.int64)[:, None])]))
        return out
'''


def test_make_config_then_serve_a_repository_of_ones_own(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scaler" / "1").mkdir(parents=True)
    (repo / "scaler" / "config.pbtxt").write_text(CONFIG)
    (repo / "scaler" / "1" / "model.py").write_text(MODEL)
    config = tmp_path / "config.json"
    subprocess.run(["make", "-s", "config", f"MODEL_REPOSITORY={repo}", f"CONFIG={config}"], cwd=ROOT, check=True,
                   timeout=300)
    doc = json.loads(config.read_text())
    assert [(a["url"], a["request"]["Content-type"]) for a in doc["apis"]] == [("/scaler", "application/json")]
    assert "x-triton" not in doc["apis"][0]
    # One item or a batch, in and out, and the schema says so.
    props = doc["apis"][0]["response"]["data"]["properties"]
    assert props["y"]["items"]["anyOf"] == [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]
    assert props["top"]["type"] == ["integer", "array"]

    stack = Stack(tmp_path, MODEL_REPOSITORY=repo, MODELARTS_CONFIG=config).start()
    try:
        resp = requests.post(stack.url + "/scaler", json={"x": [1.5, -2, 7, 0.25]}, timeout=30)
        assert (resp.status_code, body(resp)) == (200, {"y": [3.0, -4.0, 14.0, 0.5], "top": 2})
        resp = requests.post(stack.url + "/scaler", json={"x": [[1.5, -2, 7, 0.25]]}, timeout=30)   # a batch of one
        assert (resp.status_code, body(resp)) == (200, {"y": [[3.0, -4.0, 14.0, 0.5]], "top": [2]})
        resp = requests.post(stack.url + "/scaler", json={"x": [[1, 2, 3, 4], [8, 7, 6, 5]]}, timeout=30)
        assert (resp.status_code, body(resp)) == (200, {"y": [[2.0, 4.0, 6.0, 8.0], [16.0, 14.0, 12.0, 10.0]],
                                                        "top": [3, 0]})
        import jsonschema
        for answer in ({"x": [1.5, -2, 7, 0.25]}, {"x": [[1, 2, 3, 4], [8, 7, 6, 5]]}):
            jsonschema.validate(requests.post(stack.url + "/scaler", json=answer, timeout=30).json(),
                                doc["apis"][0]["response"]["data"])
            jsonschema.validate(answer, doc["apis"][0]["request"]["data"])
        resp = requests.post(stack.url + "/scaler", json={"x": [1, 2, 3]}, timeout=30)
        assert (resp.status_code, body(resp)) == (
            400, {"error": "field 'x' must have shape [4] (or a batch of them, [n, 4]), got [3]"})
        assert "route POST /scaler -> model 'scaler'" in stack.log()
    finally:
        stack.terminate()
