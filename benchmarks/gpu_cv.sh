#!/usr/bin/env bash
# Issue 24's repeat at 256 px on a lent GPU (docs/experiments.md, row 24): 5-fold CV of RECIPE on the compact
# copy of the share (benchmarks/compact_copy.py) with the original's folds: one split seed after the other,
# the folds of a seed at once, one process each (DenseNet121 at batch 16 leaves an H200 mostly idle, and
# the device machine is lent for minutes), all stopped DEADLINE_S after the start; each finished seed's
# busi-cv summary, and the results without checkpoints packed into $OUT/results.tgz. Here first:
#   python -m benchmarks.compact_copy --data.root ../shared/data/busi/Dataset_BUSI_with_GT --out .device/busi256 --splits .device/splits
# and the wheels the device's image lacks (it has torch, lightning, torchmetrics, torchvision, matplotlib):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl jsonargparse==4.53.0 typeshed_client==2.15.0 docstring_parser==0.18.0
# then on the device (timeout_s 600), carrying .device and .whl:
#   bash benchmarks/gpu_cv.sh 500 scratch256 --config scratch --data.image_size 256 --trainer.max_epochs 30 --model.optimizer.warmup_epochs 2
set -uo pipefail
DEADLINE=$1
NAME=$2
shift 2
RECIPE=("$@")
SEEDS=${SEEDS:-42 7}
FOLDS=5
DATA=${DATA:-.device/busi256}
SPLITS=${SPLITS:-.device/splits}
# checkpoints to memory where /dev/shm is large (a container's is often 64 MB)
shm_kb=$(df -Pk /dev/shm 2> /dev/null | awk 'NR == 2 {print $4}')
RUNS=${RUNS:-$(if [ "${shm_kb:-0}" -gt 20000000 ]; then echo /dev/shm; else echo /tmp; fi)/busi_gpu_cv}
OUT=${OUT:-runs/gpu_cv}

pip_install=(python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target /tmp/site)
if [ -d .whl ]; then "${pip_install[@]}" .whl/*.whl || exit; fi
threads=$(($(nproc) / FOLDS))  # the cores shared by the folds that run at once (more threads than cores crawl)
export PYTHONPATH=/tmp/site OMP_NUM_THREADS=$((threads > 0 ? threads : 1)) PYTHONUNBUFFERED=1
# busi itself too: its recipes are the package busi.configs, which only an install maps onto configs/
if ! "${pip_install[@]}" --upgrade .; then
    ln -sfn ../configs busi/configs && export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p "$RUNS/logs" "$OUT"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

run_seed() {  # every fold of one split seed at once, stopped at the deadline; then its summary
    local seed=$1 left=$((DEADLINE - SECONDS)) cv="$RUNS/${NAME}_seed$1" started=$SECONDS
    if [ $left -le 0 ]; then echo "== seed $seed: not started, the deadline has passed"; return; fi
    local pids=()
    for fold in $(seq 0 $((FOLDS - 1))); do
        BUSI_CACHE_DIR=$RUNS/cache/$seed.$fold timeout "$left" python3 -m busi.commands.cv --folds $FOLDS --only_folds "$fold" \
            --name "${NAME}_seed$seed" --trainer.default_root_dir "$RUNS" "${RECIPE[@]}" --data.root "$DATA" \
            --data.seed "$seed" --data.split_csv "$SPLITS/seed${seed}_fold$fold.csv" --data.num_workers 0 \
            --trainer.enable_progress_bar false > "$RUNS/logs/seed${seed}_fold$fold.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    local done_folds
    done_folds=$(find "$cv" -name out_of_fold.csv 2>/dev/null | wc -l)
    echo "== seed $seed: $done_folds of $FOLDS folds done, $((SECONDS - started)) s wall for the $FOLDS at once"
    if [ "$done_folds" -eq $FOLDS ]; then
        python3 -m busi.commands.cv --folds $FOLDS --name "${NAME}_seed$seed" --trainer.default_root_dir "$RUNS" \
            > "$RUNS/logs/summary_seed$seed.log" 2>&1
        cat "$cv/cv_summary.txt"
        cp "$cv/cv_summary.txt" "$OUT/cv_summary_seed$seed.txt"
    else
        tail -n 3 "$RUNS/logs/seed${seed}_fold"*.log
    fi
}

if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 > "$RUNS/logs/gpu_use.csv" 2>&1 &
    monitor=$!
    trap 'kill $monitor' EXIT
fi
for seed in $SEEDS; do run_seed "$seed"; done
# the text results only (checkpoints, TensorBoard and figures would pass the 16 MiB a returned file may have)
(cd "$RUNS" && find . -path ./cache -prune -o -type f \( -name '*.json' -o -name '*.csv' -o -name '*.txt' -o -name '*.yaml' \
    -o -name '*.log' \) -print | tar czf "$OUT/results.tgz" -T -)
ls -la "$OUT"
