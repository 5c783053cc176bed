"""JSON Lines in and out: every malformed line is reported with its file and line number, and
files are written atomically so a crashed `make-data` never leaves half a data set."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from pear_edge.base.atomic import atomic_file
from pear_edge.base.errors import PearError

T = TypeVar("T")


class LineError(ValueError):
    """Raised by record parsers; the reader adds file name and line number."""


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_jsonl(path: str | Path, parse: Callable[[dict[str, Any]], T]) -> list[T]:
    """Parse each non-blank line with `parse`; PearError naming `path:line` on the first bad one."""
    p = Path(path)
    if not p.is_file():
        raise PearError(f"data file {p} not found")
    out: list[T] = []
    try:
        with _open_text(p) as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    if not isinstance(doc, dict):
                        raise LineError(f"expected a JSON object, got {type(doc).__name__}")
                    out.append(parse(doc))
                except json.JSONDecodeError as exc:
                    raise PearError(f"{p}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                except RecursionError:
                    raise PearError(f"{p}:{number}: not valid JSON (nested too deeply)") from None
                except (LineError, KeyError, TypeError, ValueError) as exc:
                    detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                    raise PearError(f"{p}:{number}: malformed record: {detail}") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise PearError(f"cannot read {p}: {exc}") from None
    if not out:
        raise PearError(f"{p} contains no records")
    return out


def iter_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    with atomic_file(path, suffix=".jsonl") as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(iter_lines(records))
    return Path(path)
