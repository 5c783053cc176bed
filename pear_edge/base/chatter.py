"""What libraries (torch, transformers, optimum, onnxruntime) write to stderr during a step: held back at the
file-descriptor level and shown only when the step succeeds, so that a step that fails or is interrupted
leaves its command's one line alone on stderr. Their warnings of a successful run are still shown."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

_real_stderr: int | None = None  # a duplicate of the real stderr while it is held


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Hold what is written to file descriptor 2 inside the block; write it out if the block succeeds."""
    if _real_stderr is not None:  # an outer block holds it already
        yield
        return
    with tempfile.TemporaryFile() as held:
        if not _hold(held.fileno()):
            yield
            return
        try:
            yield
        finally:
            release_stderr()
        held.seek(0)
        with contextlib.suppress(OSError), open(2, "wb", closefd=False) as stderr:
            stderr.write(held.read())


def _hold(fd: int) -> bool:
    global _real_stderr
    try:
        sys.stderr.flush()
        _real_stderr = os.dup(2)
    except (OSError, ValueError):  # no stderr (closed): nothing to hold
        return False
    os.dup2(fd, 2)
    return True


def release_stderr() -> None:
    """Give stderr back, dropping what was held (nothing if it is not held). The command line calls it before
    its one line, in case an interrupt landed before a held block could give stderr back itself."""
    global _real_stderr
    if _real_stderr is None:
        return
    real, _real_stderr = _real_stderr, None
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()  # a half-written line goes to what is dropped
    os.dup2(real, 2)
    os.close(real)
