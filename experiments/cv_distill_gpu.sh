#!/usr/bin/env bash
# Issue 11 on one GPU, with marrowscope's own commands: 5-fold cross-validation of the lab recipe
# (teachers), then the same folds trained as students distilled from the teachers' out-of-fold
# TTA predictions, and the final student on every non-test image. Augmentation runs batched on
# the GPU (--augment-on device); the folds of a stage train side by side.
#
# Carried in .devdata/: bm7.tar (the 3,500 images re-encoded as JPEG q90 to fit the transfer
# limit), manifest.csv (the fixed 70/15/15 split of models/default, test kept out of every fold),
# lite0_in1k_nohead_fp16.safetensors (ImageNet weights of the registry package, renamed for timm)
# and whl/ (timm). Results come back as bundle.tar.aa, .ab ... (cat, then untar); the out-of-fold
# predictions used for the review policy are recomputed on the CPU on the original images.
#   DRY=1 OUT=runs/dry experiments/cv_distill_gpu.sh   # a rehearsal on the CPU: tiny images, one epoch
#   AUGMENT=lab-sharp experiments/cv_distill_gpu.sh      # the recipe with sharpening (README, "What still throws
#                                                    # the model off"): its out-of-fold blasts decide it
# The rehearsal reads ROOT (default ../shared/data/bone-marrow-7) through MANIFEST (default: 13 images
# per class of ROOT, prepared into $WORK/small.csv).
set -u
OUT=${OUT:-runs/gpu}
AUGMENT=${AUGMENT:-lab}
WORK=${WORK:-.gpuwork}
mkdir -p "$OUT" "$WORK"
WORK=$(cd "$WORK" && pwd)
T0=$(date +%s)
if [ -z "${DRY:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target "$WORK/site" .devdata/whl/*.whl
  export PYTHONPATH=$WORK/site:$PWD/src
  mkdir -p "$WORK/bm7" && tar -xf .devdata/bm7.tar -C "$WORK/bm7"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  MANIFEST=.devdata/manifest.csv; ROOT=$WORK/bm7; PY=python3
  EP=${EP:-40}; SIZE=224; BS=64; MAXT=00:00:03:20; WK=3; FOLDS=5
  export OMP_NUM_THREADS=3  # five trainings share 16 cores
else
  ROOT=${ROOT:-../shared/data/bone-marrow-7}; PY=.venv/bin/python
  export PYTHONPATH=$PWD/src
  MANIFEST=${MANIFEST:-$WORK/small.csv}
  [ -f "$MANIFEST" ] || $PY -m marrowscope prepare "$ROOT" --per-class 13 --out "$MANIFEST" > /dev/null
  EP=1; SIZE=64; BS=8; MAXT=00:00:02:00; WK=0; FOLDS=2
fi
$PY -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
REC="--model tf_efficientnet_lite0 --init-weights .devdata/lite0_in1k_nohead_fp16.safetensors --img-size $SIZE
  --augment $AUGMENT --augment-on device --batch-size $BS --lr 1.5e-3 --epochs $EP --workers $WK --half --max-time $MAXT
  --data-root $ROOT --folds $FOLDS"
stage() {  # name extra-args...: the folds side by side, then the out-of-fold predictions
  local name=$1; shift
  for f in $(seq 0 $((FOLDS - 1))); do
    $PY -m marrowscope cv "$MANIFEST" --out "$OUT/$name" $REC --fold "$f" "$@" > "$OUT/$name.fold$f.log" 2>&1 &
  done
  wait
  $PY -m marrowscope cv "$MANIFEST" --out "$OUT/$name" $REC "$@" > "$OUT/$name.log" 2>&1
  echo "$name done at $(( $(date +%s) - T0 )) s: exit $?"; tail -n 30 "$OUT/$name.log"
}
stage teach
# the final student trains beside the fold students, on every non-test image (no epoch chosen)
$PY -m marrowscope train "$OUT/teach/final.csv" --out "$OUT/final" ${REC/--folds $FOLDS/} --keep last --no-checks \
  --distill "$OUT/teach/oof.csv" > "$OUT/final.log" 2>&1 &
stage student --distill "$OUT/teach/oof.csv"
wait
echo "final exit: $(tail -n 1 "$OUT/final.log")"
grep -h "train loss" "$OUT"/*.log | tail -n 3
# The device returns at most 8 files of 16 MiB: the fold students' and the final model folders,
# the teachers' and students' predictions and summaries, and the logs, as one tar in 15 MB parts.
(cd "$OUT" && tar -cf "$WORK/bundle.tar" --exclude checkpoints --exclude logs --exclude 'teach/fold*/model' \
   ./*.log teach student final && rm -rf teach student final ./*.log && \
  split -b 15m "$WORK/bundle.tar" bundle.tar. && ls -la)
echo "total $(( $(date +%s) - T0 )) s"
