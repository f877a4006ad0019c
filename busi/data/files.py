"""Image files to answer for (busi-predict's inputs) as a Dataset: one item per file, its frames decoded
and resized to the model's input, or the row that says why it cannot be read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from busi.errors import UnreadableImageError
from busi.io.dicom import DEFAULT_OPTIONS, DicomOptions
from busi.io.images import (
    as_three_channels,
    decode_frames,
    is_hidden,
    is_image_file,
    is_mask,
    missing_file_reason,
    resize_to_tensor,
    without_overlays,
)


@dataclass
class Prediction:
    """One row of the answer: an image (a file, or a frame of a DICOM cine loop), or a file that cannot be
    read (`error` set, no probabilities)."""

    path: Path
    probabilities: list[float] | None = None
    error: str = ""
    cam: Path | None = None  # the Grad-CAM overlay written for it
    mask: Path | None = None  # the predicted lesion mask written for it
    frame: int = 1  # of a DICOM cine loop, from 1
    frames: int = 1
    spacing_mm: tuple[float, float] | None = None  # (x, y) of a source pixel, where a DICOM file gives it
    note: str = ""  # what was not done as asked (busi.io.dicom.Frame.note)
    index: int = 0  # the file's place among the inputs: rows are written in this order
    name: str = ""  # stem of the files written for it: unique among the inputs
    size: tuple[int, int] | None = None  # (width, height) of the decoded image
    lesions: list | None = None  # busi.evaluation.measurements.Lesion of the predicted mask, largest first
    crop: tuple[int, int, int, int] | None = None  # of a DICOM frame: the tissue region it was cropped to
    frame_size: tuple[int, int] | None = None  # of a DICOM frame: (width, height) before cropping
    dicom_results: list[Path] | None = None  # the SR and SEG written for it (busi-predict --dicom_out)


def image_files(paths: list[Path], skipped_masks: list[Path] | None = None) -> Iterator[Path]:
    """Files named directly are always tried (a named mask gets its error row); folders are recursed for
    images (hidden files skipped, masks skipped and appended to `skipped_masks`; broken links are
    kept, to get their error row)."""
    for path in paths:
        if path.is_dir():
            found = [p for p in path.rglob("*") if not p.is_dir() and not is_hidden(p, path) and is_image_file(p)]
            if skipped_masks is not None:
                skipped_masks += [p for p in found if is_mask(p)]
            yield from sorted(p for p in found if not is_mask(p))
        else:
            yield path


def mask_reason(path: Path) -> str:
    """Why a named mask file gets no answer, and the file to pass instead."""
    image = path.with_name(path.stem.split("_mask")[0] + path.suffix)
    return f"a lesion mask (its name has _mask), not a scan; pass the image it belongs to ({image.name})"


def unique_stems(files: list[Path]) -> list[str]:
    """`scan`, then `scan-2`, … : the names of what is written for images with the same name in
    different folders, fixed by the input order (the same under any number of processes)."""
    taken: set[str] = set()
    stems = []
    for path in files:
        candidate, number = path.stem, 1
        while candidate in taken:
            number += 1
            candidate = f"{path.stem}-{number}"
        taken.add(candidate)
        stems.append(candidate)
    return stems


def decode_rows(
    path: Path,
    image_size: int,
    dicom: DicomOptions = DEFAULT_OPTIONS,
    data: bytes | None = None,
    index: int = 0,
    stem: str = "",
    overlays: str = "keep",
) -> tuple[list[Prediction], torch.Tensor]:
    """A file's rows (one per frame `dicom` asks for) and their uint8 (frames, 3, S, S) pixels at the
    model's input size `image_size`; of `data` (bytes already read: an upload) when given. Raises
    UnreadableImageError (NotAnImageError, ImageTooLargeError) naming `path` and the reason. `overlays`
    inpaint: drawn marks inpainted first, as for a model trained so (BusiClassifier.overlays)."""
    frames = decode_frames(path, data, dicom=dicom)
    stem = stem or path.stem
    rows = [
        Prediction(
            path,
            frame=frame.number,
            frames=frame.frames,
            spacing_mm=frame.spacing_mm,
            note=frame.note,
            index=index,
            name=stem if frame.frames == 1 else f"{stem}_frame{frame.number}",
            size=frame.image.size,
            crop=frame.crop,
            frame_size=frame.frame_size,
        )
        for frame in frames
    ]
    pixels = torch.stack(
        [as_three_channels(resize_to_tensor(without_overlays(f.image, overlays), image_size)) for f in frames]
    )
    return rows, pixels


class ImageFiles(Dataset):
    """`files` as (rows, pixels): a file's rows (one per frame the DICOM options ask for; one error row
    for a file that cannot be read) and their uint8 (frames, 3, S, S) pixels at the model's input size."""

    def __init__(
        self, files: list[Path], image_size: int, dicom: DicomOptions = DEFAULT_OPTIONS, overlays: str = "keep"
    ):
        self.files = list(files)
        self.image_size, self.dicom, self.overlays = image_size, dicom, overlays
        self.stems = unique_stems(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[list[Prediction], torch.Tensor]:
        path, stem = self.files[index], self.stems[index]
        empty = torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        if not path.exists():
            return [Prediction(path, error=f"{path}: {missing_file_reason(path)}", index=index)], empty
        if is_mask(path):
            return [Prediction(path, error=f"{path}: {mask_reason(path)}", index=index)], empty
        try:
            return decode_rows(path, self.image_size, self.dicom, index=index, stem=stem, overlays=self.overlays)
        except UnreadableImageError as error:
            return [Prediction(path, error=str(error), index=index)], empty


def collate_files(items: list[tuple[list[Prediction], torch.Tensor]]) -> dict:
    """A batch of files: `pixels` (every readable frame, in order) and `rows` (every row, error rows
    included; `readable` says which of them have pixels)."""
    rows = [row for item_rows, _ in items for row in item_rows]
    return {
        "pixels": torch.cat([pixels for _, pixels in items]),
        "rows": rows,
        "readable": [not row.error for row in rows],
    }


def file_loader(
    files: list[Path],
    image_size: int,
    dicom: DicomOptions = DEFAULT_OPTIONS,
    batch_size: int = 32,
    workers: int = 0,
    overlays: str = "keep",
) -> DataLoader:
    """Batches of files in input order (a batch holds `batch_size` files; a cine loop's frames stay
    together)."""
    return DataLoader(
        ImageFiles(files, image_size, dicom, overlays),
        batch_size=batch_size,
        collate_fn=collate_files,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
