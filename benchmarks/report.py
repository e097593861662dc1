"""The bench's Markdown report and its plot."""
import datetime
import os
import pathlib
import platform
import statistics


from peers_bench import SERVERS, peers_report

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

def _at(points, workload, c, key="workload"):
    return next((p for p in points if p.get(key) == workload and p["concurrency"] == c and "proxy" in p
                 and "direct" in p), None)


def targets(rows, v2):
    """The pass-through's targets (perf_analyzer's view of a model through :8080), each from this run."""
    out = ["", "| target | this run | goal |", "| --- | --- | --- |"]
    for c, goal in ((8, 0.92), (16, 0.90)):
        p = _at(v2, "mnist", c)
        if p:
            out.append(f"| perf_analyzer `-i http`, MNIST, c={c}, through :8080 / direct | "
                       f"**{p['throughput_ratio']:.2f}** ({p['proxy']['rps']:.0f} / {p['direct']['rps']:.0f}) "
                       f"| >= {goal} |")
    p = _at(rows, "mnist", 16)
    if p:
        grpc = p.get("perf_analyzer_grpc", {}).get("rps")
        out.append(f"| MNIST multipart c=16 (wrk), proxy / direct binary v2 | **{p['throughput_ratio']:.2f}** "
                   f"({p['proxy']['rps']:.0f} / {p['direct']['rps']:.0f}"
                   f"{f'; perf_analyzer gRPC direct {grpc:.0f}' if grpc else ''}) | >= 0.85 |")
    # The v2 side's CPU needs only its proxy side (perf_analyzer has hung on Triton's own HTTP port at c >= 16 here).
    v = next((p for p in v2 if p["workload"] == "identity" and p.get("proxy_cpu_ms_per_request")
              and p["concurrency"] == 16), None)
    r = _at(rows, "identity", 16)
    if v and r:
        out.append(f"| identity c=16, proxy CPU per request, v2 pass-through / predict route | "
                   f"**{v['proxy_cpu_ms_per_request'] / r['proxy_cpu_ms_per_request']:.2f}** "
                   f"({v['proxy_cpu_ms_per_request']:.3f} / {r['proxy_cpu_ms_per_request']:.3f} ms) | <= 1.0 |")
    return out if len(out) > 3 else []


def report(args, rows, health, isolation=None, v2=(), peers=()):
    lat = sorted(ms for _, ms in health)
    health_row = {"samples": len(lat), "non_200": sum(1 for s, _ in health if s != 200),
                  "p50_ms": statistics.median(lat) if lat else None,
                  "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None}
    machine = (f"{datetime.date.today()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
               f"{args.gpu or 'no GPU'}")
    lines = [
        "# Proxy vs direct Triton",
        "",
        f"{machine}; {args.seconds} s per point. proxy = wrk through :8080, direct = wrk on Triton's HTTP API (same "
        "bytes, binary tensor extension for tensors), pa = perf_analyzer over gRPC, direct. Every answer checked. "
        "Load generators share the machine with the server.",
        "",
        "| workload | c | direct req/s | proxy req/s | **proxy/direct** | direct p50 ms | proxy p50 ms | p50 ratio "
        "| direct p99 ms | proxy p99 ms | **proxy CPU ms/req** | RSS/worker MB | pa gRPC req/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d, p = r["direct"], r["proxy"]
        pa = r.get("perf_analyzer_grpc")
        pa_rps = f"{pa['rps']:.0f}" if pa else "-"
        lines.append(f"| {r['workload']} | {r['concurrency']} | {d['rps']:.0f} | {p['rps']:.0f} "
                     f"| **{r['throughput_ratio']:.2f}** | {d['p50_ms']:.2f} | {p['p50_ms']:.2f} | {r['p50_ratio']:.2f} "
                     f"| {d['p99_ms']:.1f} | {p['p99_ms']:.1f} | **{r['proxy_cpu_ms_per_request']:.3f}** "
                     f"| {r['proxy_rss_mb_per_worker']:.0f} | {pa_rps} |")
    if lat:
        lines += ["", f"`GET /health` during the identity c={max(args.concurrency)} proxy load: {health_row['samples']} "
                  f"probes, {health_row['non_200']} not 200, p50 {health_row['p50_ms']:.1f} ms, "
                  f"p99 {health_row['p99_ms']:.1f} ms."]
    if isolation:
        p, d = isolation["proxy"], isolation["direct"]
        lines += ["", f"Isolation: MNIST at c=1, p50 idle and while the embedding model takes 64 concurrent clients: "
                  f"through the proxy {p['mnist_idle_p50_ms']:.1f} -> {p['mnist_busy_p50_ms']:.1f} ms "
                  f"(**x{p['p50_ratio']:.2f}**), straight to Triton {d['mnist_idle_p50_ms']:.1f} -> "
                  f"{d['mnist_busy_p50_ms']:.1f} ms (**x{d['p50_ratio']:.2f}**); no request failed."]
    if v2:
        lines += ["", "## perf_analyzer through the proxy's KServe v2 pass-through", "",
                  "perf_analyzer over HTTP with the same flags against `<proxy>:8080` (`/v2/...`) and against Triton's "
                  "own HTTP port, alternating; the proxy's CPU per request from /proc and Triton's count of inferences.", "",
                  "| model | c | direct req/s | proxy req/s | **proxy/direct** | direct p50 ms | proxy p50 ms "
                  "| direct p99 ms | proxy p99 ms | proxy CPU ms/req |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in v2:
            if "timed_out" in r:
                got = "; ".join(f"{side} {r[side]['rps']:.0f} req/s, p50 {r[side]['p50_ms']:.2f} ms"
                                for side in ("direct", "proxy") if side in r)
                lines.append(f"| {r['model']} | {r['concurrency']} | perf_analyzer did not finish against "
                             f"{' and '.join(r['timed_out'])} ({got or 'no side measured'}) | | | | | | | |")
                continue
            d, p = r["direct"], r["proxy"]
            lines.append(f"| {r['model']} | {r['concurrency']} | {d['rps']:.0f} | {p['rps']:.0f} "
                         f"| **{r['throughput_ratio']:.2f}** | {d['p50_ms']:.2f} | {p['p50_ms']:.2f} "
                         f"| {d['p99_ms']:.2f} | {p['p99_ms']:.2f} | {r.get('proxy_cpu_ms_per_request', 0):.3f} |")
        lines += targets(rows, v2)
    lines += peers_report(peers)
    return "\n".join(lines) + "\n", {"machine": machine, "seconds": args.seconds, "points": rows,
                                      "health_under_load": health_row, "isolation": isolation, "v2": list(v2),
                                      "peers": list(peers)}


def _dress(axes, col, cs, title, lower, fontsize=None):
    """One column of the plot: requests/s above, `lower` below, concurrency on a log scale."""
    axes[0][col].set_title(title)
    axes[0][col].set_ylabel("requests/s")
    axes[1][col].set_ylabel(lower)
    for ax in (axes[0][col], axes[1][col]):
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=fontsize)


def plot(rows, path, peers=()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["workload"] for r in rows))
    ident = [r for r in peers if r["workload"] == "identity"]
    fig, axes = plt.subplots(2, len(names) + bool(ident), figsize=(4.5 * (len(names) + bool(ident)), 7),
                             squeeze=False)
    if ident:   # the last column: identity per worker, the proxy beside the floor and the peers
        col, cs = len(names), [r["concurrency"] for r in ident]
        for side in [s for s in SERVERS if s in ident[0] and s != "direct"]:
            label = {"proxy": "proxy (1 worker)", "fastapi": "FastAPI peer", "handrolled": "hand-rolled",
                     "floor": "Flask floor (no Triton)"}[side]
            axes[0][col].plot(cs, [r[side]["rps"] for r in ident], "s-" if side == "proxy" else "o--", label=label)
            axes[1][col].plot(cs, [r[side]["cpu_ms_per_request"] for r in ident], "s-" if side == "proxy" else "o--",
                              label=label)
        _dress(axes, col, cs, "identity, per worker", "CPU ms per request", fontsize=7)
    for col, name in enumerate(names):
        pts = [r for r in rows if r["workload"] == name]
        cs = [r["concurrency"] for r in pts]
        for side, style in (("direct", "o--"), ("proxy", "s-")):
            axes[0][col].plot(cs, [r[side]["rps"] for r in pts], style, label=side)
            axes[1][col].plot(cs, [r[side]["p50_ms"] for r in pts], style, label=side)
        _dress(axes, col, cs, name, "p50 latency (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def results_dir(smoke):
    """Where a run writes by default: a smoke run never overwrites the committed results."""
    return ROOT / "build" / "bench-smoke" if smoke else HERE / "results"
