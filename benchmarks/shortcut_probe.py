"""The shortcut report of a busi-cv folder, out of fold: every image scored, probed and explained by the one
fold model that never saw it (busi.evaluation.shortcuts), pooled over the folds.

    python -m benchmarks.shortcut_probe --cv runs/cv [--root BUSI_ROOT] [--output shortcuts.json]

Prints the accuracy, macro-F1 and malignant recall on overlaid and on clean images (busi.io.overlays
flags them), the probe's answers changed when the marks are inpainted on the overlaid images and when
another scan's marks are pasted on the clean ones (and toward which class), and the Grad-CAM energy on
the marks, beside the marks' share of the image.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import torch

from benchmarks.fuzz_inputs import BUSI
from busi.evaluation.cross_validation import fold_dir
from busi.evaluation.shortcuts import by_overlay, format_by_overlay, format_probe, probe
from busi.io.images import decode_image
from busi.io.overlays import find_overlays
from busi.model.classifier import load_classifier


def pooled(parts: list[dict]) -> dict:
    """The folds' probe results as one: counts summed, accuracies and energies weighted by images."""
    result: dict = {"overlays": parts[0]["overlays"]}
    for key in ("inpainted", "pasted"):
        found = [p[key] for p in parts if key in p]
        images = sum(f["images"] for f in found)
        changed = sum(f["changed"] for f in found)
        result[key] = {
            "images": images,
            "changed": changed,
            "share_changed": changed / images,
            "moves": dict(sum((Counter(f["moves"]) for f in found), Counter())),
            "toward": dict(sum((Counter(f["toward"]) for f in found), Counter())),
            "accuracy_before": sum(f["accuracy_before"] * f["images"] for f in found) / images,
            "accuracy_after": sum(f["accuracy_after"] * f["images"] for f in found) / images,
        }
    cams = [p["cam"] for p in parts if "cam" in p]
    images = sum(c["images"] for c in cams)
    result["cam"] = {
        "images": images,
        **{key: sum(c[key] * c["images"] for c in cams) / images for key in ("energy_on_marks", "area_of_marks")},
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=BUSI)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    folds = sorted(args.cv.glob("fold_*"))
    parts, probabilities, labels, overlaid = [], [], [], []
    for k in range(len(folds)):
        run = fold_dir(args.cv, k)
        model = load_classifier(run / "checkpoints" / "best.ckpt").eval()
        rows = list(csv.DictReader((run / "out_of_fold.csv").open(encoding="utf-8")))
        images = [decode_image(args.root / row["path"]) for row in rows]
        flags = [find_overlays(image).overlaid for image in images]
        truth = torch.tensor([int(row["label"]) for row in rows])
        parts.append(probe(model, images, truth, flags))
        probabilities.append(torch.tensor([[float(row[f"p_{n}"]) for n in model.class_names] for row in rows]))
        labels.append(truth)
        overlaid += flags
        print(f"fold {k}: {len(rows)} images, {sum(flags)} overlaid", flush=True)
    names = model.class_names
    breakdown = by_overlay(torch.cat(probabilities), torch.cat(labels), overlaid, names)
    result = pooled(parts)
    print(format_by_overlay(breakdown, f"{args.cv}, pooled out-of-fold"))
    print(format_probe(result, "pooled out-of-fold"))
    if args.output:
        args.output.write_text(json.dumps({"overlays": breakdown, "probe": result, "folds": parts}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
