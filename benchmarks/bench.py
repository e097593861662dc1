"""What the proxy costs: each workload sent through the proxy and straight to Triton's HTTP API, with the same
load generator (wrk, keep-alive, every answer checked), in the same run, alternating, at several concurrencies.
perf_analyzer over gRPC, straight to Triton, is a third reference column.

    make bench                       # the full run: writes benchmarks/results/bench.{json,md,png}
    make bench BENCH_ARGS=--smoke    # a short end-to-end check (CI runs it): every answer right, no numbers judged;
                                     # writes build/bench-smoke/, never the committed results

Per worker, beside what a user would run instead (the "peers" section, same Triton, same wrk, same run):
- the proxy with WORKERS=1;
- the floor: the same routes in Flask under the same gunicorn gevent worker, no Triton call (benchmarks/peers/floor.py);
- the FastAPI peer: uvicorn (uvloop, httptools) + tritonclient.grpc.aio (benchmarks/peers/fastapi_peer.py);
- the hand-rolled image: Flask + gunicorn gevent + tritonclient.grpc with init_gevent (benchmarks/peers/handrolled.py).

Workloads (the bench builds its own model repository and config.json from model_repository/ and
benchmarks/models/, which `make serve` does not serve):
- mnist:    a 2 KB JPEG as multipart through the proxy; the same bytes as a BYTES tensor (binary extension) direct;
- identity: FP32[16] as JSON on both sides; the model costs nothing, so this measures the proxy itself;
- resnet:   FP32[3,224,224] as base64 in JSON through the proxy; the raw tensor (binary extension) direct.

Reported per point: throughput, p50 and p99 on both sides and their ratios, the proxy's CPU per request (its
gunicorn processes' utime+stime from /proc over the requests served) and RSS per worker. The load generators
run on the same machine as the server, so on a small machine compare ratios and CPU per request; absolute
numbers mean something only on the target hardware.
"""
import argparse
import base64
import csv
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

import numpy as np
import requests
import urllib3

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)   # the https section's self-signed pair

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Stack  # noqa: E402  (the tests' way of starting run.sh)
from measure import free_port, proc_cpu, rss_mb, session_pids  # noqa: E402

sys.path.insert(0, str(ROOT))
try:
    from serving.settings import available_cpus  # noqa: E402  (the product's default worker count)
except ImportError:   # an older tree, benchmarked for a before/after comparison
    available_cpus = os.cpu_count

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


def run(args, workdir):
    stack = Stack(workdir, MODEL_REPOSITORY=build_repository(workdir, args.models),
                  ACCESS_LOG=str(args.access_log).lower(), MODELARTS_CONFIG=args.config, GRACE_PERIOD="0",
                  WORKERS=str(args.workers or available_cpus())).start()
    if args.require_gpu:
        # Every torch model says where it loaded (torch_device.py, in each model folder); on a GPU machine, all on cuda.
        placed = re.findall(r"(mnist: loaded \S+|resnet_bench|text_embedding: \S+ \(\S+\)) on (\S+)", stack.log())
        if len(placed) < 3 or any(not where.startswith("cuda") for _, where in placed):
            stack.terminate()
            raise SystemExit(f"--require-gpu: models not all on a GPU: {placed}")
        print("models on the GPU:", placed, flush=True)
    direct = f"http://127.0.0.1:{stack.env['TRITON_HTTP_PORT']}"
    grpc_url = f"127.0.0.1:{stack.env['TRITON_GRPC_PORT']}"
    rows, health = [], []
    try:
        master = stack.pids("gunicorn")
        loads = workloads(stack.url, direct)
        for name in args.workloads:
            load = loads[name]
            answers = {side: first_answer(load[side]) for side in ("proxy", "direct")}
            for side in ("proxy", "direct"):   # warm-up: connections, the model's first batches
                wrk(load[side], answers[side], 4, 1, workdir)
            points = load.get("concurrency", args.concurrency)
            if args.smoke and "concurrency" in load:
                points = [4]
            for i, c in enumerate(points):
                point = {"workload": name, "concurrency": c}
                order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
                stop, prober = threading.Event(), None
                for side in order:
                    if side == "proxy" and name == "identity" and c == max(args.concurrency) and not args.smoke:
                        prober = threading.Thread(target=probe_health, args=(stack.url, stop, health))
                        prober.start()
                    gunicorn = stack.pids("gunicorn")
                    cpu0 = proc_cpu(gunicorn)
                    n, rps, p50, p99 = wrk(load[side], answers[side], c, args.seconds, workdir)
                    point[side] = {"requests": n, "rps": rps, "p50_ms": p50, "p99_ms": p99}
                    if side == "proxy":
                        point["proxy_cpu_ms_per_request"] = (proc_cpu(gunicorn) - cpu0) / n * 1000
                        workers = [p for p in gunicorn if p not in master[:1]]
                        point["proxy_rss_mb_per_worker"] = max(rss_mb(p) for p in workers)
                    if prober:
                        stop.set()
                        prober.join()
                        prober = None
                if args.perf_analyzer:
                    pa = perf_analyzer(load["perf_analyzer"], grpc_url, c, args.seconds, workdir)
                    if pa and pa != "timeout":
                        point["perf_analyzer_grpc"] = {"rps": pa[0], "p50_ms": pa[1], "p99_ms": pa[2]}
                point["throughput_ratio"] = point["proxy"]["rps"] / point["direct"]["rps"]
                point["p50_ratio"] = point["proxy"]["p50_ms"] / point["direct"]["p50_ms"]
                rows.append(point)
                print(f"{name:9} c={c:<3} proxy {point['proxy']['rps']:7.0f} req/s p50 {point['proxy']['p50_ms']:6.2f} ms"
                      f" | direct {point['direct']['rps']:7.0f} req/s p50 {point['direct']['p50_ms']:6.2f} ms"
                      f" | ratio {point['throughput_ratio']:.2f} | proxy CPU {point['proxy_cpu_ms_per_request']:.3f}"
                      f" ms/req", flush=True)
        isolation = None
        if {"mnist", "embeddings"} <= set(args.workloads) and not args.smoke:
            isolation = measure_isolation(loads, args.seconds, workdir)
        v2 = []
        if args.perf_analyzer and args.v2:
            v2 = measure_v2(loads, args, stack, direct, workdir)
    finally:
        stack.terminate()
    return rows, health, isolation, v2


def measure_v2(loads, args, stack, direct, workdir):
    """perf_analyzer over HTTP, with the same flags, against the proxy's KServe v2 pass-through (:8080/v2/...)
    and against Triton's own HTTP port, alternating."""
    rows = []
    for name in [w for w in ("identity", "mnist") if w in args.workloads]:
        spec = loads[name]["perf_analyzer"]
        for i, c in enumerate(args.v2_concurrency):
            point = {"workload": name, "model": spec["model"], "concurrency": c}
            order = (("direct", direct), ("proxy", stack.url)) if i % 2 == 0 else (("proxy", stack.url), ("direct", direct))
            for side, url in order:
                measured = perf_analyzer(spec, url.replace("http://", ""), c, args.seconds, workdir, "http")
                if measured is None:   # no perf_analyzer on this machine
                    return rows
                if measured == "timeout":
                    point.setdefault("timed_out", []).append(side)
                    continue
                rps, p50, p99 = measured
                point[side] = {"rps": rps, "p50_ms": p50, "p99_ms": p99}
            if "timed_out" in point:
                rows.append(point)
                continue
            point["throughput_ratio"] = point["proxy"]["rps"] / point["direct"]["rps"]
            rows.append(point)
            print(f"v2 {name:9} c={c:<3} perf_analyzer http: proxy {point['proxy']['rps']:7.0f} req/s "
                  f"p50 {point['proxy']['p50_ms']:6.2f} ms | direct {point['direct']['rps']:7.0f} req/s "
                  f"p50 {point['direct']['p50_ms']:6.2f} ms | ratio {point['throughput_ratio']:.2f}", flush=True)
    return rows


def measure_ab(args, workdir, a, b, rounds=3, concurrency=16):
    """CPU per request on the identity route under two settings, e.g. METRICS=true against METRICS=false: two
    stacks side by side (only one under load at a time), alternating. Returns {"a": ..., "b": ..., "ratio": a/b}."""
    config = json.loads(pathlib.Path(args.config).read_text())
    config["apis"] = [api for api in config["apis"] if api["url"] == "/identity"]
    stacks, cost = {}, {"a": [], "b": []}
    try:
        for key, setting in (("a", a), ("b", b)):
            d = workdir / f"ab-{key}"
            d.mkdir()
            (d / "config.json").write_text(json.dumps(config))
            env = dict(MODEL_REPOSITORY=build_repository(d, ["identity"]), MODELARTS_CONFIG=d / "config.json",
                       ACCESS_LOG=str(args.access_log).lower(), GRACE_PERIOD="0",
                       WORKERS=str(args.workers or available_cpus()))
            env.update(kv.split("=", 1) for kv in setting.split())
            stacks[key] = Stack(d, **env).start()
        for r in range(rounds):
            for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
                stack = stacks[key]
                side = workloads(stack.url, "http://unused")["identity"]["proxy"]
                answer = first_answer(side)
                wrk(side, answer, 4, 1, workdir)   # warm-up
                gunicorn = stack.pids("gunicorn")
                cpu0 = proc_cpu(gunicorn)
                n = wrk(side, answer, concurrency, args.seconds, workdir)[0]
                cost[key].append((proc_cpu(gunicorn) - cpu0) / n * 1000)
    finally:
        for stack in stacks.values():
            stack.terminate()
    ma, mb = statistics.median(cost["a"]), statistics.median(cost["b"])
    print(f"A/B, identity route c={concurrency}, proxy CPU ms/request (median of {rounds}): {a!r} {ma:.3f}, "
          f"{b!r} {mb:.3f}: x{ma / mb:.3f}; rounds {cost}", flush=True)
    return {"a": a, "b": b, "concurrency": concurrency, "rounds": cost, "a_ms": ma, "b_ms": mb, "ratio": ma / mb}


PEERS = HERE / "peers"


def start_peer(kind, port, grpc_url, workdir, workers=1):
    """One peer server with `workers` processes (uvicorn's or gunicorn's): a Popen in its own session."""
    env = dict(os.environ, TRITON_GRPC=grpc_url)
    bindir = os.path.dirname(sys.executable)
    if kind == "fastapi":
        cmd = [f"{bindir}/uvicorn", "fastapi_peer:app", "--app-dir", str(PEERS), "--host", "127.0.0.1", "--port",
               str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        if workers > 1:
            cmd += ["--workers", str(workers)]
    else:
        cmd = [f"{bindir}/gunicorn", "-w", str(workers), "-k", "gevent", "-b", f"127.0.0.1:{port}", "--chdir", str(PEERS),
               "--keep-alive", "200", "--log-level", "warning", f"{kind}:app"]
        if kind == "handrolled":
            cmd[1:1] = ["-c", str(PEERS / "handrolled.py")]
    log = open(workdir / f"peer-{kind}.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"peer {kind} exited:\n{(workdir / f'peer-{kind}.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"peer {kind} did not listen on {port}")




def measure_peers(args, workdir, workers=1, plan=None):
    """Per worker (workers=1): identity at several concurrencies and resnet at c=4: direct Triton, the proxy
    (WORKERS=1), the FastAPI peer, the hand-rolled image and the floor, the same wrk on every side, alternating order
    per point. Per container (workers=cores, `plan` given): each server with that many processes, CPU of all of
    them."""
    config = json.loads(pathlib.Path(args.config).read_text())
    config["apis"] = [api for api in config["apis"] if api["url"] in ("/identity", "/resnet")]
    d = workdir / f"peers-{workers}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    stack = Stack(d, MODEL_REPOSITORY=build_repository(d, ["identity", "resnet_bench"]), MODELARTS_CONFIG=d / "config.json",
                  ACCESS_LOG="false", GRACE_PERIOD="0", WORKERS=str(workers)).start()
    grpc_url = f"127.0.0.1:{stack.env['TRITON_GRPC_PORT']}"
    procs, rows = {}, []
    if plan is None:
        plan = [("identity", c, ["direct", "proxy", "fastapi", "handrolled", "floor"]) for c in args.peer_concurrency]
        plan.append(("resnet", 4, ["direct", "proxy", "fastapi", "floor"]))
    try:
        urls = {"proxy": stack.url}
        for kind in sorted({side for _, _, sides in plan for side in sides} - {"direct", "proxy"}):
            port = free_port()
            procs[kind] = start_peer(kind, port, grpc_url, workdir, workers)
            urls[kind] = f"http://127.0.0.1:{port}"
        direct = f"http://127.0.0.1:{stack.env['TRITON_HTTP_PORT']}"
        pids = {"proxy": stack.pids("gunicorn"), **{k: session_pids(p) for k, p in procs.items()}}
        for i, (name, c, sides) in enumerate(plan):
            point = {"workload": name, "concurrency": c}
            for side in (sides if i % 2 == 0 else sides[::-1]):
                load = workloads(urls.get(side, urls["proxy"]), direct)[name]
                what = load["direct"] if side == "direct" else load["proxy"]
                if side not in ("direct", "proxy"):
                    what = Side(urls[side] + ("/identity" if name == "identity" else "/resnet"), what.body,
                                what.content_type, expect=what.expect, prefix=b'{"OUTPUT0":' if what.prefix else None)
                answer = first_answer(what)
                wrk(what, answer, 4, 1, workdir)   # warm-up
                if side in procs:   # uvicorn's workers start after its port listens: count them all
                    pids[side] = session_pids(procs[side])
                cpu0 = proc_cpu(pids.get(side, []))
                n, rps, p50, p99 = wrk(what, answer, c, args.seconds, workdir)
                point[side] = {"requests": n, "rps": rps, "p50_ms": p50, "p99_ms": p99}
                if side != "direct":
                    point[side]["cpu_ms_per_request"] = (proc_cpu(pids[side]) - cpu0) / n * 1000
                    point[side]["rss_mb"] = max(rss_mb(p) for p in pids[side])
            rows.append(point)
            print(f"{'peers' if workers == 1 else 'container'} {name:8} c={c:<3} " + " | ".join(
                f"{side} {point[side]['rps']:6.0f} req/s p50 {point[side]['p50_ms']:6.2f} p99 {point[side]['p99_ms']:6.1f}"
                + (f" cpu {point[side]['cpu_ms_per_request']:.3f}" if side != "direct" else "")
                for side in sides), flush=True)
    finally:
        for p in procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        stack.terminate()
    return rows


def measure_tls(args, workdir, concurrency=16, rounds=3):
    """The identity route over HTTPS beside plain HTTP: two stacks with WORKERS=1 (one whose config.json says
    https, with its self-signed pair), the same wrk with keep-alive, alternating; CPU of each stack's gunicorn."""
    config = json.loads(pathlib.Path(args.config).read_text())
    config["apis"] = [api for api in config["apis"] if api["url"] == "/identity"]
    stacks = {}
    try:
        for scheme in ("http", "https"):
            d = workdir / f"tls-{scheme}"
            d.mkdir()
            for api in config["apis"]:
                api["protocol"] = scheme
            (d / "config.json").write_text(json.dumps(config))
            stacks[scheme] = Stack(d, scheme=scheme, verify=False, MODEL_REPOSITORY=build_repository(d, ["identity"]),
                                   MODELARTS_CONFIG=d / "config.json", ACCESS_LOG="false", GRACE_PERIOD="0",
                                   WORKERS="1").start()
        runs = {scheme: [] for scheme in stacks}
        for i in range(rounds):
            for scheme in (("http", "https") if i % 2 == 0 else ("https", "http")):
                stack = stacks[scheme]
                side = workloads(stack.url, stack.url)["identity"]["proxy"]
                answer = first_answer(side)
                wrk(side, answer, 4, 1, workdir)
                pids = stack.pids("gunicorn")
                cpu0 = proc_cpu(pids)
                n, rps, p50, p99 = wrk(side, answer, concurrency, args.seconds, workdir)
                runs[scheme].append({"rps": rps, "p50_ms": p50, "p99_ms": p99,
                                     "cpu_ms_per_request": (proc_cpu(pids) - cpu0) / n * 1000})
        point = {scheme: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for scheme, rs in runs.items()}
        point["concurrency"], point["rounds"] = concurrency, rounds
        print(f"tls identity c={concurrency}: " + " | ".join(
            f"{k} {v['rps']:.0f} req/s p50 {v['p50_ms']:.2f} cpu {v['cpu_ms_per_request']:.3f}"
            for k, v in point.items() if isinstance(v, dict)), flush=True)
        return point
    finally:
        for stack in stacks.values():
            stack.terminate()


def tls_report(point):
    if not point:
        return []
    h, t = point["http"], point["https"]
    return ["", "## What HTTPS costs", "",
            f"The identity route, WORKERS=1, wrk with keep-alive at c={point['concurrency']}, one stack whose "
            "config.json says http beside one that says https (its self-signed pair), alternating, median "
            f"of {point['rounds']} rounds. CPU is the stack's gunicorn processes per request.", "",
            "| port | req/s | p50 ms | p99 ms | CPU ms/req |", "| --- | --- | --- | --- | --- |",
            f"| http | {h['rps']:.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.1f} | {h['cpu_ms_per_request']:.3f} |",
            f"| https | {t['rps']:.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.1f} | {t['cpu_ms_per_request']:.3f} |", "",
            f"- https / http: req/s **{t['rps'] / h['rps']:.2f}**, CPU per request "
            f"**{t['cpu_ms_per_request'] / h['cpu_ms_per_request']:.2f}**", ""]




def measure_isolation(loads, seconds, workdir):
    """MNIST at c=1, idle and while the embedding model takes 64 concurrent clients: through the proxy (both
    loads through it) and straight to Triton (both loads direct), so that what the shared CPUs cost shows apart
    from what the proxy costs."""
    result = {}
    for side in ("proxy", "direct"):
        mnist, embeddings = loads["mnist"][side], loads["embeddings"][side]
        answer = first_answer(mnist)
        idle = wrk(mnist, answer, 1, seconds, workdir)
        (workdir / "busy").mkdir(exist_ok=True)
        flood_result = []
        flood = threading.Thread(target=lambda: flood_result.append(
            wrk(embeddings, first_answer(embeddings), 64, seconds + 2, workdir / "busy")))
        flood.start()
        time.sleep(1)
        busy = wrk(mnist, answer, 1, seconds, workdir)
        flood.join()
        result[side] = {"mnist_idle_p50_ms": idle[2], "mnist_busy_p50_ms": busy[2], "p50_ratio": busy[2] / idle[2],
                        "mnist_requests_during_load": busy[0], "embedding_requests_during_load": flood_result[0][0]}
        print(f"isolation ({side}): MNIST p50 {idle[2]:.1f} ms idle, {busy[2]:.1f} ms with embeddings at c=64 "
              f"(x{busy[2] / idle[2]:.2f}); {busy[0]} MNIST and {flood_result[0][0]} embedding requests, none failed",
              flush=True)
    return result


SERVERS = {"direct": "Triton direct (HTTP)", "proxy": "**the proxy** (`WORKERS=1`)",
           "fastapi": "FastAPI peer: uvicorn + `tritonclient.grpc.aio`",
           "handrolled": "hand-rolled: Flask + gunicorn gevent + `tritonclient.grpc` (`init_gevent`)",
           "floor": "floor: the same Flask routes under gunicorn gevent, no Triton call"}


def peers_report(peers):
    if not peers:
        return []
    lines = ["", "## Per worker, beside what a user would run instead", "",
             "One worker or process per server, the same Triton, the same wrk, every answer checked, in one run "
             "(benchmarks/peers/). CPU is the server's own processes, from /proc, per request.", ""]
    for name in dict.fromkeys(r["workload"] for r in peers):
        pts = [r for r in peers if r["workload"] == name]
        sides = [s for s in SERVERS if s in pts[0]]
        lines += [f"**{name}**", "", "| server | " + " | ".join(f"c={r['concurrency']} req/s | p50 ms | p99 ms | CPU ms/req"
                                                          for r in pts) + " |",
                  "| --- |" + " --- | --- | --- | --- |" * len(pts)]
        for side in sides:
            cells = []
            for r in pts:
                v = r[side]
                cpu = f"{v['cpu_ms_per_request']:.3f}" if "cpu_ms_per_request" in v else "-"
                cells.append(f"{v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.1f} | {cpu}")
            lines.append(f"| {SERVERS[side]} | " + " | ".join(cells) + " |")
        lines.append("")
        for r in pts:
            ratios = [f"req/s proxy/FastAPI **{r['proxy']['rps'] / r['fastapi']['rps']:.2f}**",
                      f"p50 proxy/FastAPI {r['proxy']['p50_ms'] / r['fastapi']['p50_ms']:.2f}",
                      f"p99 proxy/FastAPI {r['proxy']['p99_ms'] / r['fastapi']['p99_ms']:.2f}",
                      f"CPU/request proxy/floor **{r['proxy']['cpu_ms_per_request'] / r['floor']['cpu_ms_per_request']:.2f}**"]
            if "handrolled" in r:
                ratios.insert(1, f"req/s proxy/hand-rolled {r['proxy']['rps'] / r['handrolled']['rps']:.2f}")
            lines.append(f"- {name} c={r['concurrency']}: " + ", ".join(ratios))
        lines.append("")
    return lines


def containers_report(points, workers):
    """The per-container section: every server with `workers` processes, CPU of all of them."""
    if not points:
        return []
    lines = ["", f"## Per container: {workers} workers each (WORKERS={workers}, the product's default here)", "",
             f"What a user sizing a ModelArts flavour compares: the product with WORKERS={workers}, the FastAPI peer "
             f"with {workers} uvicorn workers, the hand-rolled image with {workers} gunicorn gevent workers; the same "
             "Triton and wrk, every answer checked. CPU is all of each server's processes (the product's gunicorn "
             "master and workers; Triton, shared by all, is not counted).", "",
             "| server | " + " | ".join(f"c={r['concurrency']} req/s | p50 ms | p99 ms | CPU ms/req" for r in points)
             + " |", "| --- |" + " --- | --- | --- | --- |" * len(points)]
    for side in [s for s in SERVERS if s in points[0]]:
        cells = []
        for r in points:
            v = r[side]
            cpu = f"{v['cpu_ms_per_request']:.3f}" if "cpu_ms_per_request" in v else "-"
            cells.append(f"{v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.1f} | {cpu}")
        label = SERVERS[side].replace("(`WORKERS=1`)", f"(`WORKERS={workers}`)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in points:
        lines.append(f"- {r['workload']} c={r['concurrency']}: req/s proxy/FastAPI "
                     f"**{r['proxy']['rps'] / r['fastapi']['rps']:.2f}**, proxy/hand-rolled "
                     f"**{r['proxy']['rps'] / r['handrolled']['rps']:.2f}**; CPU/request proxy/FastAPI "
                     f"{r['proxy']['cpu_ms_per_request'] / r['fastapi']['cpu_ms_per_request']:.2f}")
    return lines + [""]


def report(args, rows, health, isolation=None, v2=(), peers=()):
    lat = sorted(ms for _, ms in health)
    health_row = {"samples": len(lat), "non_200": sum(1 for s, _ in health if s != 200),
                  "p50_ms": statistics.median(lat) if lat else None,
                  "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None}
    machine = (f"{datetime.date.today()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
               f"{args.gpu or 'no GPU'}")
    lines = [
        "# Proxy vs direct Triton",
        "",
        f"{machine}; {args.seconds} s per point. proxy = wrk through :8080, direct = wrk on Triton's HTTP API (same "
        "bytes, binary tensor extension for tensors), pa = perf_analyzer over gRPC, direct. Every answer checked. "
        "Load generators share the machine with the server.",
        "",
        "| workload | c | direct req/s | proxy req/s | **proxy/direct** | direct p50 ms | proxy p50 ms | p50 ratio "
        "| direct p99 ms | proxy p99 ms | **proxy CPU ms/req** | RSS/worker MB | pa gRPC req/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d, p = r["direct"], r["proxy"]
        pa = r.get("perf_analyzer_grpc")
        pa_rps = f"{pa['rps']:.0f}" if pa else "-"
        lines.append(f"| {r['workload']} | {r['concurrency']} | {d['rps']:.0f} | {p['rps']:.0f} "
                     f"| **{r['throughput_ratio']:.2f}** | {d['p50_ms']:.2f} | {p['p50_ms']:.2f} | {r['p50_ratio']:.2f} "
                     f"| {d['p99_ms']:.1f} | {p['p99_ms']:.1f} | **{r['proxy_cpu_ms_per_request']:.3f}** "
                     f"| {r['proxy_rss_mb_per_worker']:.0f} | {pa_rps} |")
    if lat:
        lines += ["", f"`GET /health` during the identity c={max(args.concurrency)} proxy load: {health_row['samples']} "
                  f"probes, {health_row['non_200']} not 200, p50 {health_row['p50_ms']:.1f} ms, "
                  f"p99 {health_row['p99_ms']:.1f} ms."]
    if isolation:
        p, d = isolation["proxy"], isolation["direct"]
        lines += ["", f"Isolation: MNIST at c=1, p50 idle and while the embedding model takes 64 concurrent clients: "
                  f"through the proxy {p['mnist_idle_p50_ms']:.1f} -> {p['mnist_busy_p50_ms']:.1f} ms "
                  f"(**x{p['p50_ratio']:.2f}**), straight to Triton {d['mnist_idle_p50_ms']:.1f} -> "
                  f"{d['mnist_busy_p50_ms']:.1f} ms (**x{d['p50_ratio']:.2f}**); no request failed."]
    if v2:
        lines += ["", "## perf_analyzer through the proxy's KServe v2 pass-through", "",
                  "perf_analyzer over HTTP with the same flags against `<proxy>:8080` (`/v2/...`) and against Triton's "
                  "own HTTP port, alternating. Goal: proxy/direct >= 0.8.", "",
                  "| model | c | direct req/s | proxy req/s | **proxy/direct** | direct p50 ms | proxy p50 ms "
                  "| direct p99 ms | proxy p99 ms |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in v2:
            if "timed_out" in r:
                got = "; ".join(f"{side} {r[side]['rps']:.0f} req/s, p50 {r[side]['p50_ms']:.2f} ms"
                                for side in ("direct", "proxy") if side in r)
                lines.append(f"| {r['model']} | {r['concurrency']} | perf_analyzer did not finish against "
                             f"{' and '.join(r['timed_out'])} ({got or 'no side measured'}) | | | | | | |")
                continue
            d, p = r["direct"], r["proxy"]
            lines.append(f"| {r['model']} | {r['concurrency']} | {d['rps']:.0f} | {p['rps']:.0f} "
                         f"| **{r['throughput_ratio']:.2f}** | {d['p50_ms']:.2f} | {p['p50_ms']:.2f} "
                         f"| {d['p99_ms']:.2f} | {p['p99_ms']:.2f} |")
    lines += peers_report(peers)
    return "\n".join(lines) + "\n", {"machine": machine, "seconds": args.seconds, "points": rows,
                                      "health_under_load": health_row, "isolation": isolation, "v2": list(v2),
                                      "peers": list(peers)}


def _dress(axes, col, cs, title, lower, fontsize=None):
    """One column of the plot: requests/s above, `lower` below, concurrency on a log scale."""
    axes[0][col].set_title(title)
    axes[0][col].set_ylabel("requests/s")
    axes[1][col].set_ylabel(lower)
    for ax in (axes[0][col], axes[1][col]):
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=fontsize)


def plot(rows, path, peers=()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["workload"] for r in rows))
    ident = [r for r in peers if r["workload"] == "identity"]
    fig, axes = plt.subplots(2, len(names) + bool(ident), figsize=(4.5 * (len(names) + bool(ident)), 7),
                             squeeze=False)
    if ident:   # the last column: identity per worker, the proxy beside the floor and the peers
        col, cs = len(names), [r["concurrency"] for r in ident]
        for side in [s for s in SERVERS if s in ident[0] and s != "direct"]:
            label = {"proxy": "proxy (1 worker)", "fastapi": "FastAPI peer", "handrolled": "hand-rolled",
                     "floor": "Flask floor (no Triton)"}[side]
            axes[0][col].plot(cs, [r[side]["rps"] for r in ident], "s-" if side == "proxy" else "o--", label=label)
            axes[1][col].plot(cs, [r[side]["cpu_ms_per_request"] for r in ident], "s-" if side == "proxy" else "o--",
                              label=label)
        _dress(axes, col, cs, "identity, per worker", "CPU ms per request", fontsize=7)
    for col, name in enumerate(names):
        pts = [r for r in rows if r["workload"] == name]
        cs = [r["concurrency"] for r in pts]
        for side, style in (("direct", "o--"), ("proxy", "s-")):
            axes[0][col].plot(cs, [r[side]["rps"] for r in pts], style, label=side)
            axes[1][col].plot(cs, [r[side]["p50_ms"] for r in pts], style, label=side)
        _dress(axes, col, cs, name, "p50 latency (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def results_dir(smoke):
    """Where a run writes by default: a smoke run never overwrites the committed results."""
    return ROOT / "build" / "bench-smoke" if smoke else HERE / "results"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+",
                        default=["mnist", "identity", "resnet", "embeddings", "embeddings_nobatch"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=int, default=5, help="length of one measurement")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the product's default)")
    parser.add_argument("--config", default=str(HERE / "config.bench.json"), help="the config.json to serve")
    parser.add_argument("--models", nargs="+", help="serve only these models (default: all, and a no-batching copy "
                        "of text_embedding)")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="the product's default is on")
    parser.add_argument("--perf-analyzer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--v2", action=argparse.BooleanOptionalAction, default=True,
                        help="perf_analyzer over HTTP through the proxy's /v2 and straight to Triton")
    parser.add_argument("--v2-concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--ab", nargs=2, metavar=("A", "B"),
                        help='only compare the CPU per request under two settings, e.g. --ab METRICS=true METRICS=false')
    parser.add_argument("--rounds", type=int, default=3, help="--ab: measurements per side")
    parser.add_argument("--gpu", default="", help="the GPU's name, for the report")
    parser.add_argument("--require-gpu", action="store_true", help="fail unless every torch model loaded on cuda")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="per worker, beside the floor, the FastAPI peer and the hand-rolled image")
    parser.add_argument("--peer-concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--containers", action=argparse.BooleanOptionalAction, default=True,
                        help="per container: every server with as many workers as cores")
    parser.add_argument("--container-concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                        help="the identity route over HTTPS beside plain HTTP")
    parser.add_argument("--name", default="bench", help="results/<name>.{json,md,png}")
    parser.add_argument("--out", help="where results go (default: benchmarks/results; build/bench-smoke for --smoke)")
    parser.add_argument("--smoke", action="store_true", help="2 s per point at c=1 and 4, no perf_analyzer")
    parser.add_argument("--on-demand", action=argparse.BooleanOptionalAction, default=True,
                        help="the on-demand loading section (benchmarks/on_demand.py)")
    parser.add_argument("--on-demand-seconds", type=int, default=20)
    parser.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=True,
                        help="the streaming section (benchmarks/streaming.py)")
    parser.add_argument("--streaming-seconds", type=int, default=10)
    parser.add_argument("--llm", action=argparse.BooleanOptionalAction, default=True,
                        help="the LLM section: the shipped SmolLM2 streamed, perf_analyzer both sides "
                             "(benchmarks/llm.py)")
    parser.add_argument("--llm-seconds", type=int, default=10, help="above 2: at least 2c streams per point")
    args = parser.parse_args()
    if args.smoke:
        args.concurrency, args.seconds, args.perf_analyzer = [1, 4], 2, False   # embeddings: c=4 only
        args.peer_concurrency = [4]
        args.container_concurrency = [4]
    args.out = args.out or str(results_dir(args.smoke))
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: run `make bench`, which installs it")
    if args.ab:
        pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
        result = measure_ab(args, pathlib.Path(tempfile.mkdtemp()), *args.ab, rounds=args.rounds)
        (pathlib.Path(args.out) / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    workdir = pathlib.Path(tempfile.mkdtemp())
    peers = measure_peers(args, workdir) if args.peers and "identity" in args.workloads else []
    cores = args.workers or available_cpus()
    containers = (measure_peers(args, workdir, cores, [("identity", c, ["direct", "proxy", "fastapi", "handrolled"])
                                                       for c in args.container_concurrency])
                  if args.containers and "identity" in args.workloads else [])
    rows, health, isolation, v2 = run(args, workdir)
    text, doc = report(args, rows, health, isolation, v2, peers)
    if args.tls and "identity" in args.workloads:
        doc["tls"] = measure_tls(args, workdir, rounds=1 if args.smoke else 3)
        text += "\n".join(tls_report(doc["tls"]))
    if not args.smoke:   # the multipart parsers, one process (benchmarks/multipart_parsers.py)
        import multipart_parsers
        doc["multipart"] = multipart_parsers.measure()
        text += "\n" + multipart_parsers.report(doc["multipart"])
    if containers:
        text += "\n".join(containers_report(containers, cores))
        doc["containers"] = {"workers": cores, "points": containers}
    if args.on_demand:
        import on_demand
        section, doc["on_demand"] = on_demand.measure(workdir, 2 if args.smoke else args.on_demand_seconds)
        text += "\n" + section
    if args.streaming:
        import streaming
        section, doc["streaming"] = (streaming.run(workdir, 2, (1, 4)) if args.smoke else
                                     streaming.run(workdir, args.streaming_seconds))
        text += "\n" + section
    if args.llm:
        import llm
        section, doc["llm"] = llm.run(workdir, 1, (1,)) if args.smoke else llm.run(workdir, args.llm_seconds)
        text += "\n" + section
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(text)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    try:
        plot(rows, out / f"{args.name}.png", peers)
    except Exception as exc:   # a machine whose matplotlib does not load still gets the tables
        print(f"no plot: {exc}")


if __name__ == "__main__":
    main()
