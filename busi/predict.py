"""`busi-predict` / `python predict.py`: classify image files (and DICOM scans) with a trained checkpoint,
one CSV row per image."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import torch
from jsonargparse import ArgumentParser
from PIL import Image

from busi.dicom import DEFAULT_OPTIONS, DicomOptions, Frame, is_dicom_file
from busi.ensemble import infer_mean
from busi.errors import OptionError, run_command
from busi.images import (
    UnreadableImageError,
    as_three_channels,
    decode_frames,
    is_hidden,
    is_image_file,
    is_mask,
    missing_file_reason,
    resize_map,
    resize_to_tensor,
)
from busi.metrics import LESION_THRESHOLD
from busi.model import BusiClassifier, load_classifiers
from busi.plots import overlay
from busi.progress import progress_bar, say


@dataclass
class Prediction:
    path: Path
    probabilities: list[float] | None = None
    error: str = ""
    cam: Path | None = None  # the Grad-CAM overlay written for it
    mask: Path | None = None  # the predicted lesion mask written for it
    frame: int = 1  # of a DICOM cine loop, from 1
    frames: int = 1
    spacing_mm: tuple[float, float] | None = None  # (x, y) of a source pixel, where a DICOM file gives it
    note: str = ""  # what was not done as asked (busi.dicom.Frame.note)


def image_files(paths: list[Path]) -> Iterator[Path]:
    """Files named directly are always tried; folders are recursed for images (masks and hidden
    files skipped; broken links are kept, to get their error row)."""
    for path in paths:
        if path.is_dir():
            found = (p for p in path.rglob("*") if not p.is_dir() and not is_hidden(p, path))
            yield from sorted(p for p in found if is_image_file(p) and not is_mask(p))
        else:
            yield path


def batched(items: Iterator, size: int) -> Iterator[list]:
    """Lists of `size` items, the last one shorter (itertools.batched, Python ≥ 3.12)."""
    while batch := list(islice(items, size)):
        yield batch


def decoded_frames(paths: list[Path], dicom: DicomOptions) -> Iterator[tuple[Prediction, Frame | None]]:
    """Each file's frames (one for a raster image, those `dicom` asks for of a DICOM file) with their
    Prediction to fill, or the Prediction of a file that cannot be read (error set) and None."""
    for path in paths:
        if not path.exists():
            yield Prediction(path, error=f"{path}: {missing_file_reason(path)}"), None
            continue
        try:
            frames = decode_frames(path, dicom=dicom)
        except UnreadableImageError as error:
            yield Prediction(path, error=str(error)), None
            continue
        for frame in frames:
            yield (
                Prediction(path, frame=frame.number, frames=frame.frames, spacing_mm=frame.spacing_mm, note=frame.note),
                frame,
            )


def predict_files(
    classifiers: list[BusiClassifier],
    paths: list[Path],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    cam_dir: Path | None = None,
    mask_dir: Path | None = None,
    dicom: DicomOptions = DEFAULT_OPTIONS,
) -> Iterator[Prediction]:
    """Yield one Prediction per image (a file, or a frame of a DICOM cine loop), in order; unreadable
    files carry the reason in `error`. With `cam_dir`, a Grad-CAM overlay of the predicted class is
    written there for each image (the predicted lesion outlined when the model has a decoder); with
    `mask_dir`, the predicted lesion mask as a 0/255 PNG at the image's own size."""
    classifiers = [classifier.to(device).eval() for classifier in classifiers]
    classifier = classifiers[0]
    image_size = classifier.hparams.image_size
    names: set[str] = set()
    mask_names: set[str] = set()
    for batch in batched(decoded_frames(list(image_files(paths)), dicom), batch_size):
        decoded = [
            (result, resize_to_tensor(frame.image, image_size), frame.image.size) for result, frame in batch if frame
        ]
        if decoded:
            pixels = torch.stack([as_three_channels(p) for _, p, _ in decoded])
            # with overlays, one backbone pass gives both the probabilities and the heat-maps
            outputs = infer_mean(classifiers, pixels, explain=cam_dir is not None)
            probabilities = outputs.probabilities.cpu()
            lesions = None if outputs.lesions is None else outputs.lesions.cpu().numpy()
            for index, ((result, image, size), row) in enumerate(zip(decoded, probabilities, strict=True)):
                result.probabilities = row.tolist()
                name = result.path.stem if result.frames == 1 else f"{result.path.stem}_frame{result.frame}"
                if mask_dir is not None:
                    lesion = resize_map(lesions[index], size) >= LESION_THRESHOLD
                    result.mask = _unique(mask_dir / f"{name}_lesion.png", mask_names)
                    Image.fromarray(lesion.astype(np.uint8) * 255).save(result.mask)
                if cam_dir is not None:
                    best = int(row.argmax())
                    caption = f"{classifier.class_names[best]} {float(row[best]):.1%}\n{result.path.name}"
                    result.cam = _unique(cam_dir / f"{name}.png", names)
                    lesion = None if lesions is None else lesions[index] >= LESION_THRESHOLD
                    overlay(image, outputs.cams[index], caption, lesion=lesion).save(result.cam)
        yield from (result for result, _ in batch)


def _unique(path: Path, taken: set[str]) -> Path:
    """`scan.png`, then `scan-2.png`, … : images with the same name in different folders."""
    candidate, number = path, 1
    while candidate.name in taken:
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    taken.add(candidate.name)
    return candidate


def csv_columns(
    class_names: tuple[str, ...], masks: bool = False, frames: bool = False, spacing: bool = False
) -> list[str]:
    """predict.py's columns; last come `mask` (--masks: the predicted lesion mask's file), `frame` and
    `frames` (--dicom_frames all: one row per frame of a cine loop) and the pixel spacing in mm (DICOM
    inputs, where the file gives it)."""
    return [
        "path",
        "label",
        "confidence",
        *(f"p_{name}" for name in class_names),
        "error",
        *(["mask"] if masks else []),
        *(["frame", "frames"] if frames else []),
        *(["pixel_spacing_x_mm", "pixel_spacing_y_mm"] if spacing else []),
    ]


def csv_row(
    prediction: Prediction,
    class_names: tuple[str, ...],
    masks: bool = False,
    frames: bool = False,
    spacing: bool = False,
) -> list[str]:
    extra = [str(prediction.mask or "")] if masks else []
    if frames:
        extra += [str(prediction.frame), str(prediction.frames)] if prediction.probabilities is not None else ["", ""]
    if spacing:
        extra += [f"{v:.6g}" for v in prediction.spacing_mm] if prediction.spacing_mm else ["", ""]
    if prediction.probabilities is None:
        return [str(prediction.path), "", "", *([""] * len(class_names)), prediction.error, *extra]
    probabilities = prediction.probabilities
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return [
        str(prediction.path),
        class_names[best],
        f"{probabilities[best]:.6f}",
        *(f"{p:.6f}" for p in probabilities),
        "",
        *extra,
    ]


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="busi-predict", description="Classify breast ultrasound images with a busi checkpoint."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders (recursed; masks skipped)")
    parser.add_argument(
        "--ckpt",
        required=True,
        type=Path,
        help="RUN/checkpoints/best.ckpt, or a busi-cv folder (the mean of its fold models)",
    )
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="CSV to write")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    parser.add_argument(
        "--cam", type=Path | None, default=None, help="write a Grad-CAM overlay PNG per image into this folder"
    )
    parser.add_argument(
        "--masks",
        type=Path | None,
        default=None,
        help="write each predicted lesion mask (NAME_lesion.png, 0/255, the image's own size) into this folder; "
        "needs a model trained with --model.segmentation_weight",
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar (it is drawn only on a terminal anyway)")
    return parser


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise OptionError(f"--device {name}: no such CUDA device on this machine; use --device cpu")
    return device


def open_outputs(args) -> TextIO:
    """Create the output folders and open the CSV: OptionError naming the place that cannot be written."""
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        for folder in (args.cam, args.masks):
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
        return args.output.open("w", newline="", encoding="utf-8")
    except OSError as error:
        where = error.filename or args.output
        raise OptionError(
            f"{where}: cannot write there ({error.strerror or error}); pass another --output/--cam/--masks"
        ) from None


def predict(args) -> int:
    device = choose_device(args.device)
    try:
        dicom = DicomOptions(str(args.dicom_frames), args.dicom_crop)
    except ValueError as error:
        raise OptionError(str(error)) from None
    classifiers = load_classifiers(args.ckpt)
    if args.masks and not all(c.model.segments for c in classifiers):
        raise OptionError(
            f"--masks: {args.ckpt} has no lesion decoder; train with --model.segmentation_weight 0.5 (or drop --masks)"
        )
    class_names = classifiers[0].class_names
    files = list(image_files(args.paths))
    layout = {
        "masks": args.masks is not None,
        "frames": dicom.frames == "all",
        "spacing": any(map(is_dicom_file, files)),
    }
    predicted = failed = 0
    with open_outputs(args) as handle, progress_bar(total=len(files), what="predict", quiet=args.quiet) as bar:
        writer = csv.writer(handle)
        writer.writerow(csv_columns(class_names, **layout))
        for prediction in predict_files(classifiers, files, args.batch_size, device, args.cam, args.masks, dicom):
            row = csv_row(prediction, class_names, **layout)
            writer.writerow(row)
            if prediction.probabilities is None:
                failed += 1
                say(f"error  {prediction.error}", error=True)
            else:
                predicted += 1
                if prediction.note:  # the first frame of a file carries it
                    say(f"warning: {prediction.path}: {prediction.note}", error=True)
                frame = f" frame {prediction.frame}/{prediction.frames}" if layout["frames"] else ""
                say(f"{row[1]:<10} {float(row[2]):6.1%}  {prediction.path}{frame}")
            last_of_its_file = not layout["frames"] or prediction.frame == prediction.frames
            if prediction.probabilities is None or last_of_its_file:
                bar.update()
    print(
        f"{predicted} predicted, {failed} failed → {args.output}"
        + (f"; Grad-CAM overlays in {args.cam}" if args.cam else "")
        + (f"; lesion masks in {args.masks}" if args.masks else "")
    )
    return 0 if predicted else 2


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(lambda: predict(args))
