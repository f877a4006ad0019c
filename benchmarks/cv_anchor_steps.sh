#!/usr/bin/env bash
# The anchor's steps, each a cross-validation (docs/experiments.md, rows e23–e27), one after the other, matched
# in images seen per fold model (28 oversampled epochs ≈ 90 plain ones on BUSI's shares). The anchor's whole
# recipe (e24) was screened on two folds first (E24_FOLDS=0,1,2,3,4 for all five); the lesion head alone at
# row 12's length (e26), the focal loss alone (e27) and the oversampling-alone control (e23) follow. Each
# busi-cv keeps its finished folds and resumes an interrupted one, so rerunning this continues where it was:
#   nohup bash benchmarks/cv_anchor_steps.sh 42 > runs/issue24_seed42.log 2>&1 &     (split seed 42 first, then 7)
set -euo pipefail
SEED=${1:-42}
SUFFIX=$([ "$SEED" = 42 ] && echo "" || echo "_seed$SEED")
ROOT=${BUSI_ROOT:-../shared/data/busi/Dataset_BUSI_with_GT}
COMMON=(--config scratch --data.root "$ROOT" --data.image_size 128 --data.seed "$SEED"
        --trainer.enable_progress_bar false --model.optimizer.warmup_epochs 2)
OVERSAMPLE=(--trainer.max_epochs 28 --data.sampling oversample --model.loss.class_weighting none)

run() {
    local started=$SECONDS
    echo "== $1 ($(date -u +%FT%TZ))"
    busi-cv --folds 5 --name "$@"
    echo "== $1: $((SECONDS - started)) s wall in this call"
}

run "e20_seg05_90ep_p30$SUFFIX" "${COMMON[@]}" --trainer.max_epochs 90 --trainer.callbacks.patience=30  # longer alone
run "e24_oversample_lesion_focal_aug_28ep$SUFFIX" --only_folds "${E24_FOLDS:-0,1}" "${COMMON[@]}" "${OVERSAMPLE[@]}" \
    --model.head lesion --model.loss.name focal --model.augmentation.enabled true --model.augmentation.rotation 180 \
    --model.augmentation.vertical_flip true                                       # the anchor's step, screened
run "e26_lesion_head_30ep$SUFFIX" "${COMMON[@]}" --trainer.max_epochs 30 --model.head lesion  # the head at row 12's cost
run "e27_focal_30ep$SUFFIX" "${COMMON[@]}" --trainer.max_epochs 30 --model.loss.name focal      # focal loss at row 12's cost
run "e23_oversample_28ep$SUFFIX" "${COMMON[@]}" "${OVERSAMPLE[@]}"                                      # oversampling
