"""The LLM section of `make bench`: the shipped SmolLM2 (model_repository/smollm2) streamed through the proxy's
OpenAI route and straight from Triton's own gRPC stream, in the same run, with the field's own load generator on
both sides: perf_analyzer 2.51 (`make bench-tools`), `--service-kind openai --endpoint v1/chat/completions` for the
proxy and `-i grpc --streaming` for Triton. `--profile-export-file` records every response's timestamp, from which
time to first token (TTFT), inter-token latency and tokens/s per stream follow, as genai-perf computes them.

Both sides send the same rendered prompt (the chat template applied by the proxy on one side, by this script on
the other), greedy, 32 tokens with ignore_eos, so every stream is 32 tokens long and the model's work is the same.
The proxy's CPU per token is its gunicorn processes' utime+stime (/proc) over the tokens it streamed.

    python benchmarks/llm.py [--seconds N] [--out benchmarks/results]     (make bench runs it too)
"""
import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from conftest import Stack  # noqa: E402
from measure import proc_cpu, standalone  # noqa: E402
from perf import perf_analyzer  # noqa: E402

TOKENS = 32
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
SAMPLING = {"max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}


def repository(workdir):
    repo = workdir / "llm_repo"
    repo.mkdir()
    (repo / "smollm2").symlink_to(ROOT / "model_repository" / "smollm2")
    doc = subprocess.run([sys.executable, "-m", "serving.generate", str(repo)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    (repo / "config.json").write_text(doc)
    return repo


def inputs(workdir, side):
    """perf_analyzer's --input-data for one side: the same prompt, as the proxy renders it."""
    from serving.handlers.openai import Template
    path = workdir / f"llm_{side}.json"
    if side == "proxy":
        doc = {"data": [{"payload": [{"model": "smollm2", "messages": MESSAGES, "stream": True, **SAMPLING}]}]}
    else:
        prompt = Template(str(ROOT / "model_repository" / "smollm2")).render(MESSAGES)
        doc = {"data": [{"text_input": [prompt], "stream": [True], "exclude_input_in_output": [True],
                         "sampling_parameters": [json.dumps(SAMPLING)]}]}
    path.write_text(json.dumps(doc))
    return path


def run_perf_analyzer(stack, workdir, side, concurrency, requests_n):
    binary, env = perf_analyzer()
    export = workdir / f"llm_{side}_{concurrency}.profile.json"
    export.unlink(missing_ok=True)   # perf_analyzer refuses to overwrite it
    common = ["--input-data", str(inputs(workdir, side)), "--concurrency-range", str(concurrency),
              "--profile-export-file", str(export), "--request-count", str(requests_n)]
    if side == "proxy":
        cmd = [binary, "-m", "smollm2", "--service-kind", "openai", "--endpoint", "v1/chat/completions", "-i", "http",
               "-u", f"127.0.0.1:{stack.port}", "--async", *common]
    else:
        cmd = [binary, "-m", "smollm2", "-i", "grpc", "--streaming", "-u",
               f"127.0.0.1:{stack.env['TRITON_GRPC_PORT']}", *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer ({side}, c={concurrency}) exited {proc.returncode}:\n"
                           f"{proc.stdout[-1500:]}\n{proc.stderr[:1500]}")
    return json.loads(export.read_text())


def token_times(request, side):
    """The arrival times (ns) of a stream's tokens: one per text piece (an SSE write may carry several events)."""
    times = []
    for at, out in zip(request["response_timestamps"], request.get("response_outputs", [])):
        if side == "proxy":
            text = out.get("response", "") if isinstance(out, dict) else str(out)
            pieces = 0
            for line in text.split("\n"):
                if line.startswith("data: {"):
                    choice = (json.loads(line[6:]).get("choices") or [{}])[0]
                    pieces += bool((choice.get("delta") or {}).get("content"))
            times += [at] * pieces
        elif (out.get("text_output") if isinstance(out, dict) else out):   # not the final, empty response
            times.append(at)
    return times


def summarize(profile, side):
    """TTFT, inter-token latency and tokens/s per stream, as genai-perf computes them, from one profile export."""
    requests = [r for e in profile["experiments"] for r in e["requests"]]
    ttft, itl, rates, tokens = [], [], [], 0
    for r in requests:
        times = token_times(r, side)
        if not times:
            raise AssertionError(f"{side}: a stream with no token: {str(r)[:300]}")
        tokens += len(times)
        ttft.append((times[0] - r["timestamp"]) / 1e6)
        if len(times) > 1:
            itl.append((times[-1] - times[0]) / (len(times) - 1) / 1e6)
        rates.append(len(times) / ((times[-1] - r["timestamp"]) / 1e9))
    ttft.sort()
    median = lambda xs: sorted(xs)[len(xs) // 2]   # noqa: E731
    return {"streams": len(requests), "tokens": tokens, "ttft_p50_ms": median(ttft),
            "ttft_p99_ms": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))],
            "itl_p50_ms": median(itl) if itl else 0.0, "tokens_per_s_per_stream": median(rates)}


def measure(workdir, seconds, concurrency=(1, 4, 16)):
    stack = Stack(workdir, MODEL_REPOSITORY=repository(workdir), GRACE_PERIOD=0, ACCESS_LOG="false",
                  REQUEST_TIMEOUT=300).start()
    rows = []
    try:
        gunicorn = stack.pids("gunicorn")
        run_perf_analyzer(stack, workdir, "proxy", 1, 2)   # warm-up: both paths, the model's first calls
        run_perf_analyzer(stack, workdir, "direct", 1, 2)
        for c in concurrency:
            n = max(4, 2 * c) if seconds > 2 else c
            point = {"concurrency": c, "requests": n}
            for side in ("direct", "proxy"):
                cpu0 = proc_cpu(gunicorn)
                point[side] = summarize(run_perf_analyzer(stack, workdir, side, c, n), side)
                if side == "proxy":
                    point["proxy_cpu_ms_per_token"] = (proc_cpu(gunicorn) - cpu0) / point[side]["tokens"] * 1000
            point["ttft_added_ms"] = point["proxy"]["ttft_p50_ms"] - point["direct"]["ttft_p50_ms"]
            point["tokens_per_s_ratio"] = (point["proxy"]["tokens_per_s_per_stream"]
                                           / point["direct"]["tokens_per_s_per_stream"])
            rows.append(point)
            print(f"llm c={c:<3} TTFT p50 proxy {point['proxy']['ttft_p50_ms']:7.1f} ms, direct "
                  f"{point['direct']['ttft_p50_ms']:7.1f} ms | tokens/s per stream {point['proxy']['tokens_per_s_per_stream']:.1f}"
                  f" / {point['direct']['tokens_per_s_per_stream']:.1f} (x{point['tokens_per_s_ratio']:.2f}) | proxy CPU "
                  f"{point['proxy_cpu_ms_per_token']:.3f} ms/token", flush=True)
    finally:
        stack.terminate()
    return rows


def markdown(rows):
    lines = ["## The LLM, streamed (SmolLM2-135M-Instruct through the OpenAI route and straight from Triton)", "",
             f"perf_analyzer 2.51 on both sides: `--service-kind openai --endpoint v1/chat/completions` through the "
             f"proxy, `-i grpc --streaming` straight to Triton; the same rendered prompt, greedy, {TOKENS} tokens per "
             "stream (ignore_eos). TTFT and tokens/s per stream from `--profile-export-file`, as genai-perf computes "
             "them.", "",
             "| c | streams | TTFT p50 proxy / direct | TTFT added | inter-token p50 proxy / direct | "
             "tokens/s per stream, proxy / direct | ratio | proxy CPU per token |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in rows:
        lines.append(f"| {p['concurrency']} | {p['proxy']['streams']} / {p['direct']['streams']} | "
                     f"{p['proxy']['ttft_p50_ms']:.1f} / {p['direct']['ttft_p50_ms']:.1f} ms | "
                     f"{p['ttft_added_ms']:.1f} ms | {p['proxy']['itl_p50_ms']:.1f} / {p['direct']['itl_p50_ms']:.1f} ms"
                     f" | {p['proxy']['tokens_per_s_per_stream']:.1f} / {p['direct']['tokens_per_s_per_stream']:.1f} | "
                     f"{p['tokens_per_s_ratio']:.2f} | {p['proxy_cpu_ms_per_token']:.3f} ms |")
    lines += ["", "Targets: tokens/s per stream at least 0.97x direct at c=16; proxy CPU per streamed token at most "
              "0.03 ms."]
    return "\n".join(lines) + "\n"


def run(workdir, seconds, concurrency=(1, 4, 16)):
    rows = measure(workdir, seconds, concurrency)
    return markdown(rows), {"points": rows, "tokens_per_stream": TOKENS}


def main():
    standalone("llm", __doc__, run, 10)


if __name__ == "__main__":
    main()
