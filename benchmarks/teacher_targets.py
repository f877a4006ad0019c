"""Experiment: what a distilled student is taught (docs/experiments.md, row 23). For a busi-cv folder and
the folder it cross-validated, the soft targets of the student's training images (the split busi-train
makes with `--data.seed`), `out_of_fold` and `ensemble`, against their labels:

python -m benchmarks.teacher_targets --teacher runs/holdout42/cv/NAME --data.root runs/holdout42/pool \
    [--data.seed 42 --data.image_size 128]

Prints, for each kind: accuracy of the targets' argmax, mean probability of the true class, mean of the
largest probability (confidence) and mean entropy in bits. Targets that only repeat the labels (accuracy
and confidence near 1) teach nothing the labels do not.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from busi.callbacks.distillation import teacher_targets
from busi.data.module import BusiDataModule


def describe(targets: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    entropy = -(targets * targets.clamp_min(1e-12).log()).sum(dim=1) / math.log(2)
    return {
        "accuracy": (targets.argmax(dim=1) == labels).float().mean().item(),
        "p_true": targets.gather(1, labels[:, None]).mean().item(),
        "confidence": targets.max(dim=1).values.mean().item(),
        "entropy_bits": entropy.mean().item(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--data.root", dest="root", type=Path, required=True)
    parser.add_argument("--data.seed", dest="seed", type=int, default=42)
    parser.add_argument("--data.image_size", dest="image_size", type=int, default=128)
    args = parser.parse_args(argv)
    data = BusiDataModule(root=str(args.root), image_size=args.image_size, seed=args.seed)
    data.setup("fit")
    indices = data.dataset("train").indices
    labels = torch.tensor([data.catalog.records[i].label for i in indices])
    print(f"{len(indices)} training images of {args.root} (split seed {args.seed}), taught by {args.teacher}")
    for kind in ("out_of_fold", "ensemble"):
        by_digest = teacher_targets(args.teacher, kind, data, indices, torch.device("cpu"))
        targets = torch.stack([by_digest[data.catalog.digests[i]].float() for i in indices])
        print(f"  {kind:<12} " + "  ".join(f"{k} {v:.3f}" for k, v in describe(targets, labels).items()))


if __name__ == "__main__":
    main()
