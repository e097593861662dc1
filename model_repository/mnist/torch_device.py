"""Where a torch model runs inside Triton: on the GPU that Triton gives its instance, or not at all.

A GPU instance whose torch cannot use the GPU (no driver in the container, a driver too old for torch's CUDA
runtime, no kernels for the GPU's architecture, a CPU build of torch) would otherwise come up "healthy" and
serve many times slower from the CPU. Here it fails to load with the cause, unless ALLOW_CPU_FALLBACK=1.

Shared by the python-backend models: each model.py puts the repository root on sys.path to import it (Triton
loads only folders as models, so this file is not taken for one). Pure apart from probe(), so tests can fake
what torch reports.
"""
import os
import re
from dataclasses import dataclass, field


class DeviceError(RuntimeError):
    """A GPU instance whose torch cannot use the GPU."""


@dataclass(frozen=True)
class Probe:
    """What torch reports about CUDA in this process."""
    torch_version: str
    cuda: str | None                 # torch.version.cuda: None for a CPU build
    arch_list: list = field(default_factory=list)   # the architectures torch was compiled for: sm_80, compute_90...
    init_error: str | None = None    # torch.cuda.init()'s error, where it failed
    device_count: int = 0
    capability: tuple | None = None  # (major, minor) of the instance's GPU
    name: str = ""
    driver: str | None = None


def driver_version(path="/proc/driver/nvidia/version"):
    try:
        with open(path) as f:
            m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", f.read())
        return m[1] if m else None
    except OSError:
        return None


def probe(torch, device_id=0):
    """Ask torch. Works on a machine without a GPU: the compiled architectures come from the build's own flags
    (torch.cuda.get_arch_list() answers [] when no GPU is usable)."""
    cuda = torch.version.cuda
    arch = torch._C._cuda_getArchFlags().split() if cuda and hasattr(torch._C, "_cuda_getArchFlags") else []
    info = dict(torch_version=torch.__version__, cuda=cuda, arch_list=arch, driver=driver_version())
    if not cuda:
        return Probe(**info)
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises RuntimeError or AssertionError, with the reason as its text
        return Probe(init_error=str(exc) or type(exc).__name__, **info)
    count = torch.cuda.device_count()
    if device_id >= count:
        return Probe(device_count=count, **info)
    return Probe(device_count=count, capability=tuple(torch.cuda.get_device_capability(device_id)),
                 name=torch.cuda.get_device_name(device_id), **info)


def runs_on(capability, arch_list):
    """Whether code built for `arch_list` runs on a GPU of `capability`: a sm_XY binary runs on the same major
    with an equal or higher minor; compute_XY (PTX) is compiled at load for any GPU of XY or higher."""
    major, minor = capability
    for arch in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)a?", arch)
        if not m:
            continue
        a_major, a_minor = int(m[2]), int(m[3])
        if m[1] == "sm" and a_major == major and a_minor <= minor:
            return True
        if m[1] == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def problem(p, device_id):
    """Why this torch cannot run on GPU `device_id`, or None."""
    if not p.cuda:
        return f"torch {p.torch_version} is a CPU-only build"
    if p.init_error:
        err = p.init_error.strip().splitlines()[0]
        if "no NVIDIA driver" in err or "libcuda" in err:
            return f"no NVIDIA driver is visible in the container ({err})"
        if "too old" in err:
            return (f"the NVIDIA driver {p.driver or '(version unknown)'} is too old for torch's CUDA {p.cuda} "
                    f"runtime ({err})")
        return f"CUDA does not initialise: {err}"
    if device_id >= p.device_count:
        return f"GPU {device_id} is not visible to torch ({p.device_count} visible)"
    if not runs_on(p.capability, p.arch_list):
        sm = "sm_%d%d" % p.capability
        return (f"torch {p.torch_version} (CUDA {p.cuda}) has no kernels for this GPU ({p.name}, {sm}); "
                f"it was built for {' '.join(p.arch_list) or 'no architecture'}")
    return None


def choose(kind, device_id, p, allow_cpu_fallback=False):
    """Triton's instance kind and device id, and the probe -> (torch device string, a line for the log).

    Raises DeviceError for a GPU instance that torch cannot use, unless allow_cpu_fallback."""
    if kind != "GPU":
        return "cpu", f"CPU (instance kind {kind}), torch {p.torch_version}"
    why = problem(p, device_id)
    if why is None:
        return f"cuda:{device_id}", (f"cuda:{device_id} ({p.name}, sm_{p.capability[0]}{p.capability[1]}), "
                                     f"torch {p.torch_version}, CUDA {p.cuda}, driver {p.driver or 'unknown'}")
    if allow_cpu_fallback:
        return "cpu", (f"CPU, NOT the GPU Triton assigned: {why}. ALLOW_CPU_FALLBACK=1 keeps it serving, "
                       "many times slower")
    raise DeviceError(f"GPU instance {device_id}, but torch cannot use it: {why}. Match the image's torch to its "
                      "CUDA (docs/container.md: GPU compatibility), or set ALLOW_CPU_FALLBACK=1 to serve from the CPU")


def select(torch, args):
    """For a model's initialize(args): (torch.device, log line). Reads ALLOW_CPU_FALLBACK."""
    kind, device_id = args["model_instance_kind"], int(args.get("model_instance_device_id", 0) or 0)
    p = probe(torch, device_id) if kind == "GPU" else Probe(torch_version=torch.__version__, cuda=torch.version.cuda)
    allow = os.environ.get("ALLOW_CPU_FALLBACK", "").strip().lower() in ("1", "true", "yes", "on")
    device, line = choose(kind, device_id, p, allow)
    return torch.device(device), line
