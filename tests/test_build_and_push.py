"""deploy/build_and_push.sh, driven with a stand-in `docker` that records its calls."""
import os
import subprocess

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
esac
"""
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

    def run(*args, size=2_170_000_000, gate=NGC_OK, **env):
        full = {k: v for k, v in os.environ.items() if not k.startswith("SWR_")}
        full.update(DOCKER=str(docker), FAKE_LOG=str(log), FAKE_ROOT=str(tmp_path), FAKE_SIZE=str(size),
                    FAKE_RUN=gate, **env)
        proc = subprocess.run(["sh", SCRIPT, *args], capture_output=True, text=True, env=full, timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        return proc, calls

    return run


ARGS = ["--region", "cn-north-4", "--org", "acme", "--name", "triton-mnist", "--tag", "v1"]


def test_builds_with_buildkit_checks_size_tags_and_pushes(fake):
    proc, calls = fake(*ARGS, "--base-image", "nvcr.io/nvidia/tritonserver:24.10-py3")
    assert proc.returncode == 0, proc.stderr
    verbs = [c.split()[1] for c in calls]
    assert verbs == ["info", "build", "image", "run", "tag", "push"]
    build = calls[1]
    assert build.startswith("BUILDKIT=1 build --tag triton-mnist:v1 ")
    assert "--build-arg BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in build
    assert build.endswith(" " + ROOT)
    assert calls[2].endswith("image inspect --format {{.Size}} triton-mnist:v1")
    assert calls[3].endswith("run --rm --entrypoint sh triton-mnist:v1 -c " + calls[3].split(" -c ", 1)[1])
    assert calls[4].endswith(f"tag triton-mnist:v1 {REMOTE}")
    assert calls[5].endswith(f"push {REMOTE}")
    assert "image size: 2.17 GB (2170000000 bytes)" in proc.stdout
    assert proc.stdout.rstrip().endswith(f"image address for ModelArts: {REMOTE}")


def test_over_50_gb_fails_before_tagging(fake):
    proc, calls = fake(*ARGS, size=50_000_000_001)
    assert proc.returncode == 4
    assert "over ModelArts' 50 GB limit" in proc.stderr
    assert [c.split()[1] for c in calls] == ["info", "build", "image"]


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
    assert [c.split()[1] for c in calls] == ["info", "build", "image", "run", "tag", "login", "push"]
    login = calls[5]
    assert login.endswith("login --username cn-north-4@AK --password-stdin swr.cn-north-4.myhuaweicloud.com")
    assert (tmp_path / "calls.log.stdin").read_text() == "s3cret"
    assert "s3cret" not in proc.stdout + proc.stderr


def test_no_push_stops_after_tagging(fake):
    proc, calls = fake(*ARGS, "--no-push", "--", "--format", "docker")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[1] for c in calls] == ["info", "build", "image", "run", "tag"]
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
    assert [c.split()[1] for c in calls] == ["info", "build", "image", "run"]


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
