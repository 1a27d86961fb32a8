#!/bin/bash
# One prepared training run on a lent GPU (see model/README.md). Carries .data (from
# `model/data.py pack`); writes the checkpoint parts, the profiles and the log to $OUT.
#   MINUTES=5 bash model/device_train.sh [extra train.py flags]
# First ≤ 3 minutes: where a step's time goes (data, degradations, forward+backward, optimizer,
# EMA) at batch 64 and 256 eager and 256 torch.compile'd; then the run itself with the fastest.
# Defaults: clean bicubic LR (TASK=bicubic: JPEG uploads go through the restorer, and every fine-tune of
# this model on real2's JPEG input cost it clean fidelity; TASK=real2 still works), continuing from the
# released weights, with release 3's seam loss (SEAM=5 SEAM_LOSS=ratio: train.py --seam-weight
# --seam-loss; SEAM=0 turns it off; SEAM_LOSS=steps is release 2's). The ratio is the batch's, so it is
# steadier at a GPU's batch sizes.
# Last (~1 min): model/evaluate.py on the GPU, clean and JPEG q75 LR, into $OUT/eval — the figures
# come back with the weights, so no device time is spent twice. Export and engine checks run on this side.
set -x
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch; print(torch.__version__)"
export PYTHONUNBUFFERED=1
TASK=${TASK:-bicubic}; INIT=${INIT:-model/release/infdit-s4.ckpt.pt}
best=""; bestrate=0
for cfgb in "64" "256" "256 --compile"; do
  b=${cfgb%% *}; c=${cfgb#$b}
  r=$(timeout 60 python3 model/train.py --config "${CONFIG:-infdit-s/4}" --data .data --ckpt "$OUT/profile" --task "$TASK" \
      --minutes 0.9 --batch $b --profile-steps 15 --profile-skip 8 --max-steps 23 --save-every 1e9 --no-optimizer-in-ckpt $c 2>&1 \
      | tee -a "$OUT/profile.log" | sed -n 's/.*; \([0-9.]*\) crops\/s$/\1/p' | tail -1)
  echo "batch $b ${c:-eager}: ${r:-failed} crops/s" | tee -a "$OUT/profile.log"
  if [ -n "$r" ] && awk "BEGIN{exit !($r > $bestrate)}"; then bestrate=$r; best="--batch $b $c"; fi
done
rm -rf "$OUT/profile"
python3 model/train.py --config "${CONFIG:-infdit-s/4}" --data .data --ckpt "$OUT/ckpt" --task "$TASK" --init "$INIT" \
  --minutes "${MINUTES:-5}" --total-steps 0 ${best:---batch 64} --lr "${LR:-3e-4}" --warmup 100 \
  --ema "${EMA:-0.998}" ${MIX:+--mix "$MIX"} --save-every 90 --no-optimizer-in-ckpt --log-every 25 \
  --seam-weight "${SEAM:-5}" --seam-loss "${SEAM_LOSS:-ratio}" "$@" 2>&1 | tee "$OUT/train.log"
ls -la "$OUT" "$OUT/ckpt"
timeout 240 python3 model/evaluate.py --device cuda --ckpt "$OUT/ckpt/last.pt" --data .data \
  --manifest model/release/infdit-s4.json --out "$OUT/eval" --variants clean,jpeg75 --presets fidelity,detail \
  --restorer model/release/infdit-s4.restore.ckpt.pt 2>&1 \
  | tee "$OUT/eval.log"
