#!/usr/bin/env bash
# Issue 36's cross-validations: configs/scratch.yaml at 128 px for 30 epochs with prediction sets (α 0.1),
# keeping the drawn marks and inpainting them (--data.overlays inpaint), on split seeds 42 and 7, one busi-cv
# after the other; each keeps its finished folds and resumes an interrupted one, so rerunning this continues
# where it stopped. Options after the script's name are passed to every busi-cv (the recorded runs are all
# fp32: add --trainer.precision 32-true on a CPU with AVX-512 BF16 or AMX, which otherwise trains in bf16).
# Then the shortcut report of each, out of fold:
#   nohup bash benchmarks/cv_overlays.sh > runs/issue36.log 2>&1 &
#   python -m benchmarks.shortcut_probe --cv runs/s42_inpaint --output runs/s42_inpaint/shortcuts.json
set -euo pipefail
RUNS=${RUNS:-runs}
ROOT=${BUSI_ROOT:-../shared/data/busi/Dataset_BUSI_with_GT}
COMMON=(--folds 5 --config scratch --data.root "$ROOT" --data.image_size 128 --trainer.max_epochs 30
        --trainer.enable_progress_bar false --trainer.default_root_dir "$RUNS" --model.conformal_alpha 0.1)
for run in ${CVS:-s42_conformal:42:keep s7_conformal:7:keep s42_inpaint:42:inpaint s7_inpaint:7:inpaint}; do
  IFS=: read -r name seed overlays <<< "$run"
  started=$SECONDS
  echo "== $name ($(date -u +%FT%TZ))"
  busi-cv --name "$name" "${COMMON[@]}" --data.seed "$seed" --data.overlays "$overlays" "$@"
  echo "== $name: $((SECONDS - started)) s wall in this call"
done
