#!/usr/bin/env bash
# The fold ensemble and its distilled students on images none of them saw (docs/experiments.md, rows 16 and 23): split seed SEED's test
# split is held out (benchmarks.holdout link), a 5-fold CV of RECIPE on the rest (the pool) is the teacher
# and the ensemble, students train on the pool with the teacher's soft targets (out-of-fold, then the
# ensemble's) and one without a teacher (plain: the control, same images and split), and every model is
# scored on the held-out images none of them saw:
#   nohup bash benchmarks/holdout_ensemble_distillation.sh 42 NAME RECIPE… > runs/holdout42_NAME.log 2>&1 &
# e.g. RECIPE = --config scratch --data.image_size 128 --trainer.max_epochs 30 --model.optimizer.warmup_epochs 2
# Rerunning continues: busi-cv keeps finished folds, a finished student is skipped, a cut one resumes.
# TEACHER_TARGETS="out_of_fold plain" trains only those students (default: all three, in this order).
set -euo pipefail
SEED=$1
NAME=$2
shift 2
RECIPE=("$@" --data.seed "$SEED" --trainer.enable_progress_bar false)
ROOT=${BUSI_ROOT:-../shared/data/busi/Dataset_BUSI_with_GT}
OUT=runs/holdout$SEED
WEIGHT=${DISTILLATION_WEIGHT:-0.5}

[ -d "$OUT/holdout" ] || python -m benchmarks.holdout link --data.root "$ROOT" --out "$OUT" --seed "$SEED"

started=$SECONDS
busi-cv --folds 5 --name "$NAME" --trainer.default_root_dir "$OUT/cv" --data.root "$OUT/pool" "${RECIPE[@]}"
echo "== teacher CV $NAME: $((SECONDS - started)) s wall in this call"

students=()
for targets in ${TEACHER_TARGETS:-out_of_fold ensemble plain}; do
    student="$OUT/students/${NAME}_$targets"
    run="$student/lightning_logs/version_0"
    students+=("$run/checkpoints/best.ckpt")
    if [ -f "$run/report.json" ]; then continue; fi
    resume=()
    if [ -f "$run/checkpoints/last.ckpt" ]; then resume=(--ckpt_path last); fi
    teacher=(--distillation.teacher "$OUT/cv/$NAME" --distillation.targets "$targets" --distillation.weight "$WEIGHT")
    if [ "$targets" = plain ]; then teacher=(); fi
    started=$SECONDS
    busi-train --data.root "$OUT/pool" "${RECIPE[@]}" --trainer.default_root_dir "$student" "${teacher[@]}" "${resume[@]}"
    echo "== student $targets: $((SECONDS - started)) s wall in this call"
done

python -m benchmarks.holdout score --holdout "$OUT/holdout" "$OUT/cv/$NAME" "${students[@]}"
cp "$OUT/score.json" "$OUT/score_$NAME.json"
