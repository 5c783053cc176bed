"""Careless and hostile command lines: a trailing slash on a file output, a port out of range, a reader that
closes the pipe. Each ends in one line (or, for the closed pipe, silently) and leaves every file as it was."""
from __future__ import annotations

import subprocess
import sys

from pear_edge.cli import main
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
