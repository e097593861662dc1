"""/metrics (the proxy's series summed over workers, then Triton's), /openapi.json, and the settings that turn
/metrics and the v2 pass-through off."""
import os
import re
import signal
import time

import requests

from conftest import ROOT, body

with open(os.path.join(ROOT, "tests", "data", "seven.jpg"), "rb") as _f:
    SEVEN = _f.read()


def scrape(url):
    resp = requests.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return resp.text


def value(text, name, **labels):
    """The sample's value, or 0 when the series does not exist yet."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if got == labels:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


FLUSH_S = 1.0   # serving/metrics.py: each worker publishes its counts once a second, and when it answers a scrape


def test_requests_are_counted_across_workers(stack):
    time.sleep(FLUSH_S + 0.5)   # earlier tests' requests are all published
    before = scrape(stack.url)
    for _ in range(20):   # new connections: both workers take some
        with requests.Session() as s:
            assert s.post(stack.url + "/", files={"images": ("7.jpg", SEVEN)}, timeout=30).json() == {"mnist_result": 7}
    assert requests.post(stack.url + "/", data=b"x", timeout=10).status_code == 415
    assert requests.get(stack.url + "/no/such/path", timeout=10).status_code == 404
    assert requests.post(stack.url + "/v2/repository/index", timeout=10).status_code == 403
    # Whichever worker answers the scrape, the sums are the same.
    time.sleep(FLUSH_S + 0.5)
    for _ in range(4):
        with requests.Session() as s:
            after = s.get(stack.url + "/metrics", timeout=10).text
        ok = dict(url="/", method="POST", status="200")
        assert value(after, "proxy_requests_total", **ok) - value(before, "proxy_requests_total", **ok) == 20
        bad = dict(url="/", method="POST", status="415")
        assert value(after, "proxy_requests_total", **bad) - value(before, "proxy_requests_total", **bad) == 1
        other = dict(url="other", method="GET", status="404")
        assert value(after, "proxy_requests_total", **other) - value(before, "proxy_requests_total", **other) == 1
        refused = dict(url="/v2 (refused)", method="POST", status="403")
        assert value(after, "proxy_requests_total", **refused) - value(before, "proxy_requests_total", **refused) == 1
        count = "proxy_request_duration_seconds_count"
        assert value(after, count, url="/") - value(before, count, url="/") == 21
        inf = value(after, "proxy_request_duration_seconds_bucket", url="/", le="+Inf")
        assert inf == value(after, count, url="/")
        assert value(after, "proxy_inflight_requests") == 0.0   # a scrape does not count itself
    # Triton's own series follow in the same scrape.
    assert re.search(r'^nv_inference_request_success\{model="mnist",version="1"\} \d+', after, re.M)


def test_openapi_document_is_valid_and_describes_every_api(stack):
    from openapi_spec_validator import validate
    resp = requests.get(stack.url + "/openapi.json", timeout=10)
    assert resp.status_code == 200
    doc = body(resp)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {"/", "/embeddings", "/generate", "/v1/chat/completions", "/v1/completions",
                                 "/v1/embeddings", "/v1/models", "/health", "/metrics"}
    models = doc["paths"]["/v1/models"]["get"]   # a GET api: no request body
    assert "requestBody" not in models and "OpenAI-compatible" in models["description"]
    generate = doc["paths"]["/generate"]["post"]   # a decoupled model: JSON, or Server-Sent Events when asked
    assert set(generate["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    mnist = doc["paths"]["/"]["post"]
    assert mnist["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["images"] == {
        "type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    assert mnist["responses"]["200"]["content"]["application/json"]["schema"]["properties"] == {
        "mnist_result": {"type": "integer"}}
    assert sorted(mnist["responses"]) == ["200", "400", "404", "405", "413", "415", "503", "504"]
    embeddings = doc["paths"]["/embeddings"]["post"]
    assert embeddings["requestBody"]["content"]["application/json"]["schema"]["properties"]["texts"] == {
        "type": "array", "items": {"type": "string"}}
    assert doc["components"]["schemas"]["Error"]["required"] == ["error"]
    assert set(doc["paths"]["/health"]["get"]["responses"]) == {"200", "503"}


def test_triton_errors_are_counted_by_kind(new_stack):
    s = new_stack(REQUEST_TIMEOUT="1", WORKERS="1")
    triton = s.triton_pid()
    os.kill(triton, signal.SIGSTOP)   # Triton still there, answering nothing
    try:
        started = time.monotonic()
        resp = requests.post(s.url + "/", files={"images": ("7.jpg", SEVEN)}, timeout=10)
        took = time.monotonic() - started
        assert (resp.status_code, body(resp)) == (504, {"error": "inference did not finish within 1 s"})
        assert took < 2.0
        resp = requests.post(s.url + "/v2/models/mnist/infer", json={"inputs": []}, timeout=10)
        assert (resp.status_code, body(resp)) == (504, {"error": "inference server did not answer within 1 s"})
    finally:
        os.kill(triton, signal.SIGCONT)
    text = scrape(s.url)
    assert value(text, "proxy_triton_errors_total", kind="deadline") == 2
    # Triton answers again, and so does the proxy.
    assert requests.post(s.url + "/", files={"images": ("7.jpg", SEVEN)}, timeout=30).json() == {"mnist_result": 7}


def test_metrics_and_v2_can_be_turned_off(new_stack):
    s = new_stack(METRICS="false", KSERVE_V2="false")
    for path in ("/metrics", "/v2/health/ready", "/v2/models/mnist/infer"):
        resp = requests.get(s.url + path, timeout=10)
        assert (resp.status_code, body(resp)) == (404, {"error": f"no route for {path}"})
    assert "/metrics" not in body(requests.get(s.url + "/openapi.json", timeout=10))["paths"]
    resp = requests.post(s.url + "/", files={"images": ("7.jpg", SEVEN)}, timeout=30)
    assert resp.json() == {"mnist_result": 7}
