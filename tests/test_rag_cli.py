"""`pear-edge rag ...` through pear_edge.cli.main: one-line errors, skipped-file notes, nothing corrupted,
and one short real ask with the packaged GGUF as both models."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import write_topics

from pear_edge.cli import main
from pear_edge.rag.index import RagIndex


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("pear-edge: error: "), err
    return err


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small real index (3 topics) built through the CLI."""
    root = tmp_path_factory.mktemp("rag")
    docs = write_topics(root / "docs")
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (docs / "blob.txt").write_bytes(b"abc\0\x01\x02binary")
    (docs / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    os.symlink(docs / "gone.txt", docs / "broken.txt")  # unreadable even as root
    db = root / "index.sqlite"
    assert main(["-q", "rag", "index", str(docs), "--db", str(db)]) == 0
    return docs, db


def test_index_skips_with_notes(built, capsys):
    docs, db = built
    assert main(["-q", "rag", "index", str(docs), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "skipped blob.txt: binary file" in out
    assert "skipped broken.txt: cannot read (No such file or directory)" in out
    assert "skipped latin1.md: not UTF-8 text" in out
    assert "skipped logo.png: not indexed" in out
    assert "0 added, 0 changed, 0 removed, 3 unchanged, 4 skipped" in out
    assert RagIndex(db).count()[0] == 3


def test_empty_and_binary_only_folders(tmp_path, built, capsys):
    _, db = built
    before = db.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-q", "rag", "index", str(empty), "--db", str(db)]) == 2
    assert "no .txt/.md text files to index" in _error(capsys)
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "a.txt").write_bytes(b"\0\0\0")
    assert main(["-q", "rag", "index", str(binary), "--db", str(db)]) == 2
    assert "1 skipped: a.txt: binary file" in _error(capsys)
    assert db.read_bytes() == before
    assert main(["-q", "rag", "index", str(tmp_path / "nope"), "--db", str(tmp_path / "x.sqlite")]) == 2
    assert "documents folder" in _error(capsys) and not (tmp_path / "x.sqlite").exists()


def test_bad_index_paths(tmp_path, built, capsys):
    docs, _ = built
    assert main(["-q", "rag", "ask", "what?", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "not found; build it with: pear-edge rag index" in _error(capsys)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    assert main(["-q", "rag", "ask", "what?", "--db", str(junk)]) == 2
    assert "is not a pear-edge RAG index" in _error(capsys)
    assert main(["-q", "rag", "index", str(docs), "--db", str(junk)]) == 2
    _error(capsys)
    assert junk.read_bytes() == b"this is not a database" * 100
    assert main(["-q", "rag", "index", str(docs), "--db", str(docs / "inside.sqlite")]) == 2
    assert "lies inside input folder" in _error(capsys)


@pytest.mark.slow
def test_ask_compare_streams_and_cites(built, capsys):
    _, db = built
    assert main(["-q", "rag", "ask", "Which statement handles exceptions?", "--db", str(db), "-k", "2",
                 "--compare", str(_default_gguf()), "--max-tokens", "8", "--n-ctx", "2048"]) == 0
    out = capsys.readouterr().out
    assert "[1] try.txt#" in out and "[3]" not in out
    assert out.count("== base: SmolLM2-135M-Instruct.Q4_1.gguf ==") == 2
    assert out.count("tokens in ") >= 4  # timing after each stream and again in the side-by-side table
    assert " | " in out  # the side-by-side table


@pytest.mark.slow
def test_ask_a_base_model_in_the_completion_format(built, capsys):
    """Gemma-3-270M's GGUF has no chat template: `rag ask` prompts it in the completion format; chat is refused."""
    from pear_edge.runtime.models import gemma_gguf_path

    _, db = built
    argv = ["-q", "rag", "ask", "Which statement handles exceptions?", "--db", str(db), "-k", "2",
            "--model", str(gemma_gguf_path()), "--max-tokens", "8", "--n-ctx", "2048"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "== base: gemma-3-270m-q4_k_m.gguf ==" in out and "tokens in " in out
    assert main(argv + ["--prompt-format", "chat"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after llama.cpp's own note on Gemma's SWA cache
    assert last.startswith("pear-edge: error: base: gemma-3-270m-q4_k_m.gguf has no chat template; use --prompt")


def test_ask_missing_model(built, capsys, tmp_path):
    _, db = built
    assert main(["-q", "rag", "ask", "x", "--db", str(db), "--model", str(tmp_path / "none.gguf")]) == 2
    assert "not found" in _error(capsys)


def _default_gguf() -> Path:
    from pear_edge.runtime.models import default_gguf_path

    return default_gguf_path()


def test_serve_busy_port_and_missing_index(built, capsys, tmp_path):
    import socket

    _, db = built
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert main(["-q", "rag", "serve", "--db", str(db), "--port", port]) == 2
        assert "cannot listen on 127.0.0.1:" in _error(capsys)
    assert main(["-q", "rag", "serve", "--db", str(tmp_path / "none.sqlite"), "--port", "0"]) == 2
    assert "not found; build it with" in _error(capsys)


@pytest.mark.slow
def test_prompt_too_long_for_context(built, capsys):
    _, db = built
    assert main(["-q", "rag", "ask", "Which statement handles exceptions?", "--db", str(db), "-k", "3",
                 "--n-ctx", "256"]) == 2
    assert "exceed context window of 256; lower -k or raise --n-ctx" in _error(capsys)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_with_one_line_and_128_plus_the_signal(built, signum):
    _, db = built
    proc = subprocess.Popen([sys.executable, "-m", "pear_edge.cli", "rag", "serve", "--db", str(db), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("serving ")  # the models are loaded and the port is open
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum  # it was 0, silently
    assert err.strip().splitlines() == [f"pear-edge: stopped serving ({signal.Signals(signum).name})"]
