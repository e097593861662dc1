"""deploy/build_and_push.sh, driven with a stand-in `docker` that records its calls."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "deploy", "build_and_push.sh")
FAKE_DOCKER = r"""#!/bin/sh
echo "BUILDKIT=${DOCKER_BUILDKIT:-} $*" | tr '\n' ' ' | sed 's/ *$//' >> "$FAKE_LOG"; echo >> "$FAKE_LOG"
case "$1" in
  info) echo "$FAKE_ROOT" ;;
  image) echo "$FAKE_SIZE" ;;
  login) cat > "$FAKE_LOG.stdin" ;;
  build) [ "${FAKE_FAIL:-}" != build ] || exit 1 ;;
  run) printf '%b' "$FAKE_RUN" ;;
  history) printf '%b' "$FAKE_HISTORY" ;;
  push) n=$(cat "$FAKE_LOG.pushes" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_LOG.pushes"
        [ "$n" -ge "${FAKE_PUSH_FAILS:-0}" ] || { echo "unexpected EOF" >&2; exit 1; } ;;
esac
"""
# What the engine's history says of the built image: size in bytes, tab, the step (a few layers).
HISTORY = ("0\t/bin/sh -c #(nop)  CMD [\"sh\" \"/home/run.sh\"]\n"
           "2100000000\tCOPY --chown=ma-user:100 model_repository/mnist/ /opt/serving/model_repository/mnist/\n"
           "65000000\tRUN /bin/bash -o pipefail -c python3 -m venv /opt/serving/venv\n")
REMOTE = "swr.cn-north-4.myhuaweicloud.com/acme/triton-mnist:v1"
CU126 = "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90"      # torch 2.7.1+cu126's build flags, read from the wheel
CU130 = "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 compute_120"
# What the image answers to the gate: NGC 24.10 (CUDA 12.6) with the pinned torch.
NGC_OK = f"base_cuda=12.6.2\\ntorch=2.7.1+cu126\\ntorch_cuda=12.6\\narch={CU126}\\n"


@pytest.fixture
def fake(tmp_path):
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    log = tmp_path / "calls.log"

    def run(*args, size=2_170_000_000, gate=NGC_OK, history=HISTORY, **env):
        full = {k: v for k, v in os.environ.items() if not k.startswith(("SWR_", "LAYER_", "PUSH_"))}
        full.update(DOCKER=str(docker), FAKE_LOG=str(log), FAKE_ROOT=str(tmp_path), FAKE_SIZE=str(size),
                    FAKE_RUN=gate, FAKE_HISTORY=history, **env)
        proc = subprocess.run(["sh", SCRIPT, *args], capture_output=True, text=True, env=full, timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        return proc, calls

    return run


ARGS = ["--region", "cn-north-4", "--org", "acme", "--name", "triton-mnist", "--tag", "v1"]


def test_builds_with_buildkit_checks_size_tags_and_pushes(fake):
    proc, calls = fake(*ARGS, "--base-image", "nvcr.io/nvidia/tritonserver:24.10-py3")
    assert proc.returncode == 0, proc.stderr
    verbs = [c.split()[1] for c in calls]
    assert verbs == ["info", "build", "history", "image", "run", "tag", "push"]
    build = calls[1]
    assert build.startswith("BUILDKIT=1 build --tag triton-mnist:v1 ")
    assert "--build-arg BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in build
    assert build.endswith(" " + ROOT)
    assert calls[2].endswith("history --human=false --no-trunc --format {{.Size}}\t{{.CreatedBy}} triton-mnist:v1")
    assert calls[3].endswith("image inspect --format {{.Size}} triton-mnist:v1")
    assert calls[4].endswith("run --rm --entrypoint sh triton-mnist:v1 -c " + calls[4].split(" -c ", 1)[1])
    assert calls[5].endswith(f"tag triton-mnist:v1 {REMOTE}")
    assert calls[6].endswith(f"push {REMOTE}")
    assert "layer gate passed: 2 layers with content, the largest 2.10 GB (limit 10 GB per layer)" in proc.stdout
    assert "image size: 2.17 GB (2170000000 bytes)" in proc.stdout
    assert proc.stdout.rstrip().endswith(f"image address for ModelArts: {REMOTE}")


def test_over_50_gb_fails_before_tagging(fake):
    proc, calls = fake(*ARGS, size=50_000_000_001)
    assert proc.returncode == 4
    assert "over ModelArts' 50 GB limit" in proc.stderr
    assert [c.split()[1] for c in calls] == ["info", "build", "history", "image"]


def test_over_35_gb_is_pushed_with_a_note(fake):
    proc, calls = fake(*ARGS, size=40_000_000_000)
    assert proc.returncode == 0, proc.stderr
    assert "note: over 35 GB" in proc.stdout
    assert calls[-1].endswith(f"push {REMOTE}")


def test_not_enough_disk_fails_before_building(fake):
    proc, calls = fake(*ARGS, "--expected-gb", "1000000")
    assert proc.returncode == 3
    assert "not enough disk" in proc.stderr
    assert [c.split()[1] for c in calls] == ["info"]


def test_logs_in_with_the_password_on_stdin(fake, tmp_path):
    proc, calls = fake(*ARGS, SWR_USER="cn-north-4@AK", SWR_PASSWORD="s3cret")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[1] for c in calls] == ["info", "build", "history", "image", "run", "tag", "login", "push"]
    login = calls[6]
    assert login.endswith("login --username cn-north-4@AK --password-stdin swr.cn-north-4.myhuaweicloud.com")
    assert (tmp_path / "calls.log.stdin").read_text() == "s3cret"
    assert "s3cret" not in proc.stdout + proc.stderr


def test_no_push_stops_after_tagging(fake):
    proc, calls = fake(*ARGS, "--no-push", "--", "--format", "docker")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[1] for c in calls] == ["info", "build", "history", "image", "run", "tag"]
    assert "--format docker" in calls[1]


def test_a_failed_build_stops_everything(fake):
    proc, calls = fake(*ARGS, FAKE_FAIL="build")
    assert proc.returncode == 5
    assert [c.split()[1] for c in calls] == ["info", "build"]


@pytest.mark.parametrize("args,message", [
    (["--region", "cn-north-4"], "--region and --org are required"),
    (["--org", "acme"], "--region and --org are required"),
    (["--region", "north", "--org", "acme"], "does not look like cn-north-4"),
    (["--region", "cn-north-4", "--org", "Acme!"], "--org 'Acme!'"),
    (["--region", "cn-north-4", "--org", "acme", "--tag", "bad tag"], "is not a valid image tag"),
    (["--region", "cn-north-4", "--org", "acme", "--frobnicate"], "unknown argument: --frobnicate"),
])
def test_bad_arguments_exit_2_without_calling_docker(fake, args, message):
    proc, calls = fake(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert calls == []


def test_gpu_gate_passes_torch_built_for_the_base_images_cuda(fake):
    proc, calls = fake(*ARGS, "--torch", "torch==2.7.1")
    assert proc.returncode == 0, proc.stderr
    assert "--build-arg TORCH=torch==2.7.1" in calls[1]
    assert (f"models' torch: 2.7.1+cu126, CUDA 12.6, architectures: {CU126}; base image CUDA: 12.6.2"
            in proc.stdout)
    assert "GPU gate passed: torch CUDA 12.6 on a CUDA 12.6.2 base" in proc.stdout


def test_gpu_gate_refuses_a_cuda_13_torch_on_a_cuda_12_base_before_tagging(fake):
    proc, calls = fake(*ARGS, gate=f"base_cuda=12.6.2\\ntorch=2.13.0+cu130\\ntorch_cuda=13.0\\narch={CU130}\\n")
    assert proc.returncode == 6
    assert ("build_and_push: torch 2.13.0+cu130 is built for CUDA 13.0, but the base image has CUDA 12.6.2."
            in proc.stderr)
    assert "--torch torch==2.7.1 (cu126) for NGC 24.10" in proc.stderr
    assert [c.split()[1] for c in calls] == ["info", "build", "history", "image", "run"]


def test_gpu_gate_refuses_a_cpu_torch_on_a_cuda_base(fake):
    proc, calls = fake(*ARGS, gate="base_cuda=12.6.2\\ntorch=2.13.0+cpu\\ntorch_cuda=\\narch=\\n")
    assert proc.returncode == 6
    assert "torch 2.13.0+cpu is a CPU-only build on a CUDA 12.6.2 base: every model would run on the CPU" in proc.stderr


def test_gpu_gate_is_skipped_on_a_base_without_cuda(fake):
    proc, _ = fake(*ARGS, gate="base_cuda=\\ntorch=2.13.0+cpu\\ntorch_cuda=\\narch=\\n")
    assert proc.returncode == 0, proc.stderr
    assert "the base image declares no CUDA_VERSION (a CPU image): GPU gate skipped" in proc.stdout


@pytest.mark.parametrize("gate,archs,warned", [
    (NGC_OK, "sm_70", []),                                                   # V100 on cu126: fine
    (NGC_OK, "sm_70,sm_89", []),                                             # L4 (8.9) runs sm_86 code
    (NGC_OK, "sm_100", ["sm_100"]),                                          # Blackwell: not in cu126
    (f"base_cuda=13.0.1\\ntorch=2.13.0+cu130\\ntorch_cuda=13.0\\narch={CU130}\\n", "sm_70,sm_90,sm_121",
     ["sm_70"]),                                                             # CUDA 13 dropped Volta; PTX covers 12.1
])
def test_gpu_gate_warns_for_a_named_architecture_without_kernels(fake, gate, archs, warned):
    proc, _ = fake(*ARGS, "--gpu-arch", archs, gate=gate)
    assert proc.returncode == 0, proc.stderr
    for arch in archs.split(","):
        assert (f"has no kernels for {arch} " in proc.stderr) is (arch in warned), (arch, proc.stderr)


def test_gpu_arch_must_look_like_sm_xy(fake):
    proc, calls = fake(*ARGS, "--gpu-arch", "volta")
    assert proc.returncode == 2 and "--gpu-arch 'volta'" in proc.stderr and calls == []


def test_a_layer_over_swr_s_limit_fails_right_after_the_build_naming_its_step(fake):
    big = HISTORY + "12500000000\tCOPY --chown=ma-user:100 model_repository/ /opt/serving/model_repository/\n"
    proc, calls = fake(*ARGS, history=big)
    assert proc.returncode == 4
    assert [c.split()[1] for c in calls] == ["info", "build", "history"]   # nothing slower, no push
    assert ("layer over the limit: 12.50 GB (12500 MB): COPY --chown=ma-user:100 model_repository/ "
            "/opt/serving/model_repository/") in proc.stderr
    assert "over SWR's 10 GB per layer" in proc.stderr and "make dockerfile" in proc.stderr
    proc, calls = fake(*ARGS, history=big, LAYER_LIMIT_GB="50")   # a region that takes 50 GB layers
    assert proc.returncode == 0, proc.stderr
    assert "the largest 12.50 GB (limit 50 GB per layer)" in proc.stdout


def test_a_dropped_push_is_run_again_and_the_summary_gives_phases_and_layers(fake, tmp_path):
    proc, calls = fake(*ARGS, FAKE_PUSH_FAILS="2", PUSH_PAUSE_S="0")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[1] for c in calls][-3:] == ["push", "push", "push"]
    assert "push failed (attempt 1 of 4): pushing again in 0s" in proc.stdout
    assert "push failed (attempt 2 of 4)" in proc.stdout and "attempt 3 of 4" in proc.stdout
    summary = proc.stdout[proc.stdout.index("summary: "):]
    assert summary.startswith("summary: build ") and "push " in summary.splitlines()[0]
    assert "(attempts: 3)" in summary.splitlines()[0]
    layers = [line for line in summary.splitlines() if line.startswith("  layer ")]
    assert len(layers) == 2 and "2.100 GB  COPY --chown=ma-user:100 model_repository/mnist/" in layers[0]
    proc, calls = fake(*ARGS, FAKE_PUSH_FAILS="9", PUSH_PAUSE_S="0", PUSH_ATTEMPTS="2")
    assert proc.returncode == 5
    assert "push of " + REMOTE + " failed 2 times" in proc.stderr


def model_repo(root, sizes):
    """A model repository under root/model_repository: {model: {relative file: size}}."""
    for model, files in sizes.items():
        for name, size in files.items():
            path = root / "model_repository" / model / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"w" * size)
    (root / "Dockerfile").write_text("FROM scratch\n# BEGIN model layers (deploy/model_layers.py writes them: make "
                                     "dockerfile)\n# END model layers\n")
    return root


def test_model_layers_are_one_copy_per_model_and_a_folder_over_the_limit_is_split_by_its_files(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "deploy"))
    import model_layers
    root = model_repo(tmp_path, {"a": {"config.pbtxt": 10, "1/model.py": 100},
                                 "big": {"config.pbtxt": 10, "1/w-1.bin": 600, "1/w-2.bin": 600, "1/w-3.bin": 300}})
    (root / "model_repository" / "a" / "__pycache__").mkdir()
    (root / "model_repository" / "a" / "__pycache__" / "x.pyc").write_bytes(b"x" * 5000)   # .dockerignore'd
    (root / ".dockerignore").write_text("*\n!model_repository/\n**/__pycache__\n")
    got = model_layers.layers(str(root), "model_repository", 1000)
    dest = model_layers.DEST
    assert got == [(["model_repository/a/"], f"{dest}/a/"),
                   (["model_repository/big/config.pbtxt"], f"{dest}/big/"),
                   (["model_repository/big/1/w-1.bin"], f"{dest}/big/1/"),
                   (["model_repository/big/1/w-2.bin", "model_repository/big/1/w-3.bin"], f"{dest}/big/1/")]


def test_the_dockerfile_s_model_layers_are_current():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "model_layers.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "COPY --chown=ma-user:100 model_repository/mnist/ /opt/serving/model_repository/mnist/" in \
        open(os.path.join(ROOT, "Dockerfile")).read()


def test_a_real_build_lands_two_models_in_two_layers_and_the_gate_reads_the_engine_s_history(tmp_path):
    """podman builds a FROM-scratch image of a two-model repository (COPY steps only, nothing run): two layers, one
    per model; build_and_push.sh's gate with the limit scaled down to between the two sizes fails on the larger,
    naming its step, before anything is pushed; with the limit above both it passes."""
    from conftest import require
    require("podman", root=True)
    root = model_repo(tmp_path / "ctx", {"small": {"config.pbtxt": 10, "1/model.py": 20_000},
                                         "large": {"config.pbtxt": 10, "1/w.bin": 3_000_000}})
    subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "model_layers.py"), "--write", "--dockerfile",
                    str(root / "Dockerfile"), str(root / "model_repository")], check=True)
    text = (root / "Dockerfile").read_text().replace(" --chown=ma-user:100", "")   # no such user in scratch
    (root / "Dockerfile").write_text(text)
    import tempfile
    w = tempfile.mkdtemp(prefix="pm", dir="/tmp")   # podman wants a short runroot
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\nexec podman --root {w}/storage --runroot {w}/run "$@"\n')
    docker.chmod(0o755)
    try:
        check_a_real_build(root, docker)
    finally:
        subprocess.run([str(docker), "rmi", "-a", "-f"], capture_output=True)
        subprocess.run(["rm", "-rf", w], capture_output=True)


def check_a_real_build(root, docker):
    base = ["sh", SCRIPT, *ARGS, "--context", str(root), "--expected-gb", "0", "--no-push"]
    env = dict(os.environ, DOCKER=str(docker), LAYER_LIMIT_GB="0.001")   # 1 MB: between the two models
    proc = subprocess.run(base, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    over = [line for line in proc.stderr.splitlines() if line.startswith("layer over the limit: ")]
    # podman names a COPY step by its destination (docker by the Dockerfile line)
    assert len(over) == 1 and "(3 MB): COPY " in over[0] and over[0].rstrip().endswith(
        " /opt/serving/model_repository/large/"), proc.stderr
    assert "not pushed" not in proc.stdout
    history = subprocess.run([str(docker), "history", "--no-trunc", "--format", "{{.Size}}|{{.CreatedBy}}",
                              "triton-mnist:v1"], capture_output=True, text=True, check=True).stdout
    copies = sorted(line.split("|")[1].rstrip().rsplit(" ", 1)[1] for line in history.splitlines() if "COPY" in line)
    assert copies == ["/opt/serving/model_repository/large/", "/opt/serving/model_repository/small/"], history
    env["LAYER_LIMIT_GB"] = "0.01"
    proc = subprocess.run(base, capture_output=True, text=True, env=env, timeout=600)
    assert "layer gate passed: 2 layers with content, the largest 0.00 GB (limit 0.01 GB per layer)" in proc.stdout, \
        proc.stdout[-3000:] + proc.stderr[-3000:]
