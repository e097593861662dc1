"""REQUEST_MODE=async at a stop (docs/long-running.md): the platform's queue holds the calls, so an instance that
drains refuses new ones at once (503 with Retry-After: the queue sends them to another instance; serving/front.py's
Refusing), lets the ones in flight run through the grace period and gunicorn's drain, and ends any still running
just before the drain's end with a clear error, cancelled in Triton (never a connection cut with no answer).

`calls` holds the greenlets of this worker's calls to Triton in flight (serving/triton/guard.py adds them, in async
mode only: the sync mode's deadlines, 30 s, end well within the drain)."""
from .errors import Unavailable

calls = set()
over = False   # set by cut(): a call that gets its slot after it ends at once too
CUT_MARGIN_S = 3.0   # before gunicorn's drain ends (GRACEFUL_TIMEOUT), so that the errors reach their clients

STOPPING = ("the service is stopping (SIGTERM): this instance takes no new calls; send it again (another instance "
            "takes it)")
CUT = ("the service stopped before this call finished: it ran past the drain (GRACE_PERIOD + GRACEFUL_TIMEOUT) and "
       "was cancelled in the model; send it again")


def cut():
    """End every call of this worker still running: each gets CUT (a 503), its gRPC stream is reset (the model
    sees the cancellation). Returns how many."""
    global over
    over = True
    running = [g for g in calls if not g.dead]
    for g in running:
        g.kill(Unavailable(CUT, retry_after=1), block=False)
    return len(running)
