#!/bin/bash
# One prepared training run on a lent GPU (see model/README.md). Carries .data (from
# `model/data.py pack`); writes the checkpoint parts and the log to $OUT.
#   MINUTES=7 bash model/device_train.sh [extra train.py flags]
set -x
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch; print(torch.__version__)"
export PYTHONUNBUFFERED=1
python3 model/train.py --config "${CONFIG:-infdit-s/4}" --data .data --ckpt "$OUT/ckpt" \
  --minutes "${MINUTES:-7}" --total-steps 0 --batch "${BATCH:-64}" --lr "${LR:-1e-3}" --warmup 200 \
  --ema 0.999 --save-every 90 --no-optimizer-in-ckpt --log-every 25 "$@" 2>&1 | tee "$OUT/train.log"
ls -la "$OUT" "$OUT/ckpt"
