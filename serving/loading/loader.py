"""The Loader: what a request does before and after its call to an on-demand model (enter, leave), and the turn
taking that loads a model in its turn and makes room for it. The decisions are policy.py's; the shared files are
files.py's; Triton's load and unload calls are control.py's."""
import fcntl
import logging
import os
import time

import gevent
from gevent.lock import Semaphore

from ..errors import DeadlineExceeded, Unavailable
from ..grpc_wire import DEADLINE_EXCEEDED, RpcError
from .control import HELD, ModelControl
from .files import SharedFiles, lock, unlock
from .memory import Budget
from .policy import choose_victim, queue_head, residency
from .swaps import Swaps

log = logging.getLogger("serving.loading")

LOAD_RETRY_S = 10.0
TOUCH_S = 0.5
WAIT_POLL_S = 0.05   # a model waiting for its turn looks again this often
LOAD = "load"   # _turn's answer when room is made: the caller loads the model after repository.lock


def late(name, budget, started=None):
    """The 503 of a request whose model's turn did not come within its deadline."""
    waited = f" after waiting {time.monotonic() - started:.1f} s" if started is not None else ""
    return Unavailable(f"model {name!r} did not get its turn to load within the request's deadline{waited} "
                       f"({str(budget) or 'the models are loading'}): try again", retry_after=1)


def unreachable(exc, name, deadline, budget):
    """An RpcError of a look at Triton -> what the request gets: a wait cut short by its own deadline is late,
    anything else means Triton cannot be reached."""
    if exc.code == DEADLINE_EXCEEDED and time.monotonic() >= deadline - 0.01:
        return late(name, budget)
    return Unavailable(f"inference server is not reachable: {exc.details or exc.name}")


class _Users:
    """This worker's requests in flight for one model, and the shared lock they hold together."""
    __slots__ = ("count", "fd", "ready", "guard", "seen")

    def __init__(self, fd):
        self.count, self.fd, self.ready, self.guard = 0, fd, False, Semaphore()
        self.seen = None   # the unload generation at which this worker last saw the model READY


class Loader:
    def __init__(self, client, lock_dir, pinned=(), max_loaded=0, metrics=None, timeout=10.0, memory=None,
                 min_residency=1.0):
        self.control, self.files = ModelControl(client, timeout), SharedFiles(lock_dir)
        self.pinned, self.memory, self.min_residency = set(pinned), memory, min_residency
        self.budget = Budget(max_loaded, memory)
        self.metrics = metrics
        self.swaps = Swaps(self.control, self.files, memory, metrics)
        self.users = {}        # model -> _Users (fds used for the shared in-flight locks)
        self.touched = {}
        self.repo_fd = self.files.open_lock("repository")
        # flock is per open file: every greenlet of this worker shares repo_fd, so within the worker a semaphore
        # makes the hold exclusive (the file lock makes it so across workers).
        self.repo_guard = Semaphore()

    # The request's side

    def enter(self, name, deadline):
        """Before a request's call to `name`: the model is loaded and cannot be unloaded until leave(name).

        Waiting (for a drain, for its turn, for its load) happens without holding the model: a waiter that held it
        would keep its own victim from draining."""
        users = self.users.get(name)
        if users is None:
            users = self.users[name] = _Users(self.files.open_lock(name))
        arrived = time.time_ns()   # its place in the queue, should it have to wait
        while not self._hold(users, name, deadline):
            self._wait_turn(users, name, deadline, arrived)
        now = time.monotonic()
        if now - self.touched.get(name, 0.0) >= TOUCH_S:   # the LRU order, shared through the file's mtime
            self.touched[name] = now
            os.utime(users.fd)

    def _hold(self, users, name, deadline):
        """Take the shared hold of `name` if it is READY and not draining: True when held, False (holding
        nothing) when it must wait for its turn."""
        if self.files.marked(name, "draining"):
            return False   # a victim: it loads again in its turn
        if users.count == 0 and not lock(users.fd, fcntl.LOCK_SH, deadline):
            raise DeadlineExceeded(f"model {name!r} was being unloaded for longer than the request's deadline")
        users.count += 1
        if self.files.marked(name, "draining"):   # marked meanwhile: the mark wins
            self.leave(name)
            return False
        if users.ready:   # held by this worker since it was seen READY: nothing can have unloaded it
            return True
        generation = self.files.current_generation()
        try:
            ready = (users.seen == generation or self.control.ready(name, self._remaining(deadline))) \
                and not self.files.marked(name, "crashed")
        except RpcError as exc:
            self.leave(name)
            raise unreachable(exc, name, deadline, self.budget) from None
        if ready:   # held now, so it stays READY until leave()
            users.ready, users.seen = True, generation
            return True
        self.leave(name)
        return False

    def _wait_turn(self, users, name, deadline, arrived):
        """Wait, holding nothing of the model, until it is READY and not draining (_ensure); one greenlet of this
        worker per model asks, the others wait for it."""
        if not users.guard.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise late(name, self.budget)
        try:
            self._ensure(name, deadline, arrived)
        finally:
            users.guard.release()

    def leave(self, name):
        users = self.users[name]
        users.count -= 1
        if users.count == 0:
            users.ready = False   # once nothing holds it, another worker may unload it: look again next time
            unlock(users.fd)

    def crashed(self, name, detail):
        """The model's process died (Triton keeps it READY but fails every request): reload it on the next one."""
        self.files.set_mark(name, "crashed", detail)
        users = self.users.get(name)
        if users is not None:
            users.ready, users.seen = False, None

    @staticmethod
    def _remaining(deadline):
        return max(0.001, deadline - time.monotonic())

    # Waiting for a turn

    def _ensure(self, name, deadline, arrived):
        """Return once `name` is READY and not draining: loaded now in its turn, if need be, within the deadline.
        `arrived` (time.time_ns() of the request) is its place in the queue."""
        try:
            if (not self.files.marked(name, "crashed") and not self.files.marked(name, "draining")
                    and self.control.ready(name, self._remaining(deadline))):
                return
        except RpcError as exc:
            raise unreachable(exc, name, deadline, self.budget) from None
        failed_at = self.files.mtime(name, "failed")
        if failed_at is not None and time.time() - failed_at < LOAD_RETRY_S:
            reason = self.files.read_mark(name, "failed")
            if reason is not None:
                raise Unavailable(f"model {name!r} failed to load: {reason}")
        started = time.monotonic()
        entry = self.files.join_queue(arrived, name)
        self._waiting(1)
        try:
            while not self._try_turn(name, deadline):
                if time.monotonic() >= deadline:
                    raise late(name, self.budget, started)
                gevent.sleep(WAIT_POLL_S)   # another model's turn, a victim still draining, or a load under way
        finally:
            self.files.leave_queue(entry)
            self._waiting(-1, time.monotonic() - started)

    def _try_turn(self, name, deadline):
        """One look under repository.lock: True when `name` is READY (loaded now if it was its turn)."""
        if not self.repo_guard.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        if not lock(self.repo_fd, fcntl.LOCK_EX, deadline):
            self.repo_guard.release()
            return False
        try:
            turn = self._turn(name, deadline, self._states(deadline))
        except RpcError as exc:
            if exc.code == DEADLINE_EXCEEDED and time.monotonic() >= deadline - 0.01:
                return False   # a look cut short by the request's own deadline: the wait ends as late
            raise unreachable(exc, name, deadline, self.budget) from None
        finally:
            unlock(self.repo_fd)
            self.repo_guard.release()
        if turn is LOAD:   # room is made and counted (its mark): the load runs beside the other models' turns
            try:
                self.swaps.load(name, deadline)
            finally:
                self.files.clear_mark(name, "loading")
            return True
        return turn

    def _states(self, deadline):
        """Triton's index, {model: (state, reason)}, with the models that a worker loads outside repository.lock
        as LOADING (Triton's index says so only once its load has begun)."""
        states = self.control.index(self._remaining(deadline))
        for m, (state, reason) in states.items():
            if state != "READY" and self.files.loading(m):
                states[m] = ("LOADING", reason)
        return states

    def _turn(self, name, deadline, states):
        """Under repository.lock, with Triton's index: load `name` if it is its turn and there is room."""
        state = states.get(name, ("", ""))[0]
        if self.files.marked(name, "crashed") and state == "READY":
            # Triton 2.51 keeps a model whose process died READY, and unloading it waits about 60 s on the
            # dead process. A load of a loaded model reloads it: a new process replaces the dead one.
            self.swaps.load(name, deadline, reload=True)
            self.files.clear_mark(name, "crashed")
            return True
        draining = self.files.marked(name, "draining")
        if state == "READY" and not draining:
            return True
        if state in ("LOADING", "UNLOADING", "BUSY"):
            return False   # another worker's load or unload of it
        entries = self.files.waiting()
        if queue_head(entries, {m: (states.get(m, ("", ""))[0], self.files.marked(m, "draining"))
                                for _, m in entries}) != name:
            return False
        if state == "READY":   # its own drain, while it heads the queue (the one that wanted room gave up)
            self.files.clear_mark(name, "draining")
            self.files.next_generation()
            return True
        if self._make_room(name, states, deadline):
            if self.memory is not None:   # a memory budget measures each load alone: loads take turns
                self.swaps.load(name, deadline)
                return True
            self.files.set_mark(name, "loading", str(os.getpid()))
            return LOAD
        return False

    def _waiting(self, delta, seconds=None):
        if self.metrics is not None:
            self.metrics.model_waiting(delta, seconds)

    # Making room

    def _make_room(self, name, states, deadline):
        """Drain and unload models until `name` fits: True when it does; False to wait (a victim still has
        requests in flight, or none has been loaded for MODEL_MIN_RESIDENCY yet)."""
        if not self.budget.limited:
            return True
        held = [m for m, (state, _) in states.items() if state in HELD and m != name]
        if self.budget.fits(name, held):
            return True
        if not any(m not in self.pinned for m in held):   # it is over the memory budget on its own
            log.warning("model %r alone is over %s; it loads beside the pinned models only", name,
                        self.budget)
            return True
        for victim in [m for m in held if self.files.marked(m, "draining")]:
            if states[victim][0] != "READY" or not self.files.take(victim):
                return False   # still unloading, or its requests in flight have not all finished
            if not self.swaps.unload(victim, "lru", deadline, self.budget):
                return False   # still unloading at the deadline: no load may start beside it
            held.remove(victim)
            if self.budget.fits(name, held):
                return True
        candidates = [m for m in held if m not in self.pinned and states[m][0] == "READY"]
        victim = choose_victim(candidates, {m: self.files.mtime(m, "lock") or 0.0 for m in candidates},
                               {m: self.files.mtime(m, "loaded") or float("-inf") for m in candidates}, time.time(),
                               {m: residency(self.min_residency, self.swaps.seconds(m)) for m in candidates})
        if victim is None:
            return False   # every candidate is within its residency quantum
        self.files.set_mark(victim, "draining")
        self.files.next_generation()
        log.info("model %r drains (least recently used) to make room for %r within %s", victim, name,
                 self.budget)
        if self.files.take(victim) and self.swaps.unload(victim, "lru", deadline, self.budget):   # nothing in flight: at once
            held.remove(victim)
            return self.budget.fits(name, held)
        return False
