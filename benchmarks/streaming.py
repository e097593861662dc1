"""The streaming section of `make bench`: a decoupled model (tests/models/tokens, 32 tokens per request, no delay)
through the proxy's Server-Sent Events and straight to Triton's own `generate_stream` endpoint, in the same run,
with the same Python load generator (threads, keep-alive, every stream read to its end and its tokens checked):

- time to first token, p50 and p99, and tokens per second per stream, at c=1, 16 and 64;
- the proxy's CPU per token (its gunicorn processes' utime+stime from /proc);
- the proxy's unary overhead on the same model (one token, not streamed, against Triton's `generate`), the yardstick
  for the time to first token the proxy adds.

    python benchmarks/streaming.py [--seconds 10] [--out benchmarks/results]    (make bench runs it too)
"""
import json
import pathlib
import shutil
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
from measure import proc_cpu, standalone  # noqa: E402

TOKENS = 32
EXPECTED = "".join(f" tok{i}" for i in range(TOKENS))


def repository(workdir):
    repo = workdir / "streaming_repo"
    shutil.copytree(ROOT / "tests" / "models" / "tokens", repo / "tokens",
                    ignore=shutil.ignore_patterns("__pycache__"))
    doc = subprocess.run([sys.executable, "-m", "serving.generate", str(repo)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    (repo / "config.json").write_text(doc)
    return repo


def one_stream(session, side, url):
    """(time to first token, seconds to the end, tokens) of one stream, its text checked."""
    params = json.dumps({"max_tokens": TOKENS})
    started = time.monotonic()
    if side == "proxy":
        resp = session.post(url + "/tokens", json={"text_input": "hi", "sampling_parameters": params},
                            headers={"Accept": "text/event-stream"}, stream=True, timeout=60)
    else:
        resp = session.post(url + "/v2/models/tokens/generate_stream",
                            json={"text_input": "hi", "stream": True, "sampling_parameters": params},
                            stream=True, timeout=60)
    first, text, n = None, [], 0
    for line in resp.iter_lines(decode_unicode=True):
        if not line.startswith("data: "):
            continue
        data = json.loads(line[6:])
        if "text_output" in data:
            if first is None:
                first = time.monotonic() - started
            text.append(data["text_output"])
            n += 1
    took = time.monotonic() - started
    if resp.status_code != 200 or "".join(text) != EXPECTED:
        raise AssertionError(f"{side}: {resp.status_code} {''.join(text)[:80]!r}")
    return first, took, n


def load(side, url, concurrency, seconds):
    results, lock, stop = [], threading.Lock(), time.monotonic() + seconds

    def client():
        with requests.Session() as s:
            while time.monotonic() < stop:
                r = one_stream(s, side, url)
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ttft = sorted(r[0] for r in results)
    return {"streams": len(results), "ttft_p50_ms": ttft[len(ttft) // 2] * 1000,
            "ttft_p99_ms": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))] * 1000,
            "tokens_per_s_per_stream": statistics.median(r[2] / r[1] for r in results),
            "tokens": sum(r[2] for r in results)}


def unary_p50(side, url, n=50):
    params = json.dumps({"max_tokens": 1})
    times = []
    with requests.Session() as s:
        for _ in range(n):
            started = time.monotonic()
            if side == "proxy":
                resp = s.post(url + "/tokens", json={"text_input": "hi", "sampling_parameters": params}, timeout=30)
            else:
                resp = s.post(url + "/v2/models/tokens/generate",
                              json={"text_input": "hi", "stream": False, "sampling_parameters": params}, timeout=30)
            assert resp.status_code == 200 and resp.json()["text_output"] == " tok0", resp.text
            times.append(time.monotonic() - started)
    return statistics.median(times) * 1000


def measure(workdir, seconds, concurrency=(1, 16, 64)):
    stack = Stack(workdir, MODEL_REPOSITORY=repository(workdir), GRACE_PERIOD=0, ACCESS_LOG="false",
                  REQUEST_TIMEOUT=60).start()
    direct = f"http://127.0.0.1:{stack.env['TRITON_HTTP_PORT']}"
    rows = []
    try:
        gunicorn = stack.pids("gunicorn")
        unary = {side: unary_p50(side, url) for side, url in (("proxy", stack.url), ("direct", direct))}
        for c in concurrency:
            point = {"concurrency": c}
            for side, url in (("direct", direct), ("proxy", stack.url)):
                load(side, url, min(c, 4), 1)   # warm-up
                cpu0 = proc_cpu(gunicorn)
                point[side] = load(side, url, c, seconds)
                if side == "proxy":
                    point["proxy_cpu_ms_per_token"] = (proc_cpu(gunicorn) - cpu0) / point[side]["tokens"] * 1000
            point["ttft_added_ms"] = point["proxy"]["ttft_p50_ms"] - point["direct"]["ttft_p50_ms"]
            point["tokens_per_s_ratio"] = (point["proxy"]["tokens_per_s_per_stream"]
                                           / point["direct"]["tokens_per_s_per_stream"])
            rows.append(point)
            print(f"streaming c={c:<3} TTFT p50 proxy {point['proxy']['ttft_p50_ms']:6.1f} ms, direct "
                  f"{point['direct']['ttft_p50_ms']:6.1f} ms | tokens/s per stream x{point['tokens_per_s_ratio']:.2f} "
                  f"| proxy CPU {point['proxy_cpu_ms_per_token']:.3f} ms/token", flush=True)
    finally:
        stack.terminate()
    return rows, unary


def markdown(rows, unary, seconds):
    overhead = unary["proxy"] - unary["direct"]
    lines = ["## Streaming (a decoupled model as Server-Sent Events)", "",
             f"tests/models/tokens, {TOKENS} tokens per stream, no delay; the proxy's SSE beside Triton's own "
             f"generate_stream, {seconds} s per point, the same Python client on both sides. The proxy's unary "
             f"overhead on the same model (one token, not streamed, against Triton's generate): "
             f"{unary['proxy']:.2f} - {unary['direct']:.2f} = {overhead:.2f} ms.", "",
             "| c | TTFT p50 proxy / direct | TTFT p99 proxy / direct | TTFT added | added / unary overhead | "
             "tokens/s per stream, proxy / direct | ratio | proxy CPU per token |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in rows:
        rel = p["ttft_added_ms"] / overhead if overhead > 0 else float("nan")
        lines.append(f"| {p['concurrency']} | {p['proxy']['ttft_p50_ms']:.1f} / {p['direct']['ttft_p50_ms']:.1f} ms | "
                     f"{p['proxy']['ttft_p99_ms']:.1f} / {p['direct']['ttft_p99_ms']:.1f} ms | "
                     f"{p['ttft_added_ms']:.2f} ms | {rel:.2f}x | "
                     f"{p['proxy']['tokens_per_s_per_stream']:.0f} / {p['direct']['tokens_per_s_per_stream']:.0f} | "
                     f"{p['tokens_per_s_ratio']:.2f} | {p['proxy_cpu_ms_per_token']:.3f} ms |")
    lines += ["", "Targets: the time to first token the proxy adds at most 1.2x its unary p50 overhead; tokens/s per "
              "stream at least 0.95x direct at c=16."]
    return "\n".join(lines) + "\n"


def run(workdir, seconds, concurrency=(1, 16, 64)):
    rows, unary = measure(workdir, seconds, concurrency)
    return markdown(rows, unary, seconds), {"points": rows, "unary_p50_ms": unary, "seconds": seconds}


def main():
    standalone("streaming", __doc__, run, 10)


if __name__ == "__main__":
    main()
