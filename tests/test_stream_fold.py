"""`fold` of a Hugging Face safetensors folder, tensor by tensor (pear_edge.runtime.streaming): bit for bit the
in-memory fold (fold_model + save_folded) on every registry architecture, sharded or not, fp32/bf16/fp16, every
edit kind; the fingerprint read tensor by tensor equals the loaded model's; bad folders get one line."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_recipes import edits_of
from tiny import TINY_CONFIGS, tiny_model, word_tokenizer

from pear_edge.base.atomic import is_pear_folder
from pear_edge.cli import main
from pear_edge.edits.fold import COEFFICIENTS_FILENAME, fold_model, save_folded
from pear_edge.runtime.models import _gguf_cache_folder, default_gguf_path, load_model
from pear_edge.runtime.streaming import folder_fingerprint, open_folder

ARCHS = sorted(TINY_CONFIGS)


def save_tiny(folder: Path, model_type: str, dtype: torch.dtype = torch.float32, shard: str | None = None) -> Path:
    """A tiny random model of `model_type` in `dtype` with a word-level tokenizer, as a Hugging Face folder
    (`shard`: max_shard_size, e.g. "20KB", for a sharded folder with model.safetensors.index.json)."""
    model = tiny_model(model_type).model.to(dtype)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    word_tokenizer().save_pretrained(folder)
    return folder


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in a folder, read by safetensors."""
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def header(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: 8 + struct.unpack("<Q", data[:8])[0]]


def fold_both(source: Path, coeffs_of, tmp: Path, capsys, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """(in-memory fold of `source` loaded in `dtype`, `pear-edge fold` of it, which streams);
    coeffs_of(loaded) -> Coefficients."""
    loaded = load_model(str(source), dtype=dtype)
    coeffs = coeffs_of(loaded)
    path = coeffs.save(tmp / "c.json")
    fold_model(loaded, coeffs)
    in_memory = save_folded(loaded, coeffs, tmp / "in-memory")
    capsys.readouterr()
    assert main(["fold", "--model", str(source), "--coefficients", str(path), "-o", str(tmp / "streamed")]) == 0
    assert capsys.readouterr().err == ""  # no "folding in memory" note
    return in_memory, tmp / "streamed"


def assert_same_fold(source: Path, in_memory: Path, streamed: Path) -> None:
    """Every tensor of the in-memory fold has the streamed fold's bits and dtype; the streamed files keep the
    source's headers (names, order, dtypes, offsets, metadata) and its other tensors' bytes; the edits did
    change something."""
    mem, out, base = tensors(in_memory), tensors(streamed), tensors(source)
    assert set(mem) <= set(out) == set(base)  # a tied lm_head the source stores stays; nothing else differs
    for name, t in mem.items():
        assert out[name].dtype == t.dtype and torch.equal(bits(out[name]), bits(t)), name
    assert any(not torch.equal(bits(out[n]), bits(base[n])) for n in base)
    for path in source.glob("*.safetensors"):
        assert header(streamed / path.name) == header(path)
    for name in (n for n in base if n not in mem):
        assert torch.equal(bits(out[name]), bits(base[name]))
    assert json.loads((streamed / COEFFICIENTS_FILENAME).read_text()) == json.loads(
        (in_memory / COEFFICIENTS_FILENAME).read_text())
    assert is_pear_folder(streamed)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_fingerprint_read_tensor_by_tensor_is_the_loaded_models(tmp_path, arch):
    folder = save_tiny(tmp_path / arch, arch)
    assert folder_fingerprint(open_folder(folder), folder.name) == load_model(str(folder)).fingerprint()


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_fold_equals_the_in_memory_fold_bit_for_bit(tmp_path, capsys, arch):
    source = save_tiny(tmp_path / "model", arch)
    in_memory, streamed = fold_both(source, lambda lm: edits_of(lm, "all"), tmp_path, capsys)
    assert_same_fold(source, in_memory, streamed)


@pytest.mark.parametrize("arch, dtype", [("llama", torch.bfloat16), ("gpt2", torch.float16), ("phi3", torch.bfloat16)])
def test_half_precision_weights_are_folded_in_their_own_dtype(tmp_path, capsys, arch, dtype):
    source = save_tiny(tmp_path / "model", arch, dtype)
    in_memory, streamed = fold_both(source, lambda lm: edits_of(lm, "all"), tmp_path, capsys, dtype=dtype)
    assert_same_fold(source, in_memory, streamed)
    assert {t.dtype for t in tensors(streamed).values()} == {dtype}


@pytest.mark.parametrize("arch, kind", [("llama", "heads"), ("gpt2", "qk_channels"), ("bloom", "o_proj_channels")])
def test_a_sharded_folder_is_folded_shard_by_shard(tmp_path, capsys, arch, kind):
    source = save_tiny(tmp_path / "model", arch, shard="20KB")
    assert len(list(source.glob("*.safetensors"))) > 2
    in_memory, streamed = fold_both(source, lambda lm: edits_of(lm, kind), tmp_path, capsys)
    assert_same_fold(source, in_memory, streamed)
    assert (streamed / "model.safetensors.index.json").read_bytes() == (
        source / "model.safetensors.index.json").read_bytes()


def test_other_files_are_copied_and_other_weight_formats_left_out(tmp_path, capsys):
    source = save_tiny(tmp_path / "model", "llama")
    (source / "README.md").write_text("notes\n")
    (source / "pytorch_model.bin").write_bytes(b"unfolded")
    (source / "original").mkdir()
    loaded = load_model(str(source))
    path = edits_of(loaded, "heads").save(tmp_path / "c.json")
    assert main(["fold", "--model", str(source), "--coefficients", str(path), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert (out / "README.md").read_text() == "notes\n"
    assert (out / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert not (out / "pytorch_model.bin").exists() and not (out / "original").exists()
    assert "not copied from" in capsys.readouterr().err


def _refused(tmp_path, capsys, source: Path, coefficients: Path, message: str) -> None:
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    assert main(["fold", "--model", str(source), "--coefficients", str(coefficients), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: error:") and message in err[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


def test_bad_folders_get_one_line_and_leave_nothing(tmp_path, capsys):
    source = save_tiny(tmp_path / "model", "llama")
    coefficients = edits_of(load_model(str(source)), "heads").save(tmp_path / "c.json")
    weights = source / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    _refused(tmp_path, capsys, source, coefficients, "truncated")
    weights.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    _refused(tmp_path, capsys, source, coefficients, "does not fit")
    weights.unlink()
    _refused(tmp_path, capsys, source, coefficients, "holds no model weights")
    sharded = save_tiny(tmp_path / "sharded", "llama", shard="20KB")
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    _refused(tmp_path, capsys, sharded, coefficients, "which is not in")


def test_coefficients_of_another_model_are_refused_before_writing(tmp_path, capsys):
    source = save_tiny(tmp_path / "model", "llama")
    other = tiny_model("llama", seed=1)
    _refused(tmp_path, capsys, source, edits_of(other, "heads").save(tmp_path / "c.json"), "other weights")


@pytest.mark.slow
def test_the_packaged_default_model_folds_the_same_streamed(tmp_path, capsys):
    from pear_edge.results import shipped_coefficients
    from pear_edge.edits.coefficients import Coefficients

    load_model("default")  # dequantizes the GGUF into its cache folder once
    source = _gguf_cache_folder(default_gguf_path())
    coeffs = Coefficients.load(shipped_coefficients("smollm2-135m-positional-pear"))
    in_memory, streamed = fold_both(source, lambda lm: coeffs, tmp_path, capsys)
    assert_same_fold(source, in_memory, streamed)


def test_a_checkpoint_whose_names_transformers_renames_is_folded_in_memory(tmp_path, capsys):
    """GPT-2 checkpoints on the Hub name tensors without the `transformer.` prefix; transformers adds it on
    load, so such a folder is folded in memory (with a note), as before."""
    from safetensors.torch import save_file

    source = save_tiny(tmp_path / "model", "gpt2")
    weights = {name.removeprefix("transformer."): t for name, t in load_file(source / "model.safetensors").items()}
    save_file(weights, source / "model.safetensors", metadata={"format": "pt"})
    loaded = load_model(str(source))
    path = edits_of(loaded, "heads").save(tmp_path / "c.json")
    capsys.readouterr()
    assert main(["fold", "--model", str(source), "--coefficients", str(path), "-o", str(tmp_path / "out")]) == 0
    assert "pear-edge: note: folding in memory:" in capsys.readouterr().err
    fold_model(loaded, edits_of(load_model(str(source)), "heads"))
    assert load_model(str(tmp_path / "out")).fingerprint().weights_sha256 == loaded.fingerprint().weights_sha256
