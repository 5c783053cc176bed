"""Find the indexable files under a folder and read them as text, with a one-line note for each file skipped."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md")
BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the docs folder, with forward slashes: the stable key in the index
    sha256: str
    text: str


@dataclass
class Scan:
    files: list[SourceFile]
    skipped: list[str]  # "<path>: <why>" notes


def scan_folder(root: Path) -> Scan:
    """Read every .txt/.md file below `root` (sorted, hidden folders ignored)."""
    files, skipped = [], []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        if path.suffix.lower() not in TEXT_SUFFIXES:
            skipped.append(f"{rel.as_posix()}: not indexed (only {'/'.join(TEXT_SUFFIXES)} files are)")
            continue
        if path.exists() and not path.is_file():
            skipped.append(f"{rel.as_posix()}: not a regular file")
            continue
        try:
            data, text = _read_text(path)
        except _Unreadable as why:
            skipped.append(f"{rel.as_posix()}: {why}")
            continue
        files.append(SourceFile(rel.as_posix(), hashlib.sha256(data).hexdigest(), text))
    return Scan(files, skipped)


class _Unreadable(Exception):
    """Why a file is skipped."""


def _read_text(path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Unreadable(f"cannot read ({exc.strerror or exc})") from None
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        raise _Unreadable("binary file (contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise _Unreadable("empty file")
    return data, text
