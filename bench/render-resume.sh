#!/bin/bash
# `infdit render` of a gigapixel output: a 48 Mpx photo (8000×6000, made here from the demo) to
# 32000×24000 with the defaults; run 100 s, kill -9, run again 45 s. Prints each run's peak RSS,
# its first and last progress lines (blocks, ETA) and what is on disk. Never fails on time.
#   bash bench/render-resume.sh
cd "$(dirname "$0")/.."
rm -rf /tmp/gp; mkdir -p /tmp/gp /tmp/big
[ -f /tmp/big/48mp.jpg ] || node -e "require('sharp')('viewer/demo.jpg').resize(8000, 6000, { fit: 'fill', kernel: 'lanczos3' }).jpeg({ quality: 90 }).toFile('/tmp/big/48mp.jpg')"
for run in 1 2; do
  secs=$([ $run = 1 ] && echo 100 || echo 45)
  node bin/infdit.js render /tmp/big/48mp.jpg --out /tmp/gp > /tmp/gp/run$run.log 2>&1 &
  pid=$!
  sleep $secs
  grep -E "VmHWM|VmRSS" /proc/$pid/status | tr '\n' ' ' > /tmp/gp/mem$run.txt
  kill -9 $pid; wait $pid 2>/dev/null
  echo "run $run ($secs s): $(cat /tmp/gp/mem$run.txt)"
  grep -a "blocks \[" /tmp/gp/run$run.log | sed -n '1p;$p'
  echo "blocks on disk: $(find /tmp/gp/.infdit-cache -name '*.rgb' | wc -l); folder $(du -sm /tmp/gp | cut -f1) MiB"
done
