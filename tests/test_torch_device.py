"""The models' device choice (torch_device.py in each model folder), with what torch reports faked: a GPU instance
runs on its GPU, or fails to load with the cause; the CPU only where ALLOW_CPU_FALLBACK says so."""
import os
import sys
import types

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "model_repository", "mnist"))
sys.dont_write_bytecode = True   # no __pycache__ in the model folder
import torch_device  # noqa: E402
sys.dont_write_bytecode = False
from torch_device import DeviceError, Probe, choose, runs_on  # noqa: E402

CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]      # torch 2.7.1+cu126, read from the wheel
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def gpu(capability, arch=CU126, name="Tesla V100-SXM2-32GB", **kw):
    return Probe(torch_version="2.7.1+cu126", cuda="12.6", arch_list=arch, device_count=1, capability=capability,
                 name=name, driver="535.161.08", **kw)


def test_a_gpu_instance_runs_on_its_gpu_and_says_so():
    device, line = choose("GPU", 0, gpu((7, 0)))
    assert device == "cuda:0"
    assert line == "cuda:0 (Tesla V100-SXM2-32GB, sm_70), torch 2.7.1+cu126, CUDA 12.6, driver 535.161.08"


def test_a_cpu_instance_stays_on_the_cpu():
    assert choose("CPU", 0, Probe("2.13.0+cpu", None))[0] == "cpu"


@pytest.mark.parametrize("probe,cause", [
    (Probe("2.13.0+cpu", None), "torch 2.13.0+cpu is a CPU-only build"),
    (Probe("2.7.1+cu126", "12.6", CU126, init_error="Found no NVIDIA driver on your system. Please check that you "
           "have an NVIDIA GPU and installed a driver from http://www.nvidia.com/Download/index.aspx"),
     "no NVIDIA driver is visible in the container (Found no NVIDIA driver on your system."),
    (Probe("2.7.1+cu126", "12.6", CU126, driver="470.82.01", init_error="The NVIDIA driver on your system is too old "
           "(found version 11040). Please update your GPU driver"),
     "the NVIDIA driver 470.82.01 is too old for torch's CUDA 12.6 runtime (The NVIDIA driver on your system is too old"),
    (Probe("2.13.0+cu130", "13.0", CU130, device_count=1, capability=(7, 0), name="Tesla V100-SXM2-32GB"),
     "torch 2.13.0+cu130 (CUDA 13.0) has no kernels for this GPU (Tesla V100-SXM2-32GB, sm_70); "
     "it was built for sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 compute_120"),
    (Probe("2.7.1+cu126", "12.6", CU126, device_count=1, capability=(9, 0)), "GPU 3 is not visible to torch (1 visible)"),
])
def test_a_gpu_instance_torch_cannot_use_fails_to_load_with_the_cause(probe, cause):
    device_id = 3 if "GPU 3" in cause else 0
    with pytest.raises(DeviceError) as err:
        choose("GPU", device_id, probe)
    assert cause in str(err.value)
    assert "ALLOW_CPU_FALLBACK=1" in str(err.value)


def test_allow_cpu_fallback_serves_from_the_cpu_and_says_why():
    device, line = choose("GPU", 0, Probe("2.13.0+cpu", None), allow_cpu_fallback=True)
    assert device == "cpu"
    assert line.startswith("CPU, NOT the GPU Triton assigned: torch 2.13.0+cpu is a CPU-only build.")


@pytest.mark.parametrize("capability,arch,runs", [
    ((7, 0), CU126, True),          # V100
    ((7, 5), CU126, True),          # T4
    ((8, 6), CU126, True),          # A10
    ((8, 9), CU126, True),          # L4: sm_86 binaries run on 8.9
    ((9, 0), CU126, True),          # H100 / H200
    ((7, 0), CU130, False),         # CUDA 13 dropped Volta
    ((10, 0), CU126, False),        # Blackwell: no sm_100 and no PTX in the cu126 build
    ((12, 1), CU130, True),         # compute_120 PTX is compiled at load for a newer GPU
])
def test_architecture_compatibility(capability, arch, runs):
    assert runs_on(capability, arch) is runs


def test_probe_reads_torch_without_a_gpu(monkeypatch):
    """probe() on a build host: the compiled architectures from the build's flags, the failure from cuda.init()."""
    def init():
        raise RuntimeError("Found no NVIDIA driver on your system.")
    fake = types.SimpleNamespace(
        __version__="2.7.1+cu126", version=types.SimpleNamespace(cuda="12.6"),
        _C=types.SimpleNamespace(_cuda_getArchFlags=lambda: "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90"),
        cuda=types.SimpleNamespace(init=init))
    monkeypatch.setattr(torch_device, "driver_version", lambda: "535.161.08")
    p = torch_device.probe(fake)
    assert p.arch_list == CU126
    assert p.init_error == "Found no NVIDIA driver on your system."
    assert p.driver == "535.161.08"


def test_driver_version_is_read_from_the_kernel_module(tmp_path):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.161.08  Fri Mar  1 12:00:00 UTC 2024\n"
                       "GCC version:  gcc version 12.2.0\n")
    assert torch_device.driver_version(str(version)) == "535.161.08"
    assert torch_device.driver_version(str(tmp_path / "absent")) is None


def test_every_model_folder_carries_the_same_torch_device():
    """Each model folder is self-contained (a folder is what a user copies), so each has its own copy."""
    copies = {m: open(os.path.join(ROOT, "model_repository", m, "torch_device.py"), "rb").read()
              for m in ("mnist", "text_embedding", "smollm2")}
    assert copies["mnist"] == copies["text_embedding"] == copies["smollm2"]
