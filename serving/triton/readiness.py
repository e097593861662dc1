"""Triton readiness for /health, and the python models' processes watched for a death Triton does not report."""
import logging
import os
import time

from gevent.lock import Semaphore
from tritonclient.grpc import service_pb2

from ..grpc_wire import RpcError

log = logging.getLogger("serving.triton")


def stub_processes(triton_pid, proc="/proc"):
    """{(model, instance name): pid} of the python-backend processes that Triton (`triton_pid`) started: their argv
    is `triton_python_backend_stub <repository>/<model>/<version>/model.py <shm region> <sizes> <parent pid>
    <backend dir> <size> <instance> ...` (a model's folder is named as the model: Triton requires it)."""
    found = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid != triton_pid:
                continue
            with open(f"{proc}/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 8:
            model = os.path.basename(os.path.dirname(os.path.dirname(argv[1].decode(errors="replace"))))
            found[(model, argv[8].decode(errors="replace"))] = int(entry)
    return found


def _alive(pid, proc="/proc"):
    """Whether a process runs: a killed child that its parent has not reaped yet (a zombie) does not."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


class Readiness:
    """Triton readiness for /health: server ready, every bound model ready, and no model whose process died.

    One probe per `ttl` seconds per worker, however many /health calls arrive; the others reuse its answer.
    A crashed model is marked with a file (`<marks>.<model>`), so that every worker's /health reports it: Triton
    still calls the model READY, and only a restart of the container brings it back (docs/reliability.md, "When a
    model's process dies").
    """

    def __init__(self, c, models, timeout, ttl, marks=None, triton_pid=None, proc="/proc"):
        self.client, self.models, self.timeout, self.ttl = c, list(models), timeout, ttl
        self.marks = marks
        self.lock = Semaphore()   # a greenlet lock: the probe waits on gRPC while holding it
        self.checked_at, self.reason = float("-inf"), "not checked yet"
        # The python models' processes (Triton's children), watched so that a death shows at once, not when a
        # request first fails on it: {(model, instance): pid} of the watched models, recorded once they are ready.
        self.triton_pid, self.proc, self.stubs = triton_pid, proc, None

    def probe(self):
        """None when ready, else why not."""
        try:
            c = self.client
            if not c.call("ServerReady", service_pb2.ServerReadyRequest(), self.timeout).ready:
                return "inference server is not ready"
            for name, version in self.models:
                request = service_pb2.ModelReadyRequest(name=name, version=version)
                if not c.call("ModelReady", request, self.timeout).ready:
                    return f"model {name!r} is not ready"
        except RpcError as exc:
            return f"inference server is not reachable: {exc.details or exc.name}"
        self.watch_stubs()
        return self.crash_marked()

    def crash_marked(self):
        """Why not ready when a watched model is marked crashed (by any worker), else None."""
        for name, _ in self.models:
            if self.marks and os.path.exists(f"{self.marks}.{name}"):
                return (f"model {name!r} crashed (its process died) and the inference server does not restart it: "
                        "this container needs a restart")
        return None

    def watch_stubs(self):
        """Mark a watched model crashed when a process of its instances is gone with no process in its place
        (Triton 2.51 keeps such a model READY and never restarts it). Cheap while nothing changes: one small read
        of /proc/<pid>/stat per instance; the rest of /proc is read only when one of them is gone."""
        if not self.triton_pid:
            return
        names = {name for name, _ in self.models}
        if self.stubs is None:
            self.stubs = {key: pid for key, pid in stub_processes(self.triton_pid, self.proc).items()
                          if key[0] in names}
            return
        if all(_alive(pid, self.proc) for pid in self.stubs.values()):
            return
        now = stub_processes(self.triton_pid, self.proc)
        for key, pid in list(self.stubs.items()):
            if _alive(pid, self.proc):
                continue
            if key in now:   # started again (a reload): watch the new one
                self.stubs[key] = now[key]
                continue
            del self.stubs[key]
            log.error("model %r crashed: its process (instance %s, pid %d) is gone; /health now answers 503",
                      key[0], key[1], pid)
            self.mark_crashed(key[0], f"its process (instance {key[1]}, pid {pid}) is gone")

    def mark_crashed(self, name, detail):
        """Record that `name`'s process died; /health answers 503 from the next probe on, in every worker."""
        if self.marks and not os.path.exists(f"{self.marks}.{name}"):
            with open(f"{self.marks}.{name}", "w") as f:
                f.write(detail + "\n")
            self.checked_at = float("-inf")

    def check(self):
        if time.monotonic() - self.checked_at < self.ttl:
            # Another worker may have found a model crashed since: every worker says so at once (a stat per model).
            return self.reason or self.crash_marked()
        with self.lock:
            if time.monotonic() - self.checked_at >= self.ttl:
                self.reason = self.probe()
                self.checked_at = time.monotonic()
            return self.reason
