"""Find the indexable files under a folder and read them as text, with a one-line note for each file skipped."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pear_edge.base.errors import PearError

TEXT_SUFFIXES = (".txt", ".md")
BINARY_SNIFF_BYTES = 8192
MAX_FILE_BYTES = 8 << 20  # larger text is a dump to split, not a document: it would take minutes and GBs


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
    """Read every .txt/.md file below `root` (sorted, hidden entries ignored), never outside it: a symbolic link
    is followed only when it resolves inside `root` (a folder at most once, so a loop ends), else skipped with
    a note, as are unlistable folders and file names that are not UTF-8."""
    real_root = Path(os.path.realpath(root))
    try:
        os.listdir(real_root)
    except OSError as exc:
        raise PearError(f"cannot list the documents folder {root} ({exc.strerror or exc})") from None
    files, skipped, seen_dirs, seen_files = [], [], {str(real_root)}, set()

    def inside(real: str) -> bool:
        return real == str(real_root) or real.startswith(str(real_root) + os.sep)

    def walk(folder: Path, rel_folder: PurePosixPath) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))  # links last
        except OSError as exc:
            skipped.append(f"{rel_folder.as_posix()}/: cannot list ({exc.strerror or exc})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = rel_folder / entry.name
            shown = _printable(rel.as_posix())
            if shown != rel.as_posix():
                skipped.append(f"{shown}: file name is not UTF-8")
                continue
            path = Path(entry.path)
            real = os.path.realpath(path)
            if entry.is_symlink() and not inside(real):
                skipped.append(f"{shown}: a link to outside the folder, not followed")
                continue
            if path.is_dir():
                if real in seen_dirs:
                    skipped.append(f"{shown}/: a link to a folder already indexed, not followed again")
                else:
                    seen_dirs.add(real)
                    walk(path, rel)
                continue
            if path.suffix.lower() not in TEXT_SUFFIXES:
                skipped.append(f"{shown}: not indexed (only {'/'.join(TEXT_SUFFIXES)} files are)")
                continue
            if path.exists() and not path.is_file():
                skipped.append(f"{shown}: not a regular file")
                continue
            if real in seen_files:
                skipped.append(f"{shown}: the same file as another one indexed")
                continue
            try:
                data, text = _read_text(path)
            except _Unreadable as why:
                skipped.append(f"{shown}: {why}")
                continue
            seen_files.add(real)
            files.append(SourceFile(shown, hashlib.sha256(data).hexdigest(), text))

    walk(real_root, PurePosixPath())
    return Scan(files, skipped)


def _printable(name: str) -> str:
    """The name as UTF-8 text; bytes that are not UTF-8 (kept by the OS as surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _Unreadable(Exception):
    """Why a file is skipped."""


def _read_text(path: Path) -> tuple[bytes, str]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise _Unreadable(f"larger than {MAX_FILE_BYTES >> 20} MiB; split it into documents to index it")
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
