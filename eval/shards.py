"""Sharded evaluation: `eval --shard I/N` answers every N-th example (example k, in the run's fixed order, goes
to shard k mod N + 1) into OUT/shard.json; `eval merge` joins the N shard files of one run into the report a
single run writes (results.json, report.md, the position plot).

A shard file holds what identifies its run (the settings, the models as given, the sha256 of all the run's
example ids in order, N) and, per run of base/PEAR pairs, each side's results on the shard's examples as soon
as that side is done: a rerun of the same shard into the same folder reuses the finished sides and answers
only the rest. Greedy answers are deterministic, so the merged report equals a single run's except for the
per-answer `timing` of each item (wall-clock measurements).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from pear_edge.base.atomic import report_folder, write_text_atomic
from pear_edge.base.errors import PearError
from pear_edge.base.inputs import read_text

from pear_edge.eval.harness import EvalResults, paired_compare
from pear_edge.eval.report import Run

SHARD_FILE = "shard.json"
FORMAT = "pear-edge/eval-shard"
VERSION = 1
SIDES = ("base", "pear")
T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 1 <= I <= N; ValueError otherwise (argparse turns it into a usage error)."""
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()):
        raise ValueError(f"--shard takes I/N, e.g. 1/4 (got {text!r})")
    i, n = int(index), int(count)
    if not 1 <= i <= n:
        raise ValueError(f"--shard I/N needs 1 <= I <= N (got {text!r})")
    return i, n


def shard_indices(total: int, index: int, count: int) -> range:
    """The positions (0-based, in the run's example order) of shard `index` of `count`: k with k mod count =
    index - 1."""
    return range(index - 1, total, count)


def ids_sha256(ids: Sequence[str]) -> str:
    """sha256 of the example ids in order (one per line): names a run's examples without listing them."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


@dataclass
class Shard:
    """One shard's file: `run` identifies the whole run (settings, models, examples, N); `results[j]` holds run
    j's base and PEAR results on this shard's examples (None: not answered yet)."""

    index: int
    count: int
    run: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)  # {"label", "base", "pear"}

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "shard": [self.index, self.count], "run": self.run,
                "results": [{"label": r["label"], **{s: (r[s].as_dict() if r[s] else None) for s in SIDES}}
                            for r in self.results]}

    @property
    def complete(self) -> bool:
        return bool(self.results) and all(r[s] is not None for r in self.results for s in SIDES)

    def cached(self, j: int, label: str) -> tuple[EvalResults | None, EvalResults | None]:
        """Run j's finished sides, if this shard file holds them for a run of that label."""
        if j < len(self.results) and self.results[j]["label"] == label:
            return self.results[j]["base"], self.results[j]["pear"]
        return None, None

    def record(self, j: int, label: str, side: int, results: EvalResults) -> None:
        while len(self.results) <= j:
            self.results.append({"label": label, "base": None, "pear": None})
        self.results[j] = {**self.results[j], "label": label, SIDES[side]: results}


def run_identity(settings: dict[str, Any], models: list[Any], ids: Sequence[str], count: int) -> dict[str, Any]:
    """What every shard of one run shares: settings, the models as given, the examples, N."""
    return {"settings": settings, "models": models, "examples_sha256": ids_sha256(ids), "count": count}


def read_document(path: Path, what: str, fmt: str, version: int, parse: Callable[[dict[str, Any]], T]) -> T:
    """`parse(doc)` of the JSON document `path` of format `fmt`, version `version`, read strictly: PearError naming
    the file on anything else (parse raises ValueError, KeyError, TypeError or AttributeError on a malformed doc).
    What eval keeps between runs (shard files, the answers cache) is read this way."""
    try:
        doc = json.loads(read_text(path, what))
        if doc.get("format") != fmt or doc.get("version") != version:
            raise ValueError(f"not a {fmt} version {version} file")
        return parse(doc)
    except PearError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise PearError(f"{path} is not a readable {what} ({type(exc).__name__}: {exc})") from None


def write_document(folder: str | Path, name: str, doc: dict[str, Any]) -> Path:
    """`doc` as FOLDER/NAME (JSON), written atomically into a report folder (created and marked if need be)."""
    out = report_folder(folder)
    return write_text_atomic(out / name, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def _shard_from(doc: dict[str, Any]) -> Shard:
    index, count = doc["shard"]
    results = [{"label": str(r["label"]),
                **{s: EvalResults.from_dict(r[s]) if r[s] is not None else None for s in SIDES}}
               for r in doc["results"]]
    return Shard(int(index), int(count), dict(doc["run"]), results)


def parse_shard_file(path: Path) -> Shard:
    """A shard file, read strictly: PearError naming the file on anything else."""
    return read_document(path, "eval shard", FORMAT, VERSION, _shard_from)


def open_shard(folder: Path, index: int, count: int, run: dict[str, Any]) -> tuple[Shard, int]:
    """The shard to fill in `folder`: its earlier file when that belongs to the same run and shard (so its
    finished sides are reused), else a new one. Returns (shard, finished sides reused)."""
    path = folder / SHARD_FILE
    if path.is_file():
        try:
            earlier = parse_shard_file(path)
        except PearError:
            earlier = None
        if earlier and (earlier.index, earlier.count, earlier.run) == (index, count, run):
            return earlier, sum(r[s] is not None for r in earlier.results for s in SIDES)
    return Shard(index, count, run), 0


def save_shard(folder: str | Path, shard: Shard) -> Path:
    return write_document(folder, SHARD_FILE, shard.as_dict())


def _same(shards: Sequence[tuple[Path, Shard]], what: str, key) -> None:
    (first_path, first), *rest = shards
    for path, shard in rest:
        if key(shard) != key(first):
            raise PearError(f"{path} and {first_path} are shards of different runs ({what} differ)")


def merge_shards(shards: Sequence[tuple[Path, Shard]]) -> tuple[dict[str, Any], list[Run]]:
    """(the run's settings, its Runs over all examples in their order) from the N shard files of one run.
    Refuses shards of different runs, a shard given twice, a missing or unfinished shard."""
    if not shards:
        raise PearError("eval merge needs the shard folders of one run")
    _same(shards, "N", lambda s: s.count)
    _same(shards, "settings", lambda s: s.run.get("settings"))
    _same(shards, "models", lambda s: s.run.get("models"))
    _same(shards, "examples", lambda s: s.run)
    _same(shards, "runs", lambda s: [r["label"] for r in s.results])
    by_index: dict[int, Path] = {}
    for path, shard in shards:
        if shard.index in by_index:
            raise PearError(f"shard {shard.index}/{shard.count} is given twice ({by_index[shard.index]} and {path})")
        if not shard.complete:
            raise PearError(f"{path}: shard {shard.index}/{shard.count} is unfinished; run it again to complete it")
        by_index[shard.index] = path
    count = shards[0][1].count
    missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in by_index]
    if missing:
        raise PearError(f"shard(s) {', '.join(missing)} missing: give all {count} shard folders of the run")
    ordered = [shard for _, shard in sorted(shards, key=lambda ps: ps[1].index)]
    run = ordered[0].run
    runs = [_merged_run(ordered, j, run["settings"]["seed"]) for j in range(len(ordered[0].results))]
    if any(ids_sha256([i.id for i in r.base.items]) != run["examples_sha256"] for r in runs):
        raise PearError("the shards' examples do not make up the run's examples; rerun the shards")
    return run["settings"], runs


def _merged_run(ordered: Sequence[Shard], j: int, seed: int) -> Run:
    """Run j over all examples: example k is item k // N of shard k mod N + 1."""
    label = ordered[0].results[j]["label"]
    sides = []
    for side in SIDES:
        parts = [s.results[j][side] for s in ordered]
        first = parts[0]
        if any((p.task, p.backend, p.settings) != (first.task, first.backend, first.settings) for p in parts):
            raise PearError(f"the shards ran {label} {side} with different models or settings")
        total = sum(len(p.items) for p in parts)
        expected = [len(shard_indices(total, i + 1, len(parts))) for i in range(len(parts))]
        if [len(p.items) for p in parts] != expected:
            raise PearError(f"the shards of {label} {side} hold {[len(p.items) for p in parts]} examples, "
                            f"not a split of {total} ({expected})")
        items = [parts[k % len(parts)].items[k // len(parts)] for k in range(total)]
        sides.append(EvalResults(first.task, first.backend, items, first.settings))
    return Run(label, sides[0], sides[1], paired_compare(sides[0], sides[1], seed=seed))
