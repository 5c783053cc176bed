"""Bad inputs across commands, table-driven. Each case must exit 2 with exactly one line on stderr,
`pear-edge: error: ...` (no traceback), leave every input byte-identical and create, change or delete
nothing anywhere in the work folder. Every case is refused before a real model is loaded, so the whole
table runs in seconds (tiny GGUF from gguf_tiny, a config-only model folder)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as T
from gguf_tiny import coefficients_for, write_tiny_gguf

from pear_edge.base.atomic import MARKER
from pear_edge.cli import main
from pear_edge.converters.gguf_patch import patch_gguf
from pear_edge.edits.fold import COEFFICIENTS_FILENAME

DEEP = 100_000  # brackets: far past Python's recursion limit


# --------------------------------------------------------------------------- coefficients files

def _set(*path, value):
    """A mutation setting doc[path...] = value."""
    def mutate(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return doc
    return mutate


def _delete(*path):
    def mutate(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return doc
    return mutate


def _text(replace_value, literal):
    """Set a value to a marker, then replace the marker in the JSON text by `literal` (NaN, 1e999...)."""
    def mutate(doc):
        return json.dumps(_set(*replace_value, value="@@")(doc)).replace('"@@"', literal)
    return mutate


H0 = ("heads", 0)
# name -> (mutation of the valid document, or a function giving the file's text/bytes)
COEFFICIENT_CASES = {
    "coefficient true": _set(*H0, "coefficient", value=True),
    "coefficient string": _set(*H0, "coefficient", value="0.5"),
    "coefficient null": _set(*H0, "coefficient", value=None),
    "coefficient list": _set(*H0, "coefficient", value=[0.5]),
    "coefficient 1e300": _set(*H0, "coefficient", value=1e300),
    "coefficient 1e30": _set(*H0, "coefficient", value=1e30),
    "coefficient -1000": _set(*H0, "coefficient", value=-1000.0),
    "coefficient 1e999": _text((*H0, "coefficient"), "1e999"),
    "coefficient NaN": _text((*H0, "coefficient"), "NaN"),
    "coefficient -Infinity": _text((*H0, "coefficient"), "-Infinity"),
    "coefficient missing": _delete(*H0, "coefficient"),
    "layer 0.7": _set(*H0, "layer", value=0.7),
    "layer 1.0": _set(*H0, "layer", value=1.0),
    "layer -1": _set(*H0, "layer", value=-1),
    "layer 99": _set(*H0, "layer", value=99),
    "layer string": _set(*H0, "layer", value="1"),
    "layer true": _set(*H0, "layer", value=True),
    "layer 10**30": _set(*H0, "layer", value=10**30),
    "layer missing": _delete(*H0, "layer"),
    "head 4 of 4": _set(*H0, "head", value=4),
    "head null": _set(*H0, "head", value=None),
    "duplicate head": lambda d: {**d, "heads": [d["heads"][0], dict(d["heads"][0])]},
    "heads empty": _set("heads", value=[]),
    "heads missing": _delete("heads"),
    "heads object": _set("heads", value={}),
    "heads entry number": _set("heads", value=[1]),
    "head unknown field": _set(*H0, "gain", value=2),
    "score string": _set(*H0, "score", value="x"),
    "score 1e999": _text((*H0, "score"), "1e999"),
    "version string": _set("version", value="1"),
    "version 2": _set("version", value=2),
    "version true": _set("version", value=True),
    "version missing": _delete("version"),
    "format missing": _delete("format"),
    "format head-scores": _set("format", value="pear-edge/head-scores"),
    "model missing": _delete("model"),
    "model list": _set("model", value=[]),
    "model_type empty": _set("model", "model_type", value=""),
    "model_type number": _set("model", "model_type", value=3),
    "num_layers 0": _set("model", "num_layers", value=0),
    "num_layers string": _set("model", "num_layers", value="2"),
    "num_heads true": _set("model", "num_heads", value=True),
    "head_dim 32.0": _set("model", "head_dim", value=32.0),
    "hidden_size negative": _set("model", "hidden_size", value=-64),
    "norms 1e999": _text(("model", "o_proj_norms", 0), "1e999"),
    "norms NaN": _text(("model", "o_proj_norms", 0), "NaN"),
    "norms negative": _set("model", "o_proj_norms", 0, value=-1.0),
    "norms wrong length": _set("model", "o_proj_norms", value=[1.0]),
    "norms string": _set("model", "o_proj_norms", value="x"),
    "sketch 1e999": _text(("model", "o_proj_sketch", 3), "1e999"),
    "sketch string entry": _set("model", "o_proj_sketch", 0, value="x"),
    "sketch wrong length": _set("model", "o_proj_sketch", value=[1.0, 2.0]),
    "sha not hex": _set("model", "weights_sha256", value="xyz"),
    "sha number": _set("model", "weights_sha256", value=123),
    "name number": _set("model", "name", value=5),
    "calibration list": _set("calibration", value=[1, 2]),
    "metrics string": _set("metrics", value="x"),
    "metrics null": _set("metrics", value=None),
    "unknown top field": _set("extra", value=1),
    "deeply nested metrics": _text(("metrics",), "[" * DEEP + "]" * DEEP),
    "top-level list": lambda d: "[1, 2]",
    "top-level string": lambda d: '"coefficients"',
    "empty file": lambda d: "",
    "whitespace only": lambda d: "  \n\t\n",
    "truncated": lambda d: json.dumps(d)[:200],
    "trailing garbage": lambda d: json.dumps(d) + " xyz",
    "utf-8 BOM": lambda d: "\ufeff" + json.dumps(d),
    "integer of 5000 digits": _text((*H0, "layer"), "1" * 5000),
    "not UTF-8": lambda d: b"\xff\xfe{\x00" + b"\xe9" * 20,
    "binary (a GGUF)": lambda d: b"GGUF\x03\x00\x00\x00" + bytes(64),
}


def _write_coefficient_cases(folder: Path, good: dict) -> dict[str, str]:
    folder.mkdir()
    paths = {}
    for i, (name, mutate) in enumerate(COEFFICIENT_CASES.items()):
        content = mutate(json.loads(json.dumps(good)))
        path = folder / f"case{i:02d}.json"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        paths[name] = str(path)
    return paths


# --------------------------------------------------------------------------- the work folder

def _mdqa(**ctx):
    return {"question": "q?", "answers": ["x"], "ctxs": [{"title": "t", "text": "x is here", **ctx}]}


DATA_CASES = {
    "isgold string false": json.dumps(_mdqa(isgold="false")),
    "isgold number": json.dumps(_mdqa(isgold=1)),
    "hasanswer string": json.dumps(_mdqa(hasanswer="yes")),
    "no gold": json.dumps(_mdqa()),
    "answers string": json.dumps({**_mdqa(isgold=True), "answers": "x"}),
    "ctxs empty": json.dumps({**_mdqa(isgold=True), "ctxs": []}),
    "question number": json.dumps({**_mdqa(isgold=True), "question": 5}),
    "not JSON": "{not json",
    "JSON list": "[1, 2]",
    "deeply nested": "[" * DEEP + "]" * DEEP,
    "empty": "",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-inputs")
    gguf = write_tiny_gguf(root / "tiny.gguf", T.Q4_1)
    coeffs = coefficients_for(gguf, [(1, 2, 0.5), (0, 1, 1.25)])
    coeffs.save(root / "c.json")
    patch_gguf(gguf, coeffs, root / "patched.gguf", progress=False)
    other = write_tiny_gguf(root / "other-layout.gguf", T.Q4_1, num_heads=2, head_dim=32)
    coefficients_for(other, [(0, 1, 0.5)]).save(root / "other-layout.json")
    (root / "truncated.gguf").write_bytes(gguf.read_bytes()[:-100])
    (root / "text.gguf").write_text('{"not": "a gguf"}')
    hf = root / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama"}')
    patched_hf = root / "patched-hf"
    patched_hf.mkdir()
    (patched_hf / "config.json").write_text('{"model_type": "llama"}')
    shutil.copy(root / "c.json", patched_hf / COEFFICIENTS_FILENAME)
    bad_patched_hf = root / "bad-patched-hf"
    bad_patched_hf.mkdir()
    (bad_patched_hf / "config.json").write_text('{"model_type": "llama"}')
    (bad_patched_hf / COEFFICIENTS_FILENAME).write_text('{"format": "pear-edge/coefficients", "version": "1"}')
    keep = root / "keep"  # a user's folder: must never be touched
    keep.mkdir()
    (keep / "notes.txt").write_text("my notes\n")
    shutil.copy(root / "c.json", keep / "c.json")
    ours = root / "ours"  # written by pear-edge earlier: replaced only with --force
    ours.mkdir()
    (ours / MARKER).write_text("{}\n")
    (ours / "model.safetensors").write_bytes(b"old")
    docs = root / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Python's with statement wraps a block.\n")
    empty_docs = root / "empty-docs"
    empty_docs.mkdir()
    (root / "notes.txt").write_text("a user's file\n")
    (root / "empty.txt").write_text("")
    (root / "binary.bin").write_bytes(bytes(range(256)))
    (root / "junk.db").write_bytes(b"this is not a database" * 100)
    os.mkfifo(root / "pipe.gguf")  # opening it to read would block until a writer comes
    os.symlink(root / "gone.gguf", root / "dangling.gguf")
    os.symlink(root / "gone", root / "dangling-folder")
    (root / "head-scores-nan.json").write_text(json.dumps(
        {"format": "pear-edge/head-scores", "version": 1, "model": json.loads(coeffs.to_json())["model"],
         "scores": [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3]], "settings": {}}))
    paths = {name: str(root / name) for name in (
        "tiny.gguf", "c.json", "patched.gguf", "other-layout.json", "truncated.gguf", "text.gguf", "hf",
        "patched-hf", "bad-patched-hf", "keep", "ours", "docs", "empty-docs", "notes.txt", "empty.txt",
        "binary.bin", "junk.db", "head-scores-nan.json", "pipe.gguf", "dangling.gguf", "dangling-folder")}
    paths["new"] = str(root / "new")  # a fresh output path (file or folder)
    paths["root"] = str(root)
    coefficient_paths = _write_coefficient_cases(root / "coefficients", json.loads(coeffs.to_json()))
    data = root / "data"
    data.mkdir()
    data_paths = {}
    for i, (name, line) in enumerate(DATA_CASES.items()):
        (data / f"case{i:02d}.jsonl").write_text(line + "\n")
        data_paths[name] = str(data / f"case{i:02d}.jsonl")
    return {"paths": paths, "coefficients": coefficient_paths, "data": data_paths}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its sha256 (files), link target or kind (never opening a pipe)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                kind = "link to " + os.readlink(path)
            elif stat.S_ISDIR(mode):
                kind = "folder"
            elif stat.S_ISREG(mode):
                kind = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                kind = f"special {stat.S_IFMT(mode)}"
            out[os.path.relpath(path, root)] = kind
    return out


# --------------------------------------------------------------------------- the table

def _coefficient_cases():
    """Every invalid coefficients file through every command that reads one."""
    for name in COEFFICIENT_CASES:
        yield f"patch-gguf coefficients {name}", ["patch-gguf", "{tiny.gguf}", "--coefficients", f"@{name}", "-o", "{new}"]
        yield f"fold coefficients {name}", ["fold", "--model", "{hf}", "--coefficients", f"@{name}", "-o", "{new}"]
        yield f"info coefficients {name}", ["info", f"@{name}"]
    for name in ("coefficient 1e300", "norms NaN", "version string", "deeply nested metrics", "binary (a GGUF)",
                 "heads empty", "calibration list"):
        yield f"verify coefficients {name}", ["verify", "{patched.gguf}", "--coefficients", f"@{name}"]
        yield f"export gguf coefficients {name}", ["export", "gguf", "--model", "{hf}", "--coefficients", f"@{name}",
                                                   "-o", "{new}"]
        yield f"export onnx coefficients {name}", ["export", "onnx", "--model", "{hf}", "--coefficients", f"@{name}",
                                                   "-o", "{new}"]
        yield f"patch-onnx coefficients {name}", ["patch-onnx", "{hf}", "--coefficients", f"@{name}", "-o", "{new}"]
        yield f"eval coefficients {name}", ["eval", "--task", "kv", "--count", "2", "--model", "{hf}",
                                            "--coefficients", f"@{name}", "-o", "{new}"]


def _data_cases():
    for name in DATA_CASES:
        yield f"eval data {name}", ["eval", "--task", "mdqa", "--data", f"%{name}", "--base", "{tiny.gguf}",
                                    "--pear", "{patched.gguf}", "-o", "{new}"]


PATCH = ["patch-gguf", "{tiny.gguf}", "--coefficients", "{c.json}", "-o"]
FOLD = ["fold", "--model", "{hf}", "--coefficients", "{c.json}", "-o"]
EVAL = ["eval", "--task", "kv", "--count", "2", "--base", "{tiny.gguf}", "--pear", "{patched.gguf}", "-o"]

OTHER_CASES = [
    # patch-gguf: outputs
    ("patch-gguf -o existing folder", PATCH + ["{keep}"], "is a folder"),
    ("patch-gguf -o the input", PATCH + ["{tiny.gguf}"], "same as input"),
    ("patch-gguf -o the coefficients", PATCH + ["{c.json}"], "same as input"),
    ("patch-gguf -o under a file", PATCH + ["{notes.txt}/p.gguf"], "is a file, not a folder"),
    ("patch-gguf -o /dev/null", PATCH + ["/dev/null"], "not a regular file"),
    ("patch-gguf -o in /proc", PATCH + ["/proc/pear-edge-test.gguf"], "cannot write"),
    ("patch-gguf -o empty", PATCH + [""], "empty"),
    ("patch-gguf -o a dangling link", PATCH + ["{dangling.gguf}"], "symbolic link to a missing file"),
    ("patch-gguf -o under a dangling link", PATCH + ["{dangling-folder}/p.gguf"], "symbolic link to a missing folder"),
    # patch-gguf: inputs
    ("patch-gguf input missing", ["patch-gguf", "{root}/missing.gguf", "--coefficients", "{c.json}", "-o", "{new}"],
     "not found"),
    ("patch-gguf input folder", ["patch-gguf", "{keep}", "--coefficients", "{c.json}", "-o", "{new}"], "is a folder"),
    ("patch-gguf input a pipe", ["patch-gguf", "{pipe.gguf}", "--coefficients", "{c.json}", "-o", "{new}"],
     "is not a regular file"),
    ("patch-gguf input /dev/null", ["patch-gguf", "/dev/null", "--coefficients", "{c.json}", "-o", "{new}"],
     "is not a regular file"),
    ("patch-gguf input JSON (swapped)", ["patch-gguf", "{c.json}", "--coefficients", "{tiny.gguf}", "-o", "{new}"],
     "binary file"),
    ("patch-gguf input text .gguf", ["patch-gguf", "{text.gguf}", "--coefficients", "{c.json}", "-o", "{new}"],
     "not a readable GGUF"),
    ("patch-gguf input truncated", ["patch-gguf", "{truncated.gguf}", "--coefficients", "{c.json}", "-o", "{new}"],
     "truncated"),
    ("patch-gguf input already patched", ["patch-gguf", "{patched.gguf}", "--coefficients", "{c.json}", "-o",
                                          "{new}"], "already PEAR-patched"),
    ("patch-gguf coefficients missing", ["patch-gguf", "{tiny.gguf}", "--coefficients", "{root}/nope.json", "-o",
                                         "{new}"], "not found"),
    ("patch-gguf coefficients folder", ["patch-gguf", "{tiny.gguf}", "--coefficients", "{keep}", "-o", "{new}"],
     "is a folder"),
    ("patch-gguf coefficients other layout", ["patch-gguf", "{tiny.gguf}", "--coefficients", "{other-layout.json}",
                                              "-o", "{new}"], "calibrate for this model"),
    ("patch-gguf missing -o", ["patch-gguf", "{tiny.gguf}", "--coefficients", "{c.json}"], "required"),
    # fold: the data-loss cases and other outputs
    ("fold -o user folder", FOLD + ["{keep}"], "not written by pear-edge"),
    ("fold -o user folder --force", FOLD + ["{keep}", "--force"], "not written by pear-edge"),
    ("fold -o folder holding the coefficients", ["fold", "--model", "{hf}", "--coefficients", "{keep}/c.json",
                                                 "-o", "{keep}", "--force"], "contains input"),
    ("fold -o pear-edge folder without --force", FOLD + ["{ours}"], "pass --force"),
    ("fold -o existing file", FOLD + ["{notes.txt}"], "is a file"),
    ("fold -o the model folder", FOLD + ["{hf}"], "same as input"),
    ("fold -o inside the model folder", FOLD + ["{hf}/folded"], "inside input folder"),
    ("fold -o under a file", FOLD + ["{notes.txt}/folded"], "is a file, not a folder"),
    ("fold -o /dev/null", FOLD + ["/dev/null"], "is a file"),
    ("fold -o a dangling link", FOLD + ["{dangling.gguf}"], "symbolic link to a missing file"),
    ("fold --model missing", ["fold", "--model", "{root}/nope", "--coefficients", "{c.json}", "-o", "{new}"],
     "not found"),
    ("fold --model folder without config", ["fold", "--model", "{keep}", "--coefficients", "{c.json}", "-o",
                                            "{new}"], "no config.json"),
    ("fold --model a JSON file", ["fold", "--model", "{c.json}", "--coefficients", "{c.json}", "-o", "{new}"],
     "neither a folder nor a .gguf"),
    ("fold --model already patched", ["fold", "--model", "{patched-hf}", "--coefficients", "{c.json}", "-o",
                                      "{new}"], "already PEAR-patched"),
    # export / patch-onnx
    ("export gguf --quant unknown", ["export", "gguf", "--model", "{hf}", "--quant", "q9_9", "-o", "{new}"],
     "unknown quantization"),
    ("export gguf --quant empty", ["export", "gguf", "--model", "{hf}", "--quant", ",", "-o", "{new}"],
     "unknown quantization"),
    ("export gguf -o user folder", ["export", "gguf", "--model", "{hf}", "-o", "{keep}"], "not written by pear-edge"),
    ("export gguf -o pear-edge folder", ["export", "gguf", "--model", "{hf}", "-o", "{ours}"], "pass --force"),
    ("export gguf -o file", ["export", "gguf", "--model", "{hf}", "-o", "{notes.txt}"], "is a file"),
    ("export gguf -o holds the coefficients", ["export", "gguf", "--model", "{hf}", "--coefficients",
                                               "{keep}/c.json", "-o", "{keep}", "--force"], "contains input"),
    ("export gguf --model missing", ["export", "gguf", "--model", "{root}/nope.gguf", "-o", "{new}"], "not found"),
    ("export onnx -o user folder", ["export", "onnx", "--model", "{hf}", "-o", "{keep}"], "not written by pear-edge"),
    ("export onnx -o file", ["export", "onnx", "--model", "{hf}", "-o", "{notes.txt}"], "is a file"),
    ("export onnx --quantize unknown", ["export", "onnx", "--model", "{hf}", "--quantize", "int3", "-o", "{new}"],
     "invalid choice"),
    ("export onnx --model already patched", ["export", "onnx", "--model", "{patched-hf}", "--coefficients",
                                             "{c.json}", "-o", "{new}"], "already PEAR-patched"),
    ("patch-onnx -o user folder", ["patch-onnx", "{hf}", "--coefficients", "{c.json}", "-o", "{keep}"],
     "not written by pear-edge"),
    ("patch-onnx -o the source", ["patch-onnx", "{hf}", "--coefficients", "{c.json}", "-o", "{hf}"], "same as input"),
    ("patch-onnx -o inside the source", ["patch-onnx", "{hf}", "--coefficients", "{c.json}", "-o", "{hf}/sub"],
     "inside input folder"),
    ("patch-onnx -o file", ["patch-onnx", "{hf}", "--coefficients", "{c.json}", "-o", "{notes.txt}"], "is a file"),
    ("patch-onnx source already patched", ["patch-onnx", "{patched-hf}", "--coefficients", "{c.json}", "-o",
                                           "{new}"], "already PEAR-patched"),
    # verify
    ("verify --prompts binary", ["verify", "{patched.gguf}", "--prompts", "{binary.bin}"], "binary file"),
    ("verify --prompts a GGUF", ["verify", "{patched.gguf}", "--prompts", "{tiny.gguf}"], "binary file"),
    ("verify --prompts missing", ["verify", "{patched.gguf}", "--prompts", "{root}/nope.txt"], "not found"),
    ("verify --prompts empty", ["verify", "{patched.gguf}", "--prompts", "{empty.txt}"], "no non-empty line"),
    ("verify --prompts folder", ["verify", "{patched.gguf}", "--prompts", "{keep}"], "is a folder"),
    ("verify -o folder", ["verify", "{patched.gguf}", "-o", "{keep}"], "is a folder"),
    ("verify -o the patched file", ["verify", "{patched.gguf}", "-o", "{patched.gguf}"], "same as input"),
    ("verify -o under a file", ["verify", "{patched.gguf}", "-o", "{notes.txt}/r.json"], "is a file, not a folder"),
    ("verify patched missing", ["verify", "{root}/nope.gguf"], "neither a .gguf file"),
    ("verify patched is JSON", ["verify", "{c.json}"], "neither a .gguf file"),
    ("verify unpatched without coefficients", ["verify", "{tiny.gguf}"], "no pear.coefficients"),
    ("verify truncated", ["verify", "{truncated.gguf}"], "truncated"),
    ("verify a pipe", ["verify", "{pipe.gguf}"], "is not a regular file"),
    ("verify /dev/null", ["verify", "/dev/null", "--coefficients", "{c.json}"], "is not a regular file"),
    ("verify --base a pipe", ["verify", "{patched.gguf}", "--base", "{pipe.gguf}"], "is not a regular file"),
    ("verify --base patched", ["verify", "{patched.gguf}", "--base", "{patched.gguf}"], "itself PEAR-patched"),
    # info
    ("info missing", ["info", "{root}/nope.json"], "not found"),
    ("info folder without config", ["info", "{keep}"], "no config.json"),
    ("info unknown file type", ["info", "{notes.txt}"], "unknown file type"),
    ("info text .gguf", ["info", "{text.gguf}"], "not a readable GGUF"),
    ("info truncated gguf", ["info", "{truncated.gguf}"], "truncated"),
    ("info a pipe", ["info", "{pipe.gguf}"], "is not a regular file"),
    ("info /dev/null", ["info", "/dev/null"], "is not a regular file"),
    ("info head scores of the wrong shape", ["info", "{head-scores-nan.json}"], "scores"),
    ("info folder with invalid coefficients", ["info", "{bad-patched-hf}"], "version"),
    # rag index / ask / pydoc-corpus
    ("rag index docs missing", ["rag", "index", "{root}/nope", "--db", "{new}"], "not found"),
    ("rag index docs is a file", ["rag", "index", "{notes.txt}", "--db", "{new}"], "not a folder"),
    ("rag index docs empty", ["rag", "index", "{empty-docs}", "--db", "{new}"], "no .txt/.md"),
    ("rag index --db inside docs", ["rag", "index", "{docs}", "--db", "{docs}/i.db"], "inside input folder"),
    ("rag index --db a folder", ["rag", "index", "{docs}", "--db", "{keep}"], "is a folder"),
    ("rag index --db under a file", ["rag", "index", "{docs}", "--db", "{notes.txt}/i.db"], "is a file, not a folder"),
    ("rag index --db not an index", ["rag", "index", "{docs}", "--db", "{junk.db}"], "not a pear-edge RAG index"),
    ("rag index --db a text file", ["rag", "index", "{docs}", "--db", "{notes.txt}"], "not a pear-edge RAG index"),
    ("rag index --db /dev/null", ["rag", "index", "{docs}", "--db", "/dev/null"], "not a regular file"),
    ("rag ask --db missing", ["rag", "ask", "what?", "--db", "{root}/nope.db"], "not found"),
    ("rag ask --db not an index", ["rag", "ask", "what?", "--db", "{junk.db}"], "not a pear-edge RAG index"),
    ("rag ask --db a folder", ["rag", "ask", "what?", "--db", "{keep}"], "is a folder"),
    ("rag ask --max-tokens 0", ["rag", "ask", "what?", "--db", "{junk.db}", "--max-tokens", "0"], "--max-tokens"),
    ("rag ask --max-tokens -5", ["rag", "ask", "what?", "--db", "{junk.db}", "--max-tokens", "-5"], "--max-tokens"),
    ("rag ask -k 0", ["rag", "ask", "what?", "--db", "{junk.db}", "-k", "0"], "-k"),
    ("rag ask --n-ctx 0", ["rag", "ask", "what?", "--db", "{junk.db}", "--n-ctx", "0"], "--n-ctx"),
    ("rag ask --max-tokens text", ["rag", "ask", "what?", "--db", "{junk.db}", "--max-tokens", "many"], "invalid int"),
    ("rag ask empty question", ["rag", "ask", "", "--db", "{junk.db}"], "question is empty"),
    ("rag ask blank question", ["rag", "ask", "  \t", "--db", "{junk.db}"], "question is empty"),
    ("rag serve --max-tokens 0", ["rag", "serve", "--db", "{junk.db}", "--max-tokens", "0"], "--max-tokens"),
    ("rag pydoc-corpus into user folder", ["rag", "pydoc-corpus", "{keep}"], "not written by pear-edge"),
    ("rag pydoc-corpus onto a file", ["rag", "pydoc-corpus", "{notes.txt}"], "is a file"),
    ("rag pydoc-corpus under a file", ["rag", "pydoc-corpus", "{notes.txt}/corpus"], "is a file, not a folder"),
    # eval
    ("eval -o existing file", EVAL + ["{notes.txt}"], "is a file"),
    ("eval -o under a file", EVAL + ["{notes.txt}/out"], "is a file, not a folder"),
    ("eval -o user folder", EVAL + ["{keep}"], "not written by pear-edge"),
    ("eval -o the base model", EVAL + ["{tiny.gguf}"], "same as input"),
    ("eval --pear missing", ["eval", "--task", "kv", "--base", "{tiny.gguf}", "--pear", "{root}/nope.gguf", "-o",
                             "{new}"], "not found"),
    ("eval --pear truncated", ["eval", "--task", "kv", "--base", "{tiny.gguf}", "--pear", "{truncated.gguf}", "-o",
                               "{new}"], "truncated"),
    ("eval --pear not a GGUF", ["eval", "--task", "kv", "--base", "{tiny.gguf}", "--pear", "{text.gguf}", "-o",
                                "{new}"], "not a readable GGUF"),
    ("eval --base a pipe", ["eval", "--task", "kv", "--base", "{pipe.gguf}", "--pear", "{patched.gguf}", "-o",
                            "{new}"], "is not a regular file"),
    ("eval --pear /dev/null", ["eval", "--task", "kv", "--base", "{tiny.gguf}", "--pear", "/dev/null", "-o",
                               "{new}"], "is not a regular file"),
    ("eval --pear a user folder", ["eval", "--task", "kv", "--base", "{tiny.gguf}", "--pear", "{keep}", "-o",
                                   "{new}"], "no config.json"),
    ("eval without --task", ["eval", "--base", "{tiny.gguf}", "--pear", "{patched.gguf}", "-o", "{new}"], "--task"),
    ("eval --base without --pear", ["eval", "--task", "kv", "--base", "{tiny.gguf}", "-o", "{new}"], "one --pear"),
    ("eval --model without --coefficients", ["eval", "--task", "kv", "--model", "{hf}", "-o", "{new}"],
     "go together"),
    ("eval nothing to compare", ["eval", "--task", "kv", "-o", "{new}"], "give --base"),
    ("eval mdqa without --data", ["eval", "--task", "mdqa", "--base", "{tiny.gguf}", "--pear", "{patched.gguf}",
                                  "-o", "{new}"], "needs --data"),
    ("eval --data missing", ["eval", "--task", "mdqa", "--data", "{root}/nope.jsonl", "--base", "{tiny.gguf}",
                             "--pear", "{patched.gguf}", "-o", "{new}"], "not found"),
    ("eval --data binary", ["eval", "--task", "mdqa", "--data", "{binary.bin}", "--base", "{tiny.gguf}",
                            "--pear", "{patched.gguf}", "-o", "{new}"], None),
    ("eval --num-docs 0", ["eval", "--task", "counterfactual", "--count", "2", "--num-docs", "0", "--base",
                           "{tiny.gguf}", "--pear", "{patched.gguf}", "-o", "{new}"], "--num-docs"),
    ("eval --task unknown", ["eval", "--task", "trivia", "-o", "{new}"], "invalid choice"),
    ("eval make-data -o folder", ["eval", "make-data", "--task", "kv", "-o", "{keep}"], "is a folder"),
    ("eval make-data -o under a file", ["eval", "make-data", "--task", "kv", "-o", "{notes.txt}/d.jsonl"],
     "is a file, not a folder"),
    ("eval speed --base without --pear", ["eval", "speed", "--base", "{tiny.gguf}", "-o", "{new}"], "one --pear"),
    ("eval speed -o existing file", ["eval", "speed", "--base", "{tiny.gguf}", "--pear", "{patched.gguf}", "-o",
                                     "{notes.txt}"], "is a file"),
    ("eval speed --base a plain folder", ["eval", "speed", "--base", "{keep}", "--pear", "{hf}", "-o", "{new}"],
     "Hugging Face model folders"),
    ("eval speed --device gpu", ["eval", "speed", "--device", "gpu", "--base", "{tiny.gguf}", "--pear",
                                 "{patched.gguf}", "-o", "{new}"], "invalid choice"),
    ("eval publish a user folder", ["eval", "publish", "{keep}", "-o", "{new}"], "holds no results.json"),
    ("eval publish into a user folder", ["eval", "publish", "{keep}", "-o", "{keep}"], "same as input"),
    ("eval publish -o existing file", ["eval", "publish", "{keep}", "-o", "{notes.txt}"], "is a file"),
    # detect / train / calibrate: outputs and the head-scores input
    ("detect -o folder", ["detect", "--model", "{hf}", "-o", "{keep}"], "is a folder"),
    ("detect -o under a file", ["detect", "--model", "{hf}", "-o", "{notes.txt}/h.json"], "is a file, not a folder"),
    ("calibrate -o folder", ["calibrate", "--model", "{hf}", "-o", "{keep}"], "is a folder"),
    ("calibrate --model a pipe", ["calibrate", "--model", "{pipe.gguf}", "-o", "{new}"], "is not a regular file"),
    ("calibrate -o the model", ["calibrate", "--model", "{tiny.gguf}", "-o", "{tiny.gguf}"], "same as input"),
    ("calibrate --recipe unknown", ["calibrate", "--model", "{hf}", "--recipe", "seal-h", "-o", "{new}"],
     "invalid choice"),
    ("calibrate --positional-layers reversed", ["calibrate", "--model", "{hf}", "--recipe", "positional",
                                                "--positional-layers", "3-1", "-o", "{new}"], "--positional-layers"),
    ("calibrate --positional-layers text", ["calibrate", "--model", "{hf}", "--positional-layers", "a-b",
                                            "-o", "{new}"], "layer ranges"),
    ("calibrate --positional-scales nan", ["calibrate", "--model", "{hf}", "--positional-scales", "0.5,nan",
                                           "-o", "{new}"], "finite"),
    ("calibrate --positional-validation is the output", ["calibrate", "--model", "{hf}", "--positional-validation",
                                                         "{notes.txt}", "-o", "{notes.txt}"], "same as input"),
    ("calibrate --prompt-format with the copy proxy", ["calibrate", "--model", "{hf}", "--proxy", "copy",
                                                       "--prompt-format", "completion", "-o", "{new}"],
     "the copy proxy has no prompt"),
    ("eval --prompt-format unknown", EVAL[:-1] + ["--prompt-format", "instruct", "-o", "{new}"], "invalid choice"),
    ("train --heads missing", ["train", "--model", "{hf}", "--heads", "{root}/nope.json", "-o", "{new}"], "not found"),
    ("train --heads a GGUF", ["train", "--model", "{hf}", "--heads", "{tiny.gguf}", "-o", "{new}"], "binary file"),
    ("train --heads coefficients", ["train", "--model", "{hf}", "--heads", "{c.json}", "-o", "{new}"],
     "not a pear-edge head-scores file"),
    ("train --heads wrong shape", ["train", "--model", "{hf}", "--heads", "{head-scores-nan.json}", "-o", "{new}"],
     "scores"),
    ("demo --quick-docs 1", ["demo", "--quick-docs", "1", "-o", "{new}"], "--quick-docs at least 2"),
    ("demo --quick-records negative", ["demo", "--quick-records", "-1", "-o", "{new}"], "--quick-records must be"),
    # usage errors are one line too
    ("no command", [], "required"),
    ("unknown command", ["frobnicate"], "invalid choice"),
]

CASES = [(name, argv, None) for name, argv in _coefficient_cases()] + \
        [(name, argv, None) for name, argv in _data_cases()] + OTHER_CASES


def _argv(template: list[str], world) -> list[str]:
    out = []
    for arg in template:
        if arg.startswith("@"):
            out.append(world["coefficients"][arg[1:]])
        elif arg.startswith("%"):
            out.append(world["data"][arg[1:]])
        else:
            out.append(re.sub(r"\{([^}]+)\}", lambda m: world["paths"][m.group(1)], arg))
    return out


def test_enough_cases():
    assert len(CASES) >= 120
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, template, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, capsys, name, template, expected):
    root = Path(world["paths"]["root"])
    before = snapshot(root)
    capsys.readouterr()
    code = main(["-q", *_argv(template, world)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err, captured.out[-500:])
    assert err.startswith("pear-edge: error: ") and "\n" not in err, err
    assert "Traceback" not in captured.out + captured.err
    if expected:
        assert expected in err, err
    assert snapshot(root) == before  # inputs byte-identical, nothing created, nothing deleted
