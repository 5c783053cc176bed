"""Give a converted GGUF the tokenizer of the GGUF its weights came from.

Exporting a model that was loaded from a GGUF goes GGUF -> transformers (fp32) -> llama.cpp's converter.
transformers rebuilds a tokenizer.json that the converter cannot map back: SmolLM2's byte-level BPE comes
back with byte_fallback set and an unrecognised pre-tokenizer, so the converter writes a SentencePiece
('llama') vocabulary and llama.cpp aborts on the first text it tokenizes. The source GGUF's tokenizer.*
keys are the original ones; copying them over the converter's restores exactly the shipped tokenizer.
"""
from __future__ import annotations

from pathlib import Path

from pear_edge.base.errors import PearError

TOKENIZER_PREFIX = "tokenizer."


def _copy_field(writer, field) -> None:
    import gguf

    value_type = field.types[0]
    sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)


def replace_tokenizer(source_gguf: Path, converted: Path, output: Path) -> None:
    """Write `converted` to `output` with every tokenizer.* key taken from `source_gguf` instead."""
    import gguf

    source = gguf.GGUFReader(source_gguf)
    target = gguf.GGUFReader(converted)
    tokens = source.fields.get(gguf.Keys.Tokenizer.LIST)
    embed_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    embedding = next((t for t in target.tensors if t.name == embed_name), None)
    if tokens is None or embedding is None:
        raise PearError(f"{source_gguf} has no tokenizer vocabulary to carry over")
    if len(tokens.data) != int(embedding.shape[-1]):
        raise PearError(f"{source_gguf} has {len(tokens.data)} tokens but the exported model embeds "
                        f"{int(embedding.shape[-1])}; the source GGUF is not this model's")
    arch = target.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(output, arch=arch, endianess=target.endianess)
    for field in target.fields.values():
        if field.name.startswith(("GGUF.", TOKENIZER_PREFIX)) or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        _copy_field(writer, field)
    for field in source.fields.values():
        if field.name.startswith(TOKENIZER_PREFIX):
            _copy_field(writer, field)
    for tensor in target.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in target.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
