"""Input files checked with one-line errors: missing, a folder, a pipe or device (which would block or never
end); small text inputs (JSON, prompt lists) also unreadable, binary or not UTF-8, or too large to be what
they claim to be."""
from __future__ import annotations

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
