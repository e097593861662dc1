"""Phase 3, calls: every api with a request built from its schema, checked for status, response schema, latency,
body sizes and a 4xx JSON answer to a malformed body."""
import json
import time

import requests

from . import payloads, platform as P
from .start import get

MB = 1024 * 1024

def model_inputs(service):
    """{url: {input: item dims}} from /openapi.json's x-triton-model and Triton's config (v2 pass-through), and the
    urls that can answer as a stream (text/event-stream)."""
    found, streams = {}, set()
    try:
        spec = requests.get(service.url + "/openapi.json", timeout=10, verify=False).json()
    except (requests.RequestException, ValueError):
        return found, streams
    for url, ops in spec.get("paths", {}).items():
        for op in ops.values():
            if "text/event-stream" in ((op.get("responses") or {}).get("200") or {}).get("content", {}):
                streams.add(url)
            model = (op.get("x-triton-model") or {}).get("name")
            if not model:
                continue
            try:
                cfg = requests.get(f"{service.url}/v2/models/{model}/config", timeout=10, verify=False).json()
                found[url] = {i["name"]: [int(d) for d in i.get("dims", [])] for i in cfg.get("input", [])}
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
    return found, streams


def streamed_call(service, api, kwargs, report, where):
    """An api that may stream: the whole stream, to its final event, against the gateway's 40 s."""
    openai_route = api["url"].endswith(("/v1/chat/completions", "/v1/completions"))
    if openai_route:
        kwargs = dict(kwargs, json=dict(kwargs.get("json", {}), stream=True))
    started = time.monotonic()
    try:
        resp = requests.post(service.url + api["url"], headers={"Accept": "text/event-stream"}, stream=True, verify=False,
                             timeout=P.SYNC_TIMEOUT_S + 10, **kwargs)
        lines = [line for line in resp.iter_lines(decode_unicode=True) if line]
    except requests.RequestException as exc:
        report.add("FAIL", f"{where}: stream", f"no answer ({type(exc).__name__})", "sync_time")
        return
    took = time.monotonic() - started
    events = [line for line in lines if line.startswith(("data:", "event:"))]
    ended = ("data: [DONE]" in lines) if openai_route else ("event: end" in lines)
    failed = "event: error" in lines or any('"error"' in line for line in events[-2:])
    if resp.status_code != 200 or not ended or failed:
        report.add("FAIL", f"{where}: stream", f"{resp.status_code}, {len(events)} event lines, "
                   f"{'no final event' if not ended else 'an error event'}: {(events or ['-'])[-1][:200]}",
                   "status", "see build/rehearsal/service.log")
    elif took > P.APIG_TIMEOUT_S:
        report.add("FAIL", f"{where}: stream", f"the whole stream took {took:.1f} s", "apig_time",
                   "end the stream within 40 s (fewer tokens), or raise the service's own timeout")
    else:
        report.add("PASS", f"{where}: stream", f"{len(events)} event lines to the final event in {took * 1000:.0f} ms "
                   f"(APIG allows {P.APIG_TIMEOUT_S} s for the whole stream)", "apig_time")


def call(service, api, kwargs, timeout):
    method = str(api.get("method", "post")).upper()
    started = time.monotonic()
    try:
        resp = requests.request(method, service.url + api["url"], timeout=timeout, verify=False, **kwargs)
    except requests.RequestException as exc:
        return None, time.monotonic() - started, exc
    return resp, time.monotonic() - started, None


def body_size(kwargs):
    req = requests.Request("POST", "http://x/", **kwargs).prepare()
    return len(req.body or b"")


def calls_phase(service, apis, samples, report):
    """Every api once, as a client would; returns {url: (api, kwargs, answer)} for the apis that answered right."""
    shapes, streams = model_inputs(service)
    answered = {}
    for api in apis:
        mark = len(report.findings)
        got = _call_api(service, api, shapes.get(api["url"], {}), api["url"] in streams, samples, report)
        if got is not None and not any(f.level == "FAIL" for f in report.findings[mark:]):
            answered[api["url"]] = got   # the rolling upgrade loads what passed
    resp, _ = get(service.url + "/health", 5)
    healthy = isinstance(resp, requests.Response) and resp.status_code == 200
    report.add("PASS" if healthy else "FAIL", "/health after the calls",
               resp.status_code if isinstance(resp, requests.Response) else type(resp).__name__, "bad_input")
    return answered


def _call_api(service, api, shapes, streams, samples, report):
    """One api's call, its stream if it has one, and a malformed body: (api, kwargs, answer), or None."""
    where = f"{str(api.get('method', 'post')).upper()} {api['url']}"
    kwargs, missing = payloads.build(api, shapes, samples)
    if missing:
        files = " ".join(f"{m}=path/to/file" for m in missing)
        report.add("FAIL", f"{where}: request", f"give a sample for field {', '.join(map(repr, missing))}",
                   "sample", f'make rehearse SAMPLES="{files}"')
        return None
    size = body_size(kwargs)
    if size > P.APIG_BODY_MB * MB:
        report.add("FAIL", f"{where}: request size", f"{size / MB:.1f} MB", "body_apig", "send a smaller body")
    elif size > P.CONSOLE_BODY_MB * MB:
        report.add("WARN", f"{where}: request size", f"{size / MB:.1f} MB", "body_console",
                   "the console cannot send it; clients through APIG can")
    asynchronous = P.request_mode() == "async"
    resp, took, exc = call(service, api, kwargs, (P.async_deadline() if asynchronous else P.SYNC_TIMEOUT_S) + 10)
    if resp is None:
        report.add("FAIL", f"{where}: answer", f"no answer after {took:.1f} s ({type(exc).__name__})", "sync_time",
                   "see build/rehearsal/service.log")
        return None
    if asynchronous and took > P.APIG_TIMEOUT_S:
        report.add("PASS", f"{where}: latency", f"{took:.1f} s (asynchronous request mode: the platform's task queue "
                   "holds the call, and its task timeout is the limit)", "async_time")
    elif took > P.SYNC_TIMEOUT_S:
        report.add("FAIL", f"{where}: latency", f"{took:.1f} s", "sync_time",
                   "answer well within 40 s, or create the model in the asynchronous request mode and serve it with "
                   "REQUEST_MODE=async (docs/long-running.md)")
    elif took > P.APIG_TIMEOUT_S:
        report.add("FAIL", f"{where}: latency", f"{took:.1f} s", "apig_time",
                   "answer within 40 s (a smaller batch, a faster model), or create the model in the asynchronous "
                   "request mode and serve it with REQUEST_MODE=async (docs/long-running.md)")
    else:
        report.add("PASS", f"{where}: latency", f"{took * 1000:.0f} ms (APIG allows {P.APIG_TIMEOUT_S} s)",
                   "apig_time")
    ok, answer = _check_answer(resp, api, kwargs, where, report)
    if not ok:
        return None
    if str(api.get("method", "post")).upper() == "GET":   # no body: nothing to stream, nothing to break
        return api, kwargs, answer
    if streams:
        streamed_call(service, api, kwargs, report, where)
    resp, _, _ = call(service, api, payloads.malformed(api), 30)
    ok = resp is not None and 400 <= resp.status_code < 500 and _is_error_json(resp)
    report.add("PASS" if ok else "FAIL", f"{where}: malformed body",
               f"{resp.status_code} {resp.text[:160]}" if resp is not None else "no answer", "bad_input",
               "" if ok else "answer bad input with a 4xx JSON error")
    return api, kwargs, answer


def _check_answer(resp, api, kwargs, where, report):
    """The answer's status, size and schema: (True, its JSON) when it is right, else (False, None) and a FAIL."""
    import jsonschema
    if resp.status_code != 200:
        report.add("FAIL", f"{where}: status", f"{resp.status_code} {resp.text[:300]}", "status",
                   "see build/rehearsal/service.log" + (f"; sent {json.dumps(kwargs['json'])[:200]}"
                                                        if "json" in kwargs else ""))
        return False, None
    length = len(resp.content)
    if length > P.CONSOLE_BODY_MB * MB:
        report.add("WARN", f"{where}: response size", f"{length / MB:.1f} MB", "body_console",
                   "the console's Prediction tab shows at most 8 MB; answer with less (or a URL on OBS)")
    try:
        answer = resp.json()
        jsonschema.validate(answer, api["response"]["data"])
    except ValueError as exc:
        report.add("FAIL", f"{where}: response schema", f"not JSON: {exc}", "schema", "answer with JSON")
        return False, None
    except jsonschema.ValidationError as exc:
        report.add("FAIL", f"{where}: response schema", f"{exc.message} at {list(exc.absolute_path)}", "schema",
                   "make the response schema describe what the model answers (make config writes it)")
        return False, None
    sent = (", ".join(f"{k}={v[0]}" for k, v in kwargs.get("files", {}).items())
            or json.dumps(kwargs.get("json", kwargs.get("data")))[:120])
    shown = f" -> {resp.text}" if length <= 120 else ""
    report.add("PASS", f"{where}: answer", f"200, {length} bytes, valid against the response schema "
               f"(sent {sent}){shown}", "schema")
    return True, answer


def _is_error_json(resp):
    try:
        return isinstance(resp.json(), dict)
    except ValueError:
        return False


def _stable(answer):
    """An answer without what differs by design from call to call (an OpenAI answer's id and created)."""
    return {k: v for k, v in answer.items() if k not in ("id", "created")} if isinstance(answer, dict) else answer
