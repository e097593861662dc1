"""What the proxy costs: the same MNIST request straight to Triton (perf_analyzer, gRPC) and through the proxy
(wrk, HTTP multipart on the proxy's port), in the same run, at a few concurrencies; plus /health latency while
the proxy is under its heaviest load. Prints and writes ratios proxy / direct.

    make bench      # installs wrk, libb64 and the CUDA runtime perf_analyzer links against, then runs this

Both load generators are native programs and run on this machine beside the server, so on a small machine they
share its CPUs; compare the ratios. Absolute numbers mean something only on the target hardware.
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
import statistics
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

import requests

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Stack  # noqa: E402  (the tests' way of starting run.sh)

IMAGE = ROOT / "tests" / "data" / "seven.jpg"
EXPECT = '{"mnist_result": 7}'


def perf_analyzer(grpc_url, concurrency, seconds, workdir):
    """Direct Triton, gRPC: (requests/s, p50 ms, p99 ms)."""
    data = IMAGE.read_bytes()
    inputs = workdir / "input.json"   # BYTES in perf_analyzer's b64 form: 4-byte length, then the bytes
    inputs.write_text(json.dumps({"data": [{"images": {"b64": base64.b64encode(
        struct.pack("<I", len(data)) + data).decode()}}]}))
    out = workdir / f"pa-{concurrency}.csv"
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(
        sysconfig.get_paths()["purelib"], "nvidia", "cuda_runtime", "lib"))
    cmd = [os.path.join(os.path.dirname(sys.executable), "perf_analyzer"), "-m", "mnist", "-i", "grpc",
           "-u", grpc_url, "--input-data", str(inputs), "--concurrency-range", f"{concurrency}:{concurrency}",
           "--measurement-interval", str(seconds * 1000), "--stability-percentage", "100", "--max-trials", "3",
           "-f", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"perf_analyzer failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    row = next(csv.DictReader(out.open()))
    return float(row["Inferences/Second"]), int(row["p50 latency"]) / 1000, int(row["p99 latency"]) / 1000


def wrk(url, concurrency, seconds):
    """Through the proxy: (requests/s, p50 ms, p99 ms); every answer must be {"mnist_result": 7}."""
    env = dict(os.environ, BENCH_IMAGE=str(IMAGE), BENCH_EXPECT=EXPECT)
    cmd = ["wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", f"{seconds}s",
           "-s", str(HERE / "post_image.lua"), url + "/"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    m = re.search(r"RESULT rps=([\d.]+) p50_us=(\d+) p99_us=(\d+) wrong=(\d+) errors=(\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"wrk failed:\n{proc.stdout}\n{proc.stderr}")
    if int(m[4]) or int(m[5]):
        raise SystemExit(f"the proxy gave {m[4]} wrong answers and {m[5]} errors under load")
    return float(m[1]), int(m[2]) / 1000, int(m[3]) / 1000


def probe_health(url, stop, samples):
    with requests.Session() as s:
        while not stop.is_set():
            t = time.perf_counter()
            status = s.get(url + "/health", timeout=10).status_code
            samples.append((status, (time.perf_counter() - t) * 1000))
            time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=int, default=5, help="length of one measurement")
    args = parser.parse_args()
    for tool in ("wrk",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run `make bench`, which installs it")

    workdir = pathlib.Path(tempfile.mkdtemp())
    stack = Stack(workdir, ACCESS_LOG="false", GRACE_PERIOD="0").start()
    grpc_url = f"127.0.0.1:{stack.env['TRITON_GRPC_PORT']}"
    rows, health = [], []
    try:
        wrk(stack.url, 2, 1)   # warm-up: connections, the model's first batches
        for c in args.concurrency:
            d = perf_analyzer(grpc_url, c, args.seconds, workdir)
            stop = threading.Event()
            prober = None
            if c == max(args.concurrency):
                prober = threading.Thread(target=probe_health, args=(stack.url, stop, health))
                prober.start()
            p = wrk(stack.url, c, args.seconds)
            stop.set()
            if prober:
                prober.join()
            rows.append({"concurrency": c,
                         "direct": {"rps": d[0], "p50_ms": d[1], "p99_ms": d[2]},
                         "proxy": {"rps": p[0], "p50_ms": p[1], "p99_ms": p[2]},
                         "throughput_ratio": p[0] / d[0], "p50_ratio": p[1] / d[1]})
    finally:
        stack.terminate()

    lat = sorted(ms for _, ms in health)
    health_row = {"samples": len(lat), "non_200": sum(1 for s, _ in health if s != 200),
                  "p50_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}
    lines = [
        "# Proxy vs direct Triton: MNIST, one 2 KB JPEG per request",
        "",
        f"{datetime.date.today()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU; "
        f"{args.seconds} s per point; direct = perf_analyzer over gRPC, proxy = wrk over HTTP multipart. "
        "Load generators share the machine with the server.",
        "",
        "| concurrency | direct req/s | proxy req/s | **throughput proxy/direct** | direct p50 ms | proxy p50 ms "
        "| p50 proxy/direct | direct p99 ms | proxy p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d, p = r["direct"], r["proxy"]
        lines.append(f"| {r['concurrency']} | {d['rps']:.0f} | {p['rps']:.0f} | **{r['throughput_ratio']:.2f}** "
                     f"| {d['p50_ms']:.1f} | {p['p50_ms']:.1f} | {r['p50_ratio']:.2f} | {d['p99_ms']:.1f} "
                     f"| {p['p99_ms']:.1f} |")
    lines += ["", f"`GET /health` during the concurrency-{max(args.concurrency)} proxy load: {health_row['samples']} "
              f"probes, {health_row['non_200']} not 200, p50 {health_row['p50_ms']:.1f} ms, "
              f"p99 {health_row['p99_ms']:.1f} ms."]
    report = "\n".join(lines) + "\n"
    print(report)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "proxy_vs_direct.md").write_text(report)
    (HERE / "results" / "proxy_vs_direct.json").write_text(
        json.dumps({"points": rows, "health_under_load": health_row}, indent=2) + "\n")


if __name__ == "__main__":
    main()
