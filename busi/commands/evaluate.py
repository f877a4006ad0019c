"""`busi-evaluate --ckpt CKPT --data.root FOLDER`: the full report of a trained model (or a busi-cv
folder's fold ensemble) on every image of a labelled folder in the BUSI layout."""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from busi.commands.options import choose_device, command_parser, parse
from busi.errors import DataError, run_command


def stored_calibration(temperature: float) -> dict:
    """The checkpoint's temperature, fitted when it was trained, for the report."""
    return {"temperature": temperature, "summary": f"the checkpoint's temperature {temperature:.3f}"}


def evaluate(
    ckpt: Path,
    root: Path,
    output: Path,
    batch_size: int = 32,
    device: str = "auto",
    quiet: bool = False,
    unseen_only: bool = False,
    shortcuts: bool = False,
) -> dict:
    """Score every image of `root` (another hospital's scans, a later export), not only a split: report.json/.txt,
    confusion_matrix.png, reliability.png, Grad-CAM localisation where lesion masks exist (single models),
    predictions.csv (predict.py's columns), the audit and TensorBoard, in `output`; the scores on overlaid and
    clean images apart and, with `shortcuts`, the probe of busi.evaluation.shortcuts."""
    # imported here, not above: --help and option errors come before torch and Lightning load
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from busi.callbacks.prediction_writer import write_csv
    from busi.callbacks.split_reports import score
    from busi.data.audit import format_audit
    from busi.data.catalog import read_catalog
    from busi.data.dataset import ImageTensors
    from busi.data.files import Prediction
    from busi.evaluation.localisation import localisation_scores
    from busi.evaluation.publish import publish_report
    from busi.evaluation.report import build_report, write_report
    from busi.evaluation.seen import seen_images
    from busi.evaluation.shortcuts import by_overlay, probe
    from busi.io.images import decode_image
    from busi.model.ensemble import load_model
    from busi.progress import progress_bar, say

    model = load_model(ckpt).to(choose_device(device))
    catalog = read_catalog(
        root, model.image_size, duplicate_distance=-1, class_names=model.class_names, progress=not quiet,
        overlays=model.overlays,
    )  # fmt: skip
    seen = seen_images(ckpt, catalog)
    indices = list(range(len(catalog.records)))
    if seen:
        counts = {split: sum(s == split for s in seen.values()) for split in ("train", "val", "calibration")}
        counts["val"] += counts.pop("calibration")  # validation in the broad sense: chose or calibrated
        if unseen_only:
            indices = [i for i in indices if i not in seen]
            say(f"scoring the {len(indices)} images the model never saw ({len(seen)} it saw left out)", error=True)
            if not indices:
                raise DataError(f"{root}: the checkpoint saw every one of its images; score another folder")
        else:
            say(
                f"warning: {len(seen)} of {len(indices)} images of {root} were in the checkpoint's training "
                f"({counts['train']}) or validation ({counts['val']}) split: their scores flatter the model; "
                "--unseen_only scores only the others",
                error=True,
            )
    everything = ImageTensors(catalog, indices)
    with progress_bar(total=len(everything), what="evaluate", quiet=quiet) as bar:
        split, outputs = score(model, DataLoader(everything, batch_size=batch_size), bar)
    predictions = [
        Prediction(record.path, row)
        for record, row in zip([catalog.records[i] for i in indices], outputs.probabilities.tolist(), strict=True)
    ]
    single = len(model.members) == 1
    localisation = localisation_scores(model, catalog, indices) if single else None
    report = build_report(
        model.class_names,
        str(ckpt),
        {"test": split},
        stored_calibration(float(model.members[0].temperature)) if single else None,
        localisation,
    )
    report["data"] = {"root": str(root), "images": len(indices), "models": len(model.members)}
    overlaid = [catalog.overlaid[i] for i in indices]
    report["overlays"] = by_overlay(outputs.probabilities, everything.labels, overlaid, model.class_names)
    if shortcuts:
        images = [decode_image(catalog.records[i].path) for i in indices]
        report["shortcuts"] = probe(model, images, everything.labels, overlaid)
    if seen is not None:
        report["data"]["seen_by_the_model"] = {
            "train": sum(s == "train" for s in seen.values()),
            "val": sum(s in ("val", "calibration") for s in seen.values()),
            "scored": sum(i in seen for i in indices),
        }
    output.mkdir(parents=True, exist_ok=True)
    (output / "audit.txt").write_text(format_audit(catalog.audit) + "\n", encoding="utf-8")
    write_csv(output / "predictions.csv", predictions, model.class_names)
    write_report(report, output)
    logger = TensorBoardLogger(save_dir=output, name="", version="")  # events in `output` itself
    publish_report(report, output, [logger])
    logger.finalize("success")
    return report


def parser() -> ArgumentParser:
    parser = command_parser(
        "busi-evaluate",
        __doc__.split("\n\n")[0],
        "--ckpt",
        "--data.root",
        "--output",
        "--device",
        "--batch_size",
        "--quiet",
        output={"help": "the evaluation folder; default: runs/evaluate/<folder name>"},
    )
    parser.add_argument(
        "--unseen_only",
        action="store_true",
        help="leave out the images in the checkpoint's training and validation splits (by path and content)",
    )
    parser.add_argument(
        "--shortcuts",
        action="store_true",
        help="probe whether the model reads the marks drawn on scans: inpaint them on the overlaid images, paste "
        "them on the clean ones, count the answers that change; the Grad-CAM energy on the marks",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv)
    root = args.data.root
    output = args.output or Path("runs") / "evaluate" / root.resolve().name

    def evaluate_and_print() -> None:
        from busi.evaluation.report import format_report

        report = evaluate(
            args.ckpt, root, output, args.batch_size, args.device, args.quiet, args.unseen_only, args.shortcuts
        )
        print(format_report(report))
        print(f"\nEvaluation directory: {output}")

    return run_command(evaluate_and_print)


if __name__ == "__main__":
    sys.exit(main())
