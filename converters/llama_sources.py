"""llama.cpp's own HF -> GGUF converter, taken from the llama-cpp-python sdist of the installed version.

The converter (convert_hf_to_gguf.py + conversion/ + gguf-py/) must match the llama.cpp that will load
its output, so it is fetched for exactly the installed llama-cpp-python version with pip, cached
under ~/.cache/pear-edge/llama-cpp-<version>/, and never vendored into this repository.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from pear_edge.base.atomic import atomic_dir
from pear_edge.base.errors import PearError
from pear_edge.runtime.models import cache_dir

# What the converter script imports from the llama.cpp source tree.
NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
CONVERTER = "convert_hf_to_gguf.py"


def installed_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise PearError("llama-cpp-python is not installed; run scripts/setup.sh") from None


def sources_dir(version: str | None = None) -> Path:
    return cache_dir() / f"llama-cpp-{version or installed_version()}"


def _wanted(member: str, prefix: str) -> str | None:
    """Path of `member` relative to vendor/llama.cpp/ when it is part of the converter, else None."""
    if not member.startswith(prefix):
        return None
    rel = member[len(prefix):]
    return rel if any(rel == n or (n.endswith("/") and rel.startswith(n)) for n in NEEDED) else None


def extract_converter(tarball: Path, target: Path) -> Path:
    """Copy the converter files out of an sdist tarball into `target` (atomically)."""
    try:
        with tarfile.open(tarball) as tar, atomic_dir(target) as tmp:
            root = tar.getnames()[0].split("/")[0]
            prefix = f"{root}/vendor/llama.cpp/"
            members = []
            for m in tar.getmembers():
                rel = _wanted(m.name, prefix)
                if rel and m.isfile():
                    m.name = rel
                    members.append(m)
            if not any(m.name == CONVERTER for m in members):
                raise PearError(f"{tarball.name} has no vendor/llama.cpp/{CONVERTER}")
            tar.extractall(tmp, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise PearError(f"cannot unpack {tarball}: {exc}") from None
    return target


def ensure_converter(progress: bool = True) -> Path:
    """Folder holding convert_hf_to_gguf.py for the installed llama.cpp; fetch it once if missing."""
    version = installed_version()
    target = sources_dir(version)
    if (target / CONVERTER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"fetching llama.cpp converter from the llama-cpp-python {version} sdist (once, ~75 MB)...",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not tarballs:
            last = (done.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise PearError(f"cannot fetch the llama-cpp-python {version} sdist with pip ({last}); "
                            f"check network access to PyPI, or run scripts/setup.sh")
        return extract_converter(tarballs[0], target)


def main() -> int:
    """`python -m pear_edge.converters.llama_sources`: used by scripts/setup.sh."""
    try:
        print(ensure_converter())
    except PearError as exc:
        print(f"pear-edge: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
