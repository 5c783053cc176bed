"""`pear-edge info`: a human summary of any file pear-edge reads or writes, read with the same strict
readers the other commands use (an invalid file is reported as invalid, exit 2)."""
from __future__ import annotations

from pathlib import Path

from pear_edge.base.errors import PearError
from pear_edge.base.inputs import check_regular_file
from pear_edge.edits.coefficients import coefficients_path
from pear_edge.edits.describe import describe_coefficients


def describe_head_scores(scores) -> str:
    s = scores.settings
    lines = [f"head scores ({s.get('method')}, lengths {s.get('lengths')}, positions {s.get('positions')}) "
             f"for {scores.model.name or scores.model.model_type}"]
    lines += [f"  L{l:>2}H{h:<2} {v:+.4f}" for l, h, v in scores.ranking()[:10]]
    return "\n".join(lines)


def describe_json(path: Path) -> str:
    from pear_edge.edits.coefficients import FORMAT, Coefficients, parse_json_object
    from pear_edge.base.inputs import read_text

    text = read_text(path, "JSON file")
    kind = parse_json_object(text, str(path), "pear-edge").get("format")
    if kind == FORMAT:
        return describe_coefficients(Coefficients.from_json(text, source=str(path)))
    if kind == "pear-edge/head-scores":
        from pear_edge.calibration.detect import HeadScores

        return describe_head_scores(HeadScores.load(path))
    raise PearError(f"{path}: not a pear-edge JSON file (no known 'format' field)")


def describe_folder(path: Path) -> str:
    from pear_edge.edits.coefficients import Coefficients, parse_json_object
    from pear_edge.edits.fold import COEFFICIENTS_FILENAME
    from pear_edge.base.inputs import read_text
    from pear_edge.arch.registry import caveat_note

    if not (path / "config.json").is_file():
        raise PearError(f"{path} is not a model folder (no config.json)")
    config = parse_json_object(read_text(path / "config.json", "model config"), str(path / "config.json"), "config")
    architectures = config.get("architectures") or []
    names = ", ".join(map(str, architectures)) if isinstance(architectures, list) else str(architectures)
    text = f"Hugging Face model folder: {config.get('model_type')} ({names})"
    if (path / "model.onnx").is_file():
        from pear_edge.converters.onnx_graph import describe_export

        text = describe_export(path)
    text += "".join("\n" + note for note in filter(None, [caveat_note(str(config.get("model_type")))]))
    coeffs = path / COEFFICIENTS_FILENAME
    if coeffs.exists():
        return text + "\nPEAR-patched with:\n" + describe_coefficients(Coefficients.load(coeffs))
    return text + "\nnot PEAR-patched"


def describe(path: Path) -> str:
    path = coefficients_path(path)
    if not path.exists():
        raise PearError(f"{path} not found")
    if path.is_dir():
        return describe_folder(path)
    check_regular_file(path, "input")
    if path.suffix.lower() == ".json":
        return describe_json(path)
    if path.suffix.lower() == ".gguf":
        from pear_edge.converters.gguf_layout import describe_gguf

        return describe_gguf(path)
    raise PearError(f"{path}: unknown file type (expected .json, a model folder, or .gguf)")
