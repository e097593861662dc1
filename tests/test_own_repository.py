"""A user's own Triton repository, as the README walks it: `make config` writes config.json from it, then the
stack serves it, with no hand edits. The model is made here, on the spot."""
import glob
import json
import os
import shutil
import subprocess

import requests

from conftest import ROOT, Stack, body, encode

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
    # No CONFIG: make config writes the repository's own config.json, where make serve (run.sh) will read it.
    made = subprocess.run(["make", "-s", "config", f"MODEL_REPOSITORY={repo}"], cwd=ROOT, check=True, timeout=300,
                          capture_output=True, text=True)
    doc = json.loads((repo / "config.json").read_text())
    # make config says how to call each api: a curl line with a body built from the model's dims.
    sample = ("curl -X POST http://127.0.0.1:8080/scaler -H 'Content-Type: application/json' "
              """-d '{"x": [0.0, 0.0, 0.0, 0.0]}'""")
    assert sample in made.stderr.splitlines()[-1], made.stderr
    assert [(a["url"], a["request"]["Content-type"]) for a in doc["apis"]] == [("/scaler", "application/json")]
    assert "x-triton" not in doc["apis"][0]
    # One item or a batch, in and out, and the schema says so.
    props = doc["apis"][0]["response"]["data"]["properties"]
    assert props["y"]["items"]["anyOf"] == [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]
    assert props["top"]["type"] == ["integer", "array"]

    stack = Stack(tmp_path, MODEL_REPOSITORY=repo).start()   # no MODELARTS_CONFIG: the repository's own
    try:
        resp = requests.post(stack.url + "/scaler", json={"x": [0.0, 0.0, 0.0, 0.0]}, timeout=30)   # the sample
        assert (resp.status_code, body(resp)) == (200, {"y": [0.0, 0.0, 0.0, 0.0], "top": 0})
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
        assert f"config {repo}/config.json" in stack.log()
        assert "warning: model" not in stack.log()
    finally:
        stack.terminate()


def test_a_copied_model_folder_loads_and_a_model_no_api_serves_is_named(tmp_path, held_out):
    """mnist/ copied on its own into a new repository (a folder is what users copy) loads; with a config.json whose
    only api is mnist's, the start-up log names the ready model that nothing serves."""
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "model_repository", "mnist"), repo / "mnist",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "scaler" / "1").mkdir(parents=True)
    (repo / "scaler" / "config.pbtxt").write_text(CONFIG)
    (repo / "scaler" / "1" / "model.py").write_text(MODEL)
    shipped = json.load(open(os.path.join(ROOT, "config.json")))
    (repo / "config.json").write_text(json.dumps(dict(shipped, apis=shipped["apis"][:1])))
    stack = Stack(tmp_path, MODEL_REPOSITORY=repo).start()
    try:
        x, y = held_out
        resp = requests.post(stack.url + "/", files={"images": ("d.png", encode(x[7]))}, timeout=30)
        assert (resp.status_code, body(resp)) == (200, {"mnist_result": int(y[7])})
        assert (f"run.sh: warning: model 'scaler' is ready in Triton but no api of {repo}/config.json serves it: "
                "add an api for it (make config writes one per model)") in stack.log()
        assert "model 'mnist' is ready" not in stack.log()
    finally:
        stack.terminate()


def test_a_model_that_fails_to_load_is_named_with_triton_s_reason(tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(CONFIG.replace('"scaler"', '"broken"'))
    (repo / "broken" / "1" / "model.py").write_text("import a_module_nobody_installed\n")
    stack = Stack(tmp_path, MODEL_REPOSITORY=repo, MODELARTS_CONFIG=os.path.join(ROOT, "config.json"))
    try:
        stack.start()
        raise AssertionError("the stack started with a model that cannot load")
    except RuntimeError as exc:
        assert "run.sh exited 1" in str(exc)
    log = stack.log()
    lines = [line.split("run.sh: ", 1)[1] for line in log.splitlines() if "run.sh: " in line]
    why = lines.index("Triton stopped at start-up; why, from its log:")
    assert "failed to load 'broken' version 1: Internal: ModuleNotFoundError: No module named " \
           "'a_module_nobody_installed'" in lines[why + 1]
    assert lines[why + 2].strip().startswith("| broken | 1")
    assert lines[-1].startswith("Triton exited on its own (exit 1)")
    if glob.glob("/dev/nvidia[0-9]*"):
        return
    # Without a GPU, one line says so, and Triton's CUDA errors are not there.
    assert "no GPU on this machine (no /dev/nvidia*)" in log
    for noise in ("CudaDriverHelper has not been initialized", "Failed to initialize NVML", "DCGM unable to start",
                  "CUDA driver version is insufficient"):
        assert noise not in log
