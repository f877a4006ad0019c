"""DICOM scans as images (`pip install "busi[dicom]"`): colour as a person sees it, only the frames asked
for, cropped to the ultrasound tissue region; every file DICOM cannot image gets one line saying why."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from busi.errors import ImageTooLargeError, NotAnImageError, UnreadableImageError

DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_MAGIC_OFFSET = 128  # a DICOM file: 128-byte preamble, then b"DICM"
INSTALL = 'pip install "busi[dicom]"'
TISSUE_REGION = 1  # RegionSpatialFormat 1: a 2-D tissue image (not a Doppler trace or a text area)
CENTIMETRE = 3  # PhysicalUnitsXDirection 3: cm
FRAME_CHOICES = ("middle", "first", "all")
CROP_CHOICES = ("region", "none")


@dataclass(frozen=True)
class DicomOptions:
    """Which frames of a cine loop become images (`middle`, `first`, `all`, or a frame number from 1),
    and whether to crop to the ultrasound tissue region (`region`) or keep the whole frame (`none`)."""

    frames: str = "middle"
    crop: str = "region"

    def __post_init__(self):
        if self.frames not in FRAME_CHOICES and not (self.frames.isdigit() and int(self.frames) >= 1):
            raise ValueError(f"--dicom_frames {self.frames}: use middle, first, all or a frame number from 1")
        if self.crop not in CROP_CHOICES:
            raise ValueError(f"--dicom_crop {self.crop}: use region or none")

    def indices(self, frames: int) -> list[int]:
        """0-based indices of the frames to decode out of `frames`."""
        if self.frames == "all":
            return list(range(frames))
        if self.frames == "first":
            return [0]
        if self.frames == "middle":
            return [frames // 2]
        return [int(self.frames) - 1]


DEFAULT_OPTIONS = DicomOptions()  # what training, busi-evaluate, busi-cache and the app use


@dataclass
class Frame:
    """One decoded frame: an 8-bit L or RGB image, cropped to the tissue region when one was used."""

    image: Image.Image
    number: int = 1  # from 1
    frames: int = 1  # in the file
    spacing_mm: tuple[float, float] | None = None  # (x, y) size of a source pixel, where the file says
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) in the frame, right/bottom exclusive
    frame_size: tuple[int, int] | None = None  # (width, height) before cropping
    note: str = ""  # what was not done as asked, and why (a region outside the frame); on a file's first frame


def is_dicom_file(path: Path) -> bool:
    """`.dcm`/`.dicom`, or a file without an extension that starts like a DICOM file (archives export
    them so)."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            return starts_like_dicom(handle.read(DICOM_MAGIC_OFFSET + 4))
    except OSError:
        return False


def starts_like_dicom(head: bytes) -> bool:
    return head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def read_dicom(path: Path, data: bytes, options: DicomOptions = DEFAULT_OPTIONS) -> list[Frame]:
    """The frames `options` asks for, decoded; UnreadableImageError names what the file lacks and the fix."""
    try:
        import pydicom
        from pydicom import pixels
    except ImportError:
        raise UnreadableImageError(path, f"a DICOM file; reading DICOM needs the optional reader: {INSTALL}") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=path.suffix.lower() in DICOM_SUFFIXES)
    except Exception as error:  # pydicom raises many kinds on damaged files
        raise UnreadableImageError(path, f"not a readable DICOM file ({_first_line(error)})") from None
    if not starts_like_dicom(data) and not any(tag in dataset for tag in ("SOPClassUID", "PixelData", "Modality")):
        raise NotAnImageError(path, "not a readable DICOM file (neither the DICM preamble nor DICOM image elements)")
    if "DirectoryRecordSequence" in dataset:
        raise NotAnImageError(
            path, "a DICOMDIR (an index of other DICOM files), not an image; pass the folder of the files it lists"
        )
    if "PixelData" not in dataset:
        raise NotAnImageError(
            path,
            "a DICOM file without pixel data (a report or another object that holds no image); nothing to classify",
        )
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as error:
        raise UnreadableImageError(path, f"DICOM image without a valid size ({_first_line(error)})") from None
    if rows < 1 or columns < 1 or frames < 1:
        raise UnreadableImageError(
            path, f"DICOM image of {columns}×{rows} pixels and {frames} frames: nothing to decode"
        )
    if rows * columns > Image.MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            path,
            f"image too large to decode safely ({columns}×{rows} = {rows * columns:,} pixels, "
            f"Pillow's limit is {Image.MAX_IMAGE_PIXELS:,}); downscale it first",
        )
    _check_decoder(path, dataset)
    indices = options.indices(frames)
    if indices[-1] >= frames:
        raise UnreadableImageError(path, f"--dicom_frames {options.frames}: the file has {frames} frames")
    region, note = _tissue_region(dataset, columns, rows) if options.crop == "region" else (None, "")
    spacing = _spacing_mm(dataset, region)
    crop = None if region is None else _box(region)
    decoded = []
    for index in indices:
        try:
            array = pixels.pixel_array(dataset, index=index if frames > 1 else None)
        except Exception as error:
            raise UnreadableImageError(path, f"truncated or corrupt DICOM pixel data ({_first_line(error)})") from None
        try:
            image = _to_image(array, dataset)
        except Exception as error:  # attributes that contradict the pixels (a palette without its table, …)
            raise UnreadableImageError(
                path, f"DICOM pixels that cannot be shown as an image ({_first_line(error)})"
            ) from None
        if crop is not None:
            image = image.crop(crop)
        decoded.append(Frame(image, index + 1, frames, spacing, crop, (columns, rows), "" if decoded else note))
    return decoded


def frame_image(dataset, number: int = 1) -> Image.Image:
    """Frame `number` (from 1) of a decodable dataset as shown: 8-bit L or RGB, the whole frame."""
    from pydicom import pixels

    frames = int(dataset.get("NumberOfFrames") or 1)
    return _to_image(pixels.pixel_array(dataset, index=number - 1 if frames > 1 else None), dataset)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_decoder(path: Path, dataset) -> None:
    """UnreadableImageError when no installed pydicom plugin decodes the file's transfer syntax."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:  # pydicom has no decoder for it at all (video, private syntaxes)
        raise NotAnImageError(
            path,
            f"busi cannot decode its transfer syntax {syntax.name}; export the scan uncompressed, as JPEG or as PNG",
        ) from None
    if not available:
        raise NotAnImageError(path, f"no decoder installed for its transfer syntax {syntax.name}; {INSTALL} adds it")


def _to_image(array: np.ndarray, dataset) -> Image.Image:
    """pydicom's pixel array (YBR already converted to RGB by pydicom) → 8-bit L or RGB, as displayed."""
    interpretation = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if interpretation == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        entry_bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        array = apply_color_lut(array, dataset).astype(np.float64) / (257.0 if entry_bits == 16 else 1.0)
    elif array.dtype != np.uint8 or int(dataset.get("BitsStored", 8)) > 8:
        array = _scaled_to_8_bits(array, dataset)
    array = np.clip(np.rint(array), 0, 255).astype(np.uint8) if array.dtype != np.uint8 else array
    if interpretation == "MONOCHROME1":  # 0 is white
        array = 255 - array
    if array.ndim == 3 and array.shape[-1] == 3:
        return Image.fromarray(np.ascontiguousarray(array), "RGB")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array), "L")


def _scaled_to_8_bits(array: np.ndarray, dataset) -> np.ndarray:
    """Stored values (BitsStored wide, signed or not) onto 0–255, the full range of the file's bit depth."""
    bits = max(1, min(int(dataset.get("BitsStored", 16) or 16), 32))
    values = array.astype(np.float64)
    if int(dataset.get("PixelRepresentation", 0)) == 1:  # two's complement: lowest value first
        values = values + 2 ** (bits - 1)
    return values * 255.0 / (2**bits - 1)


REGION_CORNERS = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")


def _box(region) -> tuple[int, int, int, int]:
    """A region's (left, top, right, bottom) with right and bottom exclusive, as PIL crops (DICOM's
    corners are inclusive)."""
    x0, y0, x1, y1 = (int(region[keyword].value) for keyword in REGION_CORNERS)
    return x0, y0, x1 + 1, y1 + 1


def _tissue_region(dataset, columns: int, rows: int):
    """The largest 2-D tissue region item of SequenceOfUltrasoundRegions that lies inside the frame (or
    None), and a note when regions were named but none fits."""
    regions = []
    for region in dataset.get("SequenceOfUltrasoundRegions") or []:
        if int(region.get("RegionSpatialFormat", 0) or 0) != TISSUE_REGION:
            continue
        try:
            regions.append((region, _box(region)))
        except (KeyError, TypeError, ValueError):
            continue
    inside = [(r, b) for r, b in regions if 0 <= b[0] < b[2] - 1 < columns and 0 <= b[1] < b[3] - 1 < rows]
    if inside:
        return max(inside, key=lambda item: (item[1][2] - item[1][0]) * (item[1][3] - item[1][1]))[0], ""
    if regions:
        x0, y0, x1, y1 = regions[0][1]
        return (
            None,
            f"tissue region ({x0},{y0})-({x1 - 1},{y1 - 1}) lies outside the {columns}×{rows} frame; not cropped",
        )
    return None, ""


def _spacing_mm(dataset, region) -> tuple[float, float] | None:
    """(x, y) millimetres per source pixel: the tissue region's physical deltas (in cm), else PixelSpacing."""
    units = None if region is None else (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
    if units == (CENTIMETRE, CENTIMETRE):
        return float(region.PhysicalDeltaX) * 10, float(region.PhysicalDeltaY) * 10
    spacing = dataset.get("PixelSpacing")  # row spacing (y), column spacing (x), in mm
    if spacing is not None and len(spacing) == 2:
        return float(spacing[1]), float(spacing[0])
    return None
