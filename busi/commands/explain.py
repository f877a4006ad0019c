"""Grad-CAM overlays in TensorBoard, and how well heat-maps point at the lesion masks
(`busi-explain --ckpt CKPT --data.root DATA [--split test]`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jsonargparse import ArgumentParser

from busi.commands.options import command_parser, parse
from busi.errors import DataError, run_command

if TYPE_CHECKING:
    from busi.data.catalog import Catalog
    from busi.model.classifier import BusiClassifier


def parser() -> ArgumentParser:
    parser = command_parser(
        "busi-explain",
        "Grad-CAM localisation scores against the BUSI lesion masks.",
        "--ckpt",
        "--data.root",
        "--output",
        ckpt={"help": "RUN/checkpoints/best.ckpt of a training run"},
        output={"help": "also write the scores, per image, as JSON"},
    )
    parser.add_argument("--split", default="test", type=Literal["train", "val", "test", "all"], help="images to score")
    parser.add_argument(
        "--split_csv", type=Path | None, default=None, help="default: split.csv of the checkpoint's run"
    )
    parser.add_argument("--cam", type=Path | None, default=None, help="also write an overlay PNG per scored image")
    return parser


def explain(args) -> None:
    """Print the localisation scores per class: the share of the heat-map's energy inside the lesion mask
    (beside the mask's share of the image, the score of a uniform heat-map), and the pointing-game hit
    rate (the heat-map's maximum inside the mask, dilated by a few pixels)."""
    # imported here, not above: --help and option errors come before torch and Lightning load
    from busi.data.catalog import read_catalog
    from busi.data.splits import read_split_csv
    from busi.evaluation.localisation import localisation_scores
    from busi.evaluation.report import format_localisation
    from busi.model.classifier import load_classifier

    root = args.data.root
    classifier = load_classifier(args.ckpt)
    catalog = read_catalog(root, classifier.hparams.image_size, duplicate_distance=-1, overlays=classifier.overlays)
    indices = list(range(len(catalog.records)))
    if args.split != "all":
        split_csv = args.split_csv or args.ckpt.resolve().parent.parent / "split.csv"
        if not split_csv.is_file():
            raise DataError(f"{split_csv}: no split file; pass --split_csv RUN/split.csv or --split all")
        splits = {path: entry[1] for path, entry in read_split_csv(split_csv).items()}
        indices = [i for i in indices if splits.get(catalog.relative(i)) == args.split]
        if not indices:
            raise DataError(
                f"{root}: none of its images is in the {args.split} split of {split_csv} (another folder than "
                f"the run trained on?); score all of them with --split all"
            )
    scores = localisation_scores(classifier, catalog, indices)
    which = "all images" if args.split == "all" else f"the {args.split} split"
    print(format_localisation(scores, f"Grad-CAM localisation on {which} of {root} (true class)"))
    if args.output:
        args.output.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    if args.cam:
        write_overlays(classifier, catalog, [i for i in indices if catalog.records[i].masks], args.cam)


def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv, {"--cam_dir": ("--cam", None)})
    return run_command(lambda: explain(args))


def write_overlays(classifier: BusiClassifier, catalog: Catalog, indices: list[int], folder: Path) -> None:
    from torch.utils.data import DataLoader

    from busi.data.dataset import ImageTensors
    from busi.evaluation.plots import overlay
    from busi.model.answering import answer

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
