#!/usr/bin/env bash
# Does a change leave busi's results as they were? Run it on two checkouts (e.g. a git worktree of the
# old commit and this one) with the same arguments, then compare the folders: `diff -r OUT_A OUT_B`.
#   bash benchmarks/same_results.sh CHECKOUT OUT [BUSI_ROOT]
# It trains short runs on the first 24 images per class of BUSI_ROOT (default
# ../shared/data/busi/Dataset_BUSI_with_GT) at 64 px with seed 42: the frozen recipe (no pretrained
# weights, 2 epochs) and the scratch recipe with its lesion decoder (2 epochs), a 3-fold busi-cv of the
# scratch recipe (1 epoch per fold), and busi-predict with each; it keeps report.json, split.csv,
# the predictions, cv_summary.json and what best.ckpt stores (all but the training date and wall times).
set -euo pipefail
CHECKOUT=$(realpath "$1"); OUT=$(realpath -m "$2")
ROOT=$(realpath "${3:-$(dirname "$0")/../../shared/data/busi/Dataset_BUSI_with_GT}")
WORK=${TMPDIR:-/tmp}/busi-same-results; rm -rf "$WORK"; mkdir -p "$WORK" "$OUT"
DATA=$WORK/Dataset_BUSI_with_GT
for class in benign malignant normal; do
    mkdir -p "$DATA/$class"
    mapfile -t images < <(find "$ROOT/$class" -maxdepth 1 -name '*.png' ! -name '*_mask*' | sort -V)
    for image in "${images[@]:0:24}"; do
        ln -s "$image" "${image%.png}"_mask*.png "$DATA/$class/"
    done
done
export BUSI_CACHE_DIR=$WORK/cache PYTHONHASHSEED=0
COMMON=(--data.root "$DATA" --data.image_size 64 --trainer.enable_progress_bar false --trainer.default_root_dir "$WORK/runs")
RUNS=$WORK/runs/lightning_logs
cd "$CHECKOUT"
# busi's recipes are the package busi.configs: an editable install of another checkout would lend it its
# own, so a checkout without busi/configs gets a link to its configs/ while this runs
[ -e busi/configs ] || { ln -s ../configs busi/configs; trap 'rm -f "$CHECKOUT/busi/configs"' EXIT; }
# busi-cv's module in this checkout (busi.cv before the packages of busi 0.1's restructuring)
CV=$([ -d busi/commands ] && echo busi.commands.cv || echo busi.cv)
python train.py --model.weights none "${COMMON[@]}" --trainer.max_epochs 2 > "$OUT/frozen.log" 2>&1
python train.py --config scratch "${COMMON[@]}" --trainer.max_epochs 2 --model.optimizer.warmup_epochs 1 > "$OUT/scratch.log" 2>&1
python -m "$CV" --folds 3 --config scratch "${COMMON[@]}" --trainer.max_epochs 1 --model.optimizer.warmup_epochs 0 > "$OUT/cv.log" 2>&1
for run in frozen:version_0 scratch:version_1; do
    name=${run%%:*}; dir=$RUNS/${run#*:}
    cp "$dir/report.json" "$OUT/${name}_report.json"
    cp "$dir/split.csv" "$OUT/${name}_split.csv"
    python predict.py --ckpt "$dir/checkpoints/best.ckpt" "$DATA" --output "$OUT/${name}_predict.csv" > /dev/null
    python -c "
import sys, torch
state = torch.load(sys.argv[1], weights_only=True)
state['busi_summary'].pop('trained')
print(sorted(state), float(state['state_dict']['temperature']), state['busi_summary'])
" "$dir/checkpoints/best.ckpt" > "$OUT/${name}_best_ckpt.txt"
done
cp "$WORK/runs/cv/cv_summary.json" "$OUT/cv_summary.json"
python predict.py --ckpt "$WORK/runs/cv" "$DATA" --output "$OUT/cv_predict.csv" > /dev/null
# wall times are the one thing that may differ: they are left out
python -c "
import json, sys
def drop(value):
    if isinstance(value, dict):
        return {k: drop(v) for k, v in value.items() if 'wall_s' not in k}
    return [drop(v) for v in value] if isinstance(value, list) else value
for path in sys.argv[1:]:
    kept = drop(json.load(open(path)))
    open(path, 'w').write(json.dumps(kept, indent=2))
" "$OUT"/*.json
rm "$OUT"/*.log
echo "$OUT"
