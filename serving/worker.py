"""gunicorn's gevent worker, with one change: at shutdown, idle keep-alive connections close at once.

Stock gunicorn waits for every open connection before a worker exits, and a client that holds an idle
keep-alive connection (keep-alive is 200 s here) makes each stop last the whole graceful timeout. This
worker still lets every in-flight request finish; it only ends connections that sit between requests.
"""
import gevent
from gevent import getcurrent
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

SHUTDOWN_IDLE_S = 1.0  # a connection accepted during shutdown still gets its first request served


class _IdleWait(gevent.Timeout):
    """The wait for a connection's next request. Ends silently on keep-alive expiry, or when thrown at shutdown."""

    def __init__(self, worker):
        super().__init__(worker.cfg.keepalive if worker.alive else SHUTDOWN_IDLE_S, False)
        self.worker = worker
        self.owner = None

    def __enter__(self):
        self.owner = getcurrent()
        self.worker.idle[self.owner] = self
        return super().__enter__()

    def __exit__(self, typ, value, tb):
        self.worker.idle.pop(self.owner, None)
        return super().__exit__(typ, value, tb)


class GeventWorker(_GeventWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.idle = {}

    def timeout_ctx(self):
        return _IdleWait(self)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        gevent.get_hub().loop.run_callback(self._close_idle)

    def _close_idle(self):
        # Runs in the hub: a greenlet still registered as idle is parked inside its wait, so throwing its
        # own timeout ends that wait the way keep-alive expiry would (the connection closes cleanly).
        for owner, wait in list(self.idle.items()):
            if self.idle.get(owner) is wait and not owner.dead:
                owner.throw(wait)
