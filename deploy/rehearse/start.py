"""Phase 2, start: the service probed on config.json's health schedule (the console's defaults where it says
nothing), its time to ready set against what the probes allow."""
import time

import requests

from . import platform as P


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
