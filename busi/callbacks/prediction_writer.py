"""What busi-predict writes for its answers: the CSV (its columns live here), lesion masks and Grad-CAM
overlays, from Lightning's predict loop on one process or many (each writes its share; the main
process merges the CSV back into input order)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from busi.data.files import Prediction, file_loader, image_files
from busi.evaluation.conformal import prediction_sets, refers, set_name
from busi.evaluation.measurements import lesions as measured_lesions
from busi.evaluation.operating_point import decided_class
from busi.evaluation.plots import overlay
from busi.io.dicom import DEFAULT_OPTIONS, DicomOptions, is_dicom_file
from busi.io.images import resize_map
from busi.model.answering import answering_trainer, run_predict
from busi.model.classifier import BusiClassifier
from busi.model.ensemble import FoldEnsemble
from busi.model.inference import Outputs
from busi.model.metrics import LESION_THRESHOLD
from busi.progress import progress_bar, say


@dataclass(frozen=True)
class CsvLayout:
    """The optional columns: `mask` (--masks: the predicted lesion mask's file), `frame` and `frames`
    (--dicom_frames all: one row per frame of a cine loop), the pixel spacing in mm (DICOM inputs); and
    the decision rule of `label`: the most probable class, or with `malignant_threshold` malignant
    whenever p_malignant reaches it (an operating point: busi.commands.predict); with `set_thresholds`
    (a model with conformal thresholds) `prediction_set` (e.g. benign|malignant) and `refer` (the set is
    not the label alone: busi.evaluation.conformal.refers)."""

    masks: bool = False
    frames: bool = False
    spacing: bool = False
    malignant_threshold: float | None = None
    set_thresholds: tuple[float, ...] | None = None


PLAIN = CsvLayout()  # the columns every CSV has


def csv_columns(class_names: tuple[str, ...], layout: CsvLayout = PLAIN) -> list[str]:
    return [
        "path",
        "label",
        "confidence",
        *(f"p_{name}" for name in class_names),
        "error",
        *(["prediction_set", "refer"] if layout.set_thresholds else []),
        *(["mask", *MEASUREMENT_COLUMNS] if layout.masks else []),
        *(["frame", "frames"] if layout.frames else []),
        *(["pixel_spacing_x_mm", "pixel_spacing_y_mm"] if layout.spacing else []),
    ]


def csv_row(prediction: Prediction, class_names: tuple[str, ...], layout: CsvLayout = PLAIN) -> list[str]:
    extra = []
    if layout.set_thresholds:
        decided = (
            None
            if prediction.probabilities is None
            else decided_class(prediction.probabilities, class_names, layout.malignant_threshold)
        )
        extra += set_values(prediction.probabilities, class_names, layout.set_thresholds, decided)
    extra += [str(prediction.mask or ""), *measurement_values(prediction)] if layout.masks else []
    if layout.frames:
        extra += [str(prediction.frame), str(prediction.frames)] if prediction.probabilities is not None else ["", ""]
    if layout.spacing:
        extra += [f"{v:.6g}" for v in prediction.spacing_mm] if prediction.spacing_mm else ["", ""]
    if prediction.probabilities is None:
        return [str(prediction.path), "", "", *([""] * len(class_names)), prediction.error, *extra]
    probabilities = prediction.probabilities
    best = decided_class(probabilities, class_names, layout.malignant_threshold)
    return [
        str(prediction.path),
        class_names[best],
        f"{probabilities[best]:.6f}",
        *(f"{p:.6f}" for p in probabilities),
        "",
        *extra,
    ]


def set_values(probabilities: list[float] | None, class_names, thresholds, decided: int) -> list[str]:
    """The prediction_set and refer columns for the label `decided` (empty for a file that was not answered)."""
    if probabilities is None:
        return ["", ""]
    members = prediction_sets(torch.tensor([probabilities]), list(thresholds))
    refer = bool(refers(members, torch.tensor([decided]))[0])
    return [set_name(members[0].tolist(), tuple(class_names)), "yes" if refer else "no"]


def lesion_mask(lesion: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A lesion map at the model's input size as the boolean mask of the image's own `size` (width, height)."""
    return resize_map(lesion, size) >= LESION_THRESHOLD


def mask_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as the 0/255 PNG busi writes."""
    return Image.fromarray(mask.astype(np.uint8) * 255)


MEASUREMENT_COLUMNS = (
    "lesions", "long_axis_mm", "short_axis_mm", "area_mm2", "depth_to_width", "orientation",
    "long_axis_px", "short_axis_px", "area_px",
)  # fmt: skip


def measurement_values(prediction: Prediction) -> list[str]:
    """The CSV's measurement columns: how many lesions, and the largest one's figures (mm where the image
    gives a spacing)."""
    if not prediction.lesions:
        return ["0" if prediction.lesions is not None else "", *[""] * (len(MEASUREMENT_COLUMNS) - 1)]
    largest = prediction.lesions[0]
    number = lambda value, digits: "" if value is None else f"{value:.{digits}f}"  # noqa: E731
    return [
        str(len(prediction.lesions)),
        number(largest.long_axis_mm, 2),
        number(largest.short_axis_mm, 2),
        number(largest.area_mm2, 2),
        number(largest.depth_to_width, 3),
        largest.orientation,
        number(largest.long_axis_px, 1),
        number(largest.short_axis_px, 1),
        str(largest.area_px),
    ]


def write_csv(path: Path, predictions: list[Prediction], class_names: tuple[str, ...], layout: CsvLayout = PLAIN):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_columns(class_names, layout))
        writer.writerows(csv_row(p, class_names, layout) for p in predictions)


class PredictionWriter(BasePredictionWriter):
    """Fills each batch's rows (busi.data.files) with the model's answers and writes them as they come:
    CSV rows to `output`, lesion masks (0/255 PNG at the image's own size) to `mask_dir`, Grad-CAM
    overlays to `cam_dir`; with `echo`, a line per row and a progress bar over `total` files; with
    `keep`, the rows stay in `predictions`. Under several processes each writes `output.rankN` (input
    index first), and the main process merges them into `output`, in input order."""

    def __init__(
        self,
        class_names: tuple[str, ...],
        output: Path | None = None,
        layout: CsvLayout = PLAIN,
        cam_dir: Path | None = None,
        mask_dir: Path | None = None,
        echo: bool = False,
        total: int | None = None,
        quiet: bool = True,
        keep: bool = False,
        dicom_out: Path | None = None,
        model_identity: dict | None = None,
        dicom_capture: bool = False,
    ):
        super().__init__(write_interval="batch")
        self.class_names, self.output, self.layout = tuple(class_names), output, layout
        self.cam_dir, self.mask_dir = cam_dir, mask_dir
        self.echo, self.total, self.quiet, self.keep = echo, total, quiet, keep
        self.dicom_out, self.model_identity, self.dicom_capture = dicom_out, model_identity, dicom_capture
        self.predictions: list[Prediction] = []
        self.predicted = self.failed = 0  # on the main process, after the merge: over all processes

    def _part(self, rank: int) -> Path:
        return self.output.with_name(f"{self.output.name}.rank{rank}")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._sharded = trainer.world_size > 1
        self._handle = self._csv = None
        if self.output is not None:
            path = self._part(trainer.global_rank) if self._sharded else self.output
            self._handle = path.open("w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._handle)
            if not self._sharded:
                self._csv.writerow(csv_columns(self.class_names, self.layout))
        quiet = self.quiet or not self.echo or trainer.global_rank != 0
        self._bar = progress_bar(total=self.total, what="predict", quiet=quiet)

    def write_on_batch_end(
        self, trainer, pl_module, prediction: Outputs, batch_indices, batch: dict, batch_idx: int, dataloader_idx: int
    ) -> None:
        rows, answered = batch["rows"], 0
        lesions = None if prediction.lesions is None else prediction.lesions.cpu().numpy()
        for row, readable in zip(rows, batch["readable"], strict=True):
            if readable:
                self._fill(row, answered, prediction, lesions, batch["pixels"][answered])
                answered += 1
            self._write(row)

    def _fill(self, row: Prediction, k: int, prediction: Outputs, lesions: np.ndarray | None, pixels) -> None:
        row.probabilities = prediction.probabilities[k].cpu().tolist()
        mask = None
        # measured only where the lesions are written or kept, not on every answer of a decoder model
        wanted = self.layout.masks or self.mask_dir is not None or self.dicom_out is not None or self.keep
        if lesions is not None and wanted:
            mask = lesion_mask(lesions[k], row.size)
            row.lesions = measured_lesions(mask, row.spacing_mm)
            if self.mask_dir is not None:
                row.mask = self.mask_dir / f"{row.name}_lesion.png"
                mask_image(mask).save(row.mask)
        if self.dicom_out is not None and is_dicom_file(row.path):
            self._dicom_results(row, mask)
        if self.cam_dir is not None:
            best = max(range(len(row.probabilities)), key=row.probabilities.__getitem__)
            caption = f"{self.class_names[best]} {row.probabilities[best]:.1%}\n{row.path.name}"
            row.cam = self.cam_dir / f"{row.name}.png"
            lesion = None if lesions is None else lesions[k] >= LESION_THRESHOLD
            overlay(pixels, prediction.cams[k], caption, lesion=lesion).save(row.cam)

    def _dicom_results(self, row: Prediction, mask: np.ndarray | None) -> None:
        """The SR (and the SEG, with a predicted lesion) of a DICOM row, in dicom_out; a row that cannot have
        them gets a warning in its note, never an error."""
        import pydicom

        from busi.archive.results import Answer, write_results

        if mask is not None and row.crop is not None:  # back into the whole frame the SEG refers to
            whole = np.zeros(row.frame_size[::-1], dtype=bool)
            left, top, right, bottom = row.crop
            whole[top:bottom, left:right] = mask
            mask = whole
        best = decided_class(row.probabilities, self.class_names, self.layout.malignant_threshold)
        answer = Answer(
            self.class_names, row.probabilities, self.class_names[best], row.frame, mask, row.lesions or [],
            self.model_identity or {},
        )  # fmt: skip
        try:
            row.dicom_results = write_results(
                pydicom.dcmread(row.path), answer, self.dicom_out, row.name, capture=self.dicom_capture
            )
        except Exception as error:  # highdicom refuses a source it cannot reference: the CSV row stands
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            row.note = "; ".join(filter(None, [row.note, f"no DICOM results ({reason})"]))

    def _write(self, row: Prediction) -> None:
        values = csv_row(row, self.class_names, self.layout)
        if self._csv is not None:
            self._csv.writerow([row.index, row.frame, *values] if self._sharded else values)
        if self.keep:
            self.predictions.append(row)
        if row.probabilities is None:
            self.failed += 1
        else:
            self.predicted += 1
        if self.echo:
            if row.probabilities is None:
                say(f"error  {row.error}", error=True)
            else:
                if row.note:  # the first frame of a file carries it
                    say(f"warning: {row.path}: {row.note}", error=True)
                frame = f" frame {row.frame}/{row.frames}" if self.layout.frames else ""
                say(f"{values[1]:<10} {float(values[2]):6.1%}  {row.path}{frame}")
        if row.probabilities is None or not self.layout.frames or row.frame == row.frames:
            self._bar.update()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._bar.close()
        if self._handle is not None:
            self._handle.close()
        if not self._sharded:
            return
        trainer.strategy.barrier()  # every process's part is complete
        if trainer.is_global_zero and self.output is not None:
            self._merge(trainer.world_size)
        trainer.strategy.barrier()

    def _merge(self, processes: int) -> None:
        rows = []
        for rank in range(processes):
            part = self._part(rank)
            with part.open(newline="", encoding="utf-8") as handle:
                rows += [(int(r[0]), int(r[1]), r[2:]) for r in csv.reader(handle)]
            part.unlink()
        rows.sort(key=lambda r: r[:2])
        error = csv_columns(self.class_names, self.layout).index("error")
        with self.output.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(csv_columns(self.class_names, self.layout))
            writer.writerows(values for _, _, values in rows)
        self.failed = sum(1 for _, _, values in rows if values[error])
        self.predicted = len(rows) - self.failed


def predict_files(
    model: BusiClassifier | FoldEnsemble,
    paths: list[Path],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    cam_dir: Path | None = None,
    mask_dir: Path | None = None,
    dicom: DicomOptions = DEFAULT_OPTIONS,
    dicom_out: Path | None = None,
    model_identity: dict | None = None,
    malignant_threshold: float | None = None,
    dicom_capture: bool = False,
) -> list[Prediction]:
    """One Prediction per image (a file, or a frame of a DICOM cine loop), in input order; unreadable
    files carry the reason in `error`. With `cam_dir`, a Grad-CAM overlay of the predicted class is
    written there for each image (the predicted lesion outlined when the model has a decoder); with
    `mask_dir`, the predicted lesion mask as a 0/255 PNG at the image's own size; with `dicom_out`, each DICOM
    input's SR and SEG there, and with `dicom_capture` its Secondary Capture (see PredictionWriter)."""
    writer = PredictionWriter(
        model.class_names, layout=CsvLayout(malignant_threshold=malignant_threshold), cam_dir=cam_dir,
        mask_dir=mask_dir, keep=True, dicom_out=dicom_out, model_identity=model_identity,
        dicom_capture=dicom_capture,
    )  # fmt: skip
    model.explain, before = ("predicted" if cam_dir is not None else False), model.explain
    loader = file_loader(list(image_files(paths)), model.image_size, dicom, batch_size, overlays=model.overlays)
    try:
        run_predict(answering_trainer(device, [writer]), model, loader, keep=False)
    finally:
        model.explain = before  # the caller's model answers as it did before
    return writer.predictions
