"""The loader's state shared by the gunicorn workers: files in LOADING_DIR (one folder per run, made by run.sh).

- `repository.lock`: held exclusively by the one worker that changes what Triton has loaded (a load or an unload);
- `<model>.lock`: held shared by every worker with a request in flight for the model; unloading needs it
  exclusively. Its mtime is the model's last use: the LRU order;
- marks `<model>.draining` (a victim: no new request enters it), `<model>.loaded` (its mtime: the last load),
  `<model>.failed` (Triton's reason for a failed load), `<model>.crashed` (its process died);
- `generation`: its mtime moves on every unload, reload and drain mark;
- `queue/<arrival ns>-<worker pid>-<model>`: a request waiting for its model's turn.

Locks are tried without blocking and retried every POLL_S on gevent's clock, so a waiting greenlet never stalls
its worker."""
import fcntl
import os
import time

import gevent

POLL_S = 0.02


def lock(fd, mode, deadline):
    """flock without blocking the worker: retried every POLL_S until `deadline`. False if it never came."""
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(POLL_S)


def unlock(fd):
    fcntl.flock(fd, fcntl.LOCK_UN)


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class SharedFiles:
    """LOADING_DIR's files, as the loader uses them."""

    def __init__(self, lock_dir):
        self.dir = lock_dir
        self.queue = os.path.join(lock_dir, "queue")
        os.makedirs(self.queue, exist_ok=True)
        self.generation = os.path.join(lock_dir, "generation")
        if not os.path.exists(self.generation):
            open(self.generation, "a").close()
        self.evict_fds = {}    # model -> fd used to test and hold a victim's lock (a separate open file)

    def open_lock(self, name):
        return os.open(os.path.join(self.dir, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)

    # Marks

    def mark(self, name, kind):
        return os.path.join(self.dir, f"{name}.{kind}")

    def marked(self, name, kind):
        return os.path.exists(self.mark(name, kind))

    def set_mark(self, name, kind, text=None):
        """Make the mark (its mtime: now), with `text` in it if given."""
        path = self.mark(name, kind)
        with open(path, "a" if text is None else "w") as f:
            if text is not None:
                f.write(text + "\n")
        os.utime(path)

    def clear_mark(self, name, kind):
        remove(self.mark(name, kind))

    def mtime(self, name, kind):
        try:
            return os.path.getmtime(self.mark(name, kind))
        except FileNotFoundError:
            return None

    def read_mark(self, name, kind):
        """The mark's text, or None if there is no such mark (any more)."""
        try:
            with open(self.mark(name, kind)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def loading(self, name):
        """Whether a worker loads `name` now, outside repository.lock (its mark names the worker's pid: the mark
        of a worker that died is stale, and removed)."""
        text = self.read_mark(name, "loading")
        if text is None:
            return False
        if text.isdigit() and _alive(int(text)):
            return True
        self.clear_mark(name, "loading")
        return False

    # The generation: a worker that saw a model READY at the current one knows it still is

    def current_generation(self):
        return os.stat(self.generation).st_mtime_ns

    def next_generation(self):
        os.utime(self.generation, ns=(time.time_ns(), time.time_ns()))

    # Victims: held exclusively only when no request of any worker holds them

    def take(self, name):
        """Hold `name`'s lock exclusively if no request of any worker has it: True when held."""
        fd = self.evict_fds.get(name)
        if fd is None:
            fd = self.evict_fds[name] = self.open_lock(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self, name):
        unlock(self.evict_fds[name])

    # The queue of requests waiting for their model's turn

    def join_queue(self, arrived, name):
        """In the queue from now on (without waiting for repository.lock): the entry's path, for leave_queue."""
        entry = os.path.join(self.queue, f"{arrived}-{os.getpid()}-{name}")
        open(entry, "a").close()
        return entry

    leave_queue = staticmethod(remove)

    def waiting(self):
        """[(arrival, model)] of the requests waiting; the entries of workers that died are dropped."""
        entries, alive = [], {}
        for entry in os.listdir(self.queue):
            arrived, _, rest = entry.partition("-")
            pid, _, model = rest.partition("-")
            if not (arrived.isdigit() and pid.isdigit() and model):   # not an entry of ours: ignored, left alone
                continue
            pid = int(pid)
            if pid not in alive:
                alive[pid] = _alive(pid)
            if not alive[pid]:
                remove(os.path.join(self.queue, entry))
                continue
            entries.append((int(arrived), model))
        return entries
