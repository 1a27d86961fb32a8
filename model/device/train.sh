#!/bin/bash
# One prepared training run on a lent GPU (see model/README.md). Carries .data (from
# `model/training/data.py pack`); writes the checkpoint parts, the profiles and the log to $OUT.
#   MINUTES=5 bash model/device/train.sh [extra train.py flags, for the profiles and the run alike]
# The run trains at batch 256, torch.compile'd, the key bias folded into q/k (train.py --attn-bias fold):
# 590.7 crops/s on an H200 against 190-212 eager at batch 64-256 (model/measure/speed.py, results/speed-h200.log;
# RUN overrides these flags). Its own profile (where a step's time goes) is printed after its 15th step.
# BATCHES (e.g. "64,256 --compile") profiles those first, each in a process of its own, and trains with
# the fastest; a compiled profile gets 3 × PROFILE_S (its first steps compile: over a minute).
# Defaults: clean bicubic LR (TASK=bicubic: JPEG uploads go through the restorer, and every fine-tune of
# this model on real2's JPEG input cost it clean fidelity; TASK=real2 still works), continuing from the
# released weights, with release 3's seam loss (SEAM=5 SEAM_LOSS=ratio: train.py --seam-weight
# --seam-loss; SEAM=0 turns it off; SEAM_LOSS=steps is release 2's). The ratio is the batch's, so it is
# steadier at a GPU's batch sizes.
# Last (~1 min): model/measure/evaluate.py on the GPU, clean and JPEG q75 LR, into $OUT/eval, then the 16× cascade
# (fidelity, eval-x16.json; EVAL16=0 leaves it out) — the figures come back with the weights, so no device
# time is spent twice. Export and engine checks run on this side.
# Send it with model/device/tree.sh slim .data first (the tracked tree alone is over the tool's 64 MiB).
# What comes back must fit the device tool's limits (8 files of ≤ 16 MiB, 2 folders down): one log,
# $OUT/run.log, the checkpoint in 15-MiB parts (3) and the evaluations' 4 files. The run's minutes are cut
# to what the command's time leaves (BUDGET_S, 570 of the 600 s a command may run) after the profiles,
# less EVAL_S (150) for the evaluation, so the figures come back too.
# The rest is for a dry run anywhere (model/tests/test_device_train.py runs it on the CPU, small):
# PYTHON (python3), DATA (.data), BATCHES (the profiled set, comma-separated), PROFILE_STEPS/PROFILE_SKIP
# (10/5; the run's own too), PROFILE_S (60: an eager profile's time limit), EVAL_DEVICE (cuda), EVAL_ARGS and EVAL16_ARGS
# (more evaluate.py flags for the 4× and the 16× evaluation),
# BUDGET_S and EVAL_S (above).
set -x -o pipefail
: "${OUT:?set OUT to the folder that comes back: on the device machine, its \$OUT}"
mkdir -p "$OUT"; LOG=$OUT/run.log
PY=${PYTHON:-python3}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
$PY -c "import torch; print(torch.__version__)" || exit 1
export PYTHONUNBUFFERED=1
TASK=${TASK:-bicubic}; INIT=${INIT:-model/release/infdit-s4.ckpt.pt}; DATA=${DATA:-.data}; BUDGET_S=${BUDGET_S:-570}
PROFILE_STEPS=${PROFILE_STEPS:-10}; PROFILE_SKIP=${PROFILE_SKIP:-5}
# what the profiles and the run share: a profile measures the run's own degradations and loss
common=(--config "${CONFIG:-infdit-s/4}" --data "$DATA" --task "$TASK" ${MIX:+--mix "$MIX"}
        --seam-weight "${SEAM:-5}" --seam-loss "${SEAM_LOSS:-ratio}" --no-optimizer-in-ckpt "$@")
best=""; bestrate=0
IFS=',' read -ra candidates <<< "${BATCHES:-}"
for cfgb in "${candidates[@]}"; do
  b=${cfgb%% *}; c=${cfgb#$b}
  ps=${PROFILE_S:-60}; [[ $c == *--compile* ]] && ps=$(( 3 * ps ))
  # a profile that fails or runs out of time is reported and skipped, never the end of the script
  r=$(timeout "$ps" $PY model/training/train.py "${common[@]}" --init "$INIT" --ckpt "$OUT/profile" --minutes "$(awk -v s=$ps 'BEGIN{printf "%.2f", (s - 6) / 60}')" --batch $b \
      --profile-steps $PROFILE_STEPS --profile-skip $PROFILE_SKIP --max-steps $(( PROFILE_STEPS + PROFILE_SKIP )) --save-every 1e9 $c 2>&1 \
      | tee -a "$LOG" | sed -n 's/.*; \([0-9.]*\) crops\/s$/\1/p' | tail -1) || true
  echo "batch $b ${c:-eager}: ${r:-failed} crops/s" | tee -a "$LOG"
  if [ -n "$r" ] && awk "BEGIN{exit !($r > $bestrate)}"; then bestrate=$r; best="--batch $b $c"; fi
done
rm -rf "$OUT/profile"
left=$(( BUDGET_S - SECONDS - ${EVAL_S:-150} ))
if [ $left -lt 30 ]; then echo "$left s left for training after the profiles (BUDGET_S, EVAL_S): stopping" | tee -a "$LOG"; exit 1; fi
minutes=$(awk -v m="${MINUTES:-5}" -v left=$left 'BEGIN{t = left / 60; printf "%.2f", (t < m ? t : m)}')
echo "training for $minutes min (MINUTES ${MINUTES:-5}, $SECONDS s spent)" | tee -a "$LOG"
run=${best:-${RUN:---batch 256 --compile --attn-bias fold}}
# a torch without torch.compile (Debian's 1.13) trains eager rather than failing on the flag
if [[ " $run " == *" --compile "* ]] && ! $PY -c "import sys, torch; sys.exit(0 if hasattr(torch, 'compile') else 1)"; then
  run=$(echo " $run " | sed 's/ --compile / /'); echo "torch $($PY -c 'import torch; print(torch.__version__)') has no torch.compile: training eager ($run)" | tee -a "$LOG"
fi
$PY model/training/train.py "${common[@]}" --ckpt "$OUT/ckpt" --init "$INIT" --minutes "$minutes" --total-steps 0 \
  $run --lr "${LR:-3e-4}" --warmup 100 --ema "${EMA:-0.998}" --save-every 90 --log-every 25 \
  --profile-steps $PROFILE_STEPS --profile-skip $PROFILE_SKIP \
  2>&1 | tee -a "$LOG" || { echo "training failed: no evaluation" | tee -a "$LOG"; exit 1; }
ls -la "$OUT" "$OUT/ckpt"
left=$(( BUDGET_S - SECONDS )); [ $left -lt 30 ] && left=30
# euler4: release 5's detail sampler (4 Euler steps), by name: release 6 offers fidelity only, a GPU run is where detail can be learned
timeout $left $PY model/measure/evaluate.py --device "${EVAL_DEVICE:-cuda}" --ckpt "$OUT/ckpt/last.pt" --data "$DATA" \
  --manifest model/release/infdit-s4.json --out "$OUT/eval" --variants clean,jpeg75 --presets fidelity,euler4 --detail-steps 4 \
  --restorer model/release/infdit-s4.restore.ckpt.pt ${EVAL_ARGS} 2>&1 | tee -a "$LOG"
if [ "${EVAL16:-1}" != 0 ]; then
  left=$(( BUDGET_S - SECONDS )); [ $left -lt 30 ] && left=30
  timeout $left $PY model/measure/evaluate.py --device "${EVAL_DEVICE:-cuda}" --ckpt "$OUT/ckpt/last.pt" --data "$DATA" \
    --manifest model/release/infdit-s4.json --out "$OUT/eval" --scale 16 --variants clean --presets fidelity --no-ablation --no-crops \
    ${EVAL16_ARGS} 2>&1 | tee -a "$LOG"
fi
