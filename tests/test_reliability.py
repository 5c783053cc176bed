"""What the README's reliability promise rests on, beyond tests/test_bad_inputs.py: a seeded mutation fuzz
of the coefficients reader, folder outputs that replace only pear-edge's own folders, a full disk
mid-write, SIGTERM/SIGHUP/SIGKILL during `patch-gguf`, and the next run removing a killed run's
temporaries (and nothing else)."""
from __future__ import annotations

import errno
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf_tiny import coefficients_for, write_tiny_gguf
from tiny import save_tiny_llama

from pear_edge.base.atomic import (MARKER, WRITTEN, Kind, atomic_dir, check_output, remove_stale_temporaries,
                                   scratch_dir, write_text_atomic)
from pear_edge.base.chatter import held_stderr
from pear_edge.cli import main
from pear_edge.edits.coefficients import MAX_COEFFICIENT, Coefficients
from pear_edge.base.errors import PearError

FUZZ_CASES = 400


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    gguf = write_tiny_gguf(root / "in.gguf", T.Q4_1)
    coeffs = root / "c.json"
    coefficients_for(gguf, [(1, 2, 0.5), (0, 1, 1.25)]).save(coeffs)
    return gguf, coeffs


# --------------------------------------------------------------------------- coefficients fuzz

POOL = [True, False, None, "", "1", "x" * 3, 0, 1, -1, 0.7, 1.0, 2.5, 1e308, -1e308, 10**20, [], {}, [1], [[]],
        {"a": 1}, [0.5, 0.5], 150.0]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _structural(doc, rng: random.Random):
    """Replace, delete or add one node anywhere in the document."""
    path = rng.choice([p for p in _paths(doc) if p])
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    op = rng.random()
    if op < 0.6:
        parent[path[-1]] = rng.choice(POOL)
    elif op < 0.8:
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[rng.choice(["extra", "Heads", "score", "coefficient"])] = rng.choice(POOL)
    else:
        parent.append(rng.choice(POOL + [parent[path[-1]]]))
    return json.dumps(doc)


def _textual(text: str, rng: random.Random) -> str:
    """Flip, insert, delete or truncate characters of the JSON text."""
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text) or 1)
        op = rng.random()
        if op < 0.3:
            text = text[:i] + rng.choice('{}[]",:0123456789.eE-+ aNtrufl\\') + text[i + 1:]
        elif op < 0.5:
            text = text[:i] + rng.choice(['1e999', 'NaN', '"', '[' * 50, 'true', 'null', '-0']) + text[i:]
        elif op < 0.8:
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i]
    return text


def _check_loaded(coeffs: Coefficients) -> None:
    assert coeffs.heads and len({(h.layer, h.head) for h in coeffs.heads}) == len(coeffs.heads)
    for h in coeffs.heads:
        assert type(h.layer) is int and type(h.head) is int
        assert 0 <= h.layer < coeffs.model.num_layers and 0 <= h.head < coeffs.model.num_heads
        assert math.isfinite(h.coefficient) and abs(h.coefficient) <= MAX_COEFFICIENT
    assert all(math.isfinite(x) for x in coeffs.model.o_proj_norms + coeffs.model.o_proj_sketch)
    assert isinstance(coeffs.calibration, dict) and isinstance(coeffs.metrics, dict)


def test_coefficients_reader_fuzz(tiny, tmp_path):
    """Seeded mutations of a valid file: each loads (and is then valid) or is refused with a PearError."""
    good = tiny[1].read_text()
    rng = random.Random(12)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(FUZZ_CASES):
        text = _structural(json.loads(good), rng) if i % 2 else _textual(good, rng)
        if i % 4 == 3:  # through the file reader too, sometimes as raw bytes
            path = tmp_path / f"m{i}.json"
            path.write_bytes(text.encode("utf-8", "surrogatepass")[: rng.randint(0, len(text) + 10)])
            load = lambda: Coefficients.load(path)  # noqa: E731
        else:
            load = lambda: Coefficients.from_json(text, source="fuzz")  # noqa: E731
        try:
            coeffs = load()
        except PearError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        else:
            _check_loaded(coeffs)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > FUZZ_CASES // 2 and outcomes["loaded"] > 0, outcomes


def test_coefficient_bound_override(tiny, tmp_path, monkeypatch):
    doc = json.loads(tiny[1].read_text())
    doc["heads"][0]["coefficient"] = 250.0
    with pytest.raises(PearError, match="PEAR_EDGE_MAX_COEFFICIENT"):
        Coefficients.from_json(json.dumps(doc))
    monkeypatch.setenv("PEAR_EDGE_MAX_COEFFICIENT", "1000")
    assert Coefficients.from_json(json.dumps(doc)).heads[0].coefficient == 250.0
    monkeypatch.setenv("PEAR_EDGE_MAX_COEFFICIENT", "nan")
    with pytest.raises(PearError, match="positive number"):
        Coefficients.from_json(json.dumps(doc))


def test_nan_fingerprint_never_matches(tiny):
    coeffs = Coefficients.load(tiny[1])
    model = coeffs.model
    nan = type(model)(**{**model.__dict__, "o_proj_norms": tuple(math.nan for _ in model.o_proj_norms)})
    with pytest.raises(PearError, match="other weights"):
        model.check_matches(nan)
    with pytest.raises(PearError, match="other weights"):
        nan.check_matches(model)


# --------------------------------------------------------------------------- GGUF fuzz

GGUF_FUZZ_CASES = 500


def _mutated_gguf(good: bytes, rng: random.Random) -> bytes:
    """Truncate, or overwrite 1-4 bytes, mostly in the header and tensor infos (where the structure is)."""
    if rng.random() < 0.15:
        return good[:rng.randrange(len(good))]
    data = bytearray(good)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(min(len(data), 1500)) if rng.random() < 0.8 else rng.randrange(len(data))
        data[pos] = rng.randrange(256)
    return bytes(data)


def test_gguf_reader_fuzz(tiny, tmp_path, capsys):
    """Seeded byte flips and truncations of a tiny GGUF through `info` and `patch-gguf`: each run exits 0
    or 2 with one line, never a traceback, a warning or a hang; a refused patch writes nothing."""
    import warnings

    src, coeffs = tiny
    good = src.read_bytes()
    rng = random.Random(5)
    bad, out = tmp_path / "m.gguf", tmp_path / "out.gguf"
    codes = []
    for _ in range(GGUF_FUZZ_CASES):
        bad.write_bytes(_mutated_gguf(good, rng))
        out.unlink(missing_ok=True)
        for argv in (["info", str(bad)], ["patch-gguf", str(bad), "--coefficients", str(coeffs), "-o", str(out)]):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a RuntimeWarning from numpy is a finding too
                code = main(["-q", *argv])
            err = capsys.readouterr().err.strip()
            assert code in (0, 2), (argv, err)
            if code == 2:
                assert err.startswith("pear-edge: error: ") and "\n" not in err, err
                assert not out.exists() or argv[0] == "info"
            codes.append(code)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("m.gguf", "out.gguf")) == []
    assert codes.count(2) > GGUF_FUZZ_CASES // 4 and codes.count(0) > 0


# --------------------------------------------------------------------------- folder outputs

def _write_folder(path: Path, text: str, replace: bool = False) -> None:
    with atomic_dir(path, replace=replace) as tmp:
        (tmp / "weights.bin").write_text(text)


def test_folder_outputs_replace_only_marked_folders_with_force(tmp_path):
    out = tmp_path / "out"
    _write_folder(out, "one")
    assert (out / MARKER).is_file() and (out / "weights.bin").read_text() == "one"
    with pytest.raises(PearError, match="pass --force"):
        check_output(out, kind=Kind.FOLDER)
    with pytest.raises(PearError, match="pass --force"):
        _write_folder(out, "two")
    _write_folder(out, "two", replace=True)
    assert (out / "weights.bin").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no backup or temporary left
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for replace in (False, True):
        with pytest.raises(PearError, match="not written by pear-edge"):
            _write_folder(user, "x", replace=replace)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_folder(empty, "three")  # an empty folder is fine
    assert (empty / "weights.bin").read_text() == "three"


def test_failed_write_removes_temporary_and_created_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "x").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_what_is_written_inside_a_temporary_folder_is_not_reported_as_an_output(tmp_path):
    WRITTEN.clear()
    out = tmp_path / "out"
    with atomic_dir(out) as tmp, scratch_dir(out) as scratch:
        write_text_atomic(scratch / "part.json", "{}")
        write_text_atomic(tmp / "inside.json", "{}")
    assert WRITTEN == [out]  # an interrupt now says this one output, not the scratch file that is gone
    WRITTEN.clear()


def test_disk_full_during_patch_gguf(tiny, tmp_path, capsys, monkeypatch):
    import pear_edge.converters.gguf_patch as gguf_patch

    def full(reader, output, replacements, kv):
        Path(output).write_bytes(b"GGUF half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_patch, "write_gguf_copy", full)
    src, coeffs = tiny
    out = tmp_path / "p.gguf"
    assert main(["-q", "patch-gguf", str(src), "--coefficients", str(coeffs), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pear-edge: error: cannot write") and "No space left" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- interrupted runs

SLOW_RUN = """
import signal, sys, time
from pathlib import Path
import numpy as np
import {module} as target
from pear_edge.rag.embed import EMBEDDING_DIM, Embedder

# a terminal's dispositions, whatever the test runner ignores (nohup, a background job)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
READY = sys.argv.pop(1)
Embedder.embed = lambda self, texts: np.full((len(texts), EMBEDDING_DIM), EMBEDDING_DIM ** -0.5, np.float32)
real = target.{function}

def slow(*args, **kwargs):  # do part of the writing, then hang: the signal lands mid-write
    real(*args, **kwargs)
    if hasattr(args[0], "flush"):
        args[0].flush()
    with open(READY, "w") as fh:
        fh.write("writing")
    time.sleep(120)

target.{function} = slow
{extra}
from pear_edge.cli import main
sys.exit(main())  # as the program: its own command line and signals
"""
# Where each command writes its output, and the function slowed down there.
SLOW_POINTS = {"patch-gguf": ("pear_edge.converters.gguf_layout", "_copy"),
               "index": ("pear_edge.rag.index", "_insert_file"),
               "pydoc-corpus": ("pathlib", "Path.write_text"),
               "fold": ("pear_edge.edits.coefficients", "Coefficients.save"),
               "export": ("pear_edge.converters.onnx_export", "_optimum_export")}


def _start_slow(tmp_path: Path, argv: list[str], extra: str = "") -> subprocess.Popen:
    module, function = SLOW_POINTS[argv[1] if argv[0] == "rag" else argv[0]]
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN.format(module=module, function=function, extra=extra))
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(ready), "-q", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never started writing"
        time.sleep(0.05)
    ready.unlink()
    script.unlink()
    return proc


def _patch_argv(src: Path, coeffs: Path, out: Path) -> list[str]:
    return ["patch-gguf", str(src), "--coefficients", str(coeffs), "-o", str(out)]


def _start_slow_patch(tmp_path: Path, src: Path, coeffs: Path, out: Path) -> subprocess.Popen:
    return _start_slow(tmp_path, _patch_argv(src, coeffs, out))


def _temporaries(folder: Path, out: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_leave_nothing(tiny, tmp_path, sig):
    src, coeffs = tiny
    out = tmp_path / "p.gguf"
    proc = _start_slow_patch(tmp_path, src, coeffs, out)
    assert _temporaries(tmp_path, out)  # the half-written temporary exists now
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    lines = [line for line in err.splitlines() if line.startswith("pear-edge:")]
    assert lines == [f"pear-edge: interrupted ({signal.Signals(sig).name}); no output was written"], err
    assert "Traceback" not in err
    assert not out.exists() and _temporaries(tmp_path, out) == []


SLOW_CLEAN_UP = """
import pear_edge.base.atomic as atomic
real_remove = atomic._remove

def slow_remove(path):  # the clean-up takes a while: the further signals land in it
    with open(READY + ".cleaning", "w") as fh:
        fh.write("cleaning")
    time.sleep(2)
    real_remove(path)

atomic._remove = slow_remove
"""


def test_further_signals_cannot_cut_the_clean_up_short(tiny, tmp_path):
    src, coeffs = tiny
    out = tmp_path / "p.gguf"
    proc = _start_slow(tmp_path, _patch_argv(src, coeffs, out), extra=SLOW_CLEAN_UP)
    proc.send_signal(signal.SIGINT)
    cleaning = tmp_path / "ready.cleaning"
    deadline = time.monotonic() + 60
    while not cleaning.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert err.splitlines() == ["pear-edge: interrupted (SIGINT); no output was written"], err
    cleaning.unlink()
    assert not out.exists() and _temporaries(tmp_path, out) == []


LATE_EXIT = """
import atexit
target._copy = real  # patch-gguf runs to its end

def slow_exit():  # the command has finished; ending the process takes a while (as torch's teardown does)
    with open(READY, "w") as fh:
        fh.write("exiting")
    time.sleep(2)

atexit.register(slow_exit)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_command_has_finished_does_not_kill_the_exiting_process(tiny, tmp_path, sig):
    src, coeffs = tiny
    out = tmp_path / "p.gguf"
    proc = _start_slow(tmp_path, _patch_argv(src, coeffs, out), extra=LATE_EXIT)
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, ""), stdout  # it died without a word (exit -2, -15)
    assert "patched" in stdout and out.read_bytes()[:4] == b"GGUF" and _temporaries(tmp_path, out) == []


def test_in_process_the_signal_handlers_are_given_back(capsys):
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = [signal.getsignal(s) for s in signals]
    assert main(["profiles"]) == 0
    assert [signal.getsignal(s) for s in signals] == before
    capsys.readouterr()


LIBRARY_CHATTER = """
import logging, os, warnings
real_export = real

def chatty(*args, **kwargs):  # what torch, transformers and optimum print on the way, by every route
    warnings.warn("a library's UserWarning")
    logging.getLogger("transformers.modeling_utils").warning("a library's log warning")
    os.write(2, b"a library's C++ warning\\n")
    real_export(*args, **kwargs)

real = chatty
"""


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_onnx_interrupted_says_its_one_line_only(tmp_path):
    hf = save_tiny_llama(tmp_path / "hf")
    before = _digest(hf)
    out = tmp_path / "onnx"
    proc = _start_slow(tmp_path, ["export", "onnx", "--model", str(hf), "-o", str(out)], extra=LIBRARY_CHATTER)
    assert _temporaries(tmp_path, out)  # the ONNX model is in the scratch folder, the warnings were printed
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert err.splitlines() == ["pear-edge: interrupted (SIGINT); no output was written"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"] and _digest(hf) == before


def test_library_chatter_shows_once_its_step_succeeds_and_is_dropped_if_it_fails(capfd):
    with held_stderr():
        os.write(2, b"lib: one\n")
        assert capfd.readouterr().err == ""
    assert capfd.readouterr().err == "lib: one\n"
    with pytest.raises(PearError):
        with held_stderr():
            os.write(2, b"lib: two\n")
            raise PearError("bad input")
    assert capfd.readouterr().err == ""
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_next_run_removes_a_killed_runs_temporary_only(tiny, tmp_path, capsys):
    src, coeffs = tiny
    out = tmp_path / "p.gguf"
    proc = _start_slow_patch(tmp_path, src, coeffs, out)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.communicate(timeout=60)
    stale = _temporaries(tmp_path, out)
    assert len(stale) == 1 and stale[0].endswith(".gguf.tmp")
    alive = tmp_path / f".p.gguf.1.abcdefgh.gguf.tmp"  # pid 1 is running: not ours to remove
    alive.write_text("another run")
    other = tmp_path / ".p.gguf.backup"  # not pear-edge's name pattern
    other.write_text("user's")
    assert main(["-q", "patch-gguf", str(src), "--coefficients", str(coeffs), "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert _temporaries(tmp_path, out) == sorted([alive.name, other.name])
    capsys.readouterr()


def test_stale_sqlite_companions_are_removed(tmp_path):
    db = tmp_path / "docs.db"
    dead = 2**22 + 12345  # beyond the default pid_max: no such process
    names = [f".docs.db.{dead}.abcdefgh.sqlite.tmp{c}" for c in ("", "-wal", "-shm", "-journal")]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(db)
    assert sorted(p.name for p in removed) == sorted(names) and list(tmp_path.iterdir()) == []


@pytest.fixture
def docs(tmp_path, monkeypatch):
    from corpus import write_topics

    from pear_edge.rag.embed import EMBEDDING_DIM, Embedder

    monkeypatch.setattr(Embedder, "embed", lambda self, texts: np.full((len(texts), EMBEDDING_DIM),
                                                                       EMBEDDING_DIM ** -0.5, np.float32))
    return write_topics(tmp_path / "docs")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_rag_index_interrupted_then_rerun(tmp_path, docs, sig, capsys):
    db = tmp_path / "docs.db"
    proc = _start_slow(tmp_path, ["rag", "index", str(docs), "--db", str(db)])
    assert _temporaries(tmp_path, db)  # the new index is being written to a temporary sibling
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (128 + sig if sig == signal.SIGTERM else -sig), err
    assert "Traceback" not in err
    assert not db.exists()
    if sig == signal.SIGTERM:
        assert _temporaries(tmp_path, db) == []
    else:
        assert _temporaries(tmp_path, db)  # kill -9 leaves it; the next run removes it
    assert main(["-q", "rag", "index", str(docs), "--db", str(db)]) == 0
    assert "3 added" in capsys.readouterr().out
    assert _temporaries(tmp_path, db) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["docs", "docs.db"]


def test_damaged_index_pages_give_one_line(tmp_path, docs):
    """Zeroed or scrambled pages of a RAG index: opening and searching it either work or raise PearError
    (before: an apsw.SQLError/CorruptError traceback from `rag ask`)."""
    from pear_edge.rag.embed import EMBEDDING_DIM
    from pear_edge.rag.index import RagIndex

    db = tmp_path / "docs.db"
    assert main(["-q", "rag", "index", str(docs), "--db", str(db)]) == 0
    good = db.read_bytes()
    rng = random.Random(3)
    query = np.full(EMBEDDING_DIM, EMBEDDING_DIM ** -0.5, np.float32)
    refused = 0
    for _ in range(40):
        data = bytearray(good)
        page = rng.randrange(1, len(good) // 4096)
        data[page * 4096:(page + 1) * 4096] = rng.choice([bytes(4096), rng.randbytes(4096)])
        damaged = tmp_path / "damaged.db"
        damaged.write_bytes(bytes(data))
        try:
            index = RagIndex(damaged)
            try:
                index.count()
                index.search(query, 3)
            finally:
                index.close()
        except PearError as exc:
            assert "\n" not in str(exc)
            refused += 1
    assert refused > 0


def test_folder_output_interrupted_then_rerun(tmp_path):
    """A folder output (atomic_dir, as fold and export use) killed mid-write: SIGTERM leaves nothing, and
    after a kill -9 the next run removes the half-written temporary folder."""
    out = tmp_path / "corpus"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = _start_slow(tmp_path, ["rag", "pydoc-corpus", str(out)])
        assert _temporaries(tmp_path, out)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and not out.exists()
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + sig and _temporaries(tmp_path, out) == [], err
    assert _temporaries(tmp_path, out)
    assert main(["-q", "rag", "pydoc-corpus", str(out)]) == 0
    assert (out / MARKER).is_file() and _temporaries(tmp_path, out) == []
    assert main(["-q", "rag", "pydoc-corpus", str(out)]) == 2  # ours, but only replaced with --force
    assert main(["-q", "rag", "pydoc-corpus", str(out), "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.slow
def test_fold_sigterm_mid_write_leaves_nothing(tmp_path):
    """`fold` of the real default model killed with SIGTERM while its folder is being written."""
    out = tmp_path / "folded"
    coeffs = Path(__file__).resolve().parents[1] / "pear_edge" / "results" / "coefficients" / "smollm2-135m.coeffs.json"
    proc = _start_slow(tmp_path, ["fold", "--model", "default", "--coefficients", str(coeffs), "-o", str(out)])
    assert _temporaries(tmp_path, out)  # weights already written into the temporary folder
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert not out.exists() and _temporaries(tmp_path, out) == []
