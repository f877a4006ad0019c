"""`busi-predict` / `python predict.py`: classify image files (and DICOM scans) with a trained checkpoint,
one CSV row per image."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser

from busi.commands.options import choose_device, command_parser, malignant_threshold, operating_point, parse
from busi.errors import OptionError, run_command


def parser() -> ArgumentParser:
    parser = command_parser(
        "busi-predict",
        "Classify breast ultrasound images with a busi checkpoint.",
        "--ckpt",
        "--output",
        "--device",
        "--batch_size",
        "--quiet",
        output={"type": Path, "default": Path("predictions.csv"), "help": "CSV to write"},
    )
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders (recursed; masks skipped)")
    parser.add_argument(
        "--cam", type=Path | None, default=None, help="write a Grad-CAM overlay PNG per image into this folder"
    )
    parser.add_argument(
        "--masks",
        type=Path | None,
        default=None,
        help="write each predicted lesion mask (NAME_lesion.png, 0/255, the image's own size) into this folder; "
        "needs a model trained with --model.loss.segmentation_weight",
    )
    parser.add_argument(
        "--dicom_out",
        type=Path | None,
        default=None,
        help="for DICOM inputs, write a Structured Report (TID 1500: finding, probabilities, lesion measurements) "
        "and, with a lesion decoder, a Segmentation of the predicted lesion per frame into this folder, in the "
        "source's study (needs busi[pacs])",
    )
    parser.add_argument(
        "--dicom_capture",
        type=bool,
        default=False,
        help="with --dicom_out, also a Secondary Capture per frame: the scan with the lesion outlined and the "
        "answer written under it, for viewers that show neither an SR nor a SEG",
    )
    parser.add_argument(
        "--dicom_frames",
        type=str,
        default="middle",
        help="frames of a DICOM cine loop to classify: middle, first, all (one row per frame), or a frame number from 1",
    )
    parser.add_argument(
        "--dicom_crop",
        default="region",
        type=Literal["region", "none"],
        help="region: crop DICOM scans to their ultrasound tissue region (SequenceOfUltrasoundRegions) before "
        "resizing, so the text and depth scale around it never reach the model; none: the whole frame",
    )
    parser.add_argument(
        "--malignant_threshold",
        type=str | None,
        default=None,
        help="label malignant whenever p_malignant reaches this (an operating point: a number in [0, 1], or "
        "`stored`: the checkpoint's, chosen on its validation split, or a busi-cv folder's); default: the most "
        "probable class",
    )
    parser.add_argument("--trainer.accelerator", type=str | None, default=None, help="cpu, gpu, …: overrides --device")
    parser.add_argument(
        "--trainer.devices", type=str | None, default=None, help="devices per machine (with --trainer.strategy ddp)"
    )
    parser.add_argument("--trainer.strategy", type=str | None, default=None, help="ddp: one process per device")
    parser.add_argument("--trainer.num_nodes", type=int | None, default=None, help="machines (torchrun, SLURM)")
    return parser


def trainer_options(args) -> dict:
    """--device as Trainer options, overridden by any --trainer.* given (several devices or nodes)."""
    from busi.model.answering import device_options

    options = device_options(choose_device(args.device))
    given = {key: value for key, value in vars(args.trainer).items() if value is not None}
    if "devices" in given:
        devices = str(given["devices"])
        given["devices"] = int(devices) if devices.isdigit() else devices
    return {**options, **given}


def open_outputs(args) -> None:
    """Create the output folders and check that the CSV can be written: OptionError naming the place."""
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        for folder in (args.cam, args.masks, args.dicom_out):
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
        args.output.open("w").close()
    except OSError as error:
        where = error.filename or args.output
        raise OptionError(
            f"{where}: cannot write there ({error.strerror or error}); pass another --output/--cam/--masks"
        ) from None


def predict(args) -> int:
    threshold = malignant_threshold(args.malignant_threshold)
    # imported here, not above: --help and option errors come before torch and Lightning load
    from busi.callbacks.prediction_writer import CsvLayout, PredictionWriter
    from busi.data.files import file_loader, image_files
    from busi.evaluation.conformal import stored_thresholds
    from busi.io.dicom import DicomOptions, is_dicom_file
    from busi.model.answering import answering_trainer, run_predict
    from busi.model.ensemble import load_model

    try:
        dicom = DicomOptions(str(args.dicom_frames), args.dicom_crop)
    except ValueError as error:
        raise OptionError(str(error)) from None
    if args.dicom_out is not None:
        try:
            import highdicom  # noqa: F401
        except ImportError:
            raise OptionError("--dicom_out needs highdicom: pip install 'busi[pacs]'") from None
    elif args.dicom_capture:
        raise OptionError("--dicom_capture: give --dicom_out DIR too (the folder the capture is written to)")
    options = trainer_options(args)
    model = load_model(args.ckpt)
    if args.masks and not model.segments:
        raise OptionError(
            f"--masks: {args.ckpt} has no lesion decoder; train with --model.loss.segmentation_weight 0.5 (or drop --masks)"
        )
    threshold, why = operating_point(threshold, args.ckpt, model)
    skipped_masks: list[Path] = []
    files = list(image_files(args.paths, skipped_masks))
    dicom_files = any(map(is_dicom_file, files))
    sets = stored_thresholds(args.ckpt, model.members[0].summary, model.class_names)
    layout = CsvLayout(
        args.masks is not None, dicom.frames == "all", dicom_files, threshold, tuple(sets[0]) if sets else None
    )
    open_outputs(args)
    model_identity = None
    if args.dicom_out is not None:
        from busi.model.classifier import checkpoint_paths
        from busi.model.identity import identity

        model_identity = identity(args.ckpt, checkpoint_paths(args.ckpt), model.members[0].summary, model.image_size)
    writer = PredictionWriter(
        model.class_names, args.output, layout, args.cam, args.masks, echo=True, total=len(files), quiet=args.quiet,
        dicom_out=args.dicom_out, model_identity=model_identity, dicom_capture=args.dicom_capture,
    )  # fmt: skip
    model.explain = "predicted" if args.cam else False
    trainer = answering_trainer(callbacks=[writer], **options)
    run_predict(
        trainer,
        model,
        file_loader(files, model.image_size, dicom, args.batch_size, overlays=model.overlays),
        keep=False,
    )
    if not trainer.is_global_zero:
        return 0
    print(
        f"{writer.predicted} predicted, {writer.failed} failed → {args.output}"
        + (f"; Grad-CAM overlays in {args.cam}" if args.cam else "")
        + (f"; lesion masks in {args.masks}" if args.masks else "")
        + (
            f"; DICOM results ({'SR, SEG, capture' if args.dicom_capture else 'SR, SEG'}) in {args.dicom_out}"
            if args.dicom_out
            else ""
        )
        + (f"; {len(skipped_masks)} mask files in the folders skipped (not scans)" if skipped_masks else "")
        + (f" ({trainer.world_size} processes)" if trainer.world_size > 1 else "")
        + (f"; labelled malignant when p_malignant ≥ {threshold:.4f} ({why})" if threshold is not None else "")
        + (f"; prediction sets ({sets[1]})" if sets else "")
    )
    return 0 if writer.predicted else 2


def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv)
    return run_command(lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())
