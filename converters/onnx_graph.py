"""Reading an ONNX export folder: its model file, its head layout and its o_proj and q/k weight initializers.

optimum's exporter (torch.onnx under the hood) names every node after the torch module it came from,
so layer N's output projection is the MatMul `/model/layers.N/self_attn/o_proj/MatMul` whose second
input is the weight as an (in, out) initializer: head h reads rows [h*d, (h+1)*d). We find it by
that scope, then check it really is what we think (fed by its layer's attention, float weight of the
right shape, used by no other node) before anyone writes into it. The q/k projections (ArchSpec.qk_proj)
are found the same way: a float (hidden, out) initializer whose row `ch` is what hidden channel ch feeds;
the query projection's bias, where it has one, is the float (out,) initializer of the Add in its scope
(torch.onnx writes a Linear with a bias as MatMul then Add).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from pear_edge.edits.coefficients import ModelFingerprint
from pear_edge.base.errors import PearError
from pear_edge.arch.layout import HeadLayout, layout_from_config
from pear_edge.arch.registry import ArchSpec, qk_output_rows, spec_for

MODEL_FILENAME = "model.onnx"
# Ops that mean a projection's weights are no longer plain floats.
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits", "DequantizeLinear",
                 "QuantizeLinear", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass
class OnnxExport:
    """A loaded export folder: the graph with all weights in memory, plus its layout."""

    folder: Path
    model: onnx.ModelProto
    layout: HeadLayout
    external_files: set[str]

    @property
    def spec(self) -> ArchSpec:
        return spec_for(self.layout.model_type)


def model_path(folder: Path) -> Path:
    if not folder.is_dir():
        raise PearError(f"{folder} is not a folder; expected an ONNX export folder (model.onnx + config.json)")
    path = folder / MODEL_FILENAME
    if not path.is_file():
        raise PearError(f"{folder} has no {MODEL_FILENAME}; export one with `pear-edge export onnx`")
    if not (folder / "config.json").is_file():
        raise PearError(f"{folder} has no config.json, so its head layout is unknown; export it with optimum")
    return path


def read_layout(folder: Path) -> HeadLayout:
    """The head layout the folder's config.json describes (its text_config for multimodal configs)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PearError(f"{folder / 'config.json'} is not valid JSON ({exc})") from None
    model_type = str(config.get("model_type", ""))
    spec_for(model_type)  # refuses unsupported architectures with the supported list
    return layout_from_config(model_type, config.get("text_config", config), where=str(folder / "config.json"))


def load_export(folder: str | Path) -> OnnxExport:
    """Load model.onnx with its external data (if any); one-line error on a corrupt file."""
    folder = Path(folder)
    path = model_path(folder)
    layout = read_layout(folder)
    try:
        model = onnx.load(str(path), load_external_data=False)
        external = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                    if entry.key == "location"}
        load_external_data_for_model(model, str(folder))
    except Exception as exc:  # protobuf DecodeError, OSError for missing external data, ...
        raise PearError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    return OnnxExport(folder, model, layout, external)


def graph_only(folder: Path) -> onnx.ModelProto:
    """The graph without external weights: enough to see which ops (and quantization) it uses."""
    path = model_path(folder)
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise PearError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def layer_scopes(spec: ArchSpec, layer: int, module: str | None = None) -> list[str]:
    """Node-name prefixes the torch exporter gives layer `layer`'s o_proj (or `module`, a path from the block),
    one per layer path."""
    scope = (module or spec.o_proj).replace(".", "/")
    return [f"/{path.replace('.', '/')}.{layer}/{scope}/" for path in spec.layers]


@dataclass(frozen=True)
class OProjWeight:
    layer: int
    node: str
    initializer: str


@dataclass(frozen=True)
class QKWeight:
    """A q/k projection's (hidden, out) weight initializer and its outputs that are queries or keys."""

    layer: int
    node: str
    initializer: str
    outputs: tuple[int, ...]


class _Graph:
    """Name indexes of a graph: initializers, the node producing each value, the nodes reading each."""

    def __init__(self, graph):
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[str]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node.name)


def _projection_matmul(export: OnnxExport, g: _Graph, layer: int, module: str, what: str):
    """The one MatMul the exporter made of `module` in `layer`; quantized graphs refused."""
    scopes = layer_scopes(export.spec, layer, module)
    nodes = [n for n in g.nodes if any(n.name.startswith(s) for s in scopes)]
    if not nodes:
        raise PearError(f"{export.folder}: no node named {scopes[0]}... for layer {layer}; "
                        "only exports made by optimum/torch.onnx (node names kept) can be patched")
    feeders = {g.producers[name].op_type for n in nodes for name in n.input if name in g.producers}
    quantized = sorted(({n.op_type for n in nodes} | feeders) & QUANTIZED_OPS)
    if quantized:
        raise PearError(f"{export.folder}: layer {layer} {what} is already quantized "
                        f"({', '.join(quantized)}); patch the fp32/fp16 export first, then quantize "
                        "(`pear-edge export onnx --quantize` does both)")
    matmuls = [n for n in nodes if n.op_type == "MatMul"]
    if len(matmuls) != 1:
        raise PearError(f"{export.folder}: expected one MatMul in {scopes[0]}, found {len(matmuls)}")
    return matmuls[0]


def find_o_proj_weights(export: OnnxExport) -> list[OProjWeight]:
    """Locate each layer's o_proj weight initializer; refuse quantized or unexpected graphs."""
    g = _Graph(export.model.graph)
    found = []
    for layer in range(export.layout.num_layers):
        node = _projection_matmul(export, g, layer, export.spec.o_proj, "o_proj")
        _check_o_proj(export, node, layer, g.inits, g.producers, g.consumers)
        found.append(OProjWeight(layer, node.name, node.input[1]))
    return found


def find_qk_weights(export: OnnxExport, layers) -> dict[int, list[QKWeight]]:
    """Each of `layers`' q/k projection weight initializers (ArchSpec.qk_proj), checked: a float constant of
    shape (hidden, out) read by that MatMul only."""
    g = _Graph(export.model.graph)
    lay = export.layout
    found: dict[int, list[QKWeight]] = {}
    for layer in layers:
        for module in export.spec.qk_proj:
            node = _projection_matmul(export, g, layer, module, module)
            weight = node.input[1]
            tensor = g.inits.get(weight)
            if tensor is None or tensor.data_type not in FLOAT_TYPES:
                raise PearError(f"{export.folder}: {node.name} weight {weight!r} is not a float constant initializer")
            if len(tensor.dims) != 2 or tensor.dims[0] != lay.hidden_size:
                raise PearError(f"{export.folder}: {node.name} weight has shape {tuple(tensor.dims)}, expected "
                                f"(hidden {lay.hidden_size}, outputs)")
            check_one_user(g.consumers, weight, f"{export.folder}: {module} weight of layer {layer}")
            outputs = qk_output_rows(export.spec.qkv_fused, int(tensor.dims[1]), lay.num_heads, lay.head_dim)
            found.setdefault(layer, []).append(QKWeight(layer, node.name, weight, tuple(outputs)))
    return found


def find_q_bias(export: OnnxExport, layer: int, outputs: int) -> str | None:
    """The bias initializer of `layer`'s query projection (ArchSpec.qk_proj[0]): the one float (outputs,)
    initializer an Add in its scope reads, read by that node only; None when the scope has no Add (no bias)."""
    g = _Graph(export.model.graph)
    scopes = layer_scopes(export.spec, layer, export.spec.qk_proj[0])
    adds = [n for n in g.nodes if n.op_type == "Add" and any(n.name.startswith(s) for s in scopes)]
    found = [(n, name) for n in adds for name in n.input if name in g.inits]
    if not adds:
        return None
    if len(found) != 1:
        raise PearError(f"{export.folder}: expected one bias initializer in {scopes[0]}, found {len(found)}; "
                        "the graph is not laid out as exported by optimum")
    node, name = found[0]
    tensor = g.inits[name]
    if tensor.data_type not in FLOAT_TYPES or tuple(tensor.dims) != (outputs,):
        raise PearError(f"{export.folder}: {node.name} bias {name!r} has shape {tuple(tensor.dims)}, expected "
                        f"({outputs},) floats")
    check_one_user(g.consumers, name, f"{export.folder}: query bias of layer {layer}")
    return name


def check_one_user(consumers: dict[str, list[str]], name: str, what: str) -> None:
    """An initializer is patched in place only when one node reads it (else the others would change too)."""
    users = consumers.get(name, [])
    if len(users) != 1:
        raise PearError(f"{what} is shared by {len(users)} nodes ({', '.join(users[:3])}); patching it would "
                        "change the others too")


def _check_o_proj(export, node, layer, inits, producers, consumers) -> None:
    lay = export.layout
    activation, weight = node.input[0], node.input[1]
    source = producers.get(activation)
    attn_scope = node.name.rsplit("/", 2)[0] + "/"  # e.g. /model/layers.3/self_attn/
    if source is None or not source.name.startswith(attn_scope):
        raise PearError(f"{export.folder}: {node.name} is not fed by its layer's attention output; "
                        "the graph is not laid out as exported by optimum")
    tensor = inits.get(weight)
    if tensor is None:
        raise PearError(f"{export.folder}: {node.name} weight {weight!r} is not a constant initializer")
    if tensor.data_type not in FLOAT_TYPES:
        raise PearError(f"{export.folder}: {node.name} weight has element type "
                        f"{onnx.TensorProto.DataType.Name(tensor.data_type)}; only float weights can be patched")
    if tuple(tensor.dims) != (lay.num_heads * lay.head_dim, lay.hidden_size):
        raise PearError(f"{export.folder}: {node.name} weight has shape {tuple(tensor.dims)}, expected "
                        f"(heads x head_dim, hidden) = ({lay.num_heads * lay.head_dim}, {lay.hidden_size})")
    check_one_user(consumers, weight, f"{export.folder}: o_proj weight of layer {layer}")


def weight_array(export: OnnxExport, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in export.model.graph.initializer if t.name == name))


def fingerprint(export: OnnxExport, weights: list[OProjWeight]) -> ModelFingerprint:
    """Layout + per-layer o_proj norms and sketches, comparable with a torch model's fingerprint."""
    lay = export.layout
    # ONNX MatMul weights are (in, out); fingerprints use the (out, in) layout.
    arrays = [weight_array(export, w.initializer).astype(np.float64).T for w in weights]
    return ModelFingerprint.from_o_proj_weights(lay, arrays, name=export.folder.name)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def weight_format(model: onnx.ModelProto) -> str:
    """'int4', 'int8' or the float type of the model's weights, read from the graph."""
    ops = op_counts(model)
    if ops.get("MatMulNBits"):
        return "int4"
    if ops.get("MatMulInteger") or ops.get("DynamicQuantizeLinear"):
        return "int8"
    types = {t.data_type for t in model.graph.initializer if len(t.dims) == 2}
    return "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32"


def describe_export(folder: Path) -> str:
    """One line for `pear-edge info`: architecture, weight format, size."""
    layout = read_layout(folder)
    size = sum(p.stat().st_size for p in folder.glob(MODEL_FILENAME + "*")) / 1e6
    return (f"ONNX export folder: {layout.model_type}, {weight_format(graph_only(folder))} weights, "
            f"{MODEL_FILENAME} {size:.1f} MB (load with optimum.onnxruntime.ORTModelForCausalLM)")


def weight_differences(a: OnnxExport, b: OnnxExport) -> dict[str, float]:
    """Max |a - b| of every initializer, by name (exports of one architecture share names)."""
    first = {t.name: numpy_helper.to_array(t) for t in a.model.graph.initializer}
    second = {t.name: numpy_helper.to_array(t) for t in b.model.graph.initializer}
    if first.keys() != second.keys():
        raise PearError(f"{a.folder} and {b.folder} have different initializers; they are not the same export")
    return {name: float(np.abs(first[name].astype(np.float64) - second[name]).max()) if first[name].size else 0.0
            for name in first}
