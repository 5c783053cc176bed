"""Careless and hostile command lines: a trailing slash on a file output, a port out of range, a reader that
closes the pipe. Each ends in one line (or, for the closed pipe, silently) and leaves every file as it was."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

from pear_edge.cli import main
import pytest
from gguf.constants import GGMLQuantizationType as T

from tests.gguf_tiny import write_tiny_gguf


def test_a_trailing_slash_names_a_folder_and_is_refused_for_a_file_output(tmp_path, capsys):
    gguf = write_tiny_gguf(tmp_path / "in.gguf", T.F32)
    existing = tmp_path / "existing.gguf"
    existing.write_bytes(b"keep me")
    for target in (f"{existing}/", f"{tmp_path / 'new.gguf'}/"):
        assert main(["patch-gguf", str(gguf), "--coefficients", "default", "-o", target]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pear-edge: error:") and "names a folder" in err and err.count("\n") == 1
    assert existing.read_bytes() == b"keep me" and not (tmp_path / "new.gguf").exists()


def test_a_port_out_of_range_is_one_usage_line(tmp_path, capsys):
    for port in ("70000", "-1", "http"):
        assert main(["rag", "serve", "--db", str(tmp_path / "none.db"), "--port", port]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pear-edge: error: argument --port:") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_the_command_silently():
    # `info` of a shipped set prints ~300 lines; the reader takes one and goes away
    run = subprocess.run(f"{sys.executable} -m pear_edge.cli info default | head -1", shell=True,
                         capture_output=True, text=True, timeout=120)
    assert run.stdout.startswith("PEAR coefficients") and run.stdout.count("\n") == 1
    assert run.stderr == ""


def test_rag_index_never_reads_outside_its_folder(tmp_path):
    from pear_edge.rag.documents import scan_folder

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the password is swordfish")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("alpha text")
    (docs / "sub" / "b.md").write_text("beta text")
    os.symlink(outside / "secret.txt", docs / "passwd.txt")     # a file outside
    os.symlink(outside, docs / "elsewhere")                     # a folder outside
    os.symlink(docs / "sub", docs / "again")                    # a folder inside: already indexed
    os.symlink(docs, docs / "sub" / "loop")                     # a loop
    os.symlink(docs / "a.txt", docs / "alias.txt")              # a file inside, indexed once
    (docs / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name")
    before = {p: p.read_bytes() for p in docs.rglob("*.txt") if p.is_file() and not p.is_symlink()}
    scan = scan_folder(docs)
    assert sorted(f.path for f in scan.files) == ["a.txt", "sub/b.md"]
    assert all("swordfish" not in f.text for f in scan.files)
    notes = "\n".join(scan.skipped)
    assert "passwd.txt: a link to outside the folder, not followed" in notes
    assert "elsewhere: a link to outside the folder, not followed" in notes
    assert "again/: a link to a folder already indexed" in notes and "sub/loop/: a link to a folder" in notes
    assert "alias.txt: the same file as another one indexed" in notes
    assert "caf\ufffd.txt: file name is not UTF-8" in notes
    assert {p: p.read_bytes() for p in before} == before


def test_rag_index_of_an_unlistable_folder_says_so(tmp_path, monkeypatch):
    from pear_edge.base.errors import PearError
    from pear_edge.rag.documents import scan_folder

    with pytest.raises(PearError, match="cannot list the documents folder"):
        scan_folder(tmp_path / "missing")
    docs = tmp_path / "docs"
    (docs / "locked").mkdir(parents=True)
    (docs / "a.txt").write_text("alpha")
    (docs / "locked" / "b.txt").write_text("beta")
    denied = PermissionError(errno.EACCES, "Permission denied")  # chmod 000 does not stop root
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: (_ for _ in ()).throw(denied) if os.path.basename(path) == "locked"
                        else scandir(path))
    scan = scan_folder(docs)  # an unreadable subfolder is said, not skipped silently
    assert [f.path for f in scan.files] == ["a.txt"] and scan.skipped == ["locked/: cannot list (Permission denied)"]
    monkeypatch.setattr(os, "listdir", lambda path: (_ for _ in ()).throw(denied))
    with pytest.raises(PearError, match=r"cannot list the documents folder .*docs \(Permission denied\)"):
        scan_folder(docs)  # it said "no .txt/.md text files to index"


@pytest.mark.slow
def test_verify_fails_when_the_coefficients_given_are_not_those_folded_in(tmp_path, capsys):
    from pear_edge.runtime.models import default_gguf_path

    patched = tmp_path / "pear.gguf"
    assert main(["patch-gguf", str(default_gguf_path()), "--coefficients", "default", "-o", str(patched)]) == 0
    capsys.readouterr()
    assert main(["verify", str(patched), "--model", "default", "--coefficients", "smollm2-135m-lean"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pear-edge: error: FAIL:") and "carries other coefficients" in err and err.count("\n") == 1


def test_the_same_edits_pass_and_other_edits_fail_whatever_the_records():
    import dataclasses

    from pear_edge.base.errors import PearError
    from pear_edge.converters.verify import check_same_edits
    from pear_edge.edits.coefficients import Coefficients

    shipped = Coefficients.load("default")
    rescored = dataclasses.replace(shipped, heads=[dataclasses.replace(h, score=None) for h in shipped.heads],
                                   calibration={})
    check_same_edits(shipped, rescored, "x.onnx", "same.json")  # scores and records do not count
    check_same_edits(None, shipped, "x.onnx", "any.json")       # nothing stored: nothing to compare
    other = Coefficients.load("smollm2-135m-lean")
    with pytest.raises(PearError, match="carries other coefficients than other.json"):
        check_same_edits(shipped, other, "x.onnx", "other.json")


def test_coefficients_of_another_model_are_refused_before_any_layer_is_touched(tmp_path, capsys):
    """A GGUF with fewer layers than the coefficients name: the model check speaks first (it was KeyError)."""
    small = write_tiny_gguf(tmp_path / "small.gguf", T.F32, layers=2)
    for shipped in ("default", "smollm2-135m-positional"):  # 30-layer head scales; q/k channel edits
        assert main(["patch-gguf", str(small), "--coefficients", shipped, "-o", str(tmp_path / "x.gguf")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pear-edge: error: coefficients are for a llama") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.gguf"]


def test_rag_ask_refuses_a_question_that_is_not_utf8_and_a_k_over_the_index_limit(tmp_path, capsys):
    for argv, says in ((["rag", "ask", "zebra \udcff", "--db", str(tmp_path / "i.db")], "not UTF-8 text"),
                       (["rag", "ask", "zebra", "--db", str(tmp_path / "i.db"), "-k", "5000"], "at most 4096")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("pear-edge: error:") and says in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_pipe_given_as_a_json_input_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for argv in (["info", str(fifo)], ["patch-gguf", str(write_tiny_gguf(tmp_path / "t.gguf", T.F32)),
                                      "--coefficients", str(fifo), "-o", str(tmp_path / "o.gguf")]):
        assert main(argv) == 2  # it blocked forever
        err = capsys.readouterr().err
        assert "is not a regular file" in err and err.count("\n") == 1
    assert not (tmp_path / "o.gguf").exists()


def test_chunks_are_bounded_in_characters_and_a_huge_file_is_skipped(tmp_path):
    from pear_edge.rag import documents
    from pear_edge.rag.chunking import MAX_CHUNK_CHARS, chunk_text

    class Encoding(dict):
        def word_ids(self):
            return [0] * len(self["offset_mapping"])

    text = "x" * 20_000  # one 20,000-character word of 4-character pieces (a minified line)
    tokenizer = lambda t, **kw: Encoding(offset_mapping=[(4 * i, 4 * i + 4) for i in range(len(t) // 4)])
    chunks = chunk_text(text, tokenizer, size=200, overlap=40)
    assert all(len(c.text) <= MAX_CHUNK_CHARS for c in chunks)
    assert "".join(c.text for c in chunks) == text  # every slice once, in order
    big = tmp_path / "docs"
    big.mkdir()
    (big / "dump.txt").write_bytes(b"y" * (documents.MAX_FILE_BYTES + 1))
    (big / "ok.txt").write_text("fine")
    scan = documents.scan_folder(big)
    assert [f.path for f in scan.files] == ["ok.txt"] and "dump.txt: larger than 8 MiB" in scan.skipped[0]


def test_an_interrupt_after_an_output_is_in_place_says_so(tmp_path, monkeypatch, capsys):
    import pear_edge.cli as cli
    from pear_edge.base.atomic import write_text_atomic

    def finishes_then_interrupted(args):
        write_text_atomic(tmp_path / "done.json", "{}")
        raise KeyboardInterrupt  # Ctrl-C just after the rename

    monkeypatch.setattr(cli, "cmd_info", finishes_then_interrupted)
    assert main(["info", "x"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "were complete before it, the last" in err and "done.json" in err
    assert (tmp_path / "done.json").read_text() == "{}"
    monkeypatch.setattr(cli, "cmd_info", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["info", "x"]) == 130 and "no output was written" in capsys.readouterr().err
