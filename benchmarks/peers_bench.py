"""Per worker and per container, the proxy beside what a user would run instead (benchmarks/peers/): the same
Triton, the same wrk, the same run, alternating order."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from conftest import Stack  # noqa: E402
from measure import free_port, proc_cpu, rss_mb, session_pids
from loads import Side, build_repository, first_answer, workloads, wrk

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

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
