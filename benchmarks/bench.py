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
import json
import os
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time

import requests
import urllib3

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)   # the https section's self-signed pair

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Stack  # noqa: E402  (the tests' way of starting run.sh)
from loads import build_repository, first_answer, perf_analyzer, probe_health, workloads, wrk  # noqa: E402
from measure import proc_cpu, rss_mb  # noqa: E402
from peers_bench import containers_report, measure_peers  # noqa: E402
from report import plot, report, results_dir  # noqa: E402
from tls_bench import measure_tls, tls_report  # noqa: E402

sys.path.insert(0, str(ROOT))
try:
    from serving.settings import available_cpus  # noqa: E402  (the product's default worker count)
except ImportError:   # an older tree, benchmarked for a before/after comparison
    available_cpus = os.cpu_count


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


def inferences(direct, model):
    """How many inferences Triton has run of `model` (its statistics API): perf_analyzer's own count is not kept."""
    stats = requests.get(f"{direct}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
    return sum(s["inference_count"] for s in stats)


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
                gunicorn, served = stack.pids("gunicorn"), inferences(direct, spec["model"])
                cpu0 = proc_cpu(gunicorn)
                measured = perf_analyzer(spec, url.replace("http://", ""), c, args.seconds, workdir, "http")
                if side == "proxy" and measured not in (None, "timeout"):   # the proxy's CPU per v2 request
                    # (Triton's count: perf_analyzer's own is not kept; its warm-up calls count too, on both sides)
                    point["proxy_cpu_ms_per_request"] = ((proc_cpu(gunicorn) - cpu0) * 1000
                                                         / max(1, inferences(direct, spec["model"]) - served))
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
                  f"p50 {point['direct']['p50_ms']:6.2f} ms | ratio {point['throughput_ratio']:.2f} | proxy CPU "
                  f"{point.get('proxy_cpu_ms_per_request', float('nan')):.3f} ms/req", flush=True)
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
    parser.add_argument("--v2-concurrency", type=int, nargs="+", default=[1, 8, 16, 32])
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
