"""Experiment: one docs/experiments.md row per busi-cv folder, with what its fold models cost to train.

python -m benchmarks.cv_table runs/NAME [runs/OTHER …] [--against runs/CONTROL]

Prints accuracy, macro-F1, malignant recall, AUROC (mean ± sd over folds), the pooled out-of-fold ECE,
the lesion Dice (benign / malignant), the images drawn per fold model (in all, and up to the epoch
kept) and the training wall time; with --against, each fold's accuracy difference to the control's
same fold. With --screen, folders of `busi-cv --only_folds` (no summary yet) are compared on the folds
they trained, each fold's test scores from its report, against the control's same folds:

python -m benchmarks.cv_table --screen runs/SCREEN [runs/OTHER …] --against runs/CONTROL

Folds trained before busi recorded the cost (report.json without "training") get it from
their checkpoints: epochs × training images, which holds for plain (not oversampled) epochs only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from busi.evaluation.cross_validation import fold_dir


def fold_cost(run_dir: Path, report: dict) -> dict:
    if "training" in report:
        return report["training"]
    checkpoints = run_dir / "checkpoints"
    epochs = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1
    best = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=True, mmap=True)["epoch"]
    images = report["splits"]["train"]["samples"]
    return {
        "epochs": epochs,
        "best_epoch": best,
        "images_seen": images * epochs,
        "images_seen_to_best": images * (best + 1),
        "wall_s": None,
    }


def mean_sd(scores: dict) -> str:
    return f"{scores['mean']:.3f} ± {scores['sd']:.3f}"


def row(cv_dir: Path) -> tuple[str, list[float]]:
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    folds, m = summary["per_fold"], summary["mean_sd"]
    costs = [
        fold_cost(fold_dir(cv_dir, f["fold"]), json.loads((fold_dir(cv_dir, f["fold"]) / "report.json").read_text()))
        for f in folds
    ]
    dice = m.get("segmentation", {})
    dice_text = " / ".join(f"{dice[c]['dice']['mean']:.3f}" for c in ("benign", "malignant") if c in dice) or "–"
    walls = [c["wall_s"] for c in costs]
    wall = f"{sum(walls) / 60:.0f} min" if None not in walls else "–"
    seen = statistics.fmean(c["images_seen"] for c in costs)
    to_best = statistics.fmean(c["images_seen_to_best"] for c in costs)
    cells = [
        cv_dir.name,
        mean_sd(m["accuracy"]),
        mean_sd(m["macro_f1"]),
        mean_sd(m["recall"]["malignant"]),
        mean_sd(m["auroc_macro_ovr"]),
        f"{summary['out_of_fold']['ece_calibrated']:.3f}",
        dice_text,
        f"{seen:,.0f} ({to_best:,.0f})",
        "/".join(f"{c['epochs']}({c['best_epoch'] + 1})" for c in costs),
        wall,
    ]
    return "| " + " | ".join(cells) + " |", [f["accuracy"] for f in folds]


def fold_scores(cv_dir: Path) -> dict[int, dict]:
    """{fold: test accuracy, macro-F1, malignant recall and cost} of every fold the folder trained."""
    scores = {}
    for report_file in sorted(cv_dir.glob("fold_*/lightning_logs/version_0/report.json")):
        fold = int(report_file.parts[-4].removeprefix("fold_"))
        report = json.loads(report_file.read_text())
        test = report["splits"]["test"]
        malignant = report["class_names"].index("malignant")
        recall = test["confusion_matrix"][malignant][malignant] / max(1, sum(test["confusion_matrix"][malignant]))
        cost = fold_cost(report_file.parent, report)
        scores[fold] = {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "recall": recall, **cost}
    return scores


def screen(cv_dirs: list[Path], control: Path) -> None:
    """The screened folds' mean scores beside the control's on the same folds, and the control's sd."""
    reference = fold_scores(control)
    print("| screen | folds | accuracy | Δ accuracy per fold | macro-F1 | malignant recall | epochs (kept) |")
    print("|---|---|---|---|---|---|---|")
    for cv_dir in [control, *cv_dirs]:
        scores = fold_scores(cv_dir)
        folds = sorted(f for f in scores if f in reference)
        if not folds:
            print(f"| {cv_dir.name} | none trained yet | | | | | |")
            continue
        mean = {k: statistics.fmean(scores[f][k] for f in folds) for k in ("accuracy", "macro_f1", "recall")}
        spread = statistics.stdev(scores[f]["accuracy"] for f in folds) if len(folds) > 1 else 0.0
        deltas = ", ".join(f"{scores[f]['accuracy'] - reference[f]['accuracy']:+.3f}" for f in folds)
        epochs = "/".join(f"{scores[f]['epochs']}({scores[f]['best_epoch'] + 1})" for f in folds)
        print(
            f"| {cv_dir.name} | {','.join(map(str, folds))} | {mean['accuracy']:.3f} ± {spread:.3f} | {deltas} "
            f"| {mean['macro_f1']:.3f} | {mean['recall']:.3f} | {epochs} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cv_dirs", nargs="+", type=Path)
    parser.add_argument("--against", type=Path, help="a control CV on the same folds")
    parser.add_argument("--screen", action="store_true", help="compare the folds trained so far (--against needed)")
    args = parser.parse_args()
    if args.screen:
        if not args.against:
            parser.error("--screen compares with a control: give --against runs/CONTROL")
        screen(args.cv_dirs, args.against)
        return
    header = (
        "| CV | accuracy | macro-F1 | malignant recall | AUROC | pooled ECE | Dice benign / malignant "
        "| images drawn per model (to the kept epoch) | epochs (kept) per fold | training wall time |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    control = row(args.against)[1] if args.against else None
    for cv_dir in args.cv_dirs:
        text, accuracies = row(cv_dir)
        print(text)
        if control:
            deltas = [a - c for a, c in zip(accuracies, control, strict=True)]
            print(f"  accuracy against {args.against.name}, fold by fold: " + ", ".join(f"{d:+.3f}" for d in deltas))


if __name__ == "__main__":
    main()
