"""deploy/build_and_push.sh, driven with a stand-in `docker` that records its calls."""
import os
import subprocess

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "deploy", "build_and_push.sh")
FAKE_DOCKER = r"""#!/bin/sh
echo "BUILDKIT=${DOCKER_BUILDKIT:-} $*" >> "$FAKE_LOG"
case "$1" in
  info) echo "$FAKE_ROOT" ;;
  image) echo "$FAKE_SIZE" ;;
  login) cat > "$FAKE_LOG.stdin" ;;
  build) [ "${FAKE_FAIL:-}" != build ] || exit 1 ;;
esac
"""
REMOTE = "swr.cn-north-4.myhuaweicloud.com/acme/triton-mnist:v1"


@pytest.fixture
def fake(tmp_path):
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    log = tmp_path / "calls.log"

    def run(*args, size=2_170_000_000, **env):
        full = {k: v for k, v in os.environ.items() if not k.startswith("SWR_")}
        full.update(DOCKER=str(docker), FAKE_LOG=str(log), FAKE_ROOT=str(tmp_path), FAKE_SIZE=str(size), **env)
        proc = subprocess.run(["sh", SCRIPT, *args], capture_output=True, text=True, env=full, timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        return proc, calls

    return run


ARGS = ["--region", "cn-north-4", "--org", "acme", "--name", "triton-mnist", "--tag", "v1"]


def test_builds_with_buildkit_checks_size_tags_and_pushes(fake):
    proc, calls = fake(*ARGS, "--base-image", "nvcr.io/nvidia/tritonserver:24.10-py3")
    assert proc.returncode == 0, proc.stderr
    verbs = [c.split()[1] for c in calls]
    assert verbs == ["info", "build", "image", "tag", "push"]
    build = calls[1]
    assert build.startswith("BUILDKIT=1 build --tag triton-mnist:v1 ")
    assert "--build-arg BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in build
    assert build.endswith(" " + ROOT)
    assert calls[2].endswith("image inspect --format {{.Size}} triton-mnist:v1")
    assert calls[3].endswith(f"tag triton-mnist:v1 {REMOTE}")
    assert calls[4].endswith(f"push {REMOTE}")
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
    assert [c.split()[1] for c in calls] == ["info", "build", "image", "tag", "login", "push"]
    login = calls[4]
    assert login.endswith("login --username cn-north-4@AK --password-stdin swr.cn-north-4.myhuaweicloud.com")
    assert (tmp_path / "calls.log.stdin").read_text() == "s3cret"
    assert "s3cret" not in proc.stdout + proc.stderr


def test_no_push_stops_after_tagging(fake):
    proc, calls = fake(*ARGS, "--no-push", "--", "--format", "docker")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[1] for c in calls] == ["info", "build", "image", "tag"]
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
