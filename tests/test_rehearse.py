"""make rehearse: the shipped repository passes every phase; each broken case gets its finding, naming the rule and
the fix. The static checks are pure; the rest runs the real stack (and, in test_container.py, the image)."""
import copy
import io
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

sys.path.insert(0, ROOT)
from deploy.rehearse import static  # noqa: E402
from deploy.rehearse.payloads import build, value  # noqa: E402
from deploy.rehearse.report import Report  # noqa: E402

SHIPPED = json.load(open(os.path.join(ROOT, "config.json")))
TEST_MODELS = os.path.join(ROOT, "tests", "models")


def check(doc):
    report = Report(out=io.StringIO())
    report.phase("static checks")
    apis = static.check_config(doc, report)
    return report, apis


EMB = 2   # the shipped config's /embeddings api


def fails(report):
    return [(f.check, f.measured) for f in report.findings if f.level == "FAIL"]


def test_the_shipped_config_passes_the_static_checks():
    report, apis = check(SHIPPED)
    assert fails(report) == []
    assert [a["url"] for a in apis] == ["/", "/generate", "/embeddings", "/v1/chat/completions", "/v1/completions",
                                        "/v1/embeddings", "/v1/models"]
    assert [(f.level, f.check) for f in report.findings] == [("PASS", "config.json")]


def test_an_unknown_key_fails_with_modelarts_3016():
    doc = dict(SHIPPED, extra_setting=1)
    doc["apis"] = copy.deepcopy(SHIPPED["apis"])
    doc["apis"][EMB]["x-triton"] = {"model": "text_embedding"}
    report, apis = check(doc)
    assert fails(report) == [("config.json: fields", "undocumented 'extra_setting'"),
                             ("apis[2] POST /embeddings: fields", "undocumented 'x-triton'")]
    found = [f for f in report.findings if f.level == "FAIL"]
    assert all("ModelArts.3016" in f.rule for f in found)
    assert "MODEL_BINDINGS" in found[0].fix and "protocol, url, method, request, response" in found[1].fix
    assert [a["url"] for a in apis] == ["/", "/generate", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                        "/v1/models"]


def test_a_missing_content_type_fails_and_says_the_spelling():
    doc = copy.deepcopy(SHIPPED)
    del doc["apis"][0]["request"]["Content-type"]
    doc["apis"][EMB]["response"]["Content-Type"] = doc["apis"][EMB]["response"].pop("Content-type")
    report, _ = check(doc)
    assert fails(report) == [("apis[0] POST /: request.Content-type", "missing"),
                             ("apis[2] POST /embeddings: response: fields", "undocumented 'Content-Type'"),
                             ("apis[2] POST /embeddings: response.Content-type", "missing (spelled 'Content-Type')")]
    first = next(f for f in report.findings if f.level == "FAIL")
    assert first.fix == 'add "Content-type": "multipart/form-data" (this spelling)'
    assert "batch services require both" in first.rule


def test_duplicate_urls_and_a_health_url_other_than_health_fail():
    doc = copy.deepcopy(SHIPPED)
    doc["apis"][EMB]["url"] = "/"
    doc["health"]["url"] = "/healthz"
    report, apis = check(doc)
    assert fails(report) == [("url /", "declared by apis [0, 2]"), ("health.url", "'/healthz'")]
    assert [a["url"] for a in apis] == ["/generate", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                        "/v1/models"]
    health = next(f for f in report.findings if f.check == "health.url")
    assert (health.rule, health.fix) == ("the health check is an HTTP GET of /health on port 8080",
                                         'set "url": "/health"')


def test_batch_fitness_says_why_and_prints_the_csv_mapping_rule():
    report = Report(out=io.StringIO())
    report.phase("static checks")
    for api in (SHIPPED["apis"][0], SHIPPED["apis"][EMB]):
        static.batch_fitness(api, report)
    scalar = copy.deepcopy(SHIPPED["apis"][EMB])
    scalar["url"] = "/score"
    scalar["request"]["data"] = {"type": "object", "properties": {"age": {"type": "integer"},
                                                                  "city": {"type": "string"}}}
    static.batch_fitness(scalar, report)
    seen = [(f.level, f.check, f.measured) for f in report.findings]
    assert seen[:4] == [
        ("PASS", "POST /: file-mapped batch", "one file input, 'images'"),
        ("INFO", "POST /: CSV-mapped batch", "cannot serve it: 'images' is file (a CSV column holds one value)"),
        ("INFO", "POST /embeddings: file-mapped batch", "cannot serve it: its one input 'texts' is not a file"),
        ("INFO", "POST /embeddings: CSV-mapped batch", "cannot serve it: 'texts' is array (a CSV column holds one "
                                                       "value)")]
    assert seen[4] == ("INFO", "POST /score: file-mapped batch", "cannot serve it: 2 inputs (age, city)")
    assert seen[5][:2] == ("PASS", "POST /score: CSV-mapped batch")
    rule = json.loads(seen[5][2].removeprefix("mapping_rule: "))
    assert rule == {"type": "object", "properties": {"age": {"type": "integer", "index": 0},
                                                     "city": {"type": "string", "index": 1}}}


def test_requests_are_built_from_the_schema_and_the_model_shapes(tmp_path):
    assert value({"type": "array", "items": {"type": "number"}}, [4]) == [0.5] * 4
    assert value({"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "array"}]}}, [3]) == [0.5] * 3
    assert value({"type": ["integer", "array"], "items": {"type": "integer"}}, [1]) == 1
    assert value({"type": "number", "examples": [41]}, [1]) == 41
    assert build(SHIPPED["apis"][EMB], {"texts": [1]}, {}) == ({"json": {"texts": ["rehearsal"]}}, [])
    assert build(SHIPPED["apis"][0], {}, {}) == ({"files": {}, "data": {}}, ["images"])
    sample = tmp_path / "d.jpg"
    sample.write_bytes(b"\xff\xd8")
    assert build(SHIPPED["apis"][0], {}, {"images": str(sample)}) == ({"files": {"images": ("d.jpg", b"\xff\xd8")},
                                                                       "data": {}}, [])


def rehearse(*args, env=None, timeout=600):
    proc = subprocess.run(["make", "-s", "rehearse", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))
    report = json.load(open(os.path.join(ROOT, "build", "rehearsal", "report.json")))
    return proc, report


def by_check(report):
    return {f["check"]: f for f in report["findings"]}


@pytest.mark.slow   # over a minute by design
def test_the_shipped_repository_passes_every_phase():
    proc, report = rehearse("REHEARSE_GRACE=3")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["verdict"] == "PASS" and report["counts"]["FAIL"] == report["counts"]["WARN"] == 0, proc.stdout
    assert [p["phase"] for p in report["phases"]] == ["static checks", "start and probes", "calls", "rolling upgrade"]
    found = by_check(report)
    assert found["POST /: answer"]["measured"] == ('200, 18 bytes, valid against the response schema (sent '
                                                   'images=seven.jpg) -> {"mnist_result":7}')
    assert found["POST /embeddings: answer"]["level"] == "PASS"
    assert found["POST /embeddings: malformed body"]["measured"].startswith("400 {\"error\"")
    assert found["/health after SIGTERM"]["measured"].startswith("503 after ")
    assert found["exit status"]["measured"] == "0"
    upgrade = found["requests during the stop"]["measured"]
    done, total = upgrade.split(" ")[0].split("/")
    assert done == total and int(total) > 10, upgrade
    assert "rehearse: [4] rolling upgrade ..." in proc.stdout and "rehearse: PASS" in proc.stdout
    md = open(os.path.join(ROOT, "build", "rehearsal", "report.md")).read()
    assert md.startswith("# Rehearsal: PASS") and "## rolling upgrade (" in md


def test_static_only_on_a_broken_config_exits_1_with_the_findings(tmp_path):
    doc = copy.deepcopy(SHIPPED)
    doc["apis"][0]["x-triton"] = {"model": "mnist"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    proc = subprocess.run([sys.executable, "-m", "deploy.rehearse", "--config", str(path), "--static-only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1      # (make rehearse then exits 2, as make does for a failed recipe)
    report = json.load(open(os.path.join(ROOT, "build", "rehearsal", "report.json")))
    assert report["verdict"] == "FAIL" and [p["phase"] for p in report["phases"]] == ["static checks"]
    assert "  FAIL  apis[0] POST /: fields: undocumented 'x-triton'" in proc.stdout
    assert "ModelArts.3016" in proc.stdout


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """A repository with a slow model (41 s), a wide answer (over 8 MB), a file field given no sample, and a
    start-up (4 s in wide's initialize) slower than its health block allows."""
    d = tmp_path_factory.mktemp("broken")
    repo = d / "repo"
    repo.mkdir()
    for model in ("slow", "wide", "filesize"):
        (repo / model).symlink_to(os.path.join(TEST_MODELS, model))
    doc = json.loads(subprocess.run([sys.executable, "-m", "serving.generate", str(repo)], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout)
    props = {a["url"]: a["request"]["data"]["properties"] for a in doc["apis"]}
    props["/slow"]["seconds"]["examples"] = [41]
    props["/wide"]["n"]["examples"] = [1000000]
    doc["health"].update(initial_delay_seconds=1, period_seconds=1, failure_threshold=2)
    (repo / "config.json").write_text(json.dumps(doc))
    proc, report = rehearse(f"MODEL_REPOSITORY={repo}", "REHEARSE_GRACE=3", env={"REQUEST_TIMEOUT": "50"})
    return proc, report


def test_a_start_slower_than_the_probes_fails_with_the_numbers(broken_run):
    proc, report = broken_run
    assert proc.returncode == 2 and "rehearse: FAIL" in proc.stdout
    ready = by_check(report)["time to ready"]
    assert ready["level"] == "FAIL", ready
    assert "but the probes allow 3 s (1 + 1 x 2): all 2 fail" in ready["measured"]
    assert float(ready["measured"].split(" s,")[0]) > 4
    assert '"initial_delay_seconds": ' in ready["fix"]


def test_a_model_slower_than_40_s_fails_through_apig(broken_run):
    _, report = broken_run
    latency = by_check(report)["POST /slow: latency"]
    assert latency["level"] == "FAIL" and 41 <= float(latency["measured"].split(" s")[0]) < 50
    assert latency["rule"] == "APIG fails a prediction after 40 s (ModelArts.4503)"
    assert "asynchronous request mode" in latency["fix"] and "REQUEST_MODE=async" in latency["fix"]


@pytest.mark.slow   # over a minute by design
def test_in_the_asynchronous_request_mode_a_45_s_call_passes_and_its_stop_is_rehearsed(tmp_path):
    """REQUEST_MODE=async: the same kind of call past the gateway's 40 s passes (the platform's task queue holds
    it), and the rolling upgrade, with 45 s calls in flight at the SIGTERM, finishes them; new calls refused with
    503 while the instance stops are what the platform's queue retries, not failures."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "long").symlink_to(os.path.join(TEST_MODELS, "long"))
    doc = json.loads(subprocess.run([sys.executable, "-m", "serving.generate", str(repo)], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout)
    doc["apis"][0]["request"]["data"]["properties"]["seconds"]["examples"] = [45]
    (repo / "config.json").write_text(json.dumps(doc))
    proc, report = rehearse(f"MODEL_REPOSITORY={repo}", "REHEARSE_GRACE=3", env={"REQUEST_MODE": "async"})
    found = by_check(report)
    latency = found["POST /long: latency"]
    assert latency["level"] == "PASS" and 45 <= float(latency["measured"].split(" s")[0]) < 60, latency
    assert "asynchronous request mode" in latency["measured"]
    assert found["requests during the stop"]["level"] == "PASS", found["requests during the stop"]
    assert found["exit status"]["measured"] == "0"
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_a_response_over_8_mb_warns(broken_run):
    _, report = broken_run
    size = by_check(report)["POST /wide: response size"]
    assert size["level"] == "WARN" and float(size["measured"].split(" MB")[0]) > 8
    assert by_check(report)["POST /wide: answer"]["level"] == "PASS"


def test_a_file_field_with_no_sample_fails_naming_the_field_and_the_setting(broken_run):
    _, report = broken_run
    f = by_check(report)["POST /filesize: request"]
    assert (f["level"], f["measured"]) == ("FAIL", "give a sample for field 'file'")
    assert f["fix"] == 'make rehearse SAMPLES="file=path/to/file"'
    assert by_check(report)["POST /filesize: file-mapped batch"]["level"] == "PASS"
    assert by_check(report)["POST /slow: file-mapped batch"]["measured"] == \
        "cannot serve it: its one input 'seconds' is not a file"


def test_the_rolling_upgrade_runs_on_the_apis_that_passed(broken_run):
    _, report = broken_run
    found = by_check(report)
    assert found["requests during the stop"]["level"] == "PASS"
    assert found["requests during the stop"]["measured"].endswith("over 1 api(s)")    # /wide; /slow failed its call
    assert found["exit status"]["measured"] == "0"


def test_https_apis_warn_on_the_health_block_and_mixed_protocols_fail(tmp_path):
    doc = copy.deepcopy(SHIPPED)
    for api in doc["apis"]:
        api["protocol"] = "https"
    report, _ = check(doc)
    assert fails(report) == []
    warn = [f for f in report.findings if f.level == "WARN"]
    assert [(f.check, f.measured) for f in warn] == [("health.protocol", '"http" while the apis say https')]
    assert 'documents the health block\'s protocol as "HTTP" only' in warn[0].rule
    doc["apis"][0]["protocol"] = "http"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    report = Report(out=io.StringIO())
    report.phase("static checks")
    static.check_proxy(str(path), report)
    assert any(f.level == "FAIL" and "apis[0] says http and apis[1] says https" in f.measured for f in report.findings)


def test_an_https_service_is_rehearsed_over_https(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "named").symlink_to(os.path.join(TEST_MODELS, "named"))
    doc = json.loads(subprocess.run([sys.executable, "-m", "serving.generate", str(repo), "--protocol", "https"],
                                    cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    (repo / "config.json").write_text(json.dumps(doc))
    proc, report = rehearse(f"MODEL_REPOSITORY={repo}", "REHEARSE_GRACE=3")
    assert proc.returncode == 0, proc.stdout[-3000:]
    found = by_check(report)
    assert found["POST /named: answer"]["level"] == "PASS", found["POST /named: answer"]
    assert found["POST /named: answer"]["measured"].endswith('-> {"model":"named"}')
    assert found["health.protocol"]["level"] == "WARN"
    assert found["grace period"]["measured"].startswith("3 s (REHEARSE_GRACE), where the platform gives 60 s")
    assert found["exit status"]["measured"] == "0"
    assert "self-signed certificate made for this run" in open(os.path.join(ROOT, "build", "rehearsal",
                                                                            "service.log")).read()


def test_a_service_answering_http_where_the_apis_say_https_fails_with_the_rule():
    """The check against a real plain-HTTP server on the port (what an image that ignores the protocol does)."""
    import http.server
    import threading
    from deploy.rehearse.start import mismatch

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        service = type("S", (), {"url": f"https://127.0.0.1:{server.server_port}"})()
        report = Report(out=io.StringIO())
        report.phase("start and probes")
        assert mismatch(service, report) is True
        (finding,) = report.findings
        assert (finding.level, finding.check) == ("FAIL", "protocol")
        assert finding.measured == "the service answers HTTP on its port (/health: 200), config.json's apis say https"
        assert "ModelArts.4503" in finding.rule
    finally:
        server.shutdown()


def test_a_service_answering_404_on_health_is_given_up_on_after_the_probes_budget(tmp_path):
    """A health url other than /health: the static check FAILs, and the start phase stops once the probes would
    have given up (a service that answers 404 is up and wrong, not slow), not after REHEARSE_STARTUP_WAIT."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "filesize").symlink_to(os.path.join(TEST_MODELS, "filesize"))
    doc = json.loads(subprocess.run([sys.executable, "-m", "serving.generate", str(repo)], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout)
    doc["health"].update(url="/healthz", initial_delay_seconds=1, period_seconds=1, failure_threshold=2)
    (repo / "config.json").write_text(json.dumps(doc))
    started = time.monotonic()
    proc, report = rehearse(f"MODEL_REPOSITORY={repo}", "REHEARSE_GRACE=1", timeout=300)
    assert proc.returncode == 2 and time.monotonic() - started < 90
    ready = by_check(report)["time to ready"]
    assert ready["level"] == "FAIL" and ready["measured"].startswith("not ready after 3 s (last /health: 404 ")
