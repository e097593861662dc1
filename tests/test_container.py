"""The image, built and run as ModelArts runs it, with podman (no Docker engine here).

The base is tests/container's stand-in for the NGC Triton image; the product Dockerfile is built on it through
deploy/build_and_push.sh, the ECS script, then started without overriding its command or user.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT, body, free_port, require

W = os.path.join(ROOT, "build", "podman")
IMAGE = "localhost/triton-modelarts:test"
REMOTE = "swr.cn-north-4.myhuaweicloud.com/modelarts-test/triton-modelarts:test"
GRACE = 5


def pm(*args, check=True, timeout=600):
    env = dict(os.environ, CONTAINERS_CONF=os.path.join(W, "containers.conf"))
    proc = subprocess.run(["podman", "--root", os.path.join(W, "storage"), "--runroot", os.path.join(W, "run"),
                           *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def image():
    require("podman", "runc", "debootstrap", root=True)
    subprocess.run(["sh", os.path.join(ROOT, "tests", "container", "make_base.sh"), W, sys.executable],
                   check=True, timeout=900)
    # The models' torch: a CPU wheel where pip has one at hand (the image is for GPUs, the test host has none);
    # tests/test_image_torch.py runs the models under the image's own torch pin.
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "-d", os.path.join(ROOT, "wheels"), "torch==2.13.0"], check=True, timeout=900)
    started = time.monotonic()
    build = subprocess.run(
        ["sh", os.path.join(ROOT, "deploy", "build_and_push.sh"), "--region", "cn-north-4", "--org", "modelarts-test",
         "--name", "triton-modelarts", "--tag", "test", "--base-image", "localhost/triton-base:24.10",
         "--torch", "torch==2.13.0",
         "--expected-gb", "3", "--no-push", "--", "--format", "docker", "--network", "host"],
        capture_output=True, text=True, timeout=1800, env=dict(os.environ, DOCKER=os.path.join(W, "docker")))
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    print(f"\nimage built in {time.monotonic() - started:.0f}s; "
          + [line for line in build.stdout.splitlines() if line.startswith("image size:")][0])
    assert f"not pushed (--no-push): {REMOTE}" in build.stdout
    # The GPU gate ran inside the built image: the test base is a CPU image, so it reads torch and steps aside.
    assert "models' torch: 2.13.0+cpu, CUDA none, architectures: none; base image CUDA: none" in build.stdout
    assert "the base image declares no CUDA_VERSION (a CPU image): GPU gate skipped" in build.stdout
    assert pm("image", "exists", REMOTE, check=False).returncode == 0
    return IMAGE


def wait_healthy(url, name, timeout=180):
    """Poll /health until 200, failing at once (with its log) if the container `name` stops running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert pm("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", \
            pm("logs", name, check=False).stdout[-4000:]
        time.sleep(0.5)
    raise AssertionError("container not healthy:\n" + pm("logs", name, check=False).stdout[-4000:])


@pytest.fixture(scope="module")
def container(image):
    port = free_port()
    name = f"triton-modelarts-test-{port}"
    # As ModelArts starts it: the image's own CMD and USER. Only ports (host network here) and the grace period.
    pm("run", "-d", "--name", name, "--network", "host", "-e", f"PORT={port}",
       "-e", f"TRITON_HTTP_PORT={free_port()}", "-e", f"TRITON_GRPC_PORT={free_port()}",
       "-e", f"TRITON_METRICS_PORT={free_port()}", "-e", f"GRACE_PERIOD={GRACE}", image)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    wait_healthy(url, name)
    print(f"\ncontainer healthy {time.monotonic() - started:.1f}s after start")
    yield name, url
    pm("rm", "-f", name, check=False)


def test_dockerfiles_lint_clean():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    proc = subprocess.run([hadolint, "--failure-threshold", "info", "Dockerfile", "tests/container/Dockerfile.base"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "")


def test_image_config_is_the_modelarts_contract(image):
    fmt = "{{.Config.User}}|{{json .Config.Cmd}}|{{json .Config.ExposedPorts}}"
    user, cmd, ports = pm("image", "inspect", "--format", fmt, image).stdout.strip().split("|")
    assert user == "ma-user"
    assert cmd == '["sh","/home/run.sh"]'
    assert "8080/tcp" in ports


def test_serves_digits_and_health_like_modelarts_expects(container, held_out):
    from conftest import encode
    _, url = container
    resp = requests.get(url + "/health", timeout=5)
    assert (resp.status_code, body(resp)) == (200, {"health": "true"})
    with open(os.path.join(ROOT, "tests", "data", "seven.jpg"), "rb") as f:
        resp = requests.post(url + "/", files={"images": ("seven.jpg", f.read())}, timeout=30)
    assert (resp.status_code, body(resp)) == (200, {"mnist_result": 7})
    x, y = held_out
    resp = requests.post(url + "/", files={"images": ("d.png", encode(x[450]))}, timeout=30)
    assert (resp.status_code, body(resp)) == (200, {"mnist_result": int(y[450])})


def test_runs_as_ma_user_with_the_batch_tools(container):
    name, _ = container
    script = ('for p in /proc/[0-9]*; do awk \'/^Uid:/{print $2}\' "$p/status" 2>/dev/null; done | sort -u; '
              'id -un; id -g; touch /obs-mount/probe && echo obs-mount-writable; '
              'command -v python3 java zip >/dev/null && echo tools-present; '
              '/usr/bin/python3 -c "import numpy; print(numpy.__version__)"')
    out = pm("exec", name, "sh", "-c", script).stdout.split()
    assert out == ["1000", "ma-user", "100", "obs-mount-writable", "tools-present", "1.26.4"]


LISTENERS = r"""
import glob, os, json
inodes = set()
for fd in glob.glob("/proc/[0-9]*/fd/*"):
    try:
        target = os.readlink(fd)
    except OSError:
        continue
    if target.startswith("socket:["):
        inodes.add(target[8:-1])
found = []
for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] != "0A" or f[9] not in inodes:   # 0A: LISTEN; only this container's own sockets
            continue
        addr, port = f[1].split(":")
        raw = bytes.fromhex(addr)
        if family == 4:
            ip = ".".join(str(b) for b in raw[::-1])
        else:
            words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
            ip = ":".join(b.hex() for b in words)
        found.append([ip, int(port, 16)])
print(json.dumps(found))
"""


def test_only_the_proxy_port_listens_outside_loopback(container):
    name, url = container
    port = int(url.rsplit(":", 1)[1])
    listening = json.loads(pm("exec", name, "python3", "-c", LISTENERS).stdout)
    loopback = ("127.", "00000000:00000000:0000ffff:7f", "00000000:00000000:00000000:00000001")   # v4, v4 in v6, ::1
    outside = sorted({(ip, p) for ip, p in listening if not ip.startswith(loopback)})
    assert outside == [("0.0.0.0", port)], listening
    assert len(listening) >= 4, listening   # Triton's HTTP, gRPC and metrics ports are there, on loopback


def test_stop_drains_then_stops_gunicorn_then_triton(container):
    name, url = container
    started = time.monotonic()
    pm("stop", "-t", str(GRACE + 90 + 30), name, timeout=300)
    stopped_in = time.monotonic() - started
    assert pm("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    log = pm("logs", name).stdout + pm("logs", name).stderr
    marks = ["stop requested: /health now answers 503", "grace period over", "Shutting down: Master",
             "gunicorn stopped (exit 0)", "stopping Triton", "Signal (15) received", "Triton stopped (exit 0)",
             "shutdown complete"]
    positions = [log.find(m) for m in marks]
    assert all(p >= 0 for p in positions), dict(zip(marks, positions))
    assert positions == sorted(positions), dict(zip(marks, positions))
    print(f"\npodman stop took {stopped_in:.1f}s with a {GRACE}s grace period")
    assert GRACE <= stopped_in < GRACE + 30



def rehearse_image(image, *args):
    env = dict(os.environ, DOCKER=os.path.join(W, "docker"), REHEARSE_NETWORK="host")   # podman here has no bridge
    proc = subprocess.run(["make", "-s", "rehearse", f"IMAGE={image}", "REHEARSE_GRACE=3", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    with open(os.path.join(ROOT, "build", "rehearsal", "report.json")) as f:
        report = json.load(f)
    return proc, report, {f["check"]: f for f in report["findings"]}


def test_make_rehearse_passes_on_the_image(image):
    proc, report, found = rehearse_image(image)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert report["counts"]["FAIL"] == 0 and report["counts"]["WARN"] == 0, proc.stdout[-4000:]
    assert [(found[c]["level"], found[c]["measured"]) for c in ("image: user", "image: entry", "image: port")] == [
        ("PASS", "ma-user"), ("PASS", '["sh", "/home/run.sh"]'), ("PASS", "8080/tcp")]
    assert found["image: /home/mind/model"]["measured"] == "ok for uid 1000"
    assert found["image: /obs-mount"]["measured"] == "ok for uid 1000"
    assert [found[f"image: {t}"]["level"] for t in ("python3", "java", "zip")] == ["PASS"] * 3
    assert found["image: size"]["measured"].endswith("GB (limit 50 GB)")
    assert found["POST /: answer"]["measured"].endswith('-> {"mnist_result":7}')
    assert found["exit status"]["measured"] == "0"


def test_a_model_package_at_home_mind_model_is_served_with_its_config(image):
    """MODEL_REPOSITORY=dir mounts dir at /home/mind/model, as ModelArts downloads a model package there; run.sh
    serves its models and its config.json."""
    package = os.path.join(ROOT, "build", "rehearsal-package")
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "tests", "models", "filesize"), os.path.join(package, "filesize"))
    config = subprocess.run([sys.executable, "-m", "serving.generate", package], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    with open(os.path.join(package, "config.json"), "w") as f:
        f.write(config)
    subprocess.run(["chmod", "-R", "a+rX", package], check=True)
    sample = os.path.join(ROOT, "tests", "data", "seven.jpg")
    proc, report, found = rehearse_image(image, f"MODEL_REPOSITORY={package}", f"SAMPLES=file={sample}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert found["POST /filesize: answer"]["measured"].endswith(f'-> {{"size":{os.path.getsize(sample)}}}')
    log = open(os.path.join(ROOT, "build", "rehearsal", "service.log")).read()
    assert "repository /home/mind/model, config /home/mind/model/config.json" in log


@pytest.mark.slow   # over a minute by design
def test_the_kubernetes_base_runs_with_podman_kube_play_and_stops_in_order_under_load(image):
    """deploy/k8s/base, rendered, run by `podman kube play` with the image built here (one replica, host network,
    no GPU: the only changes), answers MNIST; a stop of the pod under load (with the manifest's grace period) stops
    it in order: every answer right, nothing cut off mid-request (one after gunicorn's stop is refused at connect)."""
    import threading
    import yaml
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed: it renders deploy/k8s (kubectl kustomize)")
    docs = yaml.safe_load_all(subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "deploy", "k8s", "base")],
                                             check=True, capture_output=True, text=True).stdout)
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    port = free_port()
    deployment["spec"]["replicas"] = 1
    spec = deployment["spec"]["template"]["spec"]
    spec["hostNetwork"] = True   # podman here has no bridge network
    (c,) = spec["containers"]
    c["image"] = image
    for kind in ("requests", "limits"):
        c["resources"][kind].pop("nvidia.com/gpu")
    c.pop("ports")   # port mappings need a bridge; on the host network the probes name the port itself
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        c[probe]["httpGet"]["port"] = port
    c["env"] = [e for e in c["env"] if e["name"] != "GRACE_PERIOD"] + [
        {"name": name, "value": str(value)} for name, value in (
            ("PORT", port), ("TRITON_HTTP_PORT", free_port()), ("TRITON_GRPC_PORT", free_port()),
            ("TRITON_METRICS_PORT", free_port()), ("GRACE_PERIOD", GRACE))]
    manifest = os.path.join(W, "kube-play.yaml")
    with open(manifest, "w") as f:
        yaml.safe_dump(deployment, f)
    pm("kube", "down", manifest, check=False)
    pm("kube", "play", manifest, timeout=300)
    url, container = f"http://127.0.0.1:{port}", f"{deployment['metadata']['name']}-pod-0-{c['name']}"
    try:
        wait_healthy(url, container)
        seven = open(os.path.join(ROOT, "tests", "data", "seven.jpg"), "rb").read()
        assert body(requests.post(url + "/", files={"images": ("seven.jpg", seven)}, timeout=30)) == \
            {"mnist_result": 7}
        right, wrong, refused, stop, stopping = [], [], [], threading.Event(), [float("inf")]

        def client():   # a connection per request: an idle keep-alive closed at the stop is not a lost request
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = requests.post(url + "/", files={"images": ("seven.jpg", seven)}, timeout=60)
                    (right if (r.status_code, r.json()) == (200, {"mnist_result": 7}) else wrong).append(r.text)
                except requests.ConnectionError as exc:
                    # Through the grace period every request is served; after it gunicorn closes its listener, and a
                    # connection still in its backlog is refused or reset (never a request cut mid-answer: the
                    # order of the log below shows gunicorn drained before it stopped).
                    after_grace = sent >= stopping[0] + GRACE - 0.5
                    (refused if "refused" in str(exc).lower() or after_grace else wrong).append(str(exc)[:200])
                    time.sleep(0.1)
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1)
        stopping[0] = time.monotonic()
        # What `podman kube down` does, with the manifest's grace period as the stop timeout (podman 4.3's kube down
        # stops with its default 10 s, shorter than run.sh's stop; Kubernetes waits terminationGracePeriodSeconds)
        pm("pod", "stop", "-t", str(spec["terminationGracePeriodSeconds"]), f"{deployment['metadata']['name']}-pod-0",
           timeout=400)
        stop.set()
        for t in threads:
            t.join(60)
        log = pm("logs", container).stdout + pm("logs", container).stderr
        assert wrong == [] and len(right) > 4, (wrong[:3], len(right), log[-5000:])
        marks = ["stop requested: /health now answers 503", "grace period over", "gunicorn stopped (exit 0)",
                 "stopping Triton", "Triton stopped (exit 0)", "shutdown complete"]
        positions = [log.find(m) for m in marks]
        assert all(p >= 0 for p in positions) and positions == sorted(positions), (dict(zip(marks, positions)),
                                                                                   log[-3000:])
    finally:
        pm("kube", "down", manifest, check=False)
