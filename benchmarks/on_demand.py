"""The on-demand section of `make bench` (MODEL_LOADING=on-demand, serving/loading/):

- the first request to a cold MNIST and a cold embedding model (the load, then the answer), beside a warm one;
- six copies of the identity model behind one service with MAX_LOADED_MODELS=2 (a working set larger than the
  budget) and 8 (all fit: the steady cost of the mode), under a uniform and a skewed (80 % to one model, 20 % over
  the other five) mix, beside the same service with every model loaded (MODEL_LOADING=all). The same Python load
  generator (16 threads, keep-alive, every answer checked) on every side.

    python benchmarks/on_demand.py [--seconds 20] [--out benchmarks/results]    (make bench runs it too)
"""
import pathlib
import random
import re
import statistics
import subprocess
import sys
import threading
import time

import requests

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Stack  # noqa: E402
from measure import standalone  # noqa: E402

COPIES = [f"identity{i}" for i in range(6)]
VECTOR = [float(i) / 8 for i in range(16)]
SEVEN = (ROOT / "tests" / "data" / "seven.jpg").read_bytes()


def repository(workdir):
    repo = workdir / "ondemand_repo"
    repo.mkdir()
    config = (HERE / "models" / "identity" / "config.pbtxt").read_text()
    for name in COPIES:
        (repo / name).mkdir()
        (repo / name / "1").symlink_to(HERE / "models" / "identity" / "1")
        (repo / name / "config.pbtxt").write_text(config.replace('name: "identity"', f'name: "{name}"'))
    for name in ("mnist", "text_embedding"):
        (repo / name).symlink_to(ROOT / "model_repository" / name)
    doc = subprocess.run([sys.executable, "-m", "serving.generate", str(repo)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    (repo / "config.json").write_text(doc)
    return repo


def loads_total(stack):
    text = requests.get(stack.url + "/metrics", timeout=10).text
    return int(sum(float(v) for v in re.findall(r'^proxy_model_loads_total\{[^}]*result="ok"[^}]*\} (\S+)$', text, re.M)))


def cold_and_warm(workdir, repo):
    stack = Stack(workdir, MODEL_REPOSITORY=repo, MODEL_LOADING="on-demand", GRACE_PERIOD=0).start()
    rows = []
    try:
        calls = {"mnist": lambda s: s.post(stack.url + "/", files={"images": ("seven.jpg", SEVEN)}, timeout=60),
                 "text_embedding": lambda s: s.post(stack.url + "/embeddings", json={"texts": ["hello world"]},
                                                    timeout=60)}
        for name, call in calls.items():
            with requests.Session() as s:
                started = time.monotonic()
                resp = call(s)
                cold = time.monotonic() - started
                assert resp.status_code == 200, resp.text
                warm = []
                for _ in range(20):
                    started = time.monotonic()
                    assert call(s).status_code == 200
                    warm.append(time.monotonic() - started)
            rows.append({"model": name, "cold_ms": cold * 1000, "warm_p50_ms": statistics.median(warm) * 1000})
            print(f"on-demand {name:15} cold {cold * 1000:7.0f} ms, warm p50 {rows[-1]['warm_p50_ms']:6.1f} ms",
                  flush=True)
    finally:
        stack.terminate()
    return rows


def load(url, mix, seconds, threads=16):
    """`threads` clients for `seconds`, each request to a model drawn from `mix`; every answer checked."""
    lat, hot, errors, lock, stop = [], [], [], threading.Lock(), time.monotonic() + seconds
    names, weights = zip(*mix.items())

    def client(seed):
        rnd = random.Random(seed)
        with requests.Session() as s:
            while time.monotonic() < stop:
                name = rnd.choices(names, weights)[0]
                started = time.monotonic()
                try:
                    resp = s.post(f"{url}/{name}", json={"INPUT0": VECTOR}, timeout=60)
                    ok = resp.status_code == 200 and resp.json() == {"OUTPUT0": VECTOR}
                    why = "" if ok else f"{resp.status_code} {resp.text[:80]}"
                except requests.RequestException as exc:
                    ok, why = False, type(exc).__name__
                with lock:
                    (lat if ok else errors).append(time.monotonic() - started if ok else why)
                    if ok and name == COPIES[0]:
                        hot.append(lat[-1])

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.monotonic() - started
    lat.sort()
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {"requests": len(lat), "rps": len(lat) / took, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": lat[-1] * 1000 if lat else float("nan"),
            "hot_p50_ms": statistics.median(hot) * 1000 if hot else float("nan"),
            "errors": len(errors), "error_kinds": sorted(set(errors))[:3]}


MIXES = {"uniform": {m: 1 for m in COPIES},
         "skewed 80/20": {m: (80 if m == COPIES[0] else 20 / (len(COPIES) - 1)) for m in COPIES}}


def budget(workdir, repo, seconds):
    rows = []
    for mode, env in (("all loaded", {"MODEL_LOADING": "all"}),
                      ("on-demand, MAX_LOADED_MODELS=2", {"MODEL_LOADING": "on-demand", "MAX_LOADED_MODELS": 2}),
                      ("on-demand, MAX_LOADED_MODELS=8 (all fit)",
                       {"MODEL_LOADING": "on-demand", "MAX_LOADED_MODELS": 8})):
        stack = Stack(workdir, MODEL_REPOSITORY=repo, GRACE_PERIOD=0, ACCESS_LOG="false", **env).start()
        try:
            for mix_name, mix in MIXES.items():
                load(stack.url, mix, 1)   # warm-up
                before = loads_total(stack) if env["MODEL_LOADING"] == "on-demand" else 0
                point = load(stack.url, mix, seconds)
                point.update(mode=mode, mix=mix_name,
                             loads=(loads_total(stack) - before) if env["MODEL_LOADING"] == "on-demand" else 0)
                rows.append(point)
                print(f"on-demand {mode:32} {mix_name:13} {point['rps']:7.0f} req/s p50 {point['p50_ms']:7.1f} ms "
                      f"p99 {point['p99_ms']:7.1f} ms max {point['max_ms']:7.0f} ms, {point['errors']} errors "
                      f"{point['error_kinds']}, {point['loads']} loads", flush=True)
        finally:
            stack.terminate()
    return rows


def markdown(cold, points, seconds):
    lines = ["## On-demand loading (MODEL_LOADING=on-demand)", "",
             "First request to a cold model (its load, then the answer) beside a warm request, one service:", "",
             "| model | cold first request | warm p50 | cold / warm |", "| --- | --- | --- | --- |"]
    for r in cold:
        lines.append(f"| {r['model']} | {r['cold_ms']:.0f} ms | {r['warm_p50_ms']:.1f} ms | "
                     f"{r['cold_ms'] / r['warm_p50_ms']:.0f}x |")
    lines += ["", f"Six identity models, 16 clients for {seconds} s, every answer checked (the same Python load "
              "generator on both sides):", "",
              "| service | mix | req/s | p50 | p99 | slowest | p50 of identity0 | errors | loads |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in points:
        lines.append(f"| {p['mode']} | {p['mix']} | {p['rps']:.0f} | {p['p50_ms']:.1f} ms | {p['p99_ms']:.1f} ms | "
                     f"{p['max_ms']:.0f} ms | {p['hot_p50_ms']:.1f} ms | {p['errors']} | {p['loads']} |")
    by = {(p["mode"], p["mix"]): p for p in points}
    lines.append("")
    for mix in MIXES:
        a = by.get(("all loaded", mix))
        for mode in dict.fromkeys(m for m, _ in by if m.startswith("on-demand")):
            b = by.get((mode, mix))
            if a and b and a["rps"]:
                lines.append(f"- {mix}, {mode.removeprefix('on-demand, ')}: {b['rps'] / a['rps']:.2f}x the throughput "
                             f"of every model loaded, identity0's p50 {b['hot_p50_ms'] / a['hot_p50_ms']:.2f}x, "
                             f"slowest request {b['max_ms'] / 1000:.1f} s, {b['errors']} failed, {b['loads']} loads")
    return "\n".join(lines) + "\n"


def measure(workdir, seconds):
    repo = repository(workdir)
    cold = cold_and_warm(workdir, repo)
    points = budget(workdir, repo, seconds)
    return markdown(cold, points, seconds), {"cold": cold, "budget": points, "seconds": seconds}




def main():
    standalone("on_demand", __doc__, measure, 20)


if __name__ == "__main__":
    main()
