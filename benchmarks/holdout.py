"""Experiment: score models on images that none of them saw (docs/experiments.md, rows 14 and 16).

python -m benchmarks.holdout link --data.root DATA --out DIR [--seed 42] [--folds 5 --fold K]
    Cuts DATA exactly as busi does (stratified, duplicate-aware, split seed) and links the images
    with their masks into DIR/holdout (the test split, or fold K's test fold) and DIR/pool (the
    rest) in the BUSI layout. Run `busi-cv --data.root DIR/pool …` on the pool, then:
python -m benchmarks.holdout score --holdout DIR/holdout CKPT_OR_CV_FOLDER …
    busi-evaluate on the holdout for each argument; a busi-cv folder is scored as its fold
    ensemble, as each fold's best.ckpt alone and as each fold's last.ckpt alone (the last epoch
    instead of the best validation macro-F1). Prints one line per model and writes score.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from busi import CLASS_NAMES
from busi.commands.evaluate import evaluate
from busi.data.module import BusiDataModule

METRICS = ("accuracy", "macro_f1", "auroc_macro_ovr")


def link(root: Path, out: Path, seed: int, folds: int, fold: int) -> dict[str, int]:
    """Symlink every image and its masks under out/holdout or out/pool; returns the image counts."""
    data = BusiDataModule(root=str(root), image_size=128, seed=seed, folds=folds, fold=fold)
    data.setup("fit")
    counts = {"pool": 0, "holdout": 0}
    for record, split in zip(data.catalog.records, data.split_of, strict=True):
        part = "holdout" if split == "test" else "pool"
        folder = out / part / CLASS_NAMES[record.label]
        folder.mkdir(parents=True, exist_ok=True)
        for path in (record.path, *record.masks):
            (folder / path.name).symlink_to(path.resolve())
        counts[part] += 1
    return counts


def scored(ckpt: Path, holdout: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as output:
        report = evaluate(ckpt, holdout, Path(output))
    test = report["splits"]["test"]
    return {**{m: test[m] for m in METRICS}, "malignant_recall": test["per_class"]["malignant"]["recall"]}


def score(paths: list[Path], holdout: Path) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for path in paths:
        if path.is_dir():
            rows[f"{path} ensemble"] = scored(path, holdout)
            for kind in ("best", "last"):
                for ckpt in sorted(path.glob(f"fold_*/lightning_logs/version_*/checkpoints/{kind}.ckpt")):
                    rows[str(ckpt)] = scored(ckpt, holdout)
        else:
            rows[str(path)] = scored(path, holdout)
    return rows


def model_kind(model: str) -> str:
    """What a `score` row is, across folds and seeds: `fold best.ckpt`, `NAME ensemble`, or a single
    run's `RUN_FOLDER best.ckpt` (e.g. a distilled student)."""
    path = Path(model)
    if "lightning_logs" not in path.parts:
        return path.name
    owner = path.parts[path.parts.index("lightning_logs") - 1]
    return f"{'fold' if owner.startswith('fold_') else owner} {path.name}"


def summary(score_files: list[Path]) -> dict[str, dict[str, str]]:
    """Mean ± sd, per kind of model (`model_kind`), of the rows of `score` files (sd 0 for a single row)."""
    by_name: dict[str, list[dict[str, float]]] = {}
    for path in score_files:
        for model, values in json.loads(path.read_text()).items():
            by_name.setdefault(model_kind(model), []).append(values)
    table = {}
    for name, rows in by_name.items():
        table[f"{name} ({len(rows)})"] = {}
        for metric in rows[0]:
            values = [row[metric] for row in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            table[f"{name} ({len(rows)})"][metric] = f"{statistics.mean(values):.3f} ± {sd:.3f}"
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    link_parser = commands.add_parser("link")
    link_parser.add_argument("--data.root", dest="root", type=Path, required=True)
    link_parser.add_argument("--out", type=Path, required=True)
    link_parser.add_argument("--seed", type=int, default=42)
    link_parser.add_argument("--folds", type=int, default=0)
    link_parser.add_argument("--fold", type=int, default=0)
    score_parser = commands.add_parser("score")
    score_parser.add_argument("--holdout", type=Path, required=True)
    score_parser.add_argument("paths", nargs="+", type=Path)
    commands.add_parser("summary").add_argument("score_files", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "link":
        print(link(args.root, args.out, args.seed, args.folds, args.fold))
        return
    if args.command == "summary":
        for model, values in summary(args.score_files).items():
            print(f"{model:<40} " + "  ".join(f"{metric} {value}" for metric, value in values.items()))
        return
    rows = score(args.paths, args.holdout)
    print(f"{'model':<70} " + " ".join(f"{name:>16}" for name in [*METRICS, "malignant_recall"]))
    for model, values in rows.items():
        print(f"{model:<70} " + " ".join(f"{v:16.3f}" for v in values.values()))
    (args.holdout.parent / "score.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
