"""make rehearse: run a service the way ModelArts will, and say what would fail there.

    python -m deploy.rehearse [--config PATH] [--model-repository DIR] [--image NAME[:TAG]] [--samples "f=path ..."]

1. static checks: config.json against the specification (and the image's user, entry, port, size, folders);
2. start: the local stack as `make serve` runs it, or the image as the platform runs it, probed on config.json's
   health schedule (the console's defaults where it says nothing): time to ready against what the probes allow;
3. calls: every api, with a request built from its schema, checked for status, response schema, latency (40 s
   through APIG, 60 s in all), body sizes (12 MB, 8 MB) and a 4xx JSON answer to a malformed body;
4. rolling upgrade: load on every api, then SIGTERM: /health 503 within a probe period, every request answered,
   the stop within the grace period + 90 s, exit status 0.

The report goes to stdout and to build/rehearsal/report.md and report.json; the exit status is 1 if anything FAILs.
"""
import argparse
import json
import os
import shlex
import sys
import threading
import time

import requests
import urllib3

from . import payloads, platform as P, static
from .report import Report
from .service import ROOT, Image, Local

MB = 1024 * 1024


def config_path(args):
    if args.config:
        return args.config
    if args.model_repository and os.path.isfile(os.path.join(args.model_repository, "config.json")):
        return os.path.join(args.model_repository, "config.json")
    return os.path.join(ROOT, "config.json")


def probe_settings(doc):
    health = doc.get("health") if isinstance(doc.get("health"), dict) else {}
    settings, defaulted = {}, []
    for key, default in P.PROBE_DEFAULTS.items():
        value = health.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= (0 if "delay" in key else 1):
            settings[key] = value
        else:
            settings[key], _ = default, defaulted.append(key)
    return settings, defaulted


urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)   # https: the service's self-signed pair


def get(url, timeout):
    started = time.monotonic()
    try:
        resp = requests.get(url, timeout=timeout, verify=False)
        return resp, time.monotonic() - started
    except requests.RequestException as exc:
        return exc, time.monotonic() - started


def mismatch(service, report):
    """True (and a FAIL) when the service answers /health in the other protocol than config.json's apis say."""
    said, _, rest = service.url.partition("://")
    other = "http" if said == "https" else "https"
    resp, _ = get(f"{other}://{rest}/health", 5)
    if not isinstance(resp, requests.Response):
        return False
    report.add("FAIL", "protocol", f"the service answers {other.upper()} on its port (/health: {resp.status_code}), "
               f"config.json's apis say {said}", "protocol",
               'make every api\'s "protocol" in config.json what the container speaks, and create the model with '
               "that container API protocol")
    return True


def start_phase(service, doc, report, wait_limit):
    """Start the service, poll /health, and judge the time to ready against the platform's probe schedule."""
    probes, defaulted = probe_settings(doc)
    delay, period, timeout, threshold = (probes["initial_delay_seconds"], probes["period_seconds"],
                                         probes["timeout_seconds"], probes["failure_threshold"])
    budget = delay + period * threshold
    schedule = (f"initial_delay_seconds {delay}, period_seconds {period}, failure_threshold {threshold}, "
                f"timeout_seconds {timeout}" + (f" (console defaults for {', '.join(defaulted)})" if defaulted else ""))
    report.add("INFO", "probe schedule", schedule + f": ready by {budget} s or restarted")
    try:
        service.start()
    except (OSError, RuntimeError) as exc:
        report.add("FAIL", "start", f"could not start it: {exc}", "proxy", "see the message")
        return None
    limit = max(wait_limit, budget + 30)
    ready_at, last = _wait_ready(service, report, limit, timeout, budget)
    if ready_at is False:
        return None
    if ready_at is None:
        waited = min(limit, budget) if last.startswith("404") else limit
        report.add("FAIL", "time to ready", f"not ready after {waited:.0f} s (last /health: {last}); the probes "
                   f"give up at {budget} s and restart it, again and again", "startup",
                   "see build/rehearsal/service.log; raise initial_delay_seconds in config.json's health block "
                   "if start-up is only slow")
        return None
    # The platform probes at delay, delay + period, ...: the first probe at or after ready_at succeeds.
    n = 1 if ready_at <= delay else 1 + -(-(ready_at - delay) // period)
    if n <= threshold:
        report.add("PASS", "time to ready", f"{ready_at:.1f} s: probe {n:.0f} of {threshold} succeeds "
                   f"(budget {budget} s)", "startup")
    else:
        need = int(ready_at * 1.5) + period
        report.add("FAIL", "time to ready", f"{ready_at:.1f} s, but the probes allow {budget} s ({delay} + {period} x "
                   f"{threshold}): all {threshold} fail and the platform restarts the instance, in a loop", "startup",
                   f'in config.json\'s health block set "initial_delay_seconds": {need} (or more '
                   "failure_threshold), or make start-up faster")
    _liveness(service, timeout, report)
    return probes


def _wait_ready(service, report, limit, timeout, budget=None):
    """Poll /health until it first answers ready: (seconds to ready, or None if it never did, or False if the
    service exited or speaks the other protocol; the last answer seen). A service that answers 404 there is up
    and wrong, not slow: it is given up on after the probes' `budget`, as the platform does."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < limit:
        if budget is not None and last.startswith("404") and time.monotonic() - started > budget:
            return None, last
        if not service.running():
            tail = "\n".join(service.log().splitlines()[-15:])
            report.add("FAIL", "start", f"the service exited before it was ready; its last lines:\n{tail}", "proxy",
                       "see the log lines above (whole log in build/rehearsal/service.log)")
            return False, last
        resp, took = get(service.url + "/health", timeout)
        if isinstance(resp, requests.ConnectionError) and mismatch(service, report):
            return False, last
        if isinstance(resp, requests.Response):
            last = f"{resp.status_code} {resp.text[:200]}"
            if resp.status_code in P.PROBE_OK:
                if took > timeout:
                    report.add("FAIL", "/health latency", f"{took:.1f} s", "probe_timeout",
                               "make /health cheap (it must not wait on the model)")
                return time.monotonic() - started, last
        else:
            last = type(resp).__name__
        time.sleep(0.25)
    return None, last


def _liveness(service, timeout, report):
    """Liveness after ready: a few probes, each 2xx-3xx, JSON, within timeout_seconds."""
    seen = []
    for _ in range(5):
        resp, took = get(service.url + "/health", timeout)
        seen.append((resp.status_code if isinstance(resp, requests.Response) else type(resp).__name__, took))
        time.sleep(0.1)
    bad = [s for s, t in seen if s not in P.PROBE_OK or t > timeout]
    worst = max(t for _, t in seen)
    report.add("FAIL" if bad else "PASS", "/health while ready", f"{len(seen) - len(bad)}/{len(seen)} probes OK, "
               f"slowest {worst * 1000:.0f} ms" + (f"; got {bad}" if bad else ""),
               "probe_status", "" if not bad else "see build/rehearsal/service.log")


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


class _Load:
    """Two clients per api, each in a loop on its own keep-alive session, recording (sent, done, outcome, url,
    same answer as the first) until stopped."""

    def __init__(self, service, answered):
        self.service, self.records, self.lock, self.stop = service, [], threading.Lock(), threading.Event()
        self.expected = {url: answer for url, (_, _, answer) in answered.items()}
        self.threads = [threading.Thread(target=self.client, args=(api, kwargs), daemon=True)
                        for api, kwargs, _ in answered.values() for _ in range(2)]
        for t in self.threads:
            t.start()

    def client(self, api, kwargs):
        import jsonschema
        with requests.Session() as s:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    resp = s.request(str(api.get("method", "post")).upper(), self.service.url + api["url"],
                                     timeout=P.SYNC_TIMEOUT_S + P.DRAIN_S, verify=False, **kwargs)
                    ok = resp.status_code == 200
                    if ok:
                        try:
                            jsonschema.validate(resp.json(), api["response"]["data"])
                        except (ValueError, jsonschema.ValidationError):
                            ok = False
                    outcome = resp.status_code if ok else f"{resp.status_code} {resp.text[:100]}"
                    same = ok and _stable(resp.json()) == _stable(self.expected[api["url"]])
                except requests.RequestException as exc:
                    outcome, same = type(exc).__name__, False
                with self.lock:
                    self.records.append((sent, time.monotonic(), outcome, api["url"], same))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(P.SYNC_TIMEOUT_S + P.DRAIN_S)


def upgrade_phase(service, answered, probes, report):
    """Load on every api that answered, SIGTERM, and judge the drain."""
    grace, period = service.grace, probes["period_seconds"]
    load = _Load(service, answered)
    time.sleep(2)
    term = time.monotonic()
    service.terminate()
    _health_flip(service, term, period, report)
    time.sleep(max(0.0, term + grace - 0.5 - time.monotonic()))
    load.stop.set()
    status = service.wait(grace + P.DRAIN_S + 15 - (time.monotonic() - term))
    stopped = time.monotonic() - term
    load.finish()
    after = [r for r in load.records if r[1] >= term]
    # In the asynchronous request mode a stopping instance refuses new calls (503; the platform's queue retries them)
    refused_ok = P.request_mode() == "async"
    wrong = [r for r in after if r[2] != 200 and r[0] < term + grace - 0.5
             and not (refused_ok and str(r[2]).startswith("503 ") and r[0] >= term)]
    report.add("FAIL" if wrong or not after else "PASS", "requests during the stop",
               f"{len(after) - len(wrong)}/{len(after)} answered 200 with a valid body over {len(answered)} api(s)"
               + (f"; failed: {sorted({str(r[2]) for r in wrong})[:5]}" if wrong else ""), "drain_serve",
               "" if not wrong else "keep serving through the grace period and drain in-flight requests")
    differ = [r for r in after if r[2] == 200 and not r[4]]
    if differ:
        report.add("INFO", "answers during the stop", f"{len(differ)} of {len(after)} differ from the api's first "
                   "answer (a model that is not deterministic, or float rounding in batches)")
    if status is None:
        report.add("FAIL", "stop time", f"still running {stopped:.0f} s after SIGTERM", "drain_time",
                   "stop within the grace period + 90 s")
    else:
        limit = grace + P.DRAIN_S
        report.add("PASS" if stopped <= limit else "FAIL", "stop time",
                   f"{stopped:.1f} s after SIGTERM (grace period {grace} s; limit {limit} s)", "drain_time")
        report.add("PASS" if status == 0 else "FAIL", "exit status", status, "exit")


def _health_flip(service, term, period, report):
    """/health must leave 2xx within one probe period of the SIGTERM at `term`."""
    flipped = None
    while time.monotonic() - term < period + 5:
        resp, _ = get(service.url + "/health", 2)
        if not (isinstance(resp, requests.Response) and resp.status_code in range(200, 300)):
            flipped = time.monotonic() - term
            what = resp.status_code if isinstance(resp, requests.Response) else type(resp).__name__
            break
        time.sleep(0.1)
    if flipped is not None and flipped <= period:
        report.add("PASS", "/health after SIGTERM", f"{what} after {flipped:.1f} s (period {period} s)", "drain_health")
    else:
        report.add("FAIL", "/health after SIGTERM", "still 2xx" if flipped is None else f"{what} after {flipped:.1f} s",
                   "drain_health", "run.sh flips /health to 503 at once on SIGTERM; keep that in your entry")


def arguments(argv=None):
    parser = argparse.ArgumentParser(prog="make rehearse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    parser.add_argument("--config", default=env("CONFIG") or None)
    parser.add_argument("--model-repository", default=env("MODEL_REPOSITORY") or None)
    parser.add_argument("--image", default=env("IMAGE") or None)
    parser.add_argument("--samples", default=env("SAMPLES", ""), help='"field=path ..." for file fields')
    parser.add_argument("--grace", type=int, default=int(env("REHEARSE_GRACE") or P.GRACE_S),
                        help="the grace period after SIGTERM (GRACE_PERIOD); the platform's is 60 s")
    parser.add_argument("--docker", default=env("DOCKER") or None, help="the docker or podman command")
    parser.add_argument("--network", default=env("REHEARSE_NETWORK", ""), help='"host": the image on the host network')
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "rehearsal"))
    parser.add_argument("--static-only", action="store_true", help="phase 1 only")
    parser.add_argument("--startup-wait", type=float, default=float(env("REHEARSE_STARTUP_WAIT") or 600),
                        help="how long to wait for the first 200 from /health")
    return parser.parse_args(argv)


def _live(service, doc, apis, samples, args, report):
    """The phases that run the service: start and probes, calls, the rolling upgrade."""
    report.phase("start and probes")
    report.add("INFO", "service", service.where)
    if args.grace != P.GRACE_S:
        report.add("INFO", "grace period", f"{args.grace} s (REHEARSE_GRACE), where the platform gives "
                   f"{P.GRACE_S} s: the rolling upgrade below is rehearsed with {args.grace} s")
    probes = start_phase(service, doc, report, args.startup_wait)
    if probes is not None:
        report.phase("calls")
        answered = calls_phase(service, apis, samples, report)
        report.phase("rolling upgrade")
        if answered:
            upgrade_phase(service, answered, probes, report)
        else:
            report.add("FAIL", "rolling upgrade", "not rehearsed: no api passed its call", "drain_serve",
                       "fix the calls above")


def main(argv=None):
    args = arguments(argv)
    os.makedirs(args.out, exist_ok=True)
    path = config_path(args)
    target = (f"config {path}; model repository {args.model_repository or 'model_repository/ (shipped)'}; "
              + (f"image {args.image}" if args.image else "local stack"))
    report = Report()
    report.phase("static checks")
    report.add("INFO", "rehearsing", target)
    doc = static.load(path, report)
    apis = static.check_config(doc, report) if doc is not None else []
    proxy = static.check_proxy(path, report) if doc is not None else None
    for api in apis:
        static.batch_fitness(api, report)
    docker = shlex.split(args.docker) if args.docker else None
    if args.image:
        docker = docker or static.engine()
        gb = static.inspect_image(docker, args.image, report)
        if gb is not None:
            static.inside_image(docker, args.image, report)
            static.image_plus_model(gb, args.model_repository, report)
    if args.static_only or doc is None or proxy is None or not apis:
        if not args.static_only:
            report.add("FAIL", "start", "not started: config.json has errors the service would stop on", "proxy",
                       "fix the findings above")
        return 1 if report.finish(args.out, target)["verdict"] == "FAIL" else 0
    log_path = os.path.join(args.out, "service.log")
    if args.image:
        service = Image(docker, args.image, log_path, args.grace, args.model_repository,
                        args.config, args.network)
    else:
        service = Local(log_path, args.grace, args.model_repository, path)
    if static.protocol(doc) == "https":   # the platform calls the container in its apis' protocol
        service.url = service.url.replace("http://", "https://", 1)
    try:
        _live(service, doc, apis, payloads.parse_samples(args.samples), args, report)
    finally:
        service.close()
    return 1 if report.finish(args.out, target)["verdict"] == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
