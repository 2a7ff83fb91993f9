#!/usr/bin/env bash
# One prepared run of the CUDA paths, and a throughput table next to the paper's V100 figures.
#
#   benchmarks/gpu_check.sh [--cpu-smoke] [OUT_DIR]        (CPVT_EVAL_CPU_SMOKE=1 is the same as --cpu-smoke)
#
# On a GPU machine (no network needed: random-weight checkpoints and generated JPEGs), each step once:
#   pinned    the engine's loader gives pinned batches; a non-blocking copy to the GPU arrives intact
#   eval-*    `resolution` on the GPU in fp32, bf16 and fp16 autocast (pinned memory and non-blocking copies are
#             the engine's CUDA path), with the interleaved throughput column; rows and provenance checked
#   tp-*      `throughput --batch-size auto` for DeiT/CPVT-Ti/S/B (the paper's five-PEG CPVT models) at
#             224-512, each DeiT timed with its CPVT in interleaved rounds, fp32 and fp16
#   oom       `throughput` at a batch far too large: the batch is halved until it fits (oom_retries > 0)
#   torchrun  a one-node `torchrun` over NCCL with one process per GPU (a single GPU makes a world of one,
#             which runs local: NCCL needs two GPUs or more)
# and writes OUT_DIR/throughput_table.md (device, images/s, IQR of the rounds, CPVT/DeiT ratio, the paper's
# V100 images/s where it has them), OUT_DIR/steps.tsv (step, exit code, seconds) and a log per step.
# A failed step does not stop the others; the script exits 1 if any failed.
#
# --cpu-smoke: the same steps on the CPU with toy models, tiny sizes, a few images and no fp16 evaluation, in one
# to three minutes on two cores; the CUDA-only checks (pinned memory, OOM halving) report "skipped". A test runs it
# (tests/test_gpu_check.py, marked slow).
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=${CPVT_EVAL_CPU_SMOKE:-0}
OUT=""
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) OUT=$arg ;;
  esac
done
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [[ $SMOKE == 1 ]]; then
  DEVICE=cpu
  EVAL_MODELS=(deit_toy cpvt_toy)
  PAIRS=("deit_toy cpvt_toy")
  SIZES=(32 48)
  EVAL_SIZES=(32 48)
  TP_DTYPES=(fp32)
  EVAL_DTYPES=(fp32 bf16)
  N_IMAGES=8
  EVAL_BATCH=4
  BUDGET=0.05
  NPROC=2
else
  DEVICE=cuda
  EVAL_MODELS=(deit_ti cpvt_ti_plus)
  PAIRS=("deit_ti cpvt_ti_plus" "deit_s cpvt_s_plus" "deit_b cpvt_b_plus")
  SIZES=(224 384 448 512)
  EVAL_SIZES=(224 384)
  TP_DTYPES=(fp32 fp16)
  EVAL_DTYPES=(fp32 bf16 fp16)
  N_IMAGES=512
  EVAL_BATCH=128
  BUDGET=2
  NPROC=$(nvidia-smi -L 2>/dev/null | wc -l)
  ((NPROC >= 1)) || NPROC=1
fi
BACKEND=local
if ((NPROC > 1)); then
  if [[ $DEVICE == cuda ]]; then BACKEND=nccl; else BACKEND=gloo; fi
fi

CLI=("$PY" -m cpvt_eval)
HELP=("$PY" benchmarks/gpu_check_helpers.py)
DATA=$OUT/data
CKPT=$OUT/checkpoints
printf 'step\texit\tseconds\n' >"$OUT/steps.tsv"
FAILED=0

step() { # step NAME COMMAND...: run, log to OUT/NAME.log, record the exit code and the seconds
  local name=$1
  shift
  local t0=$SECONDS
  echo "== $name: $*" >&2
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$OUT/steps.tsv"
  if ((rc != 0)); then
    FAILED=1
    echo "   failed (exit $rc), last lines of $OUT/$name.log:" >&2
    tail -n 5 "$OUT/$name.log" >&2
  fi
  return $rc
}

ckpt_args=()
all_models=("${EVAL_MODELS[@]}")
for m in "${all_models[@]}"; do ckpt_args+=(--checkpoint "$m=$CKPT/$m.pth"); done
eval_args=(-m "${EVAL_MODELS[@]}" -s "${EVAL_SIZES[@]}" --data "$DATA" "${ckpt_args[@]}" --model-arg num_classes=1000
  -b "$EVAL_BATCH" --throughput-budget "$BUDGET")

make_inputs() { "${HELP[@]}" checkpoints "$CKPT" "${all_models[@]}" && "${HELP[@]}" data "$DATA" "$N_IMAGES"; }
to_file() { # to_file FILE COMMAND...: the command's stdout into FILE
  local file=$1
  shift
  "$@" >"$file"
}

step env "$PY" -c "import sys, torch, cpvt_eval
print(sys.version, 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())
print([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], 'cpvt_eval', cpvt_eval.__version__)"
[[ $SMOKE == 1 ]] || step nvidia-smi nvidia-smi
step inputs make_inputs
if [[ $DEVICE == cuda ]]; then
  step pinned "${HELP[@]}" pinned "$DEVICE" "$DATA"
else
  printf 'pinned\tskipped\t0\n' >>"$OUT/steps.tsv"
fi

for dt in "${EVAL_DTYPES[@]}"; do
  step "eval-$dt" "${CLI[@]}" resolution "${eval_args[@]}" --device "$DEVICE" --dtype "$dt" --out "$OUT/run-$dt" &&
    step "eval-$dt-check" "${HELP[@]}" run "$OUT/run-$dt" 1 local
done

tp_json=()
for pair in "${PAIRS[@]}"; do
  read -r -a models <<<"$pair"
  for dt in "${TP_DTYPES[@]}"; do
    json=$OUT/tp-${models[0]}-$dt.json
    step "tp-${models[0]}-$dt" to_file "$json" "${CLI[@]}" throughput -m "${models[@]}" -s "${SIZES[@]}" \
      --batch-size auto --dtype "$dt" --device "$DEVICE" --budget "$BUDGET" --warmup 2 --json &&
      tp_json+=("$json")
  done
done
((${#tp_json[@]} > 0)) && step table "${HELP[@]}" table "$OUT/throughput_table.md" "${tp_json[@]}"

if [[ $DEVICE == cuda ]]; then
  # 65536 images of 512 px are 206 GB of fp32 input alone: the batch must be halved several times.
  step oom to_file "$OUT/oom.json" "${CLI[@]}" throughput -m deit_b -s 512 -b 65536 --repeats 1 --warmup 0 \
    --no-flops --device cuda --json && step oom-check "${HELP[@]}" oom "$OUT/oom.json"
else
  printf 'oom\tskipped\t0\n' >>"$OUT/steps.tsv"
fi

step torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m cpvt_eval resolution \
  "${eval_args[@]}" --device "$DEVICE" --out "$OUT/run-torchrun" &&
  step torchrun-check "${HELP[@]}" run "$OUT/run-torchrun" "$NPROC" "$BACKEND"

{
  echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') · device $DEVICE · smoke $SMOKE · torchrun processes $NPROC ($BACKEND)"
  echo
  column -t -s $'\t' "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
  echo
  cat "$OUT/throughput_table.md" 2>/dev/null
} | tee "$OUT/summary.md"
exit $FAILED
