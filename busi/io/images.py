"""Decoding and preprocessing of ultrasound images, shared by training and prediction."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from busi.errors import ImageTooLargeError, NotAnImageError, UnreadableImageError
from busi.io.dicom import (
    DEFAULT_OPTIONS,
    DICOM_SUFFIXES,
    DicomOptions,
    Frame,
    is_dicom_file,
    read_dicom,
    starts_like_dicom,
)
from busi.io.digests import perceptual_hash, pixel_digest
from busi.io.overlays import find_overlays, inpaint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_UNKNOWN = 255  # mask value of an image whose lesion outline is not known (left out of the loss)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def is_mask(path: Path) -> bool:
    """BUSI names masks `X_mask.png`, `X_mask_1.png`, ...: anything with `_mask` is never an image."""
    return "_mask" in path.stem


def is_hidden(path: Path, folder: Path) -> bool:
    """`.DS_Store`, macOS `._x.png` forks, copies in `.ipynb_checkpoints/`: never data."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def is_image_file(path: Path) -> bool:
    """A raster image by its extension, or a DICOM file (busi.io.dicom.is_dicom_file)."""
    if path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path)


def file_format(path: Path) -> str:
    """`dicom`, or the extension without its dot (`png`, `jpg`, …), for the audit."""
    return "dicom" if is_dicom_file(path) else path.suffix.lower().lstrip(".")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Return an 8-bit `L` or `RGB` image: grayscale stays one channel, everything else is RGB."""
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(pixels * 255.0 / top), 0, 255).astype(np.uint8), "L")
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("1", "LA"):
        return image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    # RGBA ultrasound exports carry an opaque or meaningless alpha: drop it, keep the pixels.
    return image.convert("RGB")


def missing_file_reason(path: Path) -> str:
    return "file not found (a link to a missing file)" if path.is_symlink() else "file not found"


def read_file(path: Path) -> bytes:
    """The file's bytes, or UnreadableImageError saying why not (missing, a broken link, no permission)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UnreadableImageError(path, missing_file_reason(path)) from None
    except OSError as error:
        raise UnreadableImageError(path, f"cannot read the file ({error.strerror or error})") from None


def decode_frames(path: Path, data: bytes | None = None, dicom: DicomOptions = DEFAULT_OPTIONS) -> list[Frame]:
    """Fully decode `path` (or its already-read bytes): one 8-bit L or RGB frame for a raster image,
    those `dicom` asks for for a DICOM file; or raise UnreadableImageError."""
    if data is None:
        dicom_file = is_dicom_file(path)
    else:  # an upload: its name, or its first bytes
        dicom_file = path.suffix.lower() in DICOM_SUFFIXES or starts_like_dicom(data)
    if dicom_file:
        return read_dicom(path, read_file(path) if data is None else data, dicom)
    return [Frame(_decode_raster(path, data))]


OVERLAY_CHOICES = ("keep", "inpaint")  # what training, prediction and evaluation do with drawn marks


def without_overlays(image: Image.Image, overlays: str) -> Image.Image:
    """`inpaint`: the image with the marks drawn on it replaced by their background (busi.io.overlays)."""
    if overlays == "keep":
        return image
    if overlays != "inpaint":
        raise ValueError(f"overlays {overlays}: use one of {', '.join(OVERLAY_CHOICES)}")
    return inpaint(image)


def decode_image(path: Path, data: bytes | None = None, overlays: str = "keep") -> Image.Image:
    """The image of `path` as training sees it: the only frame of a raster image, the middle frame of a
    DICOM cine loop cropped to its tissue region (its marks inpainted with `overlays` inpaint)."""
    return without_overlays(decode_frames(path, data)[0].image, overlays)


def _decode_raster(path: Path, data: bytes | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as opened:
                opened.load()  # decode now: a truncated file fails here, not mid-epoch
                return _to_8bit(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        try:
            with Image.open(path if data is None else io.BytesIO(data)) as opened:
                width, height = opened.size  # the header alone: nothing is decoded
            size = f"{width}×{height} = {width * height:,} pixels"
        except Image.DecompressionBombError:  # over twice the limit: Pillow refuses even to open it
            size = str(error).split("(", 1)[1].split(")", 1)[0]  # "Image size (N pixels) exceeds …"
        raise ImageTooLargeError(
            path,
            f"image too large to decode safely ({size}, Pillow's limit is {Image.MAX_IMAGE_PIXELS:,}); downscale it first",
        ) from None
    except UnidentifiedImageError:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise UnreadableImageError(path, "not a readable image (empty file (0 bytes))") from None
        raise NotAnImageError(path, "not a readable image (unknown or unsupported format)") from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error) or type(error).__name__
        raise UnreadableImageError(path, f"not a readable image ({reason})") from None


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit L or RGB image → uint8 tensor (1 or 3, H, W)."""
    pixels = np.array(image, dtype=np.uint8)  # a writable copy
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def resize_to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """Squash to `image_size`² like the original recipe; uint8 tensor (1 or 3, H, W)."""
    return image_to_tensor(image.resize((image_size, image_size), Image.Resampling.BILINEAR))


def load_image(path: Path, image_size: int, overlays: str = "keep") -> torch.Tensor:
    """Decode and resize one file: the uint8 tensor that training and prediction both start from."""
    return resize_to_tensor(decode_image(path, overlays=overlays), image_size)


@dataclass
class DecodedImage:
    """What training needs from one file, computed from a single decode."""

    pixels: torch.Tensor | None  # uint8 (1 or 3, S, S), grayscale stays one channel; None: not kept
    size: tuple[int, int]  # original width, height
    mode: str  # "L" or "RGB" after decoding
    phash: np.ndarray  # 64 bools
    digest: str  # of the decoded pixels, for exact duplicates
    crop: tuple[int, int, int, int] | None = None  # a DICOM frame cropped to its tissue region: the box
    frame_size: tuple[int, int] | None = None  # and the frame's size, which masks drawn on it have
    overlaid: bool = False  # marks drawn on it (busi.io.overlays)


def decode_file(path: Path, image_size: int, data: bytes | None = None, overlays: str = "keep") -> DecodedImage:
    """Pixels at `image_size` (marks inpainted with `overlays` inpaint) and the facts of the file's own image."""
    frame = decode_frames(path, data)[0]
    image = frame.image
    found = find_overlays(image)
    shown = inpaint(image, found) if overlays == "inpaint" else image
    return DecodedImage(
        resize_to_tensor(shown, image_size),
        image.size,
        image.mode,
        perceptual_hash(image),
        pixel_digest(image),
        frame.crop,
        frame.frame_size if frame.crop else None,
        found.overlaid,
    )


def resize_mask(mask: Image.Image, image_size: int) -> np.ndarray:
    """A lesion mask (any non-zero pixel is lesion: some masks use 1, not 255) squashed to
    `image_size`² exactly like its image (bilinear), then thresholded at half: bool (S, S)."""
    binary = Image.fromarray(np.where(np.asarray(mask.convert("L")) > 0, 255, 0).astype(np.uint8))
    return np.asarray(binary.resize((image_size, image_size), Image.Resampling.BILINEAR)) >= 128


def load_mask(
    paths: tuple[Path, ...],
    image_size: int,
    crop: tuple[int, int, int, int] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The union of an image's mask files (`X_mask.png`, `X_mask_1.png`, …): bool (S, S). A mask drawn on
    the whole frame (`frame_size`) of a DICOM image that was cropped to `crop` is cropped alike."""
    union = np.zeros((image_size, image_size), dtype=bool)
    for path in paths:
        mask = decode_image(path)
        if crop is not None and mask.size == frame_size:
            mask = mask.crop(crop)
        union |= resize_mask(mask, image_size)
    return union


def mask_known(masks: torch.Tensor) -> torch.Tensor:
    """(N,) whether each of a batch's masks (uint8 (N, 1, H, W)) is known, not MASK_UNKNOWN."""
    return (masks != MASK_UNKNOWN).flatten(1).all(dim=1)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map (h, w) (a heat-map, lesion probabilities) stretched back to an image's (width,
    height), bilinear, as the image was squashed: float32 (height, width)."""
    stretched = Image.fromarray(np.asarray(values, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(stretched)


def pack_mask(mask: np.ndarray) -> bytes:
    """1 bit per pixel."""
    return np.packbits(mask.ravel()).tobytes()


def unpack_mask(packed: bytes, image_size: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=image_size * image_size)
    return bits.reshape(image_size, image_size).astype(bool)


def as_three_channels(pixels: torch.Tensor) -> torch.Tensor:
    """(…, 1 or 3, H, W) → (…, 3, H, W); grayscale is expanded as a view, without copying."""
    return pixels.expand(*pixels.shape[:-3], 3, *pixels.shape[-2:]) if pixels.shape[-3] == 1 else pixels


def to_model_input(pixels: torch.Tensor, preprocessing: str = "imagenet") -> torch.Tensor:
    """uint8 0–255 or float 0–1 (…, 1 or 3, H, W) → float32 (…, 3, H, W) with ImageNet mean/std
    normalisation (`imagenet`) or as 0–1 values (`divide255`, a Keras model imported by
    busi-import-keras): what the network takes, in training, prediction and every export."""
    scaled = TF.to_dtype_image(as_three_channels(pixels), torch.float32, scale=True)
    if preprocessing == "divide255":
        return scaled
    return TF.normalize_image(scaled, list(IMAGENET_MEAN), list(IMAGENET_STD))
