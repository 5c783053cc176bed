"""The set-up installs what was tested: every installed package at the version requirements.lock names, with a
hash for each, and nothing installed that the lock does not name (but the three the set-up installs otherwise)."""
from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_THE_LOCK = {"pear-edge", "torch", "llama-cpp-python"}  # scripts/lock.py's SKIP


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+) \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)",
                         text, re.M)
    assert len(entries) == text.count("=="), "every entry has at least one sha256 hash"
    return {canonical(name): version for name, version, _ in entries}


def test_every_installed_package_is_at_the_locked_version():
    lock = locked()
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    assert {n: (installed.get(n), v) for n, v in lock.items() if installed.get(n) != v} == {}
    assert sorted(set(installed) - set(lock) - OUTSIDE_THE_LOCK) == []


def test_every_dependency_of_the_project_is_locked_or_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    names = {canonical(re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0]) for r in requirements}
    assert sorted(names - set(locked()) - OUTSIDE_THE_LOCK) == []
    pinned = {canonical(r.split("==")[0]) for r in requirements if "==" in r}
    assert {"torch", "llama-cpp-python"} <= pinned
