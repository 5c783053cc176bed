#!/usr/bin/env bash
# The GPU measurements in one go, on a machine with an NVIDIA GPU (set-up included):
#
#   bash scripts/gpu_check.sh OUT [--dry-run]          (or: make gpu-check OUT=OUT)
#
# Stages run in this order, each under its own time limit and within a total budget (GPU_CHECK_BUDGET_S,
# default 600 s), each logged to OUT/STAGE.log; a stage that fails or times out costs only its own
# results. OUT/summary.tsv: stage, exit code (124: timed out; "skipped": no budget left), seconds.
#   env          nvidia-smi (GPU, driver, CUDA version)
#   setup        scripts/setup.sh --cuda: CUDA torch, llama-cpp-python's CUDA wheel (cached; an interrupted
#                build resumes on the next run), onnxruntime-gpu
#   environment  GPU and runtime versions as JSON (python -m pear_edge.runtime.device)   -> OUT/environment.json
#   speed-gguf   default model, shipped Q4_1 patched with the shipped coefficients, and Q4_K_M, Q8_0 from
#                llama.cpp's quantizer; every layer on the GPU; base vs patched     -> OUT/speed-gguf/
#   calibrate    pear-edge calibrate --device cuda, frozen weights in fp32 and in bf16 (and, with 2+ GPUs,
#                data-parallel over them with torchrun, NCCL): wall time, peak RSS, peak GPU memory, held-out
#                loss, max coefficient change against the first run                 -> OUT/calibrate/
#   speed-torch  the same comparison in torch (fp32) on the GPU                     -> OUT/speed-torch/
#   speed-onnx   ONNX int8 on onnxruntime's CUDA execution provider                -> OUT/speed-onnx/
# --dry-run prints the stages, their limits and commands, and runs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${GPU_CHECK_BUDGET_S:-600}
MIN_STAGE_S=30      # a stage with less time left than this is skipped
ROUNDS=6            # interleaved base/patched rounds per speed stage
PY=${VENV:-.venv}/bin/python

OUT="" DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -*) echo "pear-edge: error: unknown option $arg (scripts/gpu_check.sh OUT [--dry-run])" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done
[ -n "$OUT" ] || { echo "pear-edge: error: give an output folder (scripts/gpu_check.sh OUT [--dry-run])" >&2; exit 2; }
[ "$DRY" = 1 ] || { mkdir -p "$OUT" && printf 'stage\texit\tseconds\n' >"$OUT/summary.tsv"; } || exit 2

START=$SECONDS FAILED=0
stage() {  # stage NAME LIMIT_S COMMAND...: run COMMAND under min(LIMIT_S, budget left), log and record it
  local name=$1 limit=$2 left=$((BUDGET - (SECONDS - START))) begin=$SECONDS rc=0
  shift 2
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$DRY" = 1 ]; then echo "$name (<= ${limit} s): $*"; return; fi
  if [ "$limit" -lt "$MIN_STAGE_S" ]; then
    printf '%s\tskipped\t0\n' "$name" >>"$OUT/summary.tsv"; echo "[$name] skipped: budget spent"; FAILED=1; return
  fi
  echo "[$name] up to ${limit} s: $*"
  timeout -k 30 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - begin)) >>"$OUT/summary.tsv"
  echo "[$name] exit $rc after $((SECONDS - begin)) s (log: $OUT/$name.log)"
  [ "$rc" = 0 ] || FAILED=1
}
BENCH=("$PY" -m pear_edge.eval.lab.bench_speed --device cuda --rounds "$ROUNDS")

stage env 30 nvidia-smi
stage setup 420 bash scripts/setup.sh --cuda
stage environment 60 bash -c '"$1" -m pear_edge.runtime.device >"$2"' - "$PY" "$OUT/environment.json"
stage speed-gguf 240 "${BENCH[@]}" --formats gguf,Q4_K_M,Q8_0 -o "$OUT/speed-gguf"
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
RUNS=(--run "cuda-fp32=--device cuda --dtype fp32" --run "cuda-bf16=--device cuda --dtype bf16")
[ "${GPUS:-0}" -ge 2 ] && RUNS+=(--run "nccl-$GPUS=--device cuda --dtype fp32 --ranks $GPUS")
stage calibrate 300 "$PY" -m pear_edge.eval.lab.bench_calibrate "${RUNS[@]}" -o "$OUT/calibrate"
stage speed-torch 150 "${BENCH[@]}" --formats torch -o "$OUT/speed-torch"
stage speed-onnx 240 "${BENCH[@]}" --formats onnx-int8 -o "$OUT/speed-onnx"
[ "$DRY" = 1 ] || echo "done in $((SECONDS - START)) s: $OUT/summary.tsv"
exit "$FAILED"
