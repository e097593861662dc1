"""On-demand model loading (MODEL_LOADING=on-demand): Triton runs with explicit model control, a model loads on its
first request, and under a budget (MAX_LOADED_MODELS, MODEL_MEMORY_BUDGET) loaded models make room in turn.
MODELS_PINNED load at start-up and never unload.

Routes are bound from each model's config.pbtxt (serving/repository.py), so that nothing needs to be loaded to start.

Scheduling, when a working set is larger than the budget (README: "Many models"):
- **waiters in turn**: a model that needs room joins a queue, in the order its first request arrived, shared by the
  workers; only the model at its head may make room and load;
- **the victim drains**: to make room, the least recently used unpinned model is marked draining. New requests
  for it wait like those of any model that is not loaded (it joins the queue's tail); its requests in flight
  finish; then it is unloaded and the head loads. Nothing is unloaded under a request;
- **a residency quantum**: a model loaded less than MODEL_MIN_RESIDENCY seconds ago is not chosen, so a tight
  budget takes turns instead of loading once per request;
- **bounded waits**: a request's wait counts against its deadline; one whose turn does not come in time gets 503
  with Retry-After.

The gunicorn workers coordinate through files in LOADING_DIR (one folder per run, made by run.sh):
- `repository.lock`: held exclusively by the one worker that changes what Triton has loaded (a load or an unload),
  so two loads of one model are never sent (Triton would reload a loaded model) and the budget is counted once
  (flock is per open file, so within a worker a gevent semaphore does the same for its greenlets);
- `<model>.lock`: held shared by every worker with a request in flight for the model. Unloading needs it
  exclusively, so a model is never unloaded under a request. Its mtime is the model's last use: the LRU order;
- `<model>.draining`: the model is a victim: no new request enters it;
- `<model>.loaded`: its mtime is when the model was last loaded (the residency quantum);
- `queue/<arrival ns>-<worker pid>-<model>`: a request waiting for its model's turn (one per model per worker: the
  worker's first waiter), made before it waits for anything and removed when its wait ends; the entries of a
  worker that died are dropped;
- `<model>.failed` holds Triton's reason for a failed load, answered for LOAD_RETRY_S before a new try;
- `<model>.crashed`: the model's process died; the next request has Triton load it again (a reload: a new
  process replaces the dead one).
Locks are tried without blocking and retried every POLL_S on gevent's clock, so a waiting greenlet never stalls
its worker.
"""
import fcntl
import logging
import os
import time

import gevent
from tritonclient.grpc import service_pb2

from .errors import DeadlineExceeded, Unavailable
from .grpc_wire import DEADLINE_EXCEEDED, RpcError

log = logging.getLogger("serving.loading")

POLL_S = 0.02
LOAD_RETRY_S = 10.0
TOUCH_S = 0.5
UNLOAD_WAIT_S = 60.0
WAIT_POLL_S = 0.05   # a model waiting for its turn looks again this often
HELD = ("READY", "LOADING", "UNLOADING")   # states that hold the model's memory


class _Users:
    """This worker's requests in flight for one model, and the shared lock they hold together."""
    __slots__ = ("count", "fd", "ready", "guard", "seen")

    def __init__(self, fd):
        from gevent.lock import Semaphore
        self.count, self.fd, self.ready, self.guard = 0, fd, False, Semaphore()
        self.seen = None   # the unload generation at which this worker last saw the model READY


def stub_rss(repository):
    """{model: bytes} resident in its python-backend processes (one per instance; argv[1] is the model's
    <repository>/<model>/<version>/model.py). What a CPU model holds; other backends live inside tritonserver."""
    found, prefix = {}, os.path.realpath(repository) + os.sep
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) < 2 or not argv[0].endswith(b"triton_python_backend_stub"):
                continue
            path = os.path.realpath(argv[1].decode())
            with open(f"/proc/{entry}/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        if path.startswith(prefix):
            model = path[len(prefix):].split(os.sep)[0]
            found[model] = found.get(model, 0) + rss
    return found


def gpu_used(metrics_url, timeout=2.0):
    """Bytes of GPU memory in use, summed over GPUs, from Triton's nv_gpu_memory_used_bytes; None without a GPU."""
    import urllib.request
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("nv_gpu_memory_used_bytes{")]
    return sum(values) if values else None


class Memory:
    """MODEL_MEMORY_BUDGET: what the loaded models hold, and what a model will take when it loads.

    With a GPU (Triton reports nv_gpu_memory_used_bytes) the figure is GPU memory: in use in all, and per model
    the growth measured across its load. Without one it is the resident memory of each model's python-backend
    processes. A model's figure is kept in <model>.bytes after each load; a model never loaded is assumed to
    take as much as the largest one known."""

    def __init__(self, budget, repository, metrics_url, lock_dir):
        self.budget, self.repository, self.metrics_url, self.dir = budget, repository, metrics_url, lock_dir

    def _path(self, name):
        return os.path.join(self.dir, name + ".bytes")

    def known(self, name):
        try:
            with open(self._path(name)) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def expected(self, name):
        own = self.known(name)
        if own is not None:
            return own
        figures = [self.known(f[:-6]) for f in os.listdir(self.dir) if f.endswith(".bytes")]
        return max([f for f in figures if f is not None] or [0])

    def used(self, loaded):
        gpu = gpu_used(self.metrics_url)
        if gpu is not None:
            return gpu
        rss = stub_rss(self.repository)
        return sum(rss.get(m, 0) for m in loaded)

    def before(self):
        return gpu_used(self.metrics_url)

    def record(self, name, gpu_before):
        gpu = gpu_used(self.metrics_url) if gpu_before is not None else None
        size = max(0, int(gpu - gpu_before)) if gpu is not None else stub_rss(self.repository).get(name, 0)
        with open(self._path(name), "w") as f:
            f.write(str(size))
        return size


def choose_victim(candidates, last_used, loaded_at, now, min_residency):
    """The policy: the least recently used of `candidates` loaded at least `min_residency` seconds ago, or None.
    `last_used` and `loaded_at` map a model to a time on the clock of `now`."""
    ready = [m for m in candidates if now - loaded_at.get(m, float("-inf")) >= min_residency]
    return min(ready, key=lambda m: (last_used.get(m, 0.0), m)) if ready else None


def queue_head(entries, states):
    """The policy's queue: `entries` [(arrival, model)] of the requests waiting, `states` {model: (Triton's state,
    draining)}. The head is the model of the earliest request whose model still needs its turn: not already READY
    (and not draining), not being loaded. None when no model waits."""
    for _, model in sorted(entries):
        state, draining = states.get(model, ("", False))
        if (state == "READY" and not draining) or state == "LOADING":
            continue
        return model
    return None


def _entry(name):
    """A queue file's name "<arrival ns>-<worker pid>-<model>" -> (arrival, pid, model)."""
    arrived, _, rest = name.partition("-")
    pid, _, model = rest.partition("-")
    return int(arrived), int(pid), model


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Loader:
    def __init__(self, client, lock_dir, pinned=(), max_loaded=0, metrics=None, timeout=10.0, memory=None,
                 min_residency=1.0):
        self.client, self.dir, self.pinned, self.max_loaded = client, lock_dir, set(pinned), max_loaded
        self.metrics, self.timeout, self.memory, self.min_residency = metrics, timeout, memory, min_residency
        self.queue = os.path.join(lock_dir, "queue")
        os.makedirs(self.queue, exist_ok=True)
        self.users = {}        # model -> _Users (fds used for the shared in-flight locks)
        self.evict_fds = {}    # model -> fd used to test and hold a victim's lock (a separate open file)
        self.touched = {}
        self.repo_fd = self._open("repository")
        # flock is per open file: every greenlet of this worker shares repo_fd, so within the worker a semaphore
        # makes the hold exclusive (the file lock makes it so across workers).
        from gevent.lock import Semaphore
        self.repo_guard = Semaphore()
        # Every unload (and reload, and drain mark) moves this file's mtime: a worker that saw a model READY at the
        # current generation knows it still is, without asking Triton (its shared hold keeps it from being unloaded).
        self.generation = os.path.join(lock_dir, "generation")
        if not os.path.exists(self.generation):
            open(self.generation, "a").close()

    def _open(self, name):
        return os.open(os.path.join(self.dir, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)

    def _mark(self, name, kind):
        return os.path.join(self.dir, f"{name}.{kind}")

    @staticmethod
    def _lock(fd, mode, deadline):
        """flock without blocking the worker: retried every POLL_S until `deadline`. False if it never came."""
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                gevent.sleep(POLL_S)

    # The request's side

    def enter(self, name, deadline):
        """Before a request's call to `name`: the model is loaded and cannot be unloaded until leave(name).

        Waiting (for a drain, for its turn, for its load) happens without holding the model: a waiter that held it
        would keep its own victim from draining."""
        users = self.users.get(name)
        if users is None:
            users = self.users[name] = _Users(self._open(name))
        draining, crashed = self._mark(name, "draining"), self._mark(name, "crashed")
        arrived = time.time_ns()   # its place in the queue, should it have to wait
        while True:
            if os.path.exists(draining):
                self._wait_turn(users, name, deadline, arrived)   # a victim: it loads again in its turn
                continue
            if users.count == 0 and not self._lock(users.fd, fcntl.LOCK_SH, deadline):
                raise DeadlineExceeded(f"model {name!r} was being unloaded for longer than the request's deadline")
            users.count += 1
            if os.path.exists(draining):   # marked meanwhile: the mark wins
                self.leave(name)
                continue
            if users.ready:   # held by this worker since it was seen READY: nothing can have unloaded it
                break
            generation = os.stat(self.generation).st_mtime_ns
            try:
                ready = (users.seen == generation or self._ready(name, self._remaining(deadline))) \
                    and not os.path.exists(crashed)
            except RpcError as exc:
                self.leave(name)
                raise self._unreachable(exc, name, deadline) from None
            if ready:   # held now, so it stays READY until leave()
                users.ready, users.seen = True, generation
                break
            self.leave(name)
            self._wait_turn(users, name, deadline, arrived)
        now = time.monotonic()
        if now - self.touched.get(name, 0.0) >= TOUCH_S:   # the LRU order, shared through the file's mtime
            self.touched[name] = now
            os.utime(users.fd)

    def _wait_turn(self, users, name, deadline, arrived):
        """Wait, holding nothing of the model, until it is READY and not draining (_ensure); one greenlet of this
        worker per model asks, the others wait for it."""
        if not users.guard.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._late(name, deadline)
        try:
            self._ensure(name, deadline, arrived)
        finally:
            users.guard.release()

    def leave(self, name):
        users = self.users[name]
        users.count -= 1
        if users.count == 0:
            users.ready = False   # once nothing holds it, another worker may unload it: look again next time
            fcntl.flock(users.fd, fcntl.LOCK_UN)

    def crashed(self, name, detail):
        """The model's process died (Triton keeps it READY but fails every request): reload it on the next one."""
        with open(self._mark(name, "crashed"), "w") as f:
            f.write(detail + "\n")
        users = self.users.get(name)
        if users is not None:
            users.ready, users.seen = False, None

    def _next_generation(self):
        os.utime(self.generation, ns=(time.time_ns(), time.time_ns()))

    def _unreachable(self, exc, name, deadline):
        """An RpcError of a look at Triton -> what the request gets: a wait cut short by its own deadline is late,
        anything else means Triton cannot be reached."""
        if exc.code == DEADLINE_EXCEEDED and time.monotonic() >= deadline - 0.01:
            return self._late(name, deadline)
        return Unavailable(f"inference server is not reachable: {exc.details or exc.name}")

    def _late(self, name, deadline, started=None):
        waited = f" after waiting {time.monotonic() - started:.1f} s" if started is not None else ""
        return Unavailable(f"model {name!r} did not get its turn to load within the request's deadline{waited} "
                           f"({self.budget_text() or 'the models are loading'}): try again", retry_after=1)

    # Loading, under repository.lock

    def _index(self, timeout):
        answer = self.client.call("RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=False), timeout)
        return {m.name: (m.state, m.reason) for m in answer.models}

    def _ready(self, name, timeout):
        request = service_pb2.ModelReadyRequest(name=name)
        return self.client.call("ModelReady", request, timeout).ready

    def _remaining(self, deadline):
        return max(0.001, deadline - time.monotonic())

    def _ensure(self, name, deadline, arrived):
        """Return once `name` is READY and not draining: loaded now in its turn, if need be, within the deadline.
        `arrived` (time.time_ns() of the request) is its place in the queue."""
        crash_mark, draining = self._mark(name, "crashed"), self._mark(name, "draining")
        try:
            if (not os.path.exists(crash_mark) and not os.path.exists(draining)
                    and self._ready(name, self._remaining(deadline))):
                return
        except RpcError as exc:
            raise self._unreachable(exc, name, deadline) from None
        failed = self._mark(name, "failed")
        try:
            if time.time() - os.path.getmtime(failed) < LOAD_RETRY_S:
                with open(failed) as f:
                    raise Unavailable(f"model {name!r} failed to load: {f.read().strip()}")
        except FileNotFoundError:
            pass
        started = time.monotonic()
        entry = os.path.join(self.queue, f"{arrived}-{os.getpid()}-{name}")
        open(entry, "a").close()   # in the queue from now on, without waiting for repository.lock
        self._waiting(1)
        try:
            while True:
                if self._try_turn(name, deadline):
                    return
                if time.monotonic() >= deadline:
                    raise self._late(name, deadline, started)
                gevent.sleep(WAIT_POLL_S)   # another model's turn, a victim still draining, or a load under way
        finally:
            self._remove(entry)
            self._waiting(-1, time.monotonic() - started)

    def _try_turn(self, name, deadline):
        """One look under repository.lock: True when `name` is READY (loaded now if it was its turn)."""
        if not self.repo_guard.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        if not self._lock(self.repo_fd, fcntl.LOCK_EX, deadline):
            self.repo_guard.release()
            return False
        try:
            states = self._index(self._remaining(deadline))
            state = states.get(name, ("", ""))[0]
            crash_mark = self._mark(name, "crashed")
            if os.path.exists(crash_mark) and state == "READY":
                # Triton 2.51 keeps a model whose process died READY, and unloading it waits about 60 s on the
                # dead process. A load of a loaded model reloads it: a new process replaces the dead one.
                self._load(name, deadline, reload=True)
                os.unlink(crash_mark)
                return True
            draining = os.path.exists(self._mark(name, "draining"))
            if state == "READY" and not draining:
                return True
            if state in ("LOADING", "UNLOADING") or (state == "BUSY"):
                return False   # another worker's load or unload of it
            if self._queue_head(states) != name:
                return False
            if state == "READY":   # its own drain, while it heads the queue (the one that wanted room gave up)
                self._undrain(name)
                return True
            if self._make_room(name, states, deadline):
                self._load(name, deadline)
                return True
            return False
        except RpcError as exc:
            if exc.code == DEADLINE_EXCEEDED and time.monotonic() >= deadline - 0.01:
                return False   # a look cut short by the request's own deadline: the wait ends as late, below
            raise self._unreachable(exc, name, deadline) from None
        finally:
            fcntl.flock(self.repo_fd, fcntl.LOCK_UN)
            self.repo_guard.release()

    # The queue of models waiting for room

    def _queue_head(self, states):
        """The model whose turn it is: the earliest waiting request's (entries of workers gone are dropped)."""
        entries, alive = [], {}
        for entry in os.listdir(self.queue):
            arrived, pid, model = _entry(entry)
            if pid not in alive:
                alive[pid] = _alive(pid)
            if not alive[pid]:
                self._remove(os.path.join(self.queue, entry))
                continue
            entries.append((arrived, model))
        waiting = {m: (states.get(m, ("", ""))[0], os.path.exists(self._mark(m, "draining"))) for _, m in entries}
        return queue_head(entries, waiting)

    @staticmethod
    def _remove(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _waiting(self, delta, seconds=None):
        if self.metrics is not None:
            self.metrics.model_waiting(delta, seconds)

    # Making room

    def _take(self, name):
        """Hold `name`'s lock exclusively if no request of any worker has it: True when held."""
        fd = self.evict_fds.get(name)
        if fd is None:
            fd = self.evict_fds[name] = self._open(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _release(self, name):
        fcntl.flock(self.evict_fds[name], fcntl.LOCK_UN)

    def _mtime(self, name, kind):
        try:
            return os.path.getmtime(self._mark(name, kind))
        except FileNotFoundError:
            return None

    def _fits(self, name, held):
        if self.max_loaded > 0 and len(held) + 1 > self.max_loaded:
            return False
        if self.memory is not None:
            return self.memory.used(held) + self.memory.expected(name) <= self.memory.budget
        return True

    def _make_room(self, name, states, deadline):
        """Drain and unload models until `name` fits: True when it does; False to wait (a victim still has
        requests in flight, or none has been loaded for MODEL_MIN_RESIDENCY yet)."""
        if self.max_loaded <= 0 and self.memory is None:
            return True
        held = [m for m, (state, _) in states.items() if state in HELD and m != name]
        if self._fits(name, held):
            return True
        if not any(m not in self.pinned for m in held):   # it is over the memory budget on its own
            log.warning("model %r alone is over %s; it loads beside the pinned models only", name,
                        self.budget_text())
            return True
        for victim in [m for m in held if os.path.exists(self._mark(m, "draining"))]:
            if states[victim][0] != "READY" or not self._take(victim):
                return False   # still unloading, or its requests in flight have not all finished
            if not self._unload(victim, "lru", deadline):
                return False   # still unloading at the deadline: no load may start beside it
            held.remove(victim)
            if self._fits(name, held):
                return True
        candidates = [m for m in held if m not in self.pinned and states[m][0] == "READY"]
        now = time.time()
        victim = choose_victim(candidates, {m: self._mtime(m, "lock") or 0.0 for m in candidates},
                               {m: self._mtime(m, "loaded") or float("-inf") for m in candidates}, now,
                               self.min_residency)
        if victim is None:
            return False   # every candidate is within its residency quantum
        open(self._mark(victim, "draining"), "a").close()
        self._next_generation()
        log.info("model %r drains (least recently used) to make room for %r within %s", victim, name,
                 self.budget_text())
        if self._take(victim) and self._unload(victim, "lru", deadline):   # nothing in flight: at once
            held.remove(victim)
            return self._fits(name, held)
        return False

    def _undrain(self, name):
        self._remove(self._mark(name, "draining"))
        self._next_generation()

    def _unload(self, name, reason, deadline):
        """Unload and wait until Triton has let go of it (its unload API returns before that), at most until the
        deadline: True when it is gone."""
        gone = False
        try:
            self.client.call("RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name=name),
                             self._remaining(deadline))
            limit = min(time.monotonic() + UNLOAD_WAIT_S, deadline)
            while True:
                gone = self._index(self.timeout).get(name, ("", ""))[0] not in HELD
                if gone or time.monotonic() >= limit:
                    break
                gevent.sleep(0.05)
        finally:
            if gone:
                self._remove(self._mark(name, "draining"))
            self._next_generation()
            self._release(name)
        log.info("model %r unloaded (least recently used, to stay within %s)", name, self.budget_text())
        if self.metrics is not None:
            self.metrics.model_unloaded(name, reason)
        return gone

    def budget_text(self):
        parts = [f"MAX_LOADED_MODELS={self.max_loaded}"] if self.max_loaded > 0 else []
        if self.memory is not None:
            parts.append(f"MODEL_MEMORY_BUDGET={self.memory.budget}")
        return " and ".join(parts)

    def _load(self, name, deadline, reload=False):
        started = time.monotonic()
        gpu_before = self.memory.before() if self.memory is not None else None
        try:
            self.client.call("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name=name),
                             self._remaining(deadline))
        except RpcError as exc:
            if exc.code == DEADLINE_EXCEEDED:
                self._count(name, "timeout", started)
                raise DeadlineExceeded(f"model {name!r} is still loading after the request's deadline; it goes on "
                                       "loading: try again") from None
            reason = (exc.details or exc.name).strip()
            with open(self._mark(name, "failed"), "w") as f:
                f.write(reason + "\n")
            self._count(name, "failed", started)
            log.error("model %r failed to load: %s", name, reason)
            raise Unavailable(f"model {name!r} failed to load: {reason}") from None
        self._remove(self._mark(name, "failed"))
        open(self._mark(name, "loaded"), "a").close()
        os.utime(self._mark(name, "loaded"))
        self._count(name, "ok", started)
        if self.memory is not None:
            size = self.memory.record(name, gpu_before)
            log.info("model %r holds %.1f MB (MODEL_MEMORY_BUDGET)", name, size / 1e6)
        if reload:
            self._next_generation()
            log.info("model %r reloaded in %.2f s (its process had died)", name, time.monotonic() - started)
            if self.metrics is not None:
                self.metrics.model_unloaded(name, "crashed")
        else:
            log.info("model %r loaded on demand in %.2f s", name, time.monotonic() - started)

    def _count(self, name, result, started):
        if self.metrics is not None:
            try:
                loaded = sum(state == "READY" for state, _ in self._index(self.timeout).values())
            except RpcError:
                loaded = None
            self.metrics.model_loaded(name, result, time.monotonic() - started, loaded)
