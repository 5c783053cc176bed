#!/usr/bin/env python3
"""Print CMAKE_ARGS for building llama-cpp-python on *this* CPU.

A default (GGML_NATIVE=ON) build enables AMX on CPUs that report it, and llama.cpp's AMX path
segfaults on virtualised Sapphire Rapids; a bare GGML_NATIVE=OFF build is many times slower.
So we turn native detection off and enable each SIMD extension the kernel reports, never AMX.
"""
from __future__ import annotations

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


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args(flags: set[str]) -> str:
    options = ["-DGGML_NATIVE=OFF"]
    options += [f"-D{opt}=ON" for flag, opt in FLAG_TO_OPTION.items() if flag in flags]
    return " ".join(options)


def main() -> int:
    path = Path("/proc/cpuinfo")
    flags = cpu_flags(path.read_text()) if path.exists() else set()
    print(cmake_args(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
