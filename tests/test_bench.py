"""The benchmark runs end to end: every workload, through the proxy and straight to Triton, every answer checked.
It never judges a number (machines here are noisy); `make bench` is where numbers are made."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, require


@pytest.mark.slow   # over a minute by design
def test_bench_smoke_runs_every_workload_with_right_answers(tmp_path):
    require("wrk")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench.py"), "--smoke",
                           "--out", str(tmp_path), "--name", "smoke"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "smoke.json").read_text())
    points = {(p["workload"], p["concurrency"]) for p in doc["points"]}
    assert points == ({(w, c) for w in ("mnist", "identity", "resnet") for c in (1, 4)}
                      | {("embeddings", 4), ("embeddings_nobatch", 4)})
    for p in doc["points"]:
        assert p["proxy"]["requests"] > 0 and p["direct"]["requests"] > 0
        assert p["proxy_cpu_ms_per_request"] > 0
    # Per worker, beside the floor and the peers, every answer checked by wrk.
    peers = {(p["workload"], p["concurrency"]): p for p in doc["peers"]}
    assert set(peers) == {("identity", 4), ("resnet", 4)}
    assert set(peers[("identity", 4)]) >= {"direct", "proxy", "fastapi", "handrolled", "floor"}
    for p in peers.values():
        for side in ("proxy", "fastapi", "floor"):
            assert p[side]["requests"] > 0 and p[side]["cpu_ms_per_request"] > 0
    assert "Per worker, beside what a user would run instead" in (tmp_path / "smoke.md").read_text()
    # On-demand loading: a cold and a warm answer per model, four load points with every answer right.
    assert [r["model"] for r in doc["on_demand"]["cold"]] == ["mnist", "text_embedding"]
    assert all(r["cold_ms"] > r["warm_p50_ms"] > 0 for r in doc["on_demand"]["cold"])
    points = doc["on_demand"]["budget"]
    assert [(p["mode"].split(",")[0], p["mix"]) for p in points] == [
        ("all loaded", "uniform"), ("all loaded", "skewed 80/20"), ("on-demand", "uniform"),
        ("on-demand", "skewed 80/20")] + [("on-demand", "uniform"), ("on-demand", "skewed 80/20")]
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in points), points
    assert points[2]["loads"] > 0
    assert "## On-demand loading" in (tmp_path / "smoke.md").read_text()
    # Streaming: both sides read every stream to its end, tokens checked; TTFT and tokens/s on both.
    points = doc["streaming"]["points"]
    assert [p["concurrency"] for p in points] == [1, 4]
    for p in points:
        for side in ("proxy", "direct"):
            assert p[side]["streams"] > 0 and p[side]["tokens"] == 32 * p[side]["streams"]
            assert 0 < p[side]["ttft_p50_ms"] <= p[side]["ttft_p99_ms"]
        assert p["proxy_cpu_ms_per_token"] > 0
    assert "## Streaming" in (tmp_path / "smoke.md").read_text()
    # The LLM streamed through the OpenAI route and straight from Triton, perf_analyzer both sides: every stream
    # 32 tokens long on both.
    (point,) = doc["llm"]["points"]
    for side in ("proxy", "direct"):
        assert point[side]["streams"] >= 1 and point[side]["tokens"] == 32 * point[side]["streams"]
        assert 0 < point[side]["ttft_p50_ms"] and point[side]["tokens_per_s_per_stream"] > 0
    assert "## The LLM, streamed" in (tmp_path / "smoke.md").read_text()
    assert (tmp_path / "smoke.png").stat().st_size > 10_000


def test_a_smoke_run_never_writes_the_committed_results():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench
    assert bench.results_dir(True) == bench.ROOT / "build" / "bench-smoke"
    assert bench.results_dir(False) == bench.ROOT / "benchmarks" / "results"


def test_make_perf_writes_typed_zeros_for_numeric_inputs():
    """perf_analyzer refuses `--input-data` whose values are not of the input's type ("unable to find float data in
    json"): an FP32 input gets 0.0, an integer one 0, a BOOL one false, each in the item's shape."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import perf
    meta = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                       {"name": "n", "datatype": "INT64", "shape": [2]},
                       {"name": "b", "datatype": "BOOL", "shape": [1]}]}
    (item,) = perf.input_data("m", meta, {})["data"]
    assert item == {"x": {"content": [0.0] * 4, "shape": [4]}, "n": {"content": [0, 0], "shape": [2]},
                    "b": {"content": [False], "shape": [1]}}
    assert json.dumps(item["x"]["content"]) == "[0.0, 0.0, 0.0, 0.0]"
