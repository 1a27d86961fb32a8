#!/bin/bash
# The base's distillation on a lent GPU (issue 38): what a CPU does in an hour (~60,000 crops of 64² LR at
# 13-16 crops/s), a GPU does in seconds, so the student can get near its teacher. Carries .data (model/training/data.py
# pack) and .base-teacher/ (the teacher's checkpoint, fetched into a git-ignored folder: its weights are never
# committed); returns $OUT/run.log and $OUT/base/{best,last}.pt. Then, on this side:
#   /usr/bin/python3 model/infdit/base.py attach --ckpt <files_at>/base/best.pt --manifest model/release/infdit-s4.json
#   MINUTES=8 bash model/device/distill.sh          # device run: carry [".data", ".base-teacher"], timeout_s 600
set -x -o pipefail
: "${OUT:?set OUT to the folder that comes back: on the device machine, its \$OUT}"
mkdir -p "$OUT"
TEACHER=${TEACHER:-.base-teacher/team23_safmnpp.pth}
INIT=()
[ -n "${RESUME:-}" ] && { mkdir -p "$OUT/base"; cp "$RESUME" "$OUT/base/last.pt"; INIT=(--resume); }
${PYTHON:-python3} model/infdit/base.py distill --teacher "$TEACHER" --data "${DATA:-.data}" --ckpt "$OUT/base" --device "${DEVICE:-cuda}" \
  --minutes "${MINUTES:-8}" --batch "${BATCH:-256}" --eval-every "${EVAL_EVERY:-3}" "${INIT[@]}" "$@" 2>&1 | tee "$OUT/run.log"
