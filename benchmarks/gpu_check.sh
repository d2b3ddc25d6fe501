#!/usr/bin/env bash
# The prepared GPU check (issue 19): what a GPU user's paths cost, in one run of at most 10 minutes on one
# H100/H200. Writes benchmarks/results/gpu-<date>.txt (or OUT/gpu-smoke-<date>.txt).
#
#   benchmarks/gpu_check.sh                 # on a GPU machine, from the repository root
#   benchmarks/gpu_check.sh --smoke [OUT]   # the same steps at toy sizes on CPU, so the script cannot rot (a test)
#
# 1. SD-1.5-shaped training (random weights, real widths), 256 px, 8 + 8 views, bf16-mixed with a bf16
#    backbone, gradient checkpointing: peak memory (P4 target <= 24 GB) and seconds per step; also one fp16
#    backbone under 16-mixed (the combination CPU cannot run).
# 2. xformers against SDPA for the cross-view attention: largest difference and speed ratio.
# 3. P1 (denoiser_overhead.py) and P2 (guidance_overhead.py) on CUDA in bf16.
# 4. 50-step sampling of 8 views ("mv", "consistency").
# 5. tiny-if fit throughput: tunemv fit --config configs/tiny.yaml on the GPU, bf16-mixed.
# Each step has its own time limit; a step that fails is recorded as FAILED and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python && -z "${PYTHON_SET:-}" ]] && PYTHON=.venv/bin/python
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; OUT_DIR=${2:-benchmarks/results}; else OUT_DIR=benchmarks/results; fi
mkdir -p "$OUT_DIR"
STAMP=$(date -u +%Y%m%d-%H%M%S)
if (( SMOKE )); then
  REPORT="$OUT_DIR/gpu-smoke-$STAMP.txt"; DEVICE=cpu; ACCEL=cpu
  UNET=tiny; VIEWS=2; SUP=2; LATENT=8; STEPS=1; SAMPLE_STEPS=2; FIT_STEPS=2; LIMIT=120; REPEATS=1; OBJECTS=3
  CONFIG_SHAPE=(--config tiny --latent 8 --views 2)
else
  REPORT="$OUT_DIR/gpu-$STAMP.txt"; DEVICE=cuda; ACCEL=gpu
  UNET=sd15; VIEWS=8; SUP=8; LATENT=32; STEPS=3; SAMPLE_STEPS=50; FIT_STEPS=300; LIMIT=150; REPEATS=3; OBJECTS=20
  CONFIG_SHAPE=(--config sd15 --latent 32 --views 8)
fi
export WANDB_MODE=offline PYTHONWARNINGS=ignore
FAILED=0

section() { printf '\n## %s\n' "$*" | tee -a "$REPORT"; }
run() {  # run LIMIT_SECONDS COMMAND...: its output goes to the report; a failure is recorded, not fatal
  local limit=$1; shift
  echo "\$ $*" >> "$REPORT"
  local start=$SECONDS
  timeout "$limit" "$@" >> "$REPORT" 2>&1
  local code=$?
  if (( code != 0 )); then echo "FAILED (exit $code): $*" | tee -a "$REPORT"; FAILED=$((FAILED + 1)); fi
  echo "(${SECONDS}s total, this step $((SECONDS - start)) s)" >> "$REPORT"
}

{
  echo "# tunemv GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "smoke: $SMOKE"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} >> "$REPORT" 2>&1
"$PYTHON" -c "import tunemv" 2>/dev/null || "$PYTHON" -m pip install -q -e . >> "$REPORT" 2>&1

section "1. training step: $UNET shape, $VIEWS + $SUP views, ${LATENT}x$LATENT latents, bf16-mixed, bf16 backbone, checkpointing"
run "$LIMIT" "$PYTHON" benchmarks/training_step.py --unet "$UNET" --views "$VIEWS" --supervision "$SUP" \
  --latent "$LATENT" --checkpointing --steps "$STEPS" --device "$DEVICE" --backbone-dtype bfloat16 --autocast bf16
if (( ! SMOKE )); then
  section "1b. the same with a float16 backbone under 16-mixed (fp16 autocast; refused on CPU)"
  run "$LIMIT" "$PYTHON" benchmarks/training_step.py --unet "$UNET" --views "$VIEWS" --supervision "$SUP" \
    --latent "$LATENT" --checkpointing --steps "$STEPS" --device "$DEVICE" --backbone-dtype float16 --autocast fp16
fi

section "2. cross-view attention: xformers against SDPA"
run 60 "$PYTHON" benchmarks/cross_view_kernels.py --device "$DEVICE" --dtype bfloat16 --views "$VIEWS" \
  --latent "$LATENT" --repeats "$REPEATS"

section "3. P1 (adapter forward / frozen UNet) and P2 (guidance per-step cost), bf16"
run "$LIMIT" "$PYTHON" benchmarks/denoiser_overhead.py "${CONFIG_SHAPE[@]}" --device "$DEVICE" --dtype bfloat16 --repeats "$REPEATS"
run "$LIMIT" "$PYTHON" benchmarks/guidance_overhead.py "${CONFIG_SHAPE[@]}" --device "$DEVICE" --dtype bfloat16 --repeats "$REPEATS"

section "4. sampling: $VIEWS views, $SAMPLE_STEPS steps"
run "$LIMIT" "$PYTHON" benchmarks/sampling_time.py --unet "$UNET" --views "$VIEWS" --steps "$SAMPLE_STEPS" \
  --device "$DEVICE" --dtype bfloat16

section "5. tiny-if fit throughput: configs/tiny.yaml, $FIT_STEPS steps"
WORK=$(mktemp -d)
run 120 "$PYTHON" -m tunemv data procedural --out "$WORK/data" --objects "$OBJECTS" --views 8 --resolution 32 --val-fraction 0 --quiet
FIT_START=$SECONDS
run "$LIMIT" "$PYTHON" -m tunemv fit --config configs/tiny.yaml --data.init_args.root "$WORK/data" \
  --trainer.accelerator "$ACCEL" --trainer.precision "$([[ $SMOKE == 1 ]] && echo 32-true || echo bf16-mixed)" \
  --trainer.max_steps "$FIT_STEPS" --trainer.limit_val_batches 0 --trainer.logger false \
  --trainer.enable_progress_bar false --trainer.default_root_dir "$WORK/run"
echo "fit: $FIT_STEPS steps in $((SECONDS - FIT_START)) s wall, start-up included" | tee -a "$REPORT"
rm -rf "$WORK"

section "done: $FAILED failed step(s), ${SECONDS} s in all"
echo "report: $REPORT"
exit $(( FAILED > 0 ))
