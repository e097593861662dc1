"""What every call to one model goes through, unary or streaming."""
import time

from gevent import getcurrent

from .. import drain
from ..errors import ServingError, Unavailable
from ..slots import Slots
from .status import KIND, crashed, translate


def model_slots(models, per_model):
    """One semaphore per model: each model has `per_model` calls in flight from this worker, so that a busy model
    queues its own requests and never holds what another model needs (one busy model once stalled all others:
    MNIST's p50 went from 8 ms to 312 ms while /embeddings took 64 clients, 23 ms straight to Triton)."""
    return [Slots(per_model) for _ in range(models)]


class Guard:
    """What every call to one model goes through, unary or streaming (composed into both, so neither skips it):
    the deadline, the on-demand hold (the model loaded first, within the deadline, and held until the call ends),
    the model's in-flight slots in this worker, and what a failure means (counted in the metrics; a model whose
    process died reported to /health or to the loader)."""

    def __init__(self, info, timeout, slots, on_error=None, on_crash=None, loader=None, track=False):
        self.info, self.timeout, self.slots, self.loader = info, timeout, slots, loader
        self.track = track   # REQUEST_MODE=async: calls in flight are known, to be ended at the drain's end (drain.py)
        self.on_error = on_error or (lambda kind: None)   # metrics: proxy_triton_errors_total{kind}
        self.on_crash = on_crash or (lambda detail: None)  # the model's process died: Readiness.mark_crashed

    def enter(self):
        """Hold the model and a slot; the time left for the call. Raises ServingError (a 503 with Retry-After when
        every slot stays taken until the deadline)."""
        if self.loader is None and self.slots.take():
            left = self.timeout   # the common case: the route's constant timeout (its grpc-timeout field is cached)
        else:
            deadline = time.monotonic() + self.timeout
            if self.loader is not None:
                self.loader.enter(self.info.name, deadline)
            if not self.slots.acquire(deadline):
                if self.loader is not None:
                    self.loader.leave(self.info.name)
                raise Unavailable(f"model {self.info.name!r} is busy: every call this worker may have in flight to "
                                  f"it was taken for {self.timeout:g} s", retry_after=1)
            left = max(0.001, deadline - time.monotonic())
        if self.track:
            if drain.over:   # the drain has ended (drain.cut): nothing new starts
                self.leave()
                raise Unavailable(drain.CUT, retry_after=1)
            drain.calls.add(getcurrent())
        return left

    def leave(self):
        self.slots.release()
        if self.loader is not None:
            self.loader.leave(self.info.name)
        if self.track:
            drain.calls.discard(getcurrent())

    def failed(self, exc):
        """A gRPC error of this model's call -> the ServingError the caller sees."""
        self.on_error(KIND.get(exc.code) or exc.name.lower())
        if crashed(exc):
            self.on_crash(exc.details)
        return translate(exc, self.timeout)

    def failed_in_stream(self, message):
        """An error inside a stream (Triton's stream carries the message, no status code)."""
        self.on_error("internal")
        if "Stub process" in message and "not healthy" in message:
            self.on_crash(message)
        return ServingError(f"inference failed: {message}")
