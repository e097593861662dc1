"""Phase 4, rolling upgrade: load on every api, then SIGTERM: /health 503 within a probe period, every request
answered, the stop within the grace period + 90 s, exit status 0."""
import threading
import time

import requests

from . import platform as P
from .calls import _stable
from .start import get


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
