"""Grad-CAM overlays in TensorBoard, and how well heat-maps point at the lesion masks
(`busi-explain --ckpt CKPT --data.root DATA [--split test]`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from busi.answering import answer
from busi.data.catalog import Catalog, read_catalog
from busi.data.dataset import ImageTensors
from busi.data.splits import read_split_csv
from busi.errors import DataError, run_command
from busi.model import BusiClassifier, load_classifier
from busi.plots import overlay
from busi.report import format_localisation

POINTING_DILATION = 5  # pixels at the model's input size: a peak on the lesion's border counts


def localisation(cam: torch.Tensor, mask: torch.Tensor, dilation: int = POINTING_DILATION) -> dict[str, float]:
    """Energy inside the mask, the uniform-map baseline (the mask's area share), and the pointing hit."""
    mask = mask.to(cam.device)
    dilated = F.max_pool2d(mask[None, None].float(), 2 * dilation + 1, stride=1, padding=dilation)[0, 0] > 0
    return {
        "energy_inside": float((cam * mask).sum() / cam.sum().clamp_min(1e-12)),
        "mask_area": float(mask.float().mean()),
        "pointing_hit": float(dilated.flatten()[cam.flatten().argmax()]),
    }


def summarise(rows: list[dict], class_names: tuple[str, ...]) -> dict:
    """Mean scores per class (images with a non-empty mask only)."""
    summary = {}
    for name in class_names:
        scored = [row for row in rows if row["label"] == name]
        if scored:
            summary[name] = {
                "images": len(scored),
                **{
                    key: float(np.mean([row[key] for row in scored]))
                    for key in ("energy_inside", "mask_area", "pointing_hit")
                },
            }
    return summary


def localisation_scores(classifier: BusiClassifier, catalog: Catalog, indices: list[int], batch_size: int = 32) -> dict:
    """Grad-CAM of the true class for every image of `indices` that has a non-empty lesion mask (the
    catalog's, decoded with the images and at the same size)."""
    candidates = [i for i in indices if catalog.masks[i] is not None and catalog.mask(i).any()]
    loader = DataLoader(ImageTensors(catalog, candidates), batch_size=batch_size)
    cams = answer(classifier.eval(), loader, explain="label").cams if candidates else []
    rows = []
    for index, cam in zip(candidates, cams, strict=True):
        label = classifier.class_names[catalog.records[index].label]
        mask = catalog.mask(index)[0].bool()
        rows.append({"path": catalog.relative(index), "label": label, **localisation(cam, mask)})
    return {"dilation_px": POINTING_DILATION, "per_class": summarise(rows, classifier.class_names), "images": rows}


class GradCamGrid(Callback):
    """TensorBoard image `val/grad_cam`: validation images (the same ones each time, classes mixed)
    beside their Grad-CAM overlays, captioned with the predicted and the true class; logged every
    `every_n_epochs` epochs and after the last."""

    def __init__(self, every_n_epochs: int = 5, images: int = 6):
        self.every_n_epochs = every_n_epochs
        self.images = images

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        due = epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs
        experiment = getattr(pl_module.logger, "experiment", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not due or not hasattr(experiment, "add_image"):
            return
        dataset = trainer.datamodule.dataset("val")
        labels = [dataset.catalog.records[i].label for i in dataset.indices]
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(label, []).append(index)
        chosen = [i for group in zip(*by_class.values(), strict=False) for i in group][: self.images]
        if not chosen:
            return
        pixels = torch.stack([dataset[i][0] for i in chosen])
        outputs = pl_module.infer(pixels, explain=True)
        names = pl_module.class_names
        tiles = []
        for i, image, cam, row, predicted in zip(
            chosen, pixels, outputs.cams, outputs.probabilities, outputs.explained, strict=True
        ):
            caption = f"pred {names[predicted]} {float(row[predicted]):.0%}\ntrue {names[labels[i]]}"
            tiles.append(np.asarray(overlay(image, cam, caption)))
        tiles += [np.full_like(tiles[0], 255)] * (len(tiles) % 2)
        grid = np.concatenate([np.concatenate(tiles[k : k + 2], axis=1) for k in range(0, len(tiles), 2)], axis=0)
        experiment.add_image("val/grad_cam", grid, trainer.global_step, dataformats="HWC")


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="busi-explain", description="Grad-CAM localisation scores against the BUSI lesion masks."
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint, e.g. RUN/checkpoints/best.ckpt")
    parser.add_argument("--data.root", required=True, type=Path, help="folder with the class folders")
    parser.add_argument("--split", default="test", type=Literal["train", "val", "test", "all"], help="images to score")
    parser.add_argument(
        "--split_csv", type=Path | None, default=None, help="default: split.csv of the checkpoint's run"
    )
    parser.add_argument("--output", type=Path | None, default=None, help="also write the scores, per image, as JSON")
    parser.add_argument("--cam_dir", type=Path | None, default=None, help="also write an overlay PNG per scored image")
    return parser


def explain(args) -> None:
    """Print the localisation scores per class: the share of the heat-map's energy inside the lesion mask
    (beside the mask's share of the image, the score of a uniform heat-map), and the pointing-game hit
    rate (the heat-map's maximum inside the mask, dilated by a few pixels)."""
    root = args.data.root
    classifier = load_classifier(args.ckpt)
    catalog = read_catalog(root, classifier.hparams.image_size, duplicate_distance=-1)
    indices = list(range(len(catalog.records)))
    if args.split != "all":
        split_csv = args.split_csv or args.ckpt.resolve().parent.parent / "split.csv"
        if not split_csv.is_file():
            raise DataError(f"{split_csv}: no split file; pass --split_csv RUN/split.csv or --split all")
        splits = {path: entry[1] for path, entry in read_split_csv(split_csv).items()}
        indices = [i for i in indices if splits.get(catalog.relative(i)) == args.split]
    scores = localisation_scores(classifier, catalog, indices)
    which = "all images" if args.split == "all" else f"the {args.split} split"
    print(format_localisation(scores, f"Grad-CAM localisation on {which} of {root} (true class)"))
    if args.output:
        args.output.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    if args.cam_dir:
        write_overlays(classifier, catalog, [i for i in indices if catalog.records[i].masks], args.cam_dir)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(lambda: explain(args))


def write_overlays(classifier: BusiClassifier, catalog: Catalog, indices: list[int], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if not indices:
        return
    loader = DataLoader(ImageTensors(catalog, indices), batch_size=32)
    outputs = answer(classifier, loader, explain="predicted")
    for index, cam, explained, row in zip(indices, outputs.cams, outputs.explained, outputs.probabilities, strict=True):
        label = classifier.class_names[int(explained)]
        truth = classifier.class_names[catalog.records[index].label]
        caption = f"{label} {float(row.max()):.1%}\ntrue: {truth}"
        name = catalog.relative(index).replace("/", "__")
        overlay(catalog.image(index), cam, caption).save(folder / Path(name).with_suffix(".png"))


if __name__ == "__main__":
    sys.exit(main())
