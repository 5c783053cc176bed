"""Outputs: checked before any work, written to a temporary sibling and renamed into place, so an
interrupted or failed run leaves nothing half-written and never deletes or overwrites what pear-edge
did not write.

Every command calls `check_output` on each output before it loads anything, then writes through
`atomic_file` / `atomic_dir` (which repeat the check at the moment of the rename). Rules:

- an output is never one of the inputs, never inside an input folder, and an output folder never
  contains an input;
- a file output may replace an existing regular file, never a folder or a special file (/dev/null);
- a folder output may be a new or empty folder; a non-empty one only if pear-edge wrote it (it holds
  MARKER) and the user passed --force (REPLACE) — a report folder (REPORTS) is updated file by file
  and needs no --force;
- the parent must be (or become) a writable folder: a path under a file, or in a folder where nothing
  can be created, is refused before any work;
- temporaries are named `.NAME.PID.XXXXXXXX[SUFFIX].tmp`; a run removes the ones next to its output
  whose process is gone (left by a `kill -9` or a power cut), and nothing else.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from pear_edge.base.errors import PearError

MARKER = ".pear-edge-output"
"""File written into every folder pear-edge creates; only such folders may be replaced (with --force)."""

TEMP_SUFFIX = ".tmp"
# Companions SQLite creates next to a database being written.
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
# errno values that mean "this output cannot be written here": reported as one line.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class Kind(enum.Enum):
    FILE = "file"
    FOLDER = "folder"        # replaced as a whole
    REPORTS = "report folder"  # pear-edge's own files are (re)written inside it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # symlink loop
        raise PearError(f"{path}: cannot resolve the path (symlink loop?)") from None


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_against_inputs(out: Path, kind: Kind, inputs: list[Path]) -> None:
    real_out = _resolved(out)
    for src in inputs:
        real_src = _resolved(src)
        if real_out == real_src or (out.exists() and src.exists() and os.path.samefile(out, src)):
            raise PearError(f"output {out} is the same as input {src}; choose another output path")
        if src.is_dir() and _inside(real_out, real_src):
            raise PearError(f"output {out} lies inside input folder {src}; choose a path outside it")
        if kind is Kind.FOLDER and _inside(real_src, real_out):
            raise PearError(f"output folder {out} contains input {src}; choose another output folder")


def is_pear_folder(path: Path) -> bool:
    """True for a folder pear-edge wrote (it holds MARKER)."""
    return (path / MARKER).is_file()


def _check_existing(out: Path, kind: Kind, replace: bool) -> None:
    """Refuse to write over anything that is not ours to replace."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.exists():
        raise PearError(f"output {out} is a symbolic link to a missing file ({os.readlink(out)}); remove it or "
                        f"choose another path")
    try:
        mode = out.stat().st_mode
    except OSError as exc:
        raise PearError(f"output {out} exists but cannot be inspected ({exc.strerror})") from None
    if kind is Kind.FILE:
        if stat.S_ISDIR(mode):
            raise PearError(f"output {out} is a folder; this command writes a file: give a file path")
        if not stat.S_ISREG(mode):
            raise PearError(f"output {out} exists and is not a regular file; choose another output path")
        return
    if not stat.S_ISDIR(mode):
        raise PearError(f"output {out} is a file; this command writes a folder: give a new folder path")
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise PearError(f"output folder {out} cannot be read ({exc.strerror})") from None
    if empty:
        return
    if not is_pear_folder(out):
        raise PearError(f"output folder {out} exists, is not empty and was not written by pear-edge; "
                        f"choose a new folder (nothing was changed)")
    if kind is Kind.FOLDER and not replace:
        raise PearError(f"output folder {out} exists (written by pear-edge earlier); pass --force to replace it")


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of `path` that exists; a file there is refused."""
    parent = path.parent
    while not parent.exists() and not parent.is_symlink():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.is_symlink() and not parent.exists():
        raise PearError(f"cannot write {path}: {parent} is a symbolic link to a missing folder "
                        f"({os.readlink(parent)}); remove it or choose another path")
    if not parent.is_dir():
        raise PearError(f"cannot write {path}: {parent} is a file, not a folder")
    return parent


def _probe_writable(folder: Path, target: Path) -> None:
    """Create and remove one temporary file in `folder`: catches read-only, permission and quota problems
    (os.access is wrong for root and for read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PearError(f"cannot write {target}: {folder} is not writable ({exc.strerror})") from None


def check_output(output: str | os.PathLike, *inputs: str | os.PathLike | None, kind: Kind = Kind.FILE,
                 replace: bool = False) -> Path:
    """Check `output` before any work starts: see the module docstring. Also removes stale temporaries
    left next to it by earlier runs that were killed. Returns `output` as a Path."""
    out = Path(output)
    if not str(output).strip():
        raise PearError("the output path is empty")
    if kind is Kind.FILE and str(output).endswith(("/", os.sep)):
        raise PearError(f"{output} ends in '/', which names a folder; give a file name for this output")
    if out.name in ("", ".", ".."):
        out = _resolved(out)
    _check_against_inputs(out, kind, [Path(i) for i in inputs if i is not None])
    _check_existing(out, kind, replace)
    ancestor = _existing_ancestor(out)
    _probe_writable(ancestor, out)
    if ancestor == out.parent:
        remove_stale_temporaries(out)
    return out


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """A file output (see `check_output`)."""
    return check_output(output, *inputs)


# --------------------------------------------------------------------------- temporaries

def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _temp_pattern(target: Path) -> re.Pattern:
    companions = "|".join(re.escape(c) for c in _SQLITE_COMPANIONS if c)
    return re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[A-Za-z0-9_]{{8}}[^/]*{re.escape(TEMP_SUFFIX)}"
                      rf"(?:{companions})?$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own earlier, interrupted call in this process (tests call main() in-process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove `.NAME.PID.XXXXXXXX*.tmp` siblings of `target` whose process no longer runs. Returns them."""
    target = Path(target)
    pattern = _temp_pattern(target)
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for item in siblings:
        match = pattern.match(item.name)
        if not match or _alive(int(match.group(1))):
            continue
        try:
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
            removed.append(item)
        except OSError:
            pass
    return removed


def _make_parents(target: Path) -> list[Path]:
    """Create missing parent folders; returns those created, outermost first."""
    missing = []
    parent = target.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
    return list(reversed(missing))


def _remove_created(folders: list[Path]) -> None:
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _remove(path: Path) -> None:
    for companion in _SQLITE_COMPANIONS:
        item = Path(str(path) + companion)
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        elif item.exists() or item.is_symlink():
            with contextlib.suppress(OSError):
                item.unlink()


def write_error(target: Path, exc: OSError) -> PearError:
    """The one-line error for an OSError while writing `target` (disk full, permission, ...)."""
    return PearError(f"cannot write {target}: {exc.strerror or exc}; nothing was written")


@contextlib.contextmanager
def _temporary(target: Path, make, kind: Kind, replace: bool = False) -> Iterator[Path]:
    """Create a temporary sibling with `make(target)`, yield it, move it onto `target` on success; on any
    failure (or interrupt) remove it, its SQLite companions and any parent folder created for it."""
    created: list[Path] = []
    tmp = None
    committed = False
    try:
        _check_existing(target, kind, replace)
        created = _make_parents(target)
        tmp = Path(make(target))
        yield tmp
        _commit(tmp, target, kind, replace)
        committed = True
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise write_error(target, exc) from None
        raise
    finally:
        if tmp is not None:
            _forget_inside(tmp)
        if not committed:
            if tmp is not None:
                _remove(tmp)
            _remove_created(created)


WRITTEN: list[Path] = []
"""The outputs this process has put in place, in order (what an interrupted command says it left)."""


def _forget_inside(folder: Path) -> None:
    """What was written inside a temporary folder is no output of its own: it is gone, or part of the output
    the folder became."""
    WRITTEN[:] = [path for path in WRITTEN if not _inside(path, folder)]


def _commit(tmp: Path, target: Path, kind: Kind, replace: bool) -> None:
    _check_existing(target, kind, replace)  # again: something may have appeared meanwhile
    if kind is Kind.FILE:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, target)
        WRITTEN.append(target)
        return
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    (tmp / MARKER).write_text(json.dumps({"written_by": "pear-edge"}) + "\n")
    if not (target.exists() and any(target.iterdir())):
        os.replace(tmp, target)  # rename onto a missing or empty folder
        WRITTEN.append(target)
        return
    backup = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".old" + TEMP_SUFFIX, dir=target.parent))
    os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(backup, target)
        raise
    WRITTEN.append(target)
    shutil.rmtree(backup, ignore_errors=True)


def _mkstemp(suffix: str):
    def make(target: Path) -> str:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=suffix + TEMP_SUFFIX, dir=target.parent)
        os.close(fd)
        return name
    return make


def _mkdtemp(target: Path) -> str:
    return tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    with _temporary(Path(path), _mkstemp(suffix), Kind.FILE) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; it becomes `path` (marked as pear-edge's) only if the
    block succeeds. An existing non-empty `path` is replaced only if pear-edge wrote it and `replace`."""
    with _temporary(Path(path), _mkdtemp, Kind.FOLDER, replace) as tmp:
        yield tmp


@contextlib.contextmanager
def scratch_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A work folder next to `target` (same file system, so large files can be moved, not copied), named
    like the other temporaries so that a killed run's leftovers are removed by the next run."""
    target = Path(target)
    _make_parents(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".work" + TEMP_SUFFIX, dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _forget_inside(tmp)


def report_folder(path: str | os.PathLike) -> Path:
    """Create (or reuse) a report folder and mark it as pear-edge's; see `check_output(kind=REPORTS)`."""
    out = Path(path)
    try:
        _check_existing(out, Kind.REPORTS, False)
        created = _make_parents(out / MARKER)
        if not is_pear_folder(out):
            try:
                write_text_atomic(out / MARKER, json.dumps({"written_by": "pear-edge"}) + "\n")
            except BaseException:
                _remove_created(created)
                raise
    except OSError as exc:
        raise write_error(out, exc) from None
    return out


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)
