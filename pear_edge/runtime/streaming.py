"""A Hugging Face safetensors folder without loading its model: its fingerprint and its fold, one tensor at a time.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {...}}, then the tensors' bytes (offsets
count from the end of the header). `fold_folder` writes each weight file as its header, byte for byte, then
each tensor in file order: an edited one (o_proj, q/k, a query bias) read whole, changed by pear_edge.edits.fold's
transformations in its own dtype and written back (same dtype and shape, so the header and every offset
stay valid); every other tensor copied in CHUNK pieces. The fingerprint hashes the tensors in CHUNK pieces
too, so memory holds the largest edited tensor (and one o_proj in float64 for the fingerprint's sketch),
never the model. Which tensor is which layer's o_proj or q/k projection comes from the registry, applied to
the model built from config.json on the meta device (no weights).

Files are read with plain reads, not memory maps (safetensors' safe_open maps the file, and every page it
touches counts in the process's resident memory until the file is closed).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import torch

from pear_edge.arch.registry import ArchAdapter
from pear_edge.base.atomic import MARKER, Kind, atomic_dir, check_output
from pear_edge.base.errors import PearError
from pear_edge.edits.coefficients import Coefficients, ModelFingerprint
from pear_edge.edits.fold import COEFFICIENTS_FILENAME, check_not_patched, weight_edits
from pear_edge.runtime.models import o_proj_out_in, weights_digest
from pear_edge.runtime.safetensors_layout import DTYPES, TensorEntry, WeightFile, read_weight_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CHUNK = 16 << 20  # bytes read, hashed or copied at a time
# Other weight formats beside the safetensors: not copied into a folded folder (they hold unfolded weights).
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".safetensors",
                         ".bin.index.json")


class NotStreamable(Exception):
    """The folder is not one `fold_folder` can fold tensor by tensor (the message says why)."""


def weight_file_names(folder: Path) -> list[str]:
    """The folder's safetensors files: those its index names (in order of first mention), else model.safetensors.
    Raises NotStreamable when it has neither but weights in another format, PearError when it has no weights."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise PearError(f"{index} is not a readable safetensors index ({exc})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise PearError(f"{index} has no weight_map of tensor names to file names")
        names = list(dict.fromkeys(weight_map.values()))
        outside = [n for n in names if Path(n).name != n or n in ("", ".", "..")]
        if outside:
            raise PearError(f"{index} names a file outside its folder ({outside[0]!r})")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise PearError(f"{index} names {missing[0]}, which is not in {folder}")
        return names
    if (folder / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(OTHER_WEIGHT_SUFFIXES))
    if not others:
        raise PearError(f"{folder} holds no model weights ({SINGLE_FILE} or {INDEX_FILE})")
    raise NotStreamable(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE} (its weights: {', '.join(others[:3])})")


def checkpoint_names(model: torch.nn.Module) -> dict[str, str]:
    """State-dict key -> the name its values are read from in a checkpoint: the key itself, or for a tied
    weight the first name of the shared tensor (transformers ties lm_head to the input embedding on load)."""
    tensors = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    first: dict[int, str] = {}
    for name, tensor in tensors.items():
        first.setdefault(id(tensor), name)
    return {key: first[id(tensors[key])] if key in tensors else key for key in model.state_dict()}


@dataclass
class FolderModel:
    """A safetensors folder's structure: the meta-device model and its adapter, the weight files, and where
    each checkpoint tensor lies."""

    folder: Path
    model: torch.nn.Module  # on the meta device: names and shapes only
    adapter: ArchAdapter
    files: list[WeightFile]
    tensors: dict[str, tuple[WeightFile, TensorEntry]]
    sources: dict[str, str]  # state-dict key -> checkpoint tensor name

    def name_of(self, weight: torch.Tensor) -> str:
        """The checkpoint name of one of the model's (meta) parameters."""
        return next(n for n, p in self.model.named_parameters() if p is weight)


def meta_model(folder: Path) -> torch.nn.Module:
    """The folder's model built from its config.json on the meta device (no memory for weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError) as exc:
        raise PearError(f"cannot read the model config in {folder}: {str(exc).splitlines()[0]}") from None


def open_folder(folder: Path) -> FolderModel:
    """Read a folder's config and safetensors headers (no tensor data). Raises NotStreamable when it has no
    safetensors or when their names or shapes are not the model's own (a checkpoint transformers renames on
    load); PearError when a file is unreadable."""
    files = [read_weight_file(folder / name) for name in weight_file_names(folder)]
    tensors: dict[str, tuple[WeightFile, TensorEntry]] = {}
    for wf in files:
        for e in wf.entries:
            if e.name in tensors:
                raise PearError(f"tensor {e.name} is in both {tensors[e.name][0].path.name} and {wf.path.name}")
            tensors[e.name] = (wf, e)
    model = meta_model(folder)
    sources = checkpoint_names(model)
    shapes = dict(model.state_dict())
    for key, source in sources.items():
        if source not in tensors:
            raise NotStreamable(f"the model's tensor {source} is not in the safetensors files under that name")
        if tensors[source][1].shape != tuple(shapes[key].shape):
            raise NotStreamable(f"tensor {source} has shape {list(tensors[source][1].shape)}, the model's is "
                                f"{list(shapes[key].shape)}")
    return FolderModel(folder, model, ArchAdapter(model), files, tensors, sources)


def _read_exactly(fh: BinaryIO, buffer: bytearray | memoryview, where: Path) -> None:
    if fh.readinto(buffer) != len(buffer):
        raise PearError(f"{where} ended early while reading it (changed on disk?)")


def tensor_pieces(fh: BinaryIO, wf: WeightFile, entry: TensorEntry, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
    """A tensor's values as consecutive 1-D pieces of at most `chunk` bytes (C order; none for an empty one)."""
    dtype = DTYPES[entry.dtype]
    step = max(dtype.itemsize, chunk - chunk % dtype.itemsize)
    fh.seek(entry.begin)
    for start in range(entry.begin, entry.end, step):
        buffer = bytearray(min(step, entry.end - start))
        _read_exactly(fh, buffer, wf.path)
        yield torch.frombuffer(buffer, dtype=dtype)


def read_tensor(fh: BinaryIO, wf: WeightFile, entry: TensorEntry) -> torch.Tensor:
    """A whole tensor, shaped, in its own dtype, backed by a writable buffer of its bytes."""
    dtype = DTYPES[entry.dtype]
    if entry.end == entry.begin:
        return torch.empty(entry.shape, dtype=dtype)
    buffer = bytearray(entry.end - entry.begin)
    fh.seek(entry.begin)
    _read_exactly(fh, buffer, wf.path)
    return torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)


class Reader:
    """Open handles to a folder's weight files, to read tensors by checkpoint name in any order."""

    def __init__(self, fm: FolderModel):
        self.fm = fm
        self.handles: dict[Path, BinaryIO] = {}

    def _handle(self, wf: WeightFile) -> BinaryIO:
        if wf.path not in self.handles:
            self.handles[wf.path] = wf.path.open("rb")
        return self.handles[wf.path]

    def pieces(self, name: str) -> Iterator[torch.Tensor]:
        wf, entry = self.fm.tensors[name]
        return tensor_pieces(self._handle(wf), wf, entry)

    def tensor(self, name: str) -> torch.Tensor:
        wf, entry = self.fm.tensors[name]
        return read_tensor(self._handle(wf), wf, entry)

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        for fh in self.handles.values():
            fh.close()


def folder_fingerprint(fm: FolderModel, name: str) -> ModelFingerprint:
    """The fingerprint load_model(folder).fingerprint() gives (pear_edge.runtime.models.fingerprint), read
    tensor by tensor: sha256 over the sorted state-dict keys in fp32, then each layer's o_proj."""
    adapter = fm.adapter
    with Reader(fm) as reader:
        digest = weights_digest((key, reader.pieces(source)) for key, source in sorted(fm.sources.items()))
        weights = (o_proj_out_in(adapter, reader.tensor(fm.name_of(adapter.o_proj_weight(layer))))
                   for layer in range(adapter.num_layers))
        return ModelFingerprint.from_o_proj_weights(adapter.layout, weights, digest, name)


def edits_by_tensor(fm: FolderModel, coefficients: Coefficients) -> dict[str, list[Callable[[torch.Tensor], None]]]:
    """Checkpoint tensor name -> its in-place transformations, in fold order (pear_edge.edits.fold.weight_edits)."""
    plan: dict[str, list[Callable[[torch.Tensor], None]]] = {}
    for weight, edit in weight_edits(fm.adapter, coefficients):
        plan.setdefault(fm.name_of(weight), []).append(edit)
    return plan


def copy_bytes(src: BinaryIO, dest: BinaryIO, begin: int, end: int, where: Path, chunk: int = CHUNK) -> None:
    """Bytes [begin, end) of `src` appended to `dest`, `chunk` at a time."""
    src.seek(begin)
    buffer = bytearray(min(chunk, max(end - begin, 0)))
    view = memoryview(buffer)
    for start in range(begin, end, chunk):
        piece = view[: min(chunk, end - start)]
        _read_exactly(src, piece, where)
        dest.write(piece)


def write_folded_file(wf: WeightFile, dest: Path, plan: dict[str, list[Callable[[torch.Tensor], None]]]) -> None:
    """`wf` with the tensors in `plan` transformed; header and every other byte copied as they are."""
    with wf.path.open("rb") as src, dest.open("wb") as out:
        copy_bytes(src, out, 0, wf.data_start, wf.path)
        for entry in wf.entries:
            edits = plan.get(entry.name)
            if not edits:
                copy_bytes(src, out, entry.begin, entry.end, wf.path)
                continue
            tensor = read_tensor(src, wf, entry)
            with torch.no_grad():
                for edit in edits:
                    edit(tensor)
            out.write(tensor.reshape(-1).view(torch.uint8).numpy())
            src.seek(entry.end)


def files_to_copy(folder: Path, weight_files: list[str]) -> tuple[list[Path], list[str]]:
    """(the folder's other top-level files, copied as they are: config, tokenizer, index, README, ...;
    what is left out: folders, other weight formats, pear-edge's own marker)."""
    copied, left = [], []
    for item in sorted(folder.iterdir()):
        if item.name in weight_files or item.name == MARKER:
            continue
        if not item.is_file():
            left.append(item.name + "/")
        elif item.name.endswith(OTHER_WEIGHT_SUFFIXES):
            left.append(item.name)
        else:
            copied.append(item)
    return copied, left


@dataclass(frozen=True)
class StreamedFold:
    output: Path
    match: str  # "exact" or "compatible" (ModelFingerprint.check_matches)
    left_out: list[str]  # files of the source folder not copied (files_to_copy)


def fold_folder(source: Path, coefficients: Coefficients, output: str | Path, replace: bool = False) -> StreamedFold:
    """Fold `coefficients` into a safetensors folder tensor by tensor into a new folder (atomically): the same
    files, tensor order, dtypes and metadata, only the edited tensors changed; config, tokenizer and other files
    copied; pear_coefficients.json added. Refuses coefficients of another model, as fold_model does.
    Raises NotStreamable (before writing anything) for a folder `open_folder` cannot read tensor by tensor."""
    check_not_patched(source)
    fm = open_folder(source)
    match = coefficients.model.check_matches(folder_fingerprint(fm, source.name), what=str(source))
    plan = edits_by_tensor(fm, coefficients)
    copied, left = files_to_copy(source, [wf.path.name for wf in fm.files])
    out = check_output(output, source, kind=Kind.FOLDER, replace=replace)
    with atomic_dir(out, replace=replace) as tmp:
        for item in copied:
            shutil.copyfile(item, tmp / item.name)
        for wf in fm.files:
            write_folded_file(wf, tmp / wf.path.name, plan)
        coefficients.save(tmp / COEFFICIENTS_FILENAME)
    return StreamedFold(out, match, left)
