"""`/metrics` in the Prometheus text format: the proxy's own series, then Triton's, in one scrape.

The proxy's series are kept with prometheus_client's multiprocess mode: each gunicorn worker writes its values
to its own memory-mapped file under PROMETHEUS_MULTIPROC_DIR (run.sh makes it empty at start), and a scrape,
whichever worker answers it, sums them. A worker that is replaced keeps its counts in its file. Without
PROMETHEUS_MULTIPROC_DIR (one process, as in unit tests) the values live in memory.

A request only adds to plain counters in its worker (a dict entry and a histogram slot); each worker moves them
into its file once a second (FLUSH_S), at each scrape it answers, and when it exits. Writing the files on every
request instead cost 6 % of the proxy's CPU per request on the identity route; this costs under 1 %
(benchmarks/results/changes.md). The price: a scrape may miss the last second of another worker's requests,
and a worker killed with SIGKILL loses its last second.

Series (labels are bounded: `url` is a config.json url, /health, /metrics, /openapi.json, a v2 endpoint
template such as /v2/models/{model}/infer, or "other"; `method` is one of the HTTP methods or "other"):
- proxy_requests_total{url, method, status}
- proxy_request_duration_seconds{url}: a histogram, up to the moment the answer starts
- proxy_inflight_requests: requests being handled, summed over live workers
- proxy_triton_errors_total{kind}: calls to Triton that failed (deadline, unavailable, protocol, or the gRPC
  status, e.g. invalid_argument, internal)
For an autoscaler (deploy/k8s/: the HPA's and KEDA's signals; GPU utilisation says little about inference load):
- proxy_inflight_requests counts a stream (SSE, OpenAI) until its last byte, not only to its first;
- proxy_model_calls_in_flight{model}: calls to the model's Triton under way now (unary and streams), summed over
  live workers;
- proxy_model_calls_queued{model}: calls waiting for one of the model's slots in their worker (INFLIGHT_PER_MODEL,
  STREAMS_PER_MODEL): the proxy's own queue, before Triton's (nv_inference_queue_duration_us, relayed below);
- proxy_draining: 1 from SIGTERM on (run.sh's drain file), while /health answers 503 and the grace period runs.
With MODEL_LOADING=on-demand (serving/loading/), also:
- proxy_model_loads_total{model, result}: result ok, failed or timeout (the request's deadline passed first)
- proxy_model_unloads_total{model, reason}: reason lru (to stay within MAX_LOADED_MODELS) or crashed
- proxy_model_load_seconds: a histogram of load times
- proxy_models_loaded: models Triton holds ready, as of the last load
- proxy_model_wait_seconds: a histogram of the time requests waited for their model's turn and load
- proxy_model_waiting_requests: requests waiting for their model's turn now, summed over live workers
"""
import os
from bisect import bisect_left

PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METHODS = frozenset(("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"))
# Seconds; ModelArts ends a synchronous call at 60 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# REQUEST_MODE=async: up to the longest deadline (an hour), so that a long call is not lumped into +Inf.
LONG_BUCKETS = BUCKETS + (120.0, 300.0, 600.0, 1800.0, 3600.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FLUSH_S = 1.0
_active = None   # this process's Metrics, for worker_exit's last flush


class Metrics:
    def __init__(self, triton_metrics_url, timeout=2.0, on_demand=False, buckets=BUCKETS):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        own = None if self.multiprocess else CollectorRegistry()
        self.registry = own
        self.requests = Counter("proxy_requests", "HTTP requests answered by the proxy",
                                ["url", "method", "status"], registry=own)
        self.buckets = buckets
        self.duration = Histogram("proxy_request_duration_seconds", "Time to answer, by url", ["url"],
                                  buckets=buckets, registry=own)
        self.inflight = Gauge("proxy_inflight_requests", "Requests being handled", registry=own,
                              multiprocess_mode="livesum")
        self.triton_errors = Counter("proxy_triton_errors", "Calls to Triton that failed, by kind", ["kind"],
                                     registry=own)
        if on_demand:
            self.loads = Counter("proxy_model_loads", "Model loads on demand, by result", ["model", "result"],
                                 registry=own)
            self.unloads = Counter("proxy_model_unloads", "Models unloaded, by reason", ["model", "reason"],
                                   registry=own)
            self.load_seconds = Histogram("proxy_model_load_seconds", "Time to load a model on demand",
                                          buckets=LOAD_BUCKETS, registry=own)
            self.models_loaded = Gauge("proxy_models_loaded", "Models loaded in Triton", registry=own,
                                       multiprocess_mode="mostrecent")
            self.wait_seconds = Histogram("proxy_model_wait_seconds", "Time a request waited for its model's "
                                          "turn and load", buckets=buckets, registry=own)
            self.waiting = Gauge("proxy_model_waiting_requests", "Requests waiting for their model's turn",
                                 registry=own, multiprocess_mode="livesum")
        self.calls = Gauge("proxy_model_calls_in_flight", "Calls to the model's Triton under way", ["model"],
                           registry=own, multiprocess_mode="livesum")
        self.queued = Gauge("proxy_model_calls_queued", "Calls waiting for one of the model's slots in the proxy",
                            ["model"], registry=own, multiprocess_mode="livesum")
        self.draining = Gauge("proxy_draining", "1 while the service drains (from SIGTERM on)", registry=own,
                              multiprocess_mode="max")
        self.slots, self.drain_file = {}, None   # watch(): read at each flush
        self.triton_metrics_url, self.timeout = triton_metrics_url, timeout
        self.inflight_now = 0          # requests being handled in this worker
        self._counts, self._times = {}, {}   # since the last flush: (url, method, status) -> n; url -> [slots..., sum]
        global _active
        _active = self

    def observe(self, url, method, status, seconds):
        """One answered request: two dict lookups and three additions; flush() publishes them."""
        key = (url, method, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        times = self._times.get(url)
        if times is None:
            times = self._times[url] = [0] * (len(self.buckets) + 1) + [0.0]
        times[bisect_left(self.buckets, seconds)] += 1   # the first bucket whose bound is >= seconds, as prometheus_client
        times[-1] += seconds

    def flush(self):
        """Move what this worker counted since the last flush into its prometheus_client values (its file)."""
        counts, self._counts = self._counts, {}
        times, self._times = self._times, {}
        for (url, method, status), n in counts.items():
            self.requests.labels(url, method if method in METHODS else "other", status).inc(n)
        for url, slots in times.items():
            child = self.duration.labels(url)
            # prometheus_client's private API (_buckets, _sum): on an upgrade, check Histogram.observe still does this
            for i, n in enumerate(slots[:-1]):
                if n:
                    child._buckets[i].inc(n)   # what Histogram.observe does per observation, n at once
            child._sum.inc(slots[-1])
        self.inflight.set(self.inflight_now)
        per_model = {}
        for key, slots in self.slots.items():   # (model, version[, "stream"]) -> serving.slots.Slots
            busy, queued = per_model.get(key[0], (0, 0))
            per_model[key[0]] = (busy + slots.in_use, queued + slots.waiting)
        for model, (busy, queued) in per_model.items():
            self.calls.labels(model).set(busy)
            self.queued.labels(model).set(queued)
        if self.drain_file is not None:
            self.draining.set(1 if os.path.exists(self.drain_file) else 0)

    def watch(self, slots, drain_file):
        """The per-model slots (a dict that grows as routes are made) and run.sh's drain file, read at each flush."""
        self.slots, self.drain_file = slots, drain_file

    def run_flusher(self):
        """Flush every FLUSH_S in a greenlet of this worker."""
        import gevent

        def loop():
            while True:
                gevent.sleep(FLUSH_S)
                self.flush()
        return gevent.spawn(loop)

    def triton_error(self, kind):
        self.triton_errors.labels(kind).inc()

    def model_loaded(self, model, result, seconds, loaded=None):
        self.loads.labels(model, result).inc()
        if result == "ok":
            self.load_seconds.observe(seconds)
        if loaded is not None:
            self.models_loaded.set(loaded)

    def model_waiting(self, delta, seconds=None):
        """A request starts (+1) or ends (-1, with the seconds it waited) its wait for its model's turn."""
        self.waiting.inc(delta)
        if seconds is not None:
            self.wait_seconds.observe(seconds)

    def model_unloaded(self, model, reason):
        self.unloads.labels(model, reason).inc()

    def render(self):
        """The scrape: the proxy's series, then Triton's own (or a comment saying why they are missing)."""
        from prometheus_client import CollectorRegistry, generate_latest
        self.flush()
        if self.multiprocess:
            from prometheus_client import multiprocess
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        return generate_latest(registry) + self._triton()

    def answer(self, environ):
        """GET /metrics, as a handler of serving/front.py."""
        body = self.render()
        return "200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))], [body]

    def _triton(self):
        import urllib.request
        try:
            with urllib.request.urlopen(self.triton_metrics_url, timeout=self.timeout) as answer:
                return answer.read()
        except Exception as exc:   # Triton down or slow: the proxy's own series still come back
            return f"# Triton's metrics ({self.triton_metrics_url}) are unavailable: {exc}\n".encode()


def flush():
    """This worker's last flush (gunicorn's worker_exit)."""
    if _active is not None:
        _active.flush()


def worker_exit(pid):
    """A worker is gone: its gauge leaves the live sum (gunicorn's child_exit, in the master)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)
