"""Data-parallel calibration (torchrun, gloo on the CPU) and frozen weights in bf16: the same coefficients as one
process, rank 0 alone writing; bf16 keeps the checkpoint's fingerprint and fp32 coefficients."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pear_edge.calibration.proxy import backward_in_parts
from pear_edge.edits.heads import scale_heads
from pear_edge.runtime import distributed
from pear_edge.runtime.models import load_model
from pear_edge.runtime.precision import load_dtype, resolve_dtype, safetensors_dtypes
from tiny import save_tiny_llama, tiny_model

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _calibrate(prefix: list[str], cwd: Path, out: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, "-m", "pear_edge.cli", "-q", "calibrate", *flags, "-o", out], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=900)


def _values(path: Path) -> list[float]:
    record = json.loads(path.read_text())
    return [h["coefficient"] for h in record["heads"]] + [x for c in record.get("o_proj_channels", [])
                                                          for x in c["scales"]]


def _same_run(tmp_path: Path, *flags: str, ranks_only: tuple[str, ...] = ()) -> tuple[dict, dict]:
    one = _calibrate([sys.executable], tmp_path, "one.json", *flags)
    assert one.returncode == 0, one.stderr
    two = _calibrate(TORCHRUN, tmp_path, "two.json", *flags, *ranks_only)
    assert two.returncode == 0, two.stderr
    a, b = _values(tmp_path / "one.json"), _values(tmp_path / "two.json")
    assert len(a) == len(b) > 0
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
    assert two.stdout.count("wrote two.json") == 1  # rank 0 alone reports and writes
    return json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())


def test_two_ranks_equal_one_process_on_a_tiny_model(tmp_path):
    save_tiny_llama(tmp_path / "tiny")
    one, two = _same_run(tmp_path, "--model", "tiny", "--proxy", "copy", "--steps", "4", "--batch", "5",
                         "--guard", "1", "--guard-batch", "3")
    assert two["calibration"]["cost"]["ranks"] == 2 and one["calibration"]["cost"]["ranks"] == 1
    assert two["calibration"]["loss_curve"] == pytest.approx(one["calibration"]["loss_curve"], abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["tiny", *(f"{n}{s}" for n in ("one", "two") for s in (".json", ".heads.json", ".heads.png"))])


def test_sharded_weights_give_the_same_coefficients(tmp_path):
    """FSDP over 2 ranks (each holds half of the frozen weights), with per-layer recomputation as well."""
    save_tiny_llama(tmp_path / "tiny")
    one, two = _same_run(tmp_path, "--model", "tiny", "--proxy", "copy", "--steps", "3", "--batch", "5",
                         "--guard", "1", "--guard-batch", "3", ranks_only=("--shard-weights", "on", "--checkpoint", "on"))
    assert two["model"] == one["model"]  # the fingerprint of the whole weights, taken before sharding


def test_sharded_weights_without_ranks_are_refused(tmp_path):
    save_tiny_llama(tmp_path / "tiny")
    run = _calibrate([sys.executable], tmp_path, "c.json", "--model", "tiny", "--proxy", "copy", "--steps", "1",
                     "--shard-weights", "on")
    assert run.returncode == 2 and run.stderr.startswith("pear-edge: error: --shard-weights needs several ranks")
    assert run.stderr.count("\n") == 1 and not (tmp_path / "c.json").exists()


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_default_model(tmp_path):
    _same_run(tmp_path, "--steps", "2", "--batch", "2", "--guard-batch", "2")


def test_backward_shared_alone_is_backward_in_parts():
    lm = tiny_model("llama")
    values = torch.nn.Parameter(torch.ones(4))
    heads = [(0, h) for h in range(4)]
    tokens = torch.randint(3, 96, (4, 12), generator=torch.Generator().manual_seed(0))

    def loss(part):
        return lm.model(input_ids=part).logits.float().pow(2).mean()

    parts = [(tokens[i:i + 1], 0.25) for i in range(4)]
    grads = []
    for shared in (False, True):
        values.grad = None
        with scale_heads(lm.adapter, heads=heads, values=values), torch.enable_grad():
            if shared:
                distributed.backward_shared(lambda mine: backward_in_parts(loss, mine), parts, [values])
            else:
                backward_in_parts(loss, parts)
        grads.append(values.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert distributed.share(list(range(5))) == list(range(5)) and distributed.parts_per_rank(8, 0) == 0


def test_world_without_torchrun_variables_is_refused(tmp_path):
    save_tiny_llama(tmp_path / "tiny")
    env = {**_env(), "WORLD_SIZE": "2"}
    run = subprocess.run([sys.executable, "-m", "pear_edge.cli", "calibrate", "--model", "tiny", "--proxy", "copy",
                          "--steps", "1", "-o", "c.json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("pear-edge: error: WORLD_SIZE is set but")
    assert not (tmp_path / "c.json").exists()


def test_bf16_keeps_the_checkpoints_fingerprint_and_fp32_coefficients(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny")
    assert safetensors_dtypes(folder) == {torch.float32}
    assert load_dtype(folder, torch.bfloat16) == torch.float32  # fp32 on disk: loaded fp32, then cast
    fp32, bf16 = load_model(str(folder)), load_model(str(folder), dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.fingerprint() == fp32.fingerprint()
    run = _calibrate([sys.executable], tmp_path, "c.json", "--model", "tiny", "--proxy", "copy", "--steps", "2",
                     "--dtype", "bf16")
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["calibration"]["weights_dtype"] == "bfloat16"
    assert record["model"]["weights_sha256"] == fp32.fingerprint().weights_sha256


def test_bf16_checkpoint_loads_in_bf16_directly(tmp_path):
    lm = tiny_model("llama")
    folder = tmp_path / "bf16"
    lm.model.to(torch.bfloat16).save_pretrained(folder)
    save_tiny_llama(tmp_path / "tok")  # a tokenizer for the folder
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tmp_path / "tok" / name).read_bytes())
    assert load_dtype(folder, torch.bfloat16) == torch.bfloat16
    direct, wide = load_model(str(folder), dtype=torch.bfloat16), load_model(str(folder))
    assert direct.fingerprint() == wide.fingerprint()


def test_head_scales_multiply_in_fp32_on_a_bf16_model():
    lm = tiny_model("llama")
    lm.model.to(torch.bfloat16)
    tokens = torch.randint(3, 96, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = lm.model(input_ids=tokens).logits
        with scale_heads(lm.adapter, {(0, 0): 1.003}):
            scaled = lm.model(input_ids=tokens).logits
    assert torch.tensor(1.003, dtype=torch.bfloat16) == 1  # a scale rounded to bf16 first would change nothing
    assert not torch.equal(plain, scaled)


def test_dtype_names():
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 == resolve_dtype("bfloat16", "cpu")
    assert resolve_dtype("fp32", "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(Exception, match="--dtype must be one of"):
        resolve_dtype("int8", "cpu")
