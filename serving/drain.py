"""REQUEST_MODE=async at a stop (docs/long-running.md): the platform's queue holds the calls, so an instance that
drains refuses new ones at once (503 with Retry-After: the queue sends them to another instance), lets the ones in
flight run through the grace period and gunicorn's drain, and ends any still running just before the drain's end
with a clear error, cancelled in Triton (never a connection cut with no answer).

`calls` holds the greenlets of this worker's calls to Triton in flight (triton.Guard adds them in async mode only:
the sync mode's deadlines, 30 s, end well within the drain)."""
import os

from .errors import Unavailable
from .predict import error_answer

calls = set()
over = False   # set by cut(): a call that gets its slot after it ends at once too
CUT_MARGIN_S = 3.0   # before gunicorn's drain ends (GRACEFUL_TIMEOUT), so that the errors reach their clients

STOPPING = ("the service is stopping (SIGTERM): this instance takes no new calls; send it again (another instance "
            "takes it)")
CUT = ("the service stopped before this call finished: it ran past the drain (GRACE_PERIOD + GRACEFUL_TIMEOUT) and "
       "was cancelled in the model; send it again")


class Refusing:
    """In front of the service in async mode: once run.sh has begun the stop (its drain file exists), a new call to
    a route or to /v2's models gets 503 with Retry-After; /health, /metrics and the rest go on as before."""

    def __init__(self, app, paths, drain_file):
        self.app, self.paths, self.drain_file = app, frozenset(paths), drain_file

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if (path in self.paths or path.startswith("/v2/models/")) and os.path.exists(self.drain_file):
            status, headers, body = error_answer(environ, Unavailable(STOPPING, retry_after=1), logged=False)
            start_response(status, headers)
            return [body]
        return self.app(environ, start_response)


def cut():
    """End every call of this worker still running: each gets CUT (a 503), its gRPC stream is reset (the model
    sees the cancellation). Returns how many."""
    global over
    over = True
    running = [g for g in calls if not g.dead]
    for g in running:
        g.kill(Unavailable(CUT, retry_after=1), block=False)
    return len(running)
