#!/usr/bin/env bash
# After experiments/cv_distill_gpu.sh: turn what the GPU brought back into a candidate default model folder,
# on this machine's CPU, and measure it beside the bundled one. These are the steps that made the bundled
# model, in their order. Each later fit is measured on images prepared by the earlier ones, so the order
# matters. All of them are marrowscope commands or scripts of this repository.
#   1. unpack RUN/bundle.tar.* (when the parts are there);
#   2. the fold students' out-of-fold predictions, recomputed on the original images (`marrowscope cv`
#      reuses the fold models; on the GPU they were read from JPEG re-encodings);
#   3. the final student's folder copied to CANDIDATE: training scale, focus and domain check
#      (marrowscope fit-checks), then temperature and review policy on the out-of-fold predictions
#      (`calibrate --oof`, one view), then the second reading's zoom on other-lab-pbc's adaptation split
#      (marrowscope choose-second-zoom: a new network needs its own), then the ONNX file;
#   4. measured: the test split (`evaluate`, into CANDIDATE/test_report), the policy fitted on some fold
#      models and applied to another (experiments/policy_across_models.py, experiments/accept_rules.py), and
#      other-lab-pbc beside the bundled model (bench/other_labs.py, into RUN/other_labs.json).
# Everything it prints goes to RUN/assemble.log as well. It changes nothing in models/default: read the
# log, and if the candidate keeps every gain of the bundled model, copy it over and rewrite MODEL_CARD.md.
#   experiments/assemble_default.sh runs/gpu runs/candidate
#   FOLDS=2 MANIFEST=.gpuwork/small.csv CHECKS_DATA=models/default/manifest.csv \
#     experiments/assemble_default.sh runs/dry runs/dry_candidate   # the rehearsal, after DRY=1 OUT=runs/dry
set -euo pipefail
RUN=${1:?usage: experiments/assemble_default.sh RUN CANDIDATE}
CAND=${2:?usage: experiments/assemble_default.sh RUN CANDIDATE}
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-../shared/data/bone-marrow-7}
MANIFEST=${MANIFEST:-.devdata/manifest.csv}  # the manifest the GPU run's folds were drawn from
FOLDS=${FOLDS:-5}
BEFORE=${BEFORE:-models/default}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$RUN/assemble.log") 2>&1
step() { echo "== $* ($(date -u +%H:%M:%S))"; }

if compgen -G "$RUN/bundle.tar.??" > /dev/null && [ ! -d "$RUN/final" ]; then
  step unpack; cat "$RUN"/bundle.tar.?? | tar -xf - -C "$RUN"
fi
# every fold student must be there: `marrowscope cv` would train a missing one here, on the CPU
for need in "$RUN/final/model/config.json" "$MANIFEST" $(seq -f "$RUN/student/fold%g/model/config.json" 0 $((FOLDS - 1))); do
  [ -e "$need" ] || { echo "missing $need: is $RUN a finished run of experiments/cv_distill_gpu.sh?"; exit 2; }
done

step "out-of-fold predictions of the fold students on the original images"
$PY -m marrowscope cv "$MANIFEST" --out "$RUN/student" --folds "$FOLDS" --data-root "$ROOT"

step "candidate folder"
rm -rf "$CAND" && mkdir -p "$(dirname "$CAND")" && cp -r "$RUN/final/model" "$CAND"
# CHECKS_DATA: another manifest of the same training images, for a rehearsal whose few images hold no red cell
$PY -m marrowscope fit-checks --model "$CAND" --data-root "$ROOT" ${CHECKS_DATA:+--data "$CHECKS_DATA"}
$PY -m marrowscope calibrate --model "$CAND" --oof "$RUN/student/oof.npz" --no-tta
$PY -m marrowscope choose-second-zoom --model "$CAND" --data-root "$ROOT" --write
$PY -m marrowscope export-onnx --model "$CAND" --data-root "$ROOT"

step "test split"
$PY -m marrowscope evaluate "$CAND/manifest.csv" --model "$CAND" --split test --data-root "$ROOT" \
  --out "$CAND/test_report"
step "policies fitted on some fold models, applied to another"
$PY experiments/policy_across_models.py "$RUN/student/oof.npz" --no-tta
$PY experiments/accept_rules.py "$RUN/student/oof.npz"
step "other-lab-pbc, the bundled model ($BEFORE) beside the candidate"
$PY bench/other_labs.py --before "$BEFORE" --model "$CAND" --out "$RUN/other_labs.json"
step "assembled: $CAND"
