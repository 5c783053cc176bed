"""Committed docs: a short README, a small docs/ folder, no absolute machine paths, every relative link
resolving, no issue numbers in headings, and every measured claim traceable to a results.json in the tree."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MEASURED = ROOT / "pear_edge" / "results" / "measured.json"
# A path rooted in a machine's home, temp or work folders (not `/usr/bin/time`, not `~/.cache/...`).
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:root|home|tmp|work|Users|mnt|var/folders|private/var)/"
                           r"|\b[A-Za-z]:\\(?:Users|Windows|tmp)\\")
TEXT_SUFFIXES = {".md", ".json", ".txt", ".csv", ".html", ".jsonl"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def tracked(folder: str) -> list[Path]:
    """Files under `folder` that git tracks or would add (every file there when git is unavailable)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", folder], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        files = [ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in (ROOT / folder).rglob("*")]
    return [p for p in files if p.is_file()]


def committed_docs() -> list[Path]:
    return [p for p in tracked("docs") if p.suffix.lower() in TEXT_SUFFIXES]


def markdown_pages() -> list[Path]:
    return [README] + [p for p in tracked("docs") if p.suffix == ".md"]


def headings(path: Path) -> list[str]:
    out, code = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            code = not code
        elif not code and line.startswith("#"):
            out.append(line)
    return out


def test_docs_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in committed_docs()}
    assert {"docs/gguf.md", "docs/eval.md", "docs/onnx.md", "docs/rag.md", "docs/results.md"} <= names


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


def test_docs_folder_is_small():
    assert sum(p.stat().st_size for p in tracked("docs")) < 5 * 1024 * 1024


def test_no_output_markers_under_docs():
    assert not [p for p in tracked("docs") if p.name == ".pear-edge-output"]


@pytest.mark.parametrize("path", markdown_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_issue_numbers_or_dates_in_headings(path):
    bad = [h for h in headings(path) if re.search(r"\(issue \d+\)|\bissue \d+\b|\d{4}-\d\d-\d\d", h)]
    assert not bad, bad


@pytest.mark.parametrize("path", markdown_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, missing


@pytest.mark.parametrize("path", committed_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_absolute_machine_paths(path):
    hits = [f"{path.relative_to(ROOT)}:{n}: {m.group(0)}" for n, line in enumerate(path.read_text().splitlines(), 1)
            for m in [ABSOLUTE_PATH.search(line)] if m]
    assert not hits, "absolute paths of a machine in a committed doc (write relative names):\n" + "\n".join(hits[:10])


def test_the_pattern_catches_what_it_should():
    assert ABSOLUTE_PATH.search("base: `/work/main/.venv/lib/x.gguf`")
    assert ABSOLUTE_PATH.search("--db /tmp/ragdemo/x.sqlite") and ABSOLUTE_PATH.search("C:\\Users\\me\\m.gguf")
    assert not ABSOLUTE_PATH.search("/usr/bin/time -v, out/ev/pear.gguf, ~/.cache/pear-edge/, docs/results/")


def measured() -> dict:
    return json.loads(MEASURED.read_text())


def overall_runs(source: Path) -> list[dict]:
    return [r["comparison"]["overall"] for r in json.loads(source.read_text())["runs"] if r.get("comparison")]


def agrees(claim: dict, o: dict) -> bool:
    """n and Δ of a claim equal one run's summary (accuracy in points; perplexity in its own units)."""
    scale = 100 if o.get("metric", "accuracy") == "accuracy" else 1
    ok = o["n"] == claim["n"] and abs(scale * o["delta"] - claim["delta_pt"]) < 0.06
    if "base_pct" in claim:
        ok = ok and abs(100 * o["base"] - claim["base_pct"]) < 0.06 and abs(100 * o["pear"] - claim["pear_pct"]) < 0.06
    return ok


@pytest.mark.parametrize("cid", sorted(measured()["claims"]))
def test_every_claim_matches_its_results_json(cid):
    claim = measured()["claims"][cid]
    path, run = claim["source"], claim.get("run")
    source = ROOT / path
    assert path.startswith("docs/experiments/") and path.endswith("results.json") and source.is_file(), path
    assert (ROOT / claim["doc"].split("#")[0]).is_file(), claim["doc"]
    runs = overall_runs(source)
    candidates = [runs[run]] if run is not None else runs
    assert any(agrees(claim, o) for o in candidates), f"{cid}: n/delta not found in {claim['source']}"


def test_notes_name_known_claims_and_hold_no_numbers():
    data = measured()
    for section in data["notes"].values():
        for key, note in section.items():
            assert set(note["claims"]) <= set(data["claims"]), key
            text = re.sub(r"SmolLM2-135M(-Instruct)?|Gemma-3-270M|gemma3-270m|Q4_1|Q4_K_M|Q8_0|int8|fp32", "",
                          note["text"])
            assert not re.search(r"\d", text), (key, note["text"])
    assert data["notes"]["model"]["default"]["validated"] is True
    assert data["notes"]["model"]["gemma3-270m"]["validated"] is False


def test_readme_numbers_come_with_a_source():
    text = README.read_text()
    for row in [line for line in text.splitlines() if line.startswith("| ") and " → " in line and "%" in line
                and "base → PEAR" not in line]:
        assert "results.json" in row, row


def test_readme_commands_exist():
    import pear_edge.cli  # noqa: F401  (the CLI package imports)
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


def test_bench_speed_defaults_to_the_shipped_coefficients():
    from pear_edge.edits.coefficients import Coefficients
    from pear_edge.eval.lab.bench_speed import SHIPPED_COEFFICIENTS, default_coefficients

    assert SHIPPED_COEFFICIENTS.is_absolute() and default_coefficients().name == "smollm2-135m.coeffs.json"
    assert Coefficients.load(default_coefficients()).model.num_heads == 9
