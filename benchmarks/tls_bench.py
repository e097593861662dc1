"""The identity route over HTTPS beside plain HTTP (docs/https.md)."""
import json
import pathlib
import statistics

from conftest import Stack  # noqa: E402
from measure import proc_cpu
from loads import build_repository, first_answer, workloads, wrk

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

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
