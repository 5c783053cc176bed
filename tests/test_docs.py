"""Committed docs: no absolute paths of the machine that wrote them, no stale claims that contradict the
README's current results, and the shipped coefficients file that tools default to is there."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# A path rooted in a machine's home, temp or work folders (not `/usr/bin/time`, not `~/.cache/...`).
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:root|home|tmp|work|Users|mnt|var/folders|private/var)/"
                           r"|\b[A-Za-z]:\\(?:Users|Windows|tmp)\\")
TEXT_SUFFIXES = {".md", ".json", ".txt", ".csv", ".html", ".jsonl"}
# Statements written before the calibrated coefficients shipped; each contradicts the README now.
STALE_CLAIMS = ("was not finished", "were not finished", "no calibrated file", "not a calibrated set",
                "gets **none** of these right", "could not finish on the shared CPUs")


def committed_docs() -> list[Path]:
    """Text files under docs/ that git tracks (every text file there when git is unavailable)."""
    try:
        out = subprocess.run(["git", "ls-files", "docs"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in DOCS.rglob("*") if p.is_file()]
    return [p for p in files if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()]


def test_docs_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in committed_docs()}
    assert {"docs/gguf.md", "docs/results/test-mdqa.md", "docs/results/smollm2-135m.coeffs.json"} <= names


@pytest.mark.parametrize("path", committed_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_absolute_machine_paths(path):
    hits = [f"{path.relative_to(ROOT)}:{n}: {m.group(0)}" for n, line in enumerate(path.read_text().splitlines(), 1)
            for m in [ABSOLUTE_PATH.search(line)] if m]
    assert not hits, "absolute paths of a machine in a committed doc (write relative names):\n" + "\n".join(hits[:10])


def test_the_pattern_catches_what_it_should():
    assert ABSOLUTE_PATH.search("base: `/work/main/.venv/lib/x.gguf`")
    assert ABSOLUTE_PATH.search("--db /tmp/ragdemo/x.sqlite") and ABSOLUTE_PATH.search("C:\\Users\\me\\m.gguf")
    assert not ABSOLUTE_PATH.search("/usr/bin/time -v, out/ev/pear.gguf, ~/.cache/pear-edge/, docs/results/")


@pytest.mark.parametrize("path", [p for p in committed_docs() if p.suffix == ".md"],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_stale_claims_that_contradict_the_readme(path):
    text = path.read_text()
    assert not [c for c in STALE_CLAIMS if c in text]


def test_bench_speed_defaults_to_the_shipped_coefficients():
    from pear_edge.coefficients import Coefficients
    from pear_edge.eval.bench_speed import SHIPPED_COEFFICIENTS, default_coefficients

    assert SHIPPED_COEFFICIENTS.is_absolute() and default_coefficients() == DOCS / "results" / "smollm2-135m.coeffs.json"
    assert Coefficients.load(default_coefficients()).model.num_heads == 9
