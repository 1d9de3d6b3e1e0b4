#!/usr/bin/env bash
# GPU training speed through the device tool (carried: .devdata/bm7_speed.tar, .devdata/speed.csv, .devdata/whl):
# bare forward+backward images/s, then `marrowscope train` epochs of ReXNet-150 with 14 loader workers.
#   WORK=DIR scripts/gpu_speed.sh   # scratch folder for the wheels, images and run (default: .gpuwork)
set -u
WORK=${WORK:-.gpuwork}
mkdir -p "$WORK/site" "$WORK/bm7"
python3 -m pip install -q --no-index --no-deps --target "$WORK/site" .devdata/whl/*.whl && \
  export PYTHONPATH=$(cd "$WORK/site" && pwd):$PWD/src
tar -xf .devdata/bm7_speed.tar -C "$WORK/bm7"
python3 bench/train_speed.py --models rexnet_150 tf_efficientnet_lite0 --batch 128 --steps 30
python3 -m marrowscope train .devdata/speed.csv --data-root "$WORK/bm7" --out "$WORK/run" --model rexnet_150 \
  --epochs 6 --batch-size 128 --workers 14 --patience 100 > "$WORK/train.log" 2>&1
grep "^epoch" "$WORK/train.log"; cat "$WORK/run/history.csv"
