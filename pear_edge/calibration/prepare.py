"""Fill the caches that the first calibration would otherwise fill, so `make demo` and `pear-edge calibrate`
start working at once after set-up (run by scripts/setup.sh; safe to run again, it only reads caches then):

- the default model dequantized from its shipped GGUF to fp32 safetensors (`pear_edge.runtime.models.load_model`);
- the MiniLM embeddings of the built-in cloze corpus (`pear_edge.data.corpora.embed_passages`), when the corpus'
  Debian packages are unpacked.

    python -m pear_edge.calibration.prepare
"""
from __future__ import annotations

import sys
import time


def prepare(progress: bool = True) -> list[str]:
    """Returns what was prepared, one line each."""
    from pear_edge.data.corpora import corpus_passages, embed_passages
    from pear_edge.base.errors import PearError
    from pear_edge.runtime.models import load_model

    done = []
    start = time.perf_counter()
    load_model("default")
    done.append(f"default model (fp32 safetensors cache), {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    try:
        passages = corpus_passages(None)
    except PearError as e:  # the dict packages could not be installed; calibrate --corpus still works
        done.append(f"built-in corpus skipped: {e}")
        return done
    embed_passages(passages, progress)
    done.append(f"built-in corpus embeddings ({len(passages)} passages), {time.perf_counter() - start:.0f} s")
    return done


def main() -> int:
    for line in prepare(progress=sys.stderr.isatty()):
        print(f"prepared: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
