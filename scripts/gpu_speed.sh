#!/usr/bin/env bash
# GPU training speed through the device tool (carried: .devdata/bm7_speed.tar, .devdata/speed.csv, .devdata/whl):
# bare forward+backward images/s, then `marrowscope train` epochs of ReXNet-150 with 14 loader workers.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .devdata/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p /tmp/bm7 && tar -xf .devdata/bm7_speed.tar -C /tmp/bm7
python3 bench/train_speed.py --models rexnet_150 tf_efficientnet_lite0 --batch 128 --steps 30
python3 -m marrowscope train .devdata/speed.csv --data-root /tmp/bm7 --out /tmp/run --model rexnet_150 \
  --epochs 6 --batch-size 128 --workers 14 --patience 100 > /tmp/train.log 2>&1
grep "^epoch" /tmp/train.log; cat /tmp/run/history.csv
