"""What it costs that one validation fold fits both the temperature and the prediction-set thresholds:
on a busi-cv folder trained with --model.conformal_alpha, each fold's validation.csv is split in two
halves (stratified by class, seed 0); the temperature is fitted on one half and the thresholds on the
other, and both ways are scored on the fold's held-out test fold (out_of_fold.csv), pooled.

    python -m benchmarks.conformal_split --cv runs/cv [--alpha 0.1]

The raw probabilities in the CSVs give the logits up to a constant (log p), which is all temperature
scaling needs.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from busi.evaluation.calibration import calibration
from busi.evaluation.conformal import class_thresholds, set_report
from busi.evaluation.cross_validation import fold_dir


def read(path: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    raw = torch.tensor([[float(row[f"raw_p_{n}"]) for n in names] for row in rows], dtype=torch.float64)
    return raw.clamp_min(1e-12).log(), torch.tensor([int(row["label"]) for row in rows])


def halves(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    first, second = [], []
    for k in labels.unique():
        members = torch.nonzero(labels == k).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        first.append(members[: len(members) // 2])
        second.append(members[len(members) // 2 :])
    return torch.cat(first), torch.cat(second)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", type=Path, required=True)
    parser.add_argument("--alpha", type=float, default=None, help="default: the folds' own")
    args = parser.parse_args(argv)
    summary = json.loads((args.cv / "cv_summary.json").read_text())
    names = summary["class_names"]
    pooled = {"shared": ([], [], []), "split": ([], [], [])}
    for k in range(summary["folds"]):
        run = fold_dir(args.cv, k)
        report = json.loads((run / "report.json").read_text())
        alpha = args.alpha if args.alpha is not None else report["conformal"]["alpha"]
        val_logits, val_labels = read(run / "validation.csv", names)
        test_logits, test_labels = read(run / "out_of_fold.csv", names)
        ways = {"shared": (torch.arange(len(val_labels)), torch.arange(len(val_labels)))}
        ways["split"] = halves(val_labels)
        for way, (for_temperature, for_thresholds) in ways.items():
            temperature = calibration(val_logits[for_temperature].float(), val_labels[for_temperature]).temperature
            thresholds = class_thresholds(
                (val_logits[for_thresholds] / temperature).softmax(dim=1), val_labels[for_thresholds], alpha
            )
            pooled[way][0].append((test_logits / temperature).softmax(dim=1))
            pooled[way][1].append(test_labels)
            pooled[way][2].append(torch.tensor([thresholds] * len(test_labels), dtype=torch.float64))
    print(f"{args.cv}: {summary['folds']} folds, miscoverage {alpha:g}, pooled test folds")
    for way, (probabilities, labels, thresholds) in pooled.items():
        scored = set_report(torch.cat(probabilities), torch.cat(labels), torch.cat(thresholds), tuple(names))
        per_class = ", ".join(f"{n} {v:.3f}" for n, v in scored["coverage_per_class"].items() if v is not None)
        what = (
            "temperature and thresholds on all of it"
            if way == "shared"
            else "temperature on one half, thresholds on the other"
        )
        print(
            f"{way:>7} ({what}): coverage {scored['coverage']:.3f} ({per_class}); mean set size "
            f"{scored['mean_set_size']:.2f}; referred {scored['referred']:.1%}; accuracy on the rest "
            f"{scored['accuracy_answered'] or float('nan'):.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
