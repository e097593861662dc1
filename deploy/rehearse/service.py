"""Phase 2 and 4's service: the local stack (run.sh, as `make serve` runs it) or the image (as the platform runs
it: uid 1000:100, port 8080, the model package at /home/mind/model), started, probed and stopped with SIGTERM."""
import os
import signal
import socket
import subprocess
import time

from . import platform as P

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Settings passed on to the image when they are set here (docs/settings.md).
PASSED = ("REQUEST_MODE", "REQUEST_TIMEOUT", "MAX_BODY_MB", "WORKERS", "MODEL_BINDINGS", "INFLIGHT_PER_MODEL", "GRACEFUL_TIMEOUT",
          "HEALTH_TIMEOUT", "KSERVE_V2", "METRICS", "ACCESS_LOG", "TRITON_ARGS", "STARTUP_TIMEOUT")


def free_port(preferred=None):
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server binds: TIME_WAIT is no use
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]


class Local:
    """sh run.sh on this machine, with the repository and config given."""

    def __init__(self, log_path, grace, repository=None, config=None):
        self.port = free_port(P.PORT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path, self.grace = log_path, grace
        self.env = dict(os.environ, PORT=str(self.port), GRACE_PERIOD=str(grace),
                        TRITON_HTTP_PORT=str(free_port()), TRITON_GRPC_PORT=str(free_port()),
                        TRITON_METRICS_PORT=str(free_port()),
                        DRAIN_FILE=os.path.join(os.path.dirname(log_path), "draining"))
        if repository:
            self.env["MODEL_REPOSITORY"] = os.path.abspath(repository)
        if config:
            self.env["MODELARTS_CONFIG"] = os.path.abspath(config)
        self.proc = None
        self.where = f"local stack (sh run.sh) on :{self.port}" + ("" if self.port == P.PORT else
                                                                    f" ({P.PORT} is taken here)")

    def start(self):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["sh", os.path.join(ROOT, "run.sh")], cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def running(self):
        return self.proc.poll() is None

    def terminate(self):
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout):
        """The exit status, or None if it is still running after `timeout` s."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def close(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            self._log.close()


class Image:
    """The image under docker or podman (DOCKER, a command), run as ModelArts runs it."""

    def __init__(self, docker, image, log_path, grace, repository=None, config=None, network=""):
        self.docker, self.image, self.log_path, self.grace = docker, image, log_path, grace
        self.name = f"rehearsal-{os.getpid()}"
        self.host_network = network == "host"
        self.port = P.PORT if self.host_network else free_port(P.PORT)
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["run", "-d", "--name", self.name, "--user", "%d:%d" % P.USER, "-e", f"GRACE_PERIOD={grace}"]
        args += ["--network", "host"] if self.host_network else ["-p", f"127.0.0.1:{self.port}:{P.PORT}"]
        for name in PASSED:
            if os.environ.get(name):
                args += ["-e", f"{name}={os.environ[name]}"]
        if repository:
            args += ["-v", f"{os.path.abspath(repository)}:{P.MODEL_DIR}"]
            if config and os.path.abspath(config) != os.path.join(os.path.abspath(repository), "config.json"):
                args += ["-v", f"{os.path.abspath(config)}:{P.MODEL_DIR}/config.json:ro"]
        self.args = args + [image]
        self.where = (f"image {image} ({' '.join(docker)} run --user 1000:100, "
                      + ("host network" if self.host_network else f"port {self.port}->8080")
                      + (f", {repository} at {P.MODEL_DIR})" if repository else ")"))
        self.started = False

    def _run(self, *args, timeout=120, check=False):
        proc = subprocess.run([*self.docker, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(self.docker)} {' '.join(args)}: {proc.stderr.strip()[-500:]}")
        return proc

    def start(self):
        self._run("rm", "-f", self.name)
        self._run(*self.args, check=True)
        self.started = True

    def running(self):
        return self._run("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def terminate(self):
        self._run("kill", "--signal", "TERM", self.name, check=True)

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                out = self._run("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip()
                return int(out) if out.lstrip("-").isdigit() else None
            time.sleep(0.5)
        return None

    def log(self):
        proc = self._run("logs", self.name)
        text = proc.stdout + proc.stderr
        with open(self.log_path, "w") as f:
            f.write(text)
        return text

    def close(self):
        if self.started:
            self.log()
            self._run("rm", "-f", self.name, timeout=300)
