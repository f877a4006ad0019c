"""Experiment (issue 37, item 3): a lesion-crop stage on top of a finished busi-cv folder whose recipe has
the lesion decoder (configs/scratch.yaml).

    python -m benchmarks.lesion_crops --cv runs/cv/NAME [--root BUSI_ROOT] [--epochs 30] [--margin 0.25]

Per fold, on that fold's own split (split.csv: the test fold is never trained on):
1. Crops cut from the original scans at their own resolution (busi.evaluation.crops), resized to --image_size:
   training images around their ground-truth lesion (benign, malignant) or a random square (normal,
   seeded by the file name); validation and test images around the lesion the fold's whole-image model
   predicts (its decoder's map at 0.5), where it predicts one. The masks are cropped alike.
2. A crop model trained on them with busi-train (--config scratch, the same epochs and image size).
3. A combiner (multinomial logistic regression, L2) fitted on the validation images with a predicted
   lesion: the whole-image model's log-probabilities, the crop model's, and the predicted lesion's shape
   figures (area, elongation, depth/width, solidity). Images without a predicted lesion keep the
   whole-image answer.
Prints accuracy, macro-F1 and malignant recall pooled out of fold for the whole-image model, the crop
model (whole-image answer where no lesion is predicted) and the combination, with the training cost of
each stage. Folds already done (RESULTS/fold_K.json) are kept, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.fuzz_inputs import BUSI
from busi import CLASS_NAMES
from busi.data.module import BusiDataModule
from busi.evaluation.crops import SHAPE_FEATURES, Box, crop_region, lesion_box, lesion_shape
from busi.evaluation.cross_validation import fold_dir
from busi.evaluation.history import EPOCH_SECONDS, read_history
from busi.evaluation.shortcuts import scores
from busi.io.images import decode_image
from busi.model.answering import answer
from busi.model.classifier import load_classifier
from busi.training.run import run


def read_split(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def normal_box(name: str, size: tuple[int, int]) -> Box:
    """A square of 30–70 % of the shorter side anywhere in the image, fixed by the file's name."""
    rng = np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    width, height = size
    side = int(min(width, height) * rng.uniform(0.3, 0.7))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    return left, top, left + side, top + side


def truth_mask(mask_files: tuple[Path, ...]) -> np.ndarray | None:
    """The union of an image's mask files (the catalog's list) at the image's own resolution."""
    union = None
    for path in mask_files:
        mask = np.asarray(decode_image(path).convert("L")) > 0
        union = mask if union is None else union | mask
    return union


def whole_image_answers(model, datamodule: BusiDataModule, split: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    images = datamodule.dataset(split)
    outputs = answer(model, DataLoader(images, batch_size=32))
    return images.indices, outputs.probabilities, outputs.lesions > 0.5


def crop_box(row: dict, size: tuple[int, int], truth: np.ndarray | None, predicted: dict, margin: float) -> Box | None:
    """Training images: around the ground-truth lesion (normal ones, or none drawn: normal_box);
    validation and test images: around the whole-image model's predicted lesion, None without one."""
    if row["split"] == "train":
        if row["label"] == "normal" or truth is None or not truth.any():
            return normal_box(row["path"], size)
        return lesion_box(truth, size, margin)
    mask = predicted.get(row["path"])
    return None if mask is None else lesion_box(mask, size, margin)


def write_crops(
    root: Path,
    out: Path,
    rows: list[dict],
    mask_files: dict[str, tuple[Path, ...]],
    predicted: dict[str, np.ndarray],
    image_size: int,
    overlays: str,
    margin: float,
) -> None:
    """The crops and their masks, each original decoded once, and a split.csv that keeps each original's
    split and duplicate group."""
    listed = []
    for row in rows:
        if row["split"] not in ("train", "val", "test"):
            continue
        image = decode_image(root / row["path"], overlays=overlays).convert("RGB")
        truth = truth_mask(mask_files.get(row["path"], ()))
        box = crop_box(row, image.size, truth, predicted, margin)
        if box is None:
            continue
        target = out / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        crop_region(image, box, image_size).save(target)
        if truth is not None:
            pixels = Image.fromarray(truth.astype(np.uint8) * 255)
            crop_region(pixels, box, image_size).point(lambda v: 255 if v >= 128 else 0).save(
                target.with_name(f"{target.stem}_mask{target.suffix}")
            )
        listed.append(row)
    with (out / "split.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split", "group"])
        writer.writeheader()
        writer.writerows({key: row[key] for key in ("path", "label", "split", "group")} for row in listed)


def fit_combiner(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float = 1e-2):
    """Multinomial logistic regression on standardised features (LBFGS); returns a function of features."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda f: (((f - mean) / std) @ weight.detach() + bias.detach()).softmax(dim=1)


def training_seconds(run_dir: Path) -> tuple[int, float]:
    history = read_history(run_dir)
    return len(history), sum(float(row[EPOCH_SECONDS]) for row in history)


def run_fold(cv: Path, fold: int, root: Path, out: Path, epochs: int, margin: float, image_size: int) -> dict:
    source = fold_dir(cv, fold)
    model = load_classifier(source / "checkpoints" / "best.ckpt").eval()
    if not model.segments:
        raise SystemExit(f"{source}: the fold model has no lesion decoder; cross-validate a recipe with one")
    rows = read_split(source / "split.csv")
    datamodule = BusiDataModule(
        root=str(root), image_size=model.image_size, split_csv=str(source / "split.csv"), overlays=model.overlays
    )
    datamodule.setup("fit")
    catalog = datamodule.catalog
    relative = [catalog.relative(i) for i in range(len(catalog.records))]
    mask_files = {path: record.masks for path, record in zip(relative, catalog.records, strict=True)}
    whole: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[float]] = {}
    predicted: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        indices, probabilities, masks = whole_image_answers(model, datamodule, split)
        for index, p, mask in zip(indices, probabilities, masks, strict=True):
            path = relative[index]
            whole[path] = p
            shapes[path] = lesion_shape(mask.numpy()).as_list()
            if mask.any():
                predicted[path] = mask.numpy()
    crops = out / f"fold_{fold}" / "crops"
    write_crops(root, crops, rows, mask_files, predicted, image_size, model.overlays, margin)
    runs = out / f"fold_{fold}" / "runs"
    started = time.monotonic()
    trained = run(
        [
            "--config", "scratch", f"--data.root={crops}", f"--data.split_csv={crops / 'split.csv'}",
            f"--data.image_size={image_size}", f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={runs}",
            "--trainer.enable_progress_bar=false", f"--data.cache_dir={out / 'cache'}",
        ]
    )  # fmt: skip
    crop_wall = time.monotonic() - started
    crop_model = trained.model.eval()
    crop_data = trained.datamodule
    crop_relative = [crop_data.catalog.relative(i) for i in range(len(crop_data.catalog.records))]
    crop_answers: dict[str, torch.Tensor] = {}
    for split in ("val", "test"):
        images = crop_data.dataset(split)
        outputs = answer(crop_model, DataLoader(images, batch_size=32))
        for index, p in zip(images.indices, outputs.probabilities, strict=True):
            crop_answers[crop_relative[index]] = p
    names = model.class_names
    label_of = {row["path"]: names.index(row["label"]) for row in rows}

    def features(path: str) -> torch.Tensor:
        crop = crop_answers.get(path, torch.full((len(names),), 1 / len(names)))
        return torch.cat(
            [
                whole[path].clamp_min(1e-6).log(),
                crop.clamp_min(1e-6).log(),
                torch.tensor(shapes[path], dtype=torch.float32),
            ]
        )

    val = [row["path"] for row in rows if row["split"] == "val" and row["path"] in crop_answers]
    combine = fit_combiner(
        torch.stack([features(p) for p in val]), torch.tensor([label_of[p] for p in val]), len(names)
    )
    test = [row["path"] for row in rows if row["split"] == "test"]
    answers = {"whole": [], "crop": [], "combined": []}
    for path in test:
        answers["whole"].append(whole[path])
        answers["crop"].append(crop_answers.get(path, whole[path]))
        answers["combined"].append(combine(features(path)[None])[0] if path in crop_answers else whole[path])
    whole_epochs, whole_seconds = training_seconds(source)
    crop_epochs, crop_seconds = training_seconds(Path(trained.trainer.log_dir))
    return {
        "fold": fold,
        "test": test,
        "labels": [label_of[p] for p in test],
        "answers": {key: torch.stack(value).tolist() for key, value in answers.items()},
        "with_predicted_lesion": sum(p in crop_answers for p in test),
        "shape_features": list(SHAPE_FEATURES),
        "cost": {
            "whole_image": {"epochs": whole_epochs, "seconds": whole_seconds},
            "crops": {"epochs": crop_epochs, "seconds": crop_seconds, "wall_seconds": crop_wall},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=BUSI)
    parser.add_argument("--out", type=Path, default=None, help="default: CV/lesion_crops")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--margin", type=float, default=0.25)
    parser.add_argument("--image_size", type=int, default=128)
    args = parser.parse_args(argv)
    out = args.out or args.cv / "lesion_crops"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for fold in range(len(sorted(args.cv.glob("fold_*")))):
        done = out / f"fold_{fold}.json"
        if not done.is_file():
            result = run_fold(args.cv, fold, args.root, out, args.epochs, args.margin, args.image_size)
            done.write_text(json.dumps(result))
        results.append(json.loads(done.read_text()))
    labels = torch.tensor([label for r in results for label in r["labels"]])
    summary = {"protocol": vars(args) | {"cv": str(args.cv), "root": str(args.root), "out": str(out)}}
    for key in ("whole", "crop", "combined"):
        pooled = torch.tensor([p for r in results for p in r["answers"][key]])
        per_fold = [scores(torch.tensor(r["answers"][key]), torch.tensor(r["labels"]), CLASS_NAMES) for r in results]
        summary[key] = {
            "pooled": scores(pooled, labels, CLASS_NAMES),
            **{
                f"{m}_mean": float(np.mean([f[m] for f in per_fold]))
                for m in ("accuracy", "macro_f1", "malignant_recall")
            },
            **{f"{m}_sd": float(np.std([f[m] for f in per_fold], ddof=1)) for m in ("accuracy", "macro_f1")},
        }
    summary["with_predicted_lesion"] = sum(r["with_predicted_lesion"] for r in results)
    summary["cost"] = [r["cost"] for r in results]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'answer':<10} {'accuracy':>16} {'macro-F1':>16} {'malignant recall':>17}   (mean ± sd over folds; pooled)")
    for key in ("whole", "crop", "combined"):
        s = summary[key]
        print(
            f"{key:<10} {s['accuracy_mean']:.3f} ± {s['accuracy_sd']:.3f} ({s['pooled']['accuracy']:.3f})"
            f" {s['macro_f1_mean']:.3f} ± {s['macro_f1_sd']:.3f} ({s['pooled']['macro_f1']:.3f})"
            f" {s['malignant_recall_mean']:.3f} ({s['pooled']['malignant_recall']:.3f})"
        )
    whole_s = sum(c["whole_image"]["seconds"] for c in summary["cost"])
    crop_s = sum(c["crops"]["seconds"] for c in summary["cost"])
    print(f"training: whole-image {whole_s / 60:.1f} min, crop stage {crop_s / 60:.1f} min (epochs' own time)")
    print(f"{summary['with_predicted_lesion']} of {len(labels)} test images had a predicted lesion")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
