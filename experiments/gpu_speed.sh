#!/usr/bin/env bash
# Issue 13 on one GPU: a single training run's end-to-end images/s against the bare step, for
# ReXNet-150 and EfficientNet-Lite0, with the lab recipe batched on the GPU (--augment-on device).
# Carried in .devdata/ (as for experiments/cv_distill_gpu.sh): bm7.tar, manifest.csv, whl/ (timm).
#   WORK=DIR bash experiments/gpu_speed.sh   # scratch folder for the wheels, images and runs (default: .gpuwork)
# Prints the bare step (bench/train_speed.py: bf16, channels_last, as train uses on a GPU) and, per
# network, each epoch's images/s, seconds and data_wait_s from the run's history.csv: epoch 1 pays for
# the start (cuDNN autotuning, workers starting), so compare the later epochs. An epoch's seconds
# include its validation. Not yet run on a GPU in this form (written 2026-11-28 without one); a
# rehearsal on the CPU: BS=8 EPOCHS=1 MAX_STEPS=3 SPEED_STEPS=2 bash experiments/gpu_speed.sh
set -u
WORK=${WORK:-.gpuwork}
BS=${BS:-128}; EPOCHS=${EPOCHS:-4}; MAX_STEPS=${MAX_STEPS:--1}; SPEED_STEPS=${SPEED_STEPS:-30}
mkdir -p "$WORK/site" "$WORK/bm7"
WORK=$(cd "$WORK" && pwd)
python3 -m pip install -q --no-index --no-deps --target "$WORK/site" .devdata/whl/*.whl
export PYTHONPATH=$WORK/site:$PWD/src
tar -xf .devdata/bm7.tar -C "$WORK/bm7"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi: not a GPU machine"
python3 bench/train_speed.py --models rexnet_150 tf_efficientnet_lite0 --batch "$BS" --steps "$SPEED_STEPS"
for net in rexnet_150 tf_efficientnet_lite0; do
  python3 -m marrowscope train .devdata/manifest.csv --data-root "$WORK/bm7" --out "$WORK/run_$net" \
    --model "$net" --img-size 224 --epochs "$EPOCHS" --max-steps "$MAX_STEPS" --batch-size "$BS" --augment lab \
    --augment-on device --patience 100 --no-checks > "$WORK/train_$net.log" 2>&1 || { tail -20 "$WORK/train_$net.log"; continue; }
  echo "$net end to end (history.csv: epoch, images_per_s, seconds, data_wait_s):"
  python3 -c "import csv, sys; [print(r['epoch'], r['images_per_s'], r['seconds'], r['data_wait_s'])
    for r in csv.DictReader(open(sys.argv[1]))]" "$WORK/run_$net/history.csv"
done
