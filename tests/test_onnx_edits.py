"""patch-onnx's weight edits without an exporter: a graph laid out and named as optimum exports a tiny llama
or qwen2 (o_proj / q_proj / k_proj MatMuls with (in, out) initializers, then an Add of the bias where the
projection has one), patched with every edit kind, must hold exactly the torch-folded weights (transposed) and
biases; and `verify` counts the edit kinds it checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from tiny import tiny_model

from pear_edge.edits.coefficients import ChannelScales, Coefficients, HeadCoefficient, QKChannelScale, QTemperature
from pear_edge.converters.onnx_graph import OnnxExport, find_qk_weights
from pear_edge.converters.onnx_patch import patch_export
from pear_edge.base.errors import PearError
from pear_edge.edits.fold import fold_coefficients


def optimum_like_export(lm, shared_k: bool = False) -> OnnxExport:
    """Nodes named by torch module scope, weights as (in, out) initializers, as torch.onnx writes them."""
    nodes, inits = [], []
    x = "hidden"
    for i, layer in enumerate(lm.model.model.layers):
        scope = f"/model/layers.{i}"
        nodes.append(helper.make_node("Identity", [x], [f"{scope}/norm_out"], name=f"{scope}/input_layernorm/Mul_1"))
        for proj in ("q_proj", "k_proj"):
            weight = f"onnx::MatMul_{i}_{proj}"
            if proj == "k_proj" and shared_k:
                weight = f"onnx::MatMul_{i}_q_proj"
            else:
                w = getattr(layer.self_attn, proj).weight.detach().numpy().T.copy()
                inits.append(numpy_helper.from_array(w, weight))
            bias = getattr(layer.self_attn, proj).bias
            product = f"{scope}/{proj}_out" if bias is None else f"{scope}/{proj}_matmul"
            nodes.append(helper.make_node("MatMul", [f"{scope}/norm_out", weight], [product],
                                          name=f"{scope}/self_attn/{proj}/MatMul"))
            if bias is not None:  # torch.onnx: a Linear's bias is an Add after its MatMul
                inits.append(numpy_helper.from_array(bias.detach().numpy().copy(), f"{proj}_bias_{i}"))
                nodes.append(helper.make_node("Add", [product, f"{proj}_bias_{i}"], [f"{scope}/{proj}_out"],
                                              name=f"{scope}/self_attn/{proj}/Add"))
        nodes.append(helper.make_node("Identity", [f"{scope}/q_proj_out"], [f"{scope}/attn_out"],
                                      name=f"{scope}/self_attn/Reshape_7"))
        inits.append(numpy_helper.from_array(layer.self_attn.o_proj.weight.detach().numpy().T.copy(), f"o_{i}"))
        nodes.append(helper.make_node("MatMul", [f"{scope}/attn_out", f"o_{i}"], [f"{scope}/o_out"],
                                      name=f"{scope}/self_attn/o_proj/MatMul"))
        x = f"{scope}/o_out"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)], inits)
    return OnnxExport(Path("tiny-onnx"), helper.make_model(graph), lm.adapter.layout, set())


def test_patch_onnx_applies_every_edit_kind_exactly_as_the_torch_fold():
    lm = tiny_model("llama")
    L = lm.adapter.num_layers
    scales = tuple(float(x) for x in np.random.default_rng(0).uniform(-0.5, 1.5, 32))
    coeffs = Coefficients(lm.fingerprint(), [HeadCoefficient(0, 1, 0.5), HeadCoefficient(2, 3, -0.75)],
                          o_proj_channels=[ChannelScales(2, scales)],
                          qk_channels=[QKChannelScale(5, -1.0, 0, L - 1), QKChannelScale(9, 0.5, 1, 1)])
    export = optimum_like_export(lm)
    before = {t.name: numpy_helper.to_array(t).copy() for t in export.model.graph.initializer}
    assert patch_export(export, coeffs, progress=False) == "compatible"
    fold_coefficients(lm.model, lm.adapter, coeffs)
    after = {t.name: numpy_helper.to_array(t) for t in export.model.graph.initializer}
    for i, layer in enumerate(lm.model.model.layers):
        assert np.array_equal(after[f"o_{i}"], layer.self_attn.o_proj.weight.detach().numpy().T)
        assert np.array_equal(after[f"onnx::MatMul_{i}_q_proj"], layer.self_attn.q_proj.weight.detach().numpy().T)
        assert np.array_equal(after[f"onnx::MatMul_{i}_k_proj"], layer.self_attn.k_proj.weight.detach().numpy().T)
    assert not np.array_equal(after["onnx::MatMul_1_q_proj"], before["onnx::MatMul_1_q_proj"])
    changed_rows = np.flatnonzero((after["onnx::MatMul_1_k_proj"] != before["onnx::MatMul_1_k_proj"]).any(1))
    assert changed_rows.tolist() == [5, 9]  # only the scaled hidden channels' rows


def test_qk_weights_are_found_by_registry_paths_and_shared_ones_refused():
    lm = tiny_model("llama")
    found = find_qk_weights(optimum_like_export(lm), [0, 2])
    assert [w.node for w in found[2]] == ["/model/layers.2/self_attn/q_proj/MatMul", "/model/layers.2/self_attn/k_proj/MatMul"]
    assert [len(w.outputs) for w in found[0]] == [32, 16]  # GQA: 2 key heads of 8
    with pytest.raises(PearError, match="shared by 2 nodes"):
        find_qk_weights(optimum_like_export(lm, shared_k=True), [0])


def test_verify_report_counts_every_edit_kind():
    from pear_edge.converters.verify import Comparison, VerifyReport, format_table, tolerance_for

    checked = Comparison("ONNX vs folded torch", 4, 100, 5e-5, 5e-6, 1.0, [5e-5] * 4)
    report = VerifyReport("x", None, "default", "fp32", 0, 4, tolerance_for("fp32"), [checked],
                          edits={"heads": 0, "o_proj_channels": 30, "qk_channels": 16})
    assert format_table(report).splitlines()[0] == ("x: fp32 weights, 30 layers of o_proj channel scales, "
                                                    "16 q/k channel scales, 4 prompts, 100 positions")
    heads_only = VerifyReport("x", None, "default", "fp32", 3, 4, tolerance_for("fp32"), [checked])
    assert "fp32 weights, 3 patched heads, 4 prompts" in format_table(heads_only)
    assert report.as_dict()["edits"]["qk_channels"] == 16


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_patch_onnx_applies_temperatures_to_query_columns_and_bias_as_the_torch_fold(arch):
    lm = tiny_model(arch)
    coeffs = Coefficients(lm.fingerprint(), [HeadCoefficient(0, 1, 0.5)], qk_channels=[QKChannelScale(5, -1.0, 0, 0)],
                          q_temperatures=[QTemperature(0, 1, 1.7), QTemperature(1, 3, 0.6), QTemperature(0, 2, 2.2)])
    export = optimum_like_export(lm)
    before = {t.name: numpy_helper.to_array(t).copy() for t in export.model.graph.initializer}
    patch_export(export, coeffs, progress=False)
    fold_coefficients(lm.model, lm.adapter, coeffs)
    after = {t.name: numpy_helper.to_array(t) for t in export.model.graph.initializer}
    for i, layer in enumerate(lm.model.model.layers):
        attn = layer.self_attn
        for proj in ("q_proj", "k_proj"):
            assert np.array_equal(after[f"onnx::MatMul_{i}_{proj}"], getattr(attn, proj).weight.detach().numpy().T)
            if getattr(attn, proj).bias is not None:
                assert np.array_equal(after[f"{proj}_bias_{i}"], getattr(attn, proj).bias.detach().numpy())
    changed = np.flatnonzero((after["onnx::MatMul_1_q_proj"] != before["onnx::MatMul_1_q_proj"]).any(0))
    assert changed.tolist() == list(range(24, 32))   # layer 1: head 3's query columns only (no other edit there)
    if arch == "qwen2":
        assert np.flatnonzero(after["q_proj_bias_0"] != before["q_proj_bias_0"]).tolist() == list(range(8, 24))
        assert np.array_equal(after["k_proj_bias_0"], before["k_proj_bias_0"])


def test_patch_onnx_refuses_temperatures_where_a_norm_follows_the_queries():
    lm = tiny_model("qwen3")
    coeffs = Coefficients(lm.fingerprint(), [], q_temperatures=[QTemperature(0, 1, 1.5)])
    with pytest.raises(PearError, match="normalises each head's queries"):
        patch_export(optimum_like_export(lm), coeffs, progress=False)
