"""Input files checked with one-line errors: missing, a folder, a pipe or device (which would block or never
end); small text inputs (JSON, prompt lists) also unreadable, binary or not UTF-8, or too large to be what
they claim to be; what a file or folder holds, as one sha256."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pear_edge.base.errors import PearError

MAX_TEXT_BYTES = 64 << 20


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path if it is a regular file (or a link to one), described as `what` ("GGUF file") in the
    one-line error when it is missing, a folder, or a pipe, socket or device."""
    p = Path(path)
    if not p.exists():
        raise PearError(f"{what} {p} not found")
    if p.is_dir():
        raise PearError(f"{what} {p} is a folder, not a file")
    if not p.is_file():  # a pipe would block the read forever, a device never end
        raise PearError(f"{what} {p} is not a regular file (a pipe, socket or device); give a file")
    return p


def read_text(path: str | os.PathLike, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the file `path`, described as `what` ("coefficients file") in errors."""
    p = check_regular_file(path, what)
    try:
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise PearError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise PearError(f"{what} {p} is larger than {max_bytes >> 20} MiB; is it the right file?")
    if b"\0" in data:
        raise PearError(f"{what} {p} is a binary file, not text; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PearError(f"{what} {p} is not UTF-8 text (byte {exc.start}); is it the right file?") from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(path: str | os.PathLike) -> str:
    """What `path` holds, as one sha256: a file's own; for a folder (a Hugging Face or ONNX model), the sha256 of
    the list of its files (path inside the folder and sha256 of each, in path order; links followed)."""
    p = Path(path)
    if not p.is_dir():
        return file_sha256(p)
    files = sorted((f.relative_to(p).as_posix(), f) for f in p.rglob("*") if f.is_file())
    return hashlib.sha256("".join(f"{name}\0{file_sha256(f)}\n" for name, f in files).encode()).hexdigest()
