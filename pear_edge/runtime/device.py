"""Which device a run uses, and what a report says about it.

* GPUs: NVIDIA GPUs as `nvidia-smi` lists them (no CUDA context is created, so a parent process can ask
  without holding GPU memory); none when nvidia-smi is absent or fails.
* `cuda_requested(--device)`: auto / cpu / cuda, refused with one line when cuda is asked and no GPU exists.
* `torch_device(--device)`: the same for torch, which must also have been built with CUDA.
* `PeakDeviceMemory`: GPU memory a process added, sampled with nvidia-smi between timed sections.
* `environment()`: machine, GPUs and runtime versions, said beside every measurement
  (`python -m pear_edge.runtime.device` prints it as JSON, with whether each backend can use the GPU).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from pear_edge.base.errors import PearError

DEVICES = ("auto", "cpu", "cuda")
NVIDIA_SMI = "nvidia-smi"
QUERY_TIMEOUT_S = 30
GPU_FIELDS = ("index", "name", "driver_version", "compute_cap", "memory.total")
# Packages whose versions decide what a measurement means (a CPU or a CUDA build, which CUDA).
RUNTIME_PACKAGES = ("torch", "llama-cpp-python", "onnxruntime", "onnxruntime-gpu", "cuda-toolkit",
                    "transformers", "optimum-onnx")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    driver: str
    compute_cap: str   # "9.0"
    memory_mib: float | None

    def describe(self) -> str:
        """'GPU 0: NVIDIA H100 80GB HBM3 (compute 9.0, driver 550.54.15, 81559 MiB)'."""
        memory = f", {self.memory_mib:.0f} MiB" if self.memory_mib is not None else ""
        return f"GPU {self.index}: {self.name} (compute {self.compute_cap}, driver {self.driver}{memory})"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_gpus(csv: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total
    --format=csv,noheader,nounits`."""
    gpus = []
    for line in csv.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(GPU_FIELDS) or not cells[0].isdigit():
            continue
        gpus.append(Gpu(int(cells[0]), cells[1], cells[2], cells[3], _number(cells[4])))
    return gpus


def _query(fields: str, *extra: str) -> str | None:
    """nvidia-smi's CSV answer, or None when there is no nvidia-smi or it fails (no driver, no GPU)."""
    cmd = [NVIDIA_SMI, f"--query-gpu={fields}", "--format=csv,noheader,nounits", *extra]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def visible_gpus() -> list[Gpu]:
    return parse_gpus(_query(",".join(GPU_FIELDS)) or "")


def gpu_index() -> str:
    """The GPU a CUDA process uses first: the first entry of CUDA_VISIBLE_DEVICES (an index or a UUID,
    both of which nvidia-smi -i accepts), else 0."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return first or "0"


def memory_used_mib(index: str) -> float:
    """Device memory in use on one GPU, all processes together (MiB)."""
    answer = _query("memory.used", "-i", index)
    value = _number((answer or "").strip().splitlines()[0]) if answer and answer.strip() else None
    if value is None:
        raise PearError(f"nvidia-smi cannot report the memory in use on GPU {index}")
    return value


class PeakDeviceMemory:
    """GPU memory this process added: in use now minus in use when it was created, the maximum over
    `sample()` calls. None of llama.cpp, onnxruntime's CUDA arena or torch's caching allocator hands
    memory back to the driver during a run, so sampling after each timed section sees the peak; it
    includes this process's CUDA context. Assumes no other process changes its use meanwhile."""

    def __init__(self, index: str | None = None):
        self.index = index or gpu_index()
        self.start = memory_used_mib(self.index)
        self.peak = self.start

    def sample(self) -> None:
        self.peak = max(self.peak, memory_used_mib(self.index))

    @property
    def added_mib(self) -> float:
        return self.peak - self.start


def check_device(requested: str) -> str:
    if requested not in DEVICES:
        raise PearError(f"--device must be one of {', '.join(DEVICES)}, not {requested!r}")
    return requested


def cuda_requested(requested: str) -> bool:
    """--device auto: a GPU if nvidia-smi lists one; cuda: refused when none is visible."""
    if check_device(requested) == "cpu":
        return False
    if visible_gpus():
        return True
    if requested == "cuda":
        raise PearError("--device cuda: no NVIDIA GPU is visible (nvidia-smi lists none); use --device cpu")
    return False


def torch_cuda_problem() -> str | None:
    """Why torch cannot use a GPU here, or None when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} here is a CPU-only build (`make setup-cuda` installs the CUDA one)"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"


def torch_device(requested: str) -> str:
    """A torch device for --device: auto -> cuda when torch sees a GPU, else cpu; cuda[:N] is refused
    when torch cannot use CUDA here. Other names (cpu, mps, ...) pass through unchanged."""
    if requested == "auto":
        return "cpu" if torch_cuda_problem() else "cuda"
    if requested.split(":")[0] == "cuda":
        problem = torch_cuda_problem()
        if problem:
            raise PearError(f"--device {requested}: {problem}; use --device cpu")
    return requested


def peak_torch_memory(device) -> dict[str, Any]:
    """Peak GPU memory torch allocated (and reserved, which is what the driver sees) on a CUDA device
    since the process started, MiB; {} for any other device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return {}
    return {"peak_device_mib": round(torch.cuda.max_memory_allocated(device) / MIB, 1),
            "peak_device_reserved_mib": round(torch.cuda.max_memory_reserved(device) / MIB, 1),
            "device_name": torch.cuda.get_device_name(device)}


def runtime_versions() -> dict[str, str]:
    """Installed versions of the packages in RUNTIME_PACKAGES (read from metadata: nothing is imported)."""
    versions = {}
    for name in RUNTIME_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def cpuinfo(field: str) -> str | None:
    """The first value of `field` ("model name", "flags") in /proc/cpuinfo; None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == field),
                        None)
    except OSError:
        return None


def machine() -> str:
    """'AMD EPYC 7B13, 2 cores' from /proc/cpuinfo (the platform's name elsewhere): said beside every cost."""
    import platform

    name = cpuinfo("model name") or platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def environment() -> dict[str, Any]:
    return {"machine": machine(), "python": sys.version.split()[0],
            "gpus": [asdict(g) for g in visible_gpus()], "runtimes": runtime_versions()}


def cuda_problem(kind: str) -> str | None:
    """Why backend KIND cannot run on the GPU with what is installed here, or None when it can."""
    from importlib import metadata

    if kind == "llamacpp":
        import llama_cpp

        if llama_cpp.llama_supports_gpu_offload():
            return None
        return (f"llama-cpp-python {metadata.version('llama-cpp-python')} here is a CPU build "
                "(`make setup-cuda` builds the CUDA one)")
    if kind == "onnx":
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return None
        return (f"onnxruntime {onnxruntime.__version__} here has no CUDAExecutionProvider "
                "(`make setup-cuda` installs onnxruntime-gpu)")
    return torch_cuda_problem()


def main() -> int:
    """`python -m pear_edge.runtime.device`: the environment as JSON, with whether each backend can use the GPU
    ("ok" or why not); scripts/gpu_check.sh records it."""
    env = environment()
    env["cuda"] = {}
    for kind in ("llamacpp", "onnx", "torch"):
        try:
            env["cuda"][kind] = cuda_problem(kind) or "ok"
        except Exception as exc:  # a broken install (e.g. a CUDA library missing) is what this should show
            env["cuda"][kind] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(env, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
