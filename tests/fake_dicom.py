"""DICOM files written by the tests with pydicom, as an ultrasound scanner exports them: RGB or
MONOCHROME2, optionally RLE-compressed, optionally with a tissue region (SequenceOfUltrasoundRegions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundImageStorage, generate_uid


def ultrasound_dataset(pixels: np.ndarray, region: tuple[int, int, int, int] | None = None) -> Dataset:
    """`pixels`: uint8 (H, W) grayscale or (H, W, 3) RGB; `region`: (x0, y0, x1, y1), inclusive."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "US"
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    colour = pixels.ndim == 3
    dataset.SamplesPerPixel = 3 if colour else 1
    dataset.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    if region is not None:
        tissue = Dataset()
        tissue.RegionSpatialFormat, tissue.RegionDataType, tissue.RegionFlags = 1, 1, 0
        (
            tissue.RegionLocationMinX0,
            tissue.RegionLocationMinY0,
            tissue.RegionLocationMaxX1,
            tissue.RegionLocationMaxY1,
        ) = region
        tissue.PhysicalUnitsXDirection = tissue.PhysicalUnitsYDirection = 3  # cm
        tissue.PhysicalDeltaX, tissue.PhysicalDeltaY = 0.0125, 0.015
        dataset.SequenceOfUltrasoundRegions = [tissue]
    return dataset


def write_dicom(
    path: Path, pixels: np.ndarray, region: tuple[int, int, int, int] | None = None, rle: bool = False
) -> Path:
    dataset = ultrasound_dataset(pixels, region)
    if rle:
        dataset.compress(RLELossless, np.ascontiguousarray(pixels))
    dataset.save_as(path, enforce_file_format=True)
    return path
