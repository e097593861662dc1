"""A model's load and unload, carried out (control.py) and recorded: its marks (files.py), its metrics and its log
lines. The Loader decides when; this does it."""
import logging
import time

from ..errors import DeadlineExceeded, Unavailable
from ..grpc_wire import DEADLINE_EXCEEDED, RpcError

log = logging.getLogger("serving.loading")


class Swaps:
    def __init__(self, control, files, memory=None, metrics=None):
        self.control, self.files, self.memory, self.metrics = control, files, memory, metrics

    def unload(self, name, reason, deadline, budget):
        """Unload `name` (held exclusively by take()), at most until the deadline: True when it is gone."""
        gone = False
        try:
            gone = self.control.unload(name, max(0.001, deadline - time.monotonic()), deadline)
        finally:
            if gone:
                self.files.clear_mark(name, "draining")
            self.files.next_generation()
            self.files.release(name)
        if gone:   # asked but still held by Triton at the deadline: neither logged nor counted as gone
            log.info("model %r unloaded (least recently used, to stay within %s)", name, budget)
            self.metrics is None or self.metrics.model_unloaded(name, reason)
        return gone

    def load(self, name, deadline, reload=False):
        started = time.monotonic()
        gpu_before = self.memory.before() if self.memory is not None else None
        try:
            self.control.load(name, max(0.001, deadline - time.monotonic()))
        except RpcError as exc:
            if exc.code == DEADLINE_EXCEEDED:
                self.count(name, "timeout", started)
                raise DeadlineExceeded(f"model {name!r} is still loading after the request's deadline; it goes on "
                                       "loading: try again") from None
            reason = (exc.details or exc.name).strip()
            self.files.set_mark(name, "failed", reason)
            self.count(name, "failed", started)
            log.error("model %r failed to load: %s", name, reason)
            raise Unavailable(f"model {name!r} failed to load: {reason}") from None
        self.files.clear_mark(name, "failed")
        self.files.set_mark(name, "loaded", f"{time.monotonic() - started:.3f}")   # its residency scales with it
        self.count(name, "ok", started)
        if self.memory is not None:
            size = self.memory.record(name, gpu_before)
            log.info("model %r holds %.1f MB (MODEL_MEMORY_BUDGET)", name, size / 1e6)
        if reload:
            self.files.next_generation()
            log.info("model %r reloaded in %.2f s (its process had died)", name, time.monotonic() - started)
            if self.metrics is not None:
                self.metrics.model_unloaded(name, "crashed")
        else:
            log.info("model %r loaded on demand in %.2f s", name, time.monotonic() - started)

    def seconds(self, name):
        """How long `name`'s last load took (its loaded mark), or None."""
        try:
            return float(self.files.read_mark(name, "loaded") or "")
        except ValueError:
            return None

    def count(self, name, result, started):
        if self.metrics is not None:
            try:
                loaded = self.control.loaded()
            except RpcError:
                loaded = None
            self.metrics.model_loaded(name, result, time.monotonic() - started, loaded)
