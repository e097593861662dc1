"""The load generators and the workloads every section shares: wrk (keep-alive, every answer checked) and
perf_analyzer, the same on the proxy's side and on Triton's; the bench's own model repository."""
import base64
import csv
import json
import os
import pathlib
import re
import struct
import subprocess
import sys
import sysconfig
import time

import numpy as np
import requests


HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

TEXT = "A man is riding a white horse on an enclosed ground."


def binary_body(inputs, outputs):
    """A KServe v2 request with the binary tensor extension: (body, headers). inputs: [(name, datatype, shape, raw)]."""
    header = json.dumps({
        "inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
                   for n, d, s, raw in inputs],
        "outputs": [{"name": o, "parameters": {"binary_data": False}} for o in outputs]}).encode()
    return header + b"".join(raw for *_, raw in inputs), {"Inference-Header-Content-Length": str(len(header))}


def multipart(field, filename, data, boundary="bench-boundary-7f3a"):
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Side:
    """One way of sending a workload: URL, body, headers, and how a right answer looks."""

    def __init__(self, url, body, content_type, headers=None, expect=None, prefix=None):
        self.url, self.body, self.content_type = url, body, content_type
        self.headers = headers or {}
        self.expect, self.prefix = expect, prefix


def workloads(proxy, direct):
    image = (ROOT / "tests" / "data" / "seven.jpg").read_bytes()
    mnist_direct, mnist_headers = binary_body([("images", "BYTES", [1, 1], struct.pack("<I", len(image)) + image)],
                                              ["mnist_result"])
    mp, mp_type = multipart("images", "seven.jpg", image)
    values = [float(i) for i in range(16)]
    tensor = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    resnet_direct, resnet_headers = binary_body([("INPUT0", "FP32", [1, 3, 224, 224], tensor.tobytes())],
                                                ["OUTPUT0"])
    return {
        "mnist": {
            "proxy": Side(proxy + "/", mp, mp_type, expect=lambda d: d == {"mnist_result": 7}),
            "direct": Side(direct + "/v2/models/mnist/infer", mnist_direct, "application/octet-stream", mnist_headers,
                           expect=lambda d: d["outputs"][0]["data"] == [7]),
            "perf_analyzer": {"model": "mnist", "data": {"images": {"b64": base64.b64encode(
                struct.pack("<I", len(image)) + image).decode()}}},
        },
        "identity": {
            "proxy": Side(proxy + "/identity", json.dumps({"INPUT0": values}).encode(), "application/json",
                          expect=lambda d: d == {"OUTPUT0": values}),
            "direct": Side(direct + "/v2/models/identity/infer", json.dumps({"inputs": [
                {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": values}]}).encode(),
                "application/json", expect=lambda d: d["outputs"][0]["data"] == values),
            "perf_analyzer": {"model": "identity", "data": {"INPUT0": values}},
        },
        # Single-text requests at c=32: Triton's dynamic batching gathers them (text_embedding), or not
        # (text_embedding_nobatch, the same model without it).
        **{name: {
            "proxy": Side(proxy + url, json.dumps({"texts": [TEXT]}).encode(), "application/json",
                          prefix=b'{"embeddings":[[', expect=lambda d: len(d["embeddings"][0]) == 384),
            "direct": Side(direct + f"/v2/models/{model}/infer", json.dumps({"inputs": [
                {"name": "texts", "datatype": "BYTES", "shape": [1, 1], "data": [TEXT]}]}).encode(),
                "application/json", prefix=f'{{"model_name":"{model}"'.encode(),
                expect=lambda d: len(d["outputs"][0]["data"]) == 384),
            "perf_analyzer": {"model": model, "data": {"texts": [TEXT]}},
            "concurrency": [32],
        } for name, url, model in (("embeddings", "/embeddings", "text_embedding"),
                                   ("embeddings_nobatch", "/embeddings_nobatch", "text_embedding_nobatch"))},
        "resnet": {
            # Float results can differ in the last bits with the batch the server formed, so under load an
            # answer is checked by its start; the first answer of each side is checked in full.
            "proxy": Side(proxy + "/resnet", json.dumps({"INPUT0": base64.b64encode(tensor.tobytes()).decode()}).encode(),
                          "application/json", prefix=b'{"OUTPUT0":[',
                          expect=lambda d: len(d["OUTPUT0"]) == 1000),
            "direct": Side(direct + "/v2/models/resnet_bench/infer", resnet_direct, "application/octet-stream",
                           resnet_headers, prefix=b'{"model_name":"resnet_bench"',
                           expect=lambda d: len(d["outputs"][0]["data"]) == 1000),
            "perf_analyzer": {"model": "resnet_bench", "data": {"INPUT0": {"b64": base64.b64encode(
                tensor.tobytes()).decode()}}},
        },
    }


def first_answer(side):
    resp = requests.post(side.url, data=side.body, timeout=60, verify=False,   # https: the stack's self-signed pair
                         headers={"Content-Type": side.content_type, **side.headers})
    if resp.status_code != 200:
        raise SystemExit(f"{side.url}: {resp.status_code} {resp.text[:300]}")
    if not side.expect(json.loads(resp.content)):
        raise SystemExit(f"{side.url}: wrong answer {resp.text[:300]}")
    return resp.content


def wrk(side, answer, concurrency, seconds, workdir, retried=False):
    """(requests, req/s, p50 ms, p99 ms); exits if any answer differs from `answer` (or its prefix)."""
    body, expect = workdir / "body", workdir / "expect"
    body.write_bytes(side.body)
    expect.write_bytes(side.prefix if side.prefix else answer)
    env = dict(os.environ, BENCH_BODY=str(body), BENCH_EXPECT=str(expect), BENCH_CONTENT_TYPE=side.content_type,
               BENCH_MATCH="prefix" if side.prefix else "exact",
               BENCH_HEADERS="\n".join(f"{k}: {v}" for k, v in side.headers.items()))
    cmd = ["wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "30s",
           "-s", str(HERE / "post.lua"), side.url]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    m = re.search(r"RESULT requests=(\d+) rps=([\d.]+) p50_us=(\d+) p99_us=(\d+) wrong=(\d+) errors=(\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"wrk failed:\n{proc.stdout}\n{proc.stderr}")
    if int(m[1]) == 0:
        if not retried:   # a slow first answer (a cold model, a busy machine): once more, for twice as long
            return wrk(side, answer, concurrency, max(1, round(seconds * 2)), workdir, retried=True)
        raise SystemExit(f"{side.url}: no answer within {seconds} s at c={concurrency}: give it more --seconds")
    if int(m[5]) or int(m[6]):
        raise SystemExit(f"{side.url}: {m[5]} wrong answers and {m[6]} errors under load (c={concurrency})")
    return int(m[1]), float(m[2]), int(m[3]) / 1000, int(m[4]) / 1000


def perf_analyzer(spec, url, concurrency, seconds, workdir, protocol="grpc"):
    """perf_analyzer against `url` (Triton's gRPC or HTTP port, or the proxy's KServe v2 pass-through):
    (req/s, p50 ms, p99 ms), or None where perf_analyzer cannot run here."""
    exe = os.path.join(os.path.dirname(sys.executable), "perf_analyzer")
    if not os.path.exists(exe):
        return None
    inputs = workdir / "pa-input.json"
    inputs.write_text(json.dumps({"data": [spec["data"]]}))
    out = workdir / "pa.csv"
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cuda_runtime", "lib"))
    cmd = [exe, "-m", spec["model"], "-i", protocol, "-u", url, "--input-data", str(inputs),
           "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(seconds * 1000),
           "--stability-percentage", "100", "--max-trials", "3", "-f", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30 * seconds + 60)
    except subprocess.TimeoutExpired as exc:
        # Seen on Triton's own HTTP port at c=32 on the 2-core machine (2026-12-01): perf_analyzer never ends its
        # first window. The point is reported as missing rather than ending the whole run.
        print(f"perf_analyzer -i {protocol} -u {url} at c={concurrency}: no result within {exc.timeout:.0f} s; "
              f"last output: {(exc.stdout or b'')[-300:]!r}", flush=True)
        return "timeout"
    if proc.returncode != 0:
        raise SystemExit(f"perf_analyzer failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    row = next(csv.DictReader(out.open()))
    return float(row["Inferences/Second"]), int(row["p50 latency"]) / 1000, int(row["p99 latency"]) / 1000


def build_repository(workdir, only=None):
    repo = workdir / "model_repository"
    repo.mkdir()
    for parent in (ROOT / "model_repository", HERE / "models"):
        for model in parent.iterdir():
            if model.name == "smollm2" and not only:   # the LLM has a section and a stack of its own (llm.py)
                continue
            if (model / "config.pbtxt").exists() and (not only or model.name in only):
                (repo / model.name).symlink_to(model)
    # The embedding model again, without dynamic batching, to show what batching buys.
    if only:
        return repo
    nobatch = repo / "text_embedding_nobatch"
    nobatch.mkdir()
    (nobatch / "1").symlink_to(ROOT / "model_repository" / "text_embedding" / "1")
    (nobatch / "torch_device.py").symlink_to(ROOT / "model_repository" / "text_embedding" / "torch_device.py")
    config = (ROOT / "model_repository" / "text_embedding" / "config.pbtxt").read_text()
    config = re.sub(r"dynamic_batching \{[^}]*\}", "", config).replace('name: "text_embedding"',
                                                                       'name: "text_embedding_nobatch"')
    (nobatch / "config.pbtxt").write_text(config)
    return repo


def probe_health(url, stop, samples):
    with requests.Session() as s:
        while not stop.is_set():
            t = time.perf_counter()
            status = s.get(url + "/health", timeout=10).status_code
            samples.append((status, (time.perf_counter() - t) * 1000))
            time.sleep(0.05)
