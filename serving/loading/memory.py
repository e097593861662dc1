"""The budget of loaded models: MAX_LOADED_MODELS, and MODEL_MEMORY_BUDGET's measure of what the loaded models hold
(GPU memory from Triton's metrics, or the resident memory of their python-backend processes) and of what a model
will take when it loads."""
import os
import urllib.request

from .policy import fits


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


class Budget:
    """MAX_LOADED_MODELS and MODEL_MEMORY_BUDGET together: whether one more model fits beside those held, and how
    a message names the budget."""

    def __init__(self, max_loaded=0, memory=None):
        self.max_loaded, self.memory = max_loaded, memory

    @property
    def limited(self):
        return self.max_loaded > 0 or self.memory is not None

    def fits(self, name, held):
        if self.memory is None:
            return fits(len(held), self.max_loaded)
        return fits(len(held), self.max_loaded, self.memory.used(held), self.memory.expected(name), self.memory.budget)

    def __str__(self):
        parts = [f"MAX_LOADED_MODELS={self.max_loaded}"] if self.max_loaded > 0 else []
        if self.memory is not None:
            parts.append(f"MODEL_MEMORY_BUDGET={self.memory.budget}")
        return " and ".join(parts)
