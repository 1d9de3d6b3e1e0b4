#!/usr/bin/env bash
# Train the default-model candidates side by side on one GPU, with marrowscope's own `train`.
#
# Used once through the device tool (an H200, 15 minutes in all), from the repository root, with
# .devdata/ carried: bm7.tar (the 3,500 images re-encoded as JPEG q88 to fit the 64 MiB transfer
# limit), manifest.csv (the fixed 70/15/15 split, seed 0, from `marrowscope prepare`), the
# EfficientNet-Lite ImageNet weights (fp16, classifier dropped) and a timm wheel. Results go to
# $OUT/runs/<name>, returned as bundle.tar.aa, .ab, ... (cat them, then untar). Test metrics are computed afterwards on the original images, on the CPU.
# WORK (default .gpuwork) is the scratch folder for the wheels, the images and the bundle.
#   DRY=1 OUT=runs/dry experiments/train_candidates_gpu.sh   # a one-epoch rehearsal on a few images
set -u
OUT=${OUT:-runs/gpu}
WORK=${WORK:-.gpuwork}
mkdir -p "$OUT/runs" "$WORK"
WORK=$(cd "$WORK" && pwd)  # the bundle step below runs from inside $OUT
if [ -z "${DRY:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target "$WORK/site" .devdata/whl/*.whl && \
    export PYTHONPATH=$WORK/site:$PWD/src
  mkdir -p "$WORK/bm7" && tar -xf .devdata/bm7.tar -C "$WORK/bm7"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  MANIFEST=.devdata/manifest.csv; ROOT=$WORK/bm7; EP=1; SIZE=; MAXT=00:00:06:20; PY=python3
else
  MANIFEST=.devdata/small.csv; ROOT=../shared/data/bone-marrow-7; EP=0; SIZE="--img-size 64"; MAXT=00:00:02:00
  PY=.venv/bin/python; export PYTHONPATH=$PWD/src
fi
$PY -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
W=.devdata
run() {  # name epochs args...
  local name=$1 epochs=$2; shift 2
  [ "$EP" = 0 ] && epochs=1
  $PY -m marrowscope train "$MANIFEST" --data-root "$ROOT" --out "$OUT/runs/$name" --workers 4 --patience 1000 --half \
    --max-time "$MAXT" --epochs "$epochs" "$@" $SIZE > "$OUT/$name.log" 2>&1
  echo "$name exit $?"; rm -rf "$OUT/runs/$name/checkpoints"
}
run rexnet150_224 80 --model rexnet_150 --img-size 224 --batch-size 64 --lr 2e-3 &
run lite0_224 40 --model tf_efficientnet_lite0 --init-weights $W/tf_efficientnet_lite0_in1k_nohead_fp16.safetensors --img-size 224 &
run lite2_260 40 --model tf_efficientnet_lite2 --init-weights $W/tf_efficientnet_lite2_in1k_nohead_fp16.safetensors --img-size 260 &
run lite2_260_mixup 40 --model tf_efficientnet_lite2 --init-weights $W/tf_efficientnet_lite2_in1k_nohead_fp16.safetensors --img-size 260 --mixup 0.5 &
wait
for f in "$OUT"/runs/*/history.csv; do echo "== $f"; tail -n 3 "$f"; done
grep -h "best epoch" "$OUT"/*.log
# The device returns at most 8 files of 16 MiB: one tar of everything, split into 15 MB parts.
(cd "$OUT" && tar -cf "$WORK/bundle.tar" runs ./*.log && rm -rf runs ./*.log && \
  split -b 15m "$WORK/bundle.tar" bundle.tar. && ls -la)
