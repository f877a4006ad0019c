#!/usr/bin/env bash
# Issue 37's screens: each regulariser alone against configs/scratch.yaml on folds 0-2 of split seed 42 (128 px,
# 30 epochs, the protocol of docs/experiments.md), one busi-cv after the other; the control is a full 5-fold CV
# of the same recipe, seed and precision on the same kind of CPU (bf16 where it has AVX-512 BF16 or AMX:
# `busi-cv --folds 5 --name s42_bf16 --config scratch …`; fp32 elsewhere: s42_conformal of cv_overlays.sh).
# Options after the script's name are passed to every busi-cv. Each busi-cv keeps its finished folds and
# resumes an interrupted one, so rerunning this continues where it stopped; SCREENS picks some by name:
#   nohup bash benchmarks/cv_regularisers.sh > runs/issue37_screens.log 2>&1 &
#   SCREENS="drop02 cutmix" bash benchmarks/cv_regularisers.sh
#   python -m benchmarks.cv_table --screen runs/i37_* --against runs/s42_bf16
# A screen is kept when its mean accuracy beats the control's on the same folds by more than their sd;
# kept ones are then run on all five folds of seeds 42 and 7 (FOLDS=0,1,2,3,4 SEED=7).
set -euo pipefail
SEED=${SEED:-42}
FOLDS=${FOLDS:-0,1,2}
RUNS=${RUNS:-runs}
ROOT=${BUSI_ROOT:-../shared/data/busi/Dataset_BUSI_with_GT}
SUFFIX=$([ "$SEED" = 42 ] && echo "" || echo "_seed$SEED")
COMMON=(--config scratch --data.root "$ROOT" --data.image_size 128 --data.seed "$SEED" --trainer.max_epochs 30
        --trainer.enable_progress_bar false --trainer.default_root_dir "$RUNS")
SWA=(--trainer.callbacks+=busi.callbacks.averaging.StochasticWeightAveraging --trainer.callbacks.start_epoch=15)
declare -A SCREEN=(
  [drop01]="--model.drop_rate 0.1"
  [drop02]="--model.drop_rate 0.2"
  [wd1e-4]="--model.optimizer.weight_decay 1e-4"
  [wd5e-2]="--model.optimizer.weight_decay 5e-2"
  [lr3e-4]="--model.optimizer.lr 3e-4"
  [lr3e-3]="--model.optimizer.lr 3e-3"
  [smooth01]="--model.loss.label_smoothing 0.1"
  [mixup]="--model.augmentation.mixing mixup"
  [cutmix]="--model.augmentation.mixing cutmix"
  [swa15]="${SWA[*]}"
)
ORDER=(drop02 smooth01 cutmix swa15 mixup wd5e-2 drop01 lr3e-4 lr3e-3 wd1e-4)  # the likeliest first
for name in ${SCREENS:-${ORDER[@]}}; do
  started=$SECONDS
  echo "== i37_$name$SUFFIX ($(date -u +%FT%TZ)): ${SCREEN[$name]}"
  # shellcheck disable=SC2086  # the screen's options are split on purpose
  busi-cv --folds 5 --only_folds "$FOLDS" --name "i37_$name$SUFFIX" "${COMMON[@]}" ${SCREEN[$name]} "$@"
  echo "== i37_$name$SUFFIX: $((SECONDS - started)) s wall in this call"
done
