#!/usr/bin/env python3
"""Print CMAKE_ARGS for building llama-cpp-python on *this* CPU (and, with --cuda, for this GPU).

A default (GGML_NATIVE=ON) build enables AMX on CPUs that report it, and llama.cpp's AMX path
segfaults on virtualised Sapphire Rapids; a bare GGML_NATIVE=OFF build is many times slower.
So we turn native detection off and enable each SIMD extension the kernel reports, never AMX.

--cuda adds the CUDA backend, compiled for the GPU's own architecture only (nvidia-smi's compute_cap,
or --cuda-arch 9.0), which keeps the build to minutes; see CUDA_OPTIONS for the rest.
Run by scripts/setup.sh with the system Python: standard library only.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

# /proc/cpuinfo flag -> ggml CMake option.  AMX is deliberately absent.
FLAG_TO_OPTION = {
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2",
    "avx512f": "GGML_AVX512",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx_vnni": "GGML_AVX_VNNI",
}
# GGML_CUDA_FA=OFF: pear-edge opens every GGUF with flash attention off (llama-cpp-python's default), so
# its ~80 kernel files are compiled empty. GGML_CUDA_NCCL=OFF: one GPU; never pick up a stray NCCL.
CUDA_OPTIONS = ("-DGGML_CUDA=ON", "-DGGML_CUDA_FA=OFF", "-DGGML_CUDA_NCCL=OFF")
# Without the driver's libcuda.so to link, llama.cpp must not use CUDA virtual memory management.
NO_VMM_OPTION = "-DGGML_CUDA_NO_VMM=ON"
COMPUTE_CAP = re.compile(r"^(\d{1,2})\.?(\d)$")  # 9.0 or 90, 12.0 or 120


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cuda_architectures(text: str) -> str:
    """Compute capabilities ('9.0', '8.6;9.0', '86,90' or nvidia-smi's lines) -> CMake's '86;90'."""
    archs = set()
    for item in re.split(r"[\s,;]+", text.strip()):
        match = COMPUTE_CAP.match(item)
        if not match:
            raise ValueError(f"not a compute capability: {item!r} (want e.g. 9.0 or 90)")
        archs.add(int(match.group(1) + match.group(2)))
    if not archs:
        raise ValueError("no compute capability given")
    return ";".join(str(a) for a in sorted(archs))


def detected_architectures() -> str | None:
    """The compute capabilities of the GPUs nvidia-smi lists, or None (no nvidia-smi, no GPU)."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return cuda_architectures(done.stdout)


def cmake_args(flags: set[str], cuda_archs: str | None = None, no_vmm: bool = False) -> str:
    options = ["-DGGML_NATIVE=OFF"]
    options += [f"-D{opt}=ON" for flag, opt in FLAG_TO_OPTION.items() if flag in flags]
    if cuda_archs:
        options += [*CUDA_OPTIONS, f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs}"]
        options += [NO_VMM_OPTION] if no_vmm else []
    return " ".join(options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="add the CUDA backend for this machine's GPU")
    parser.add_argument("--cuda-arch", metavar="CC", help="compute capability to build for (e.g. 9.0; implies "
                                                          "--cuda; default: nvidia-smi's)")
    parser.add_argument("--no-vmm", action="store_true", help="CUDA without the driver library (GGML_CUDA_NO_VMM)")
    args = parser.parse_args(argv)
    archs = None
    try:
        if args.cuda_arch:
            archs = cuda_architectures(args.cuda_arch)
        elif args.cuda:
            archs = detected_architectures()
            if archs is None:
                raise ValueError("--cuda: nvidia-smi lists no GPU here; give --cuda-arch CC (e.g. 9.0 for an H100)")
    except ValueError as exc:
        print(f"pear-edge: error: {exc}", file=sys.stderr)
        return 2
    path = Path("/proc/cpuinfo")
    flags = cpu_flags(path.read_text()) if path.exists() else set()
    print(cmake_args(flags, archs, args.no_vmm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
