#!/usr/bin/env python3
"""Write requirements.lock: every Python package of a set-up at its exact version, with the sha256 of each of
that version's files on PyPI, so that `scripts/setup.sh` installs what was tested (`pip --require-hashes`).

  python3 scripts/lock.py [--venv DIR] [-o requirements.lock]   the packages installed in DIR (default .venv)
  make lock                                                     refresh: a new venv with the newest releases
                                                                the project admits, tested, then locked

Left out, because the set-up installs them otherwise: the project itself, torch (pinned by pyproject, the CPU
build from this machine's wheel or PyPI's CUDA build) and llama-cpp-python (pinned, built from source here).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"pear-edge", "torch", "llama-cpp-python"}
INDEX = "https://pypi.org/simple/{}/"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    return {canonical(k): v for k, v in json.loads(out.stdout).items() if canonical(k) not in SKIP}


def hashes(name: str, version: str) -> list[str]:
    """sha256 of every file PyPI holds for NAME==VERSION (its simple JSON index)."""
    request = urllib.request.Request(INDEX.format(name), headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    stem = "[-_.]".join(re.escape(part) for part in name.split("-"))
    pattern = re.compile(rf"^{stem}-{re.escape(version)}(-|\.tar\.gz$|\.zip$)", re.IGNORECASE)
    found = sorted({f["hashes"]["sha256"] for f in files if pattern.match(f["filename"]) and "sha256" in f["hashes"]})
    if not found:
        raise SystemExit(f"pear-edge: error: PyPI lists no file of {name}=={version}")
    return found


def lock_text(packages: dict[str, str]) -> str:
    lines = ["# Every Python package the set-up installs, at the version tested, with PyPI's sha256 of each file.",
             "# Written by scripts/lock.py (`make lock` refreshes it); installed by scripts/setup.sh.", ""]
    for name in sorted(packages):
        version = packages[name]
        lines.append(f"{name}=={version} \\")
        digests = hashes(name, version)
        lines += [f"    --hash=sha256:{d}" + (" \\" if i < len(digests) - 1 else "") for i, d in enumerate(digests)]
    return "\n".join(lines) + "\n"


def refresh_venv() -> Path:
    """A new venv with the newest releases the project's own requirements admit (the tested set-up's other
    steps: scripts/setup.sh with PEAR_EDGE_UNLOCKED=1)."""
    venv = Path(tempfile.mkdtemp(prefix="pear-edge-lock-")) / "venv"
    env = {**os.environ, "VENV": str(venv), "PEAR_EDGE_UNLOCKED": "1"}
    subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True, env=env)
    return venv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--refresh", action="store_true", help="lock a new venv of the newest admitted releases")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "requirements.lock")
    args = parser.parse_args()
    venv = refresh_venv() if args.refresh else args.venv
    if not (venv / "bin" / "python").exists():
        print(f"pear-edge: error: no virtual environment at {venv} (run `make setup` first)", file=sys.stderr)
        return 2
    try:
        text = lock_text(installed(venv))
    finally:
        if args.refresh:  # the scratch venv served only to read versions
            shutil.rmtree(venv.parent, ignore_errors=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(text)
    tmp.replace(args.output)
    print(f"wrote {args.output} ({text.count('==')} packages) from {venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
