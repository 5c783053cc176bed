"""ONNX export / patch-onnx / verify on a tiny llama saved as a real HF folder (real tokenizer built
offline), driven through `pear_edge.cli.main` and checked against torch and onnxruntime."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from optimum.onnxruntime import ORTModelForCausalLM

from pear_edge.cli import main
from pear_edge.edits.coefficients import Coefficients, HeadCoefficient
from pear_edge.converters.onnx_graph import find_o_proj_weights, load_export, weight_differences
from pear_edge.base.errors import PearError
from pear_edge.edits.fold import fold_model
from pear_edge.runtime.models import load_model
from tests.tiny import VOCAB, save_tiny_llama

HEADS = [HeadCoefficient(0, 1, 0.5), HeadCoefficient(2, 3, 1.75), HeadCoefficient(2, 0, 0.0)]


def run(*argv: str) -> int:
    return main(["-q", *map(str, argv)])


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        digest.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    hf = save_tiny_llama(root / "hf")
    coeffs = root / "coeffs.json"
    Coefficients(load_model(str(hf)).fingerprint(), HEADS).save(coeffs)
    paths = {"root": root, "hf": hf, "coeffs": coeffs}
    for name, extra in {"base": [], "folded": ["--coefficients", coeffs],
                        "base_int8": ["--quantize", "int8"],
                        "folded_int4": ["--coefficients", coeffs, "--quantize", "int4"]}.items():
        assert run("export", "onnx", "--model", hf, *extra, "-o", root / name) == 0
        paths[name] = root / name
    return paths


def torch_reference(work, folded: bool):
    loaded = load_model(str(work["hf"]))
    if folded:
        fold_model(loaded, Coefficients.load(work["coeffs"]))
    return loaded


def ids(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def logits(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy()


def greedy(model, x: torch.Tensor) -> list[int]:
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                         pad_token_id=2)
    return out[0].tolist()


def test_export_folder_loads_in_onnxruntime_and_matches_torch(work):
    folder = work["folded"]
    assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json",
            "pear_coefficients.json"} <= {p.name for p in folder.iterdir()}
    ort = ORTModelForCausalLM.from_pretrained(folder)
    torch_model = torch_reference(work, folded=True).model
    x = ids()
    assert np.abs(logits(ort, x) - logits(torch_model, x)).max() < 1e-4
    assert greedy(ort, x) == greedy(torch_model, x)  # KV-cache path too


def test_base_export_matches_unpatched_torch_and_differs_from_folded(work):
    x = ids(seed=1)
    base = logits(ORTModelForCausalLM.from_pretrained(work["base"]), x)
    assert np.abs(base - logits(torch_reference(work, folded=False).model, x)).max() < 1e-4
    assert np.abs(base - logits(ORTModelForCausalLM.from_pretrained(work["folded"]), x)).max() > 1e-2


def test_patch_onnx_equals_export_with_coefficients(work, tmp_path):
    before = tree_digest(work["base"])
    out = tmp_path / "patched"
    assert run("patch-onnx", work["base"], "--coefficients", work["coeffs"], "-o", out) == 0
    assert tree_digest(work["base"]) == before
    diffs = weight_differences(load_export(out), load_export(work["folded"]))
    assert max(diffs.values()) == 0.0  # bit-identical: same fp32 multiply as torch's in-place fold
    changed = weight_differences(load_export(out), load_export(work["base"]))
    o_proj = {w.initializer for w in find_o_proj_weights(load_export(work["base"]))}
    assert {k for k, v in changed.items() if v > 0} == o_proj - {find_o_proj_weights(load_export(out))[1].initializer}
    assert json.loads((out / "pear_coefficients.json").read_text()) == json.loads(work["coeffs"].read_text())
    assert (out / "tokenizer.json").read_bytes() == (work["base"] / "tokenizer.json").read_bytes()


def test_patch_onnx_with_every_edit_kind_then_verify_against_the_torch_fold(work, tmp_path, capsys):
    """Version-2 coefficients (head, o_proj channel and q/k channel scales): patch-onnx writes the torch fold's
    weights, onnxruntime computes the folded torch model, and verify counts each edit kind."""
    from pear_edge.edits.coefficients import ChannelScales, QKChannelScale

    loaded = load_model(str(work["hf"]))
    scales = tuple(float(x) for x in np.random.default_rng(0).uniform(0.5, 1.5, 32))
    coeffs = Coefficients(loaded.fingerprint(), HEADS, o_proj_channels=[ChannelScales(1, scales)],
                          qk_channels=[QKChannelScale(5, -1.0, 0, 2)])
    path = coeffs.save(tmp_path / "v2.json")
    out = tmp_path / "patched-v2"
    assert run("patch-onnx", work["base"], "--coefficients", path, "-o", out) == 0
    fold_model(loaded, coeffs)
    x = ids(seed=3)
    assert np.abs(logits(ORTModelForCausalLM.from_pretrained(out), x) - logits(loaded.model, x)).max() < 1e-4
    report_path = tmp_path / "verify-v2.json"
    assert main(["verify", str(out), "--model", str(work["hf"]), "-o", str(report_path)]) == 0
    assert json.loads(report_path.read_text())["edits"] == {"heads": 3, "o_proj_channels": 1, "qk_channels": 3,
                                                                   "q_temperatures": 0}
    assert "3 patched heads, 1 layers of o_proj channel scales, 3 q/k channel scales" in capsys.readouterr().out


def test_patch_scales_exactly_the_head_rows(work):
    base, folded = load_export(work["base"]), load_export(work["folded"])
    d = base.layout.head_dim
    for w in find_o_proj_weights(base):
        a = onnx.numpy_helper.to_array(next(t for t in base.model.graph.initializer if t.name == w.initializer))
        b = onnx.numpy_helper.to_array(next(t for t in folded.model.graph.initializer if t.name == w.initializer))
        scale = np.ones(base.layout.num_heads, dtype=np.float32)
        for h in HEADS:
            if h.layer == w.layer:
                scale[h.head] = h.coefficient
        np.testing.assert_array_equal(b, a * np.repeat(scale, d)[:, None])


@pytest.mark.parametrize("name, op", [("base_int8", "MatMulInteger"), ("folded_int4", "MatMulNBits")])
def test_quantized_exports_load_and_generate(work, name, op):
    folder = work[name]
    graph = onnx.load(str(folder / "model.onnx"))
    assert any(n.op_type == op and "o_proj" in n.name for n in graph.graph.node)
    ort = ORTModelForCausalLM.from_pretrained(folder)
    reference = torch_reference(work, folded=name.startswith("folded")).model
    x = ids(32, seed=2)
    got, want = logits(ort, x), logits(reference, x)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98
    assert len(greedy(ort, x)) == 40


def test_onnx_backend_runs_on_the_provider_asked_for(work):
    import onnxruntime

    from pear_edge.eval.backends import OnnxBackend

    backend = OnnxBackend(work["base_int8"])
    assert backend.model.providers[0] == "CPUExecutionProvider" and backend.nll("w3 w4 w5 w6")[1] == 3
    one = OnnxBackend(work["base_int8"], threads=1)  # --threads 1: one intra-op thread, not spinning
    options = one.model.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert one.nll("w3 w4 w5 w6") == pytest.approx(backend.nll("w3 w4 w5 w6"), rel=1e-5)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here: the CUDA provider is available")
    with pytest.raises(PearError, match="CUDAExecutionProvider"):  # never a silent fallback to the CPU
        OnnxBackend(work["base_int8"], device="cuda")


def test_verify_reports_fp32_match_and_patch_effect(work, tmp_path, capsys):
    report_path = tmp_path / "verify.json"
    assert main(["verify", str(work["folded"]), "--model", str(work["hf"]), "--base", str(work["base"]),
                 "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    patched, base, effect, intended = report["comparisons"]
    assert patched["max_abs_logit_diff"] < 1e-4 and patched["top1_agreement"] == 1.0
    assert base["max_abs_logit_diff"] < 1e-4
    assert effect["max_abs_logit_diff"] > 1e-2
    assert abs(effect["mean_abs_logit_diff"] - intended["mean_abs_logit_diff"]) < 1e-3  # the change torch predicts
    assert report["greedy"]["identical"] and report["ok"] and report["weights"] == "fp32"
    out = capsys.readouterr().out
    assert "ONNX vs folded torch" in out and "PASS: ONNX vs folded torch within the fp32 tolerance" in out
    assert report_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_int4_is_judged_by_the_low_bit_tolerance(work, capsys):
    args = ["verify", str(work["folded_int4"]), "--model", str(work["hf"])]
    assert main(args) == 0
    assert "PASS: ONNX vs folded torch within the low-bit tolerance" in capsys.readouterr().out


def test_verify_fail_exits_2_with_one_line_after_writing_the_report(work, tmp_path, capsys):
    report_path = tmp_path / "verify.json"
    assert main(["verify", str(work["folded"]), "--model", str(work["hf"]), "--max-logit-diff", "1e-12",
                 "-o", str(report_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pear-edge: error: verify FAILED: ONNX vs folded torch: max |Δlogit|") and "\n" not in err
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and report["tolerance"] == {"max_abs_logit_diff": 1e-12, "min_top1_agreement": 0.99}


def test_verify_refuses_a_torch_model_of_another_layout(work, tmp_path, capsys):
    qwen = save_tiny_llama(tmp_path / "qwen2", model_type="qwen2")
    out = tmp_path / "report.json"
    assert main(["verify", str(work["base"]), "--model", str(qwen), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass its base model" in err and "\n" not in err and not out.exists()


def test_info_describes_onnx_folder(work, capsys):
    assert main(["info", str(work["folded_int4"])]) == 0
    out = capsys.readouterr().out
    assert "ONNX export folder: llama, int4 weights" in out and "PEAR-patched with" in out


# --- bad inputs: one line on stderr, exit 2, nothing written, input untouched ---------------------------

def expect_error(capsys, argv: list, output: Path, fragment: str, untouched: Path | None = None) -> None:
    before = tree_digest(untouched) if untouched else None
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pear-edge: error:") and "\n" not in err and fragment in err, err
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*"))  # no temp leftovers
    if untouched:
        assert tree_digest(untouched) == before


def test_patch_refuses_a_folder_without_onnx(work, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(capsys, ["patch-onnx", work["hf"], "--coefficients", work["coeffs"], "-o", out],
                 out, "has no model.onnx", work["hf"])
    expect_error(capsys, ["patch-onnx", work["coeffs"], "--coefficients", work["coeffs"], "-o", out],
                 out, "is not a folder")


def test_patch_refuses_quantized_o_proj(work, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(capsys, ["patch-onnx", work["base_int8"], "--coefficients", work["coeffs"], "-o", out],
                 out, "already quantized (DynamicQuantizeLinear, MatMulInteger); patch the fp32", work["base_int8"])


def test_patch_refuses_coefficients_of_another_model(work, tmp_path, capsys):
    # Random tiny inits of one shape have near-equal o_proj norms; real models differ by far more.
    other = save_tiny_llama(tmp_path / "other", seed=1, o_proj_scale=1.2)
    wrong = tmp_path / "wrong.json"
    Coefficients(load_model(str(other)).fingerprint(), HEADS).save(wrong)
    out = tmp_path / "out"
    expect_error(capsys, ["patch-onnx", work["base"], "--coefficients", wrong, "-o", out],
                 out, "calibrated on other weights", work["base"])
    expect_error(capsys, ["export", "onnx", "--model", work["hf"], "--coefficients", wrong, "-o", out],
                 out, "calibrated on other weights", work["hf"])


def test_nan_coefficient_is_refused(work, tmp_path, capsys):
    doc = json.loads(work["coeffs"].read_text())
    doc["heads"][0]["coefficient"] = float("nan")
    bad = tmp_path / "nan.json"
    bad.write_text(json.dumps(doc))
    out = tmp_path / "out"
    expect_error(capsys, ["patch-onnx", work["base"], "--coefficients", bad, "-o", out], out, "NaN", work["base"])
    expect_error(capsys, ["export", "onnx", "--model", work["hf"], "--coefficients", bad, "-o", out], out, "NaN")


def test_patch_refuses_already_patched_and_corrupt_exports(work, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(capsys, ["patch-onnx", work["folded"], "--coefficients", work["coeffs"], "-o", out],
                 out, "already PEAR-patched", work["folded"])
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in work["base"].iterdir():
        data = p.read_bytes()
        (broken / p.name).write_bytes(data[: len(data) // 3] if p.name == "model.onnx" else data)
    expect_error(capsys, ["patch-onnx", broken, "--coefficients", work["coeffs"], "-o", out],
                 out, "is not a readable ONNX model", broken)


def test_output_may_not_overwrite_input(work, capsys):
    expect_error(capsys, ["patch-onnx", work["base"], "--coefficients", work["coeffs"], "-o", work["base"] / "x"],
                 work["base"] / "x", "lies inside input folder")


def test_graph_checks_refuse_shared_or_misrouted_weights(work):
    export = load_export(work["base"])
    nodes = {n.name: n for n in export.model.graph.node}
    o1 = nodes["/model/layers.1/self_attn/o_proj/MatMul"]
    shared_weight = nodes["/model/layers.0/self_attn/o_proj/MatMul"].input[1]
    o1.input[1] = shared_weight
    with pytest.raises(PearError, match="shared by 2 nodes"):
        find_o_proj_weights(export)
    export = load_export(work["base"])
    o1 = next(n for n in export.model.graph.node if n.name == "/model/layers.1/self_attn/o_proj/MatMul")
    o1.input[0] = "/model/layers.0/self_attn/o_proj/MatMul_output_0"
    with pytest.raises(PearError, match="not fed by its layer's attention"):
        find_o_proj_weights(export)
