"""Hostile input: the corpus in tests/hostile.py (every case a 4xx JSON error, no 5xx, no hang, the service healthy
after it), then fuzzing of every route from the service's own /openapi.json with schemathesis (fixed seed, no 5xx,
every answer as documented)."""
import json
import os
import socket
import time

import pytest
import requests

import hostile
from conftest import ROOT, body

HOSTILE_CONFIG = os.path.join(ROOT, "tests", "data", "config.hostile.json")
FUZZ_EXAMPLES = 50   # per operation and mode (schema-valid, schema-breaking); hypothesis stops early where an
                     # operation has fewer distinct inputs (/health, /metrics)


@pytest.fixture(scope="module")
def hostile_stack(new_stack_module):
    return new_stack_module(MODELARTS_CONFIG=HOSTILE_CONFIG, MAX_BODY_MB=str(hostile.LIMIT_MB))


def exchange(port, raw, timeout=20):
    """Send raw bytes; (status, headers, body) of the answer. Fails on a hang (no answer within `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):   # the server answered and closed before all was sent
            pass
        data = b""
        started = time.monotonic()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                if "content-length" in headers and len(rest) >= int(headers["content-length"]):
                    break
            assert time.monotonic() - started < timeout, "no complete answer"
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:300]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


@pytest.mark.parametrize("name,raw,status,error", hostile.CASES, ids=[c[0] for c in hostile.CASES])
def test_hostile_input_gets_a_4xx_json_error(hostile_stack, name, raw, status, error):
    got, headers, data = exchange(hostile_stack.port, raw)
    assert headers.get("content-type", "").startswith("application/json"), (name, got, headers, data[:300])
    doc = json.loads(data)
    assert (got, list(doc)) == (status, ["error"]), (name, doc)
    assert doc["error"].startswith(error), (name, doc)


def test_the_corpus_is_large_and_covers_every_route():
    assert len(hostile.CASES) >= 30
    raws = b"\n".join(raw for _, raw, _, _ in hostile.CASES)
    for route in (b"POST / ", b"POST /embeddings ", b"POST /v1/mnist/json "):
        assert route in raws


def test_still_healthy_and_right_after_the_corpus(hostile_stack, held_out):
    from conftest import encode
    for _, raw, _, _ in hostile.CASES:   # the whole corpus once more, back to back
        exchange(hostile_stack.port, raw)
    resp = requests.get(hostile_stack.url + "/health", timeout=5)
    assert (resp.status_code, body(resp)) == (200, {"health": "true"})
    x, y = held_out
    resp = requests.post(hostile_stack.url + "/", files={"images": ("d.png", encode(x[3]))}, timeout=30)
    assert (resp.status_code, body(resp)) == (200, {"mnist_result": int(y[3])})
    resp = requests.post(hostile_stack.url + "/embeddings", json={"texts": ["still here"]}, timeout=30)
    assert resp.status_code == 200 and len(body(resp)["embeddings"][0]) == 384
    log = hostile_stack.log()
    assert "Traceback" not in log and "unhandled error" not in log


def test_fuzz_every_route_from_openapi_json(hostile_stack):
    """schemathesis, from the document the service serves: no 5xx, status codes, content types and bodies as
    documented. Generation is derandomized (hypothesis' fixed seed per test), so a failure reproduces."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import checks as sc

    schema = schemathesis.openapi.from_url(hostile_stack.url + "/openapi.json")
    calls, statuses, failures = [0], {}, []
    checks = [sc.not_a_server_error, sc.status_code_conformance, sc.content_type_conformance,
              sc.response_schema_conformance]

    def fuzz(op, mode):
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(op.as_strategy(mode))
        def run(case):
            response = case.call(base_url=hostile_stack.url, timeout=30)
            calls[0] += 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            try:
                case.validate_response(response, checks=checks)
            except Exception as exc:   # collected, so the report names every failing case
                failures.append(f"{mode.value} {op.method.upper()} {op.path}: {exc}"[:1500])

        run()

    for operation in schema.get_all_operations():
        # Bodies that match the schema, then bodies that break it (wrong types, missing fields, extra ones).
        op = operation.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            if mode is schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET":
                continue   # /health and /metrics take no input: there is nothing to break
            fuzz(op, mode)
    print(f"\nfuzzing: {calls[0]} calls, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures[:5])
    assert calls[0] >= 200
    assert not any(code >= 500 for code in statuses)
    resp = requests.get(hostile_stack.url + "/health", timeout=5)
    assert resp.status_code == 200
