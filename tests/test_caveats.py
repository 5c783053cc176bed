"""Registry caveats reach the user: `calibrate` prints the Gemma post-norm caveat as a `pear-edge: note:`
line on stderr, and `info` shows it for a Gemma model folder (tiny config-built model, offline)."""
from __future__ import annotations

from gguf import GGMLQuantizationType as T

from pear_edge.cli import main
from tests.gguf_tiny import write_tiny_gguf
from tests.tiny import save_tiny_llama


def test_calibrate_and_info_tell_the_gemma_post_norm_caveat(tmp_path, capsys):
    folder = save_tiny_llama(tmp_path / "gemma", model_type="gemma3_text")
    out = tmp_path / "c.json"
    assert main(["-q", "calibrate", "--model", str(folder), "--proxy", "copy", "--method", "exact", "--lengths", "4",
                 "--detect-batch", "2", "-k", "2", "--steps", "1", "--batch", "2", "--n", "4", "--guard", "0",
                 "-o", str(out)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("pear-edge: note:") and "post-attention RMSNorm" in line]
    assert len(notes) == 1 and "gemma3_text" in notes[0]
    assert main(["info", str(folder)]) == 0
    assert "pear-edge: note: gemma3_text: a post-attention RMSNorm" in capsys.readouterr().out


def test_no_note_for_a_family_without_caveat(tmp_path, capsys):
    folder = save_tiny_llama(tmp_path / "llama")
    assert main(["info", str(folder)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_info_of_a_gemma_gguf_tells_the_caveat(tmp_path, capsys):
    gemma = write_tiny_gguf(tmp_path / "gemma.gguf", T.F32, arch="gemma3")
    assert main(["info", str(gemma)]) == 0
    out = capsys.readouterr().out
    assert "2 layers x 4 heads x head_dim 32, hidden 64" in out
    assert "pear-edge: note: gemma3_text: a post-attention RMSNorm" in out
    llama = write_tiny_gguf(tmp_path / "llama.gguf", T.F32)
    assert main(["info", str(llama)]) == 0
    assert "note:" not in capsys.readouterr().out
