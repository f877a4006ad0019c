#!/usr/bin/env bash
# What a new user sees on first use: the README's commands on a small folder, offline, each command's
# output kept in OUT/NN_name.txt. Run it on two checkouts (a git worktree of an old commit and this one)
# and read the files side by side:
#   bash benchmarks/first_use.sh CHECKOUT OUT [BUSI_ROOT]
# It links the first 16 images per class of BUSI_ROOT (default ../shared/data/busi/Dataset_BUSI_with_GT)
# as the training folder and the next 8 as "another folder", trains the default recipe without
# pretrained weights at 64 px for 2 epochs, then runs each command once.
set -uo pipefail
CHECKOUT=$(realpath "$1"); OUT=$(realpath -m "$2")
ROOT=$(realpath "${3:-$(dirname "$0")/../../shared/data/busi/Dataset_BUSI_with_GT}")
WORK=${TMPDIR:-/tmp}/busi-first-use; rm -rf "$WORK" "$OUT"; mkdir -p "$WORK" "$OUT"
DATA=$WORK/train/Dataset_BUSI_with_GT OTHER=$WORK/other/Dataset_BUSI_with_GT
for class in benign malignant normal; do
    mkdir -p "$DATA/$class" "$OTHER/$class"
    mapfile -t images < <(find "$ROOT/$class" -maxdepth 1 -name '*.png' ! -name '*_mask*' | sort -V)
    for image in "${images[@]:0:16}"; do ln -s "$image" "${image%.png}"_mask*.png "$DATA/$class/"; done
    for image in "${images[@]:16:8}"; do ln -s "$image" "${image%.png}"_mask*.png "$OTHER/$class/"; done
done
# offline, with nothing cached: no ImageNet weights can be found
export BUSI_CACHE_DIR=$WORK/cache TORCH_HOME=$WORK/torch PYTHONHASHSEED=0 HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9
cd "$CHECKOUT"
[ -e busi/configs ] || { ln -s ../configs busi/configs; trap 'rm -f "$CHECKOUT/busi/configs"' EXIT; }
COMMON=(--data.root "$DATA" --data.image_size 64 --trainer.enable_progress_bar false)
# a command as its console script runs it, with this checkout's busi
busi() { local module=$1; shift; python -c "import sys; from busi.commands.$module import main; sys.exit(main())" "$@"; }
# busi-app's entry point (busi.commands.app:launch before it had a module of its own)
APP=$([ -f busi/commands/app_launch.py ] && echo "from busi.commands.app_launch import main" || echo "from busi.commands.app import launch as main")
app() { python -c "import sys; $APP; sys.exit(main())" "$@"; }
run() { local name=$1; shift; { echo "\$ $*"; "$@"; echo "(exit status $?)"; } > "$OUT/$name.txt" 2>&1; }
seconds() { local start; start=$(date +%s.%N); "$@" > /dev/null 2>&1; echo "$(date +%s.%N) - $start" | bc; }

run 01_offline_default_recipe python train.py "${COMMON[@]}" --trainer.max_epochs 1 --trainer.default_root_dir "$WORK/offline"
run 01_without_weights python train.py "${COMMON[@]}" --model.weights none --trainer.max_epochs 2 --trainer.default_root_dir "$WORK/runs"
RUN=$WORK/runs/lightning_logs/version_0 CKPT=$WORK/runs/lightning_logs/version_0/checkpoints/best.ckpt
run 02_explain_another_folder busi explain --ckpt "$CKPT" --data.root "$OTHER"
run 03_evaluate_the_training_folder busi evaluate --ckpt "$CKPT" --data.root "$DATA" --output "$WORK/evaluation"
run 04_predict_a_named_mask python predict.py --ckpt "$CKPT" "$DATA/benign/benign (1)_mask.png" "$DATA/normal" --output "$WORK/p.csv"
cat "$WORK/p.csv" >> "$OUT/04_predict_a_named_mask.txt"
{ grep -i "best" "$RUN/report.txt" | head -3
  python -c "import json, sys; r = json.load(open(sys.argv[1])); print('report.json:', {k: v for k, v in r.get('training', r).items() if 'epoch' in k} or r.get('best_epoch'))" "$RUN/report.json"
  head -3 "$RUN/history.csv"; } > "$OUT/05_epochs.txt" 2>&1
run 06_app_help app --help
PORT=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# in the folder of the runs, as the README has it; an older busi-app took no --ckpt and found the newest run itself
OPTIONS=$([ -f busi/commands/app_launch.py ] && echo "--ckpt $CKPT --port $PORT" || echo "--server.port $PORT")
(cd "$WORK" && PYTHONPATH=$CHECKOUT timeout 25 python -c "import sys; $APP; sys.exit(main())" $OPTIONS --server.headless=true > "$OUT/07_08_app_log.txt" 2>&1)
run 09_export busi export --ckpt "$CKPT" --output "$WORK/model.onnx"
python -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps({k: v for k, v in d.items() if k in ('resize', 'input', 'preprocessing')}, indent=1))" "$WORK/model.onnx.json" >> "$OUT/09_export.txt" 2>&1
grep -i -E "temperature|calibrat" "$RUN/report.txt" > "$OUT/10_calibration.txt"
{ ls -la "$RUN/checkpoints/"; du -sh "$WORK/runs"; } > "$OUT/11_disk.txt"
{ echo "busi-predict --help: $(seconds busi predict --help) s"; echo "busi-cv --folds 2: $(seconds busi cv --folds 2) s"
  busi cv --folds 2 2>&1 | tail -1; } > "$OUT/12_startup.txt"
echo "$OUT"
