"""Decode once: an on-disk cache of resized images and masks, keyed by file content and preprocessing
settings (filled ahead of time by `busi-cache`, busi.commands.cache)."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from busi.io.images import (
    DecodedImage,
    UnreadableImageError,
    decode_file,
    image_to_tensor,
    load_mask,
    pack_mask,
    read_file,
)

# Bump when decoding or resizing changes: entries made by other code are then never used.
CACHE_FORMAT = 2  # 2: the overlay flag


def default_cache_dir() -> Path:
    if os.environ.get("BUSI_CACHE_DIR"):
        return Path(os.environ["BUSI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "busi"


def _png(pixels: torch.Tensor) -> bytes:
    array = pixels.numpy()
    picture = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    png = io.BytesIO()
    picture.save(png, "PNG", compress_level=1)  # lossless; ultrasound speckle compresses to ~60 %
    return png.getvalue()


def _facts(decoded: DecodedImage) -> dict:
    return {
        "size": tuple(decoded.size),
        "mode": decoded.mode,
        "phash": np.packbits(decoded.phash).tobytes(),
        "digest": decoded.digest,
        **({"crop": decoded.crop, "frame_size": decoded.frame_size} if decoded.crop else {}),
        "overlaid": decoded.overlaid,
    }


def _unpack(entry: dict, with_pixels: bool) -> DecodedImage:
    pixels = None
    if with_pixels:
        with Image.open(io.BytesIO(entry["png"])) as picture:
            pixels = image_to_tensor(picture)
    phash = np.unpackbits(np.frombuffer(entry["phash"], dtype=np.uint8)).astype(bool)
    crop, frame_size = entry.get("crop"), entry.get("frame_size")
    return DecodedImage(
        pixels,
        tuple(entry["size"]),
        entry["mode"],
        phash,
        entry["digest"],
        crop and tuple(crop),
        frame_size and tuple(frame_size),
        entry.get("overlaid", False),
    )


class DecodedImageCache:
    """Content-keyed: a changed file has a new key and is decoded again; a cache made with other
    settings, code or Pillow lives in another file and is never read.

    Pixels are kept up to `limit_bytes` of PNG data; beyond it only the hashes and facts of an image
    are kept, and its pixels are decoded from the file whenever they are needed."""

    def __init__(self, directory: Path | None, image_size: int, limit_bytes: int | None = None, overlays: str = "keep"):
        self.image_size, self.overlays = image_size, overlays
        self.limit_bytes = limit_bytes
        self.path = None
        self.entries: dict[str, dict] = {}
        self.hits = self.misses = 0  # of images
        self.mask_hits = self.mask_misses = 0
        if directory is not None:
            marks = "" if overlays == "keep" else f"-{overlays}"
            name = f"decoded-{image_size}px{marks}-v{CACHE_FORMAT}-pillow{PIL.__version__}.pt"
            self.path = Path(directory).expanduser() / name
            self.entries = self._read()
        self.pixel_bytes = 0
        for entry in self.entries.values():
            if "png" in entry and not self._has_room(len(entry["png"])):
                del entry["png"]  # written under a larger limit
            self.pixel_bytes += len(entry.get("png", b""))
        self._dirty = False

    def _has_room(self, size: int) -> bool:
        return self.limit_bytes is None or self.pixel_bytes + size <= self.limit_bytes

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            contents = torch.load(self.path, weights_only=True)
            return contents["entries"] if contents.get("format") == CACHE_FORMAT else {}
        except Exception as error:  # an unreadable cache is rebuilt, never trusted
            print(f"warning: ignoring unreadable image cache {self.path} ({type(error).__name__})", file=sys.stderr)
            return {}

    def decode(self, path: Path, need_pixels: bool = True) -> DecodedImage:
        """Decoded image for `path`, from the cache when its bytes were seen before. Without
        `need_pixels`, a cached image is returned without its pixels."""
        data = read_file(path)
        key = hashlib.sha256(data).hexdigest()
        entry = self.entries.get(key)
        if entry is not None and "error" in entry:
            self.hits += 1
            raise UnreadableImageError(path, entry["error"])
        if entry is not None and ("png" in entry or not need_pixels):
            self.hits += 1
            return _unpack(entry, with_pixels=need_pixels)
        self.misses += 1
        try:
            decoded = decode_file(path, self.image_size, data, self.overlays)
        except UnreadableImageError as error:
            self._store(key, {"error": error.reason})
            raise
        entry = _facts(decoded)
        if self.path is not None and self._has_room(0):
            png = _png(decoded.pixels)
            if self._has_room(len(png)):
                entry["png"] = png
                self.pixel_bytes += len(png)
        self._store(key, entry)
        return decoded

    def mask(self, paths: tuple[Path, ...], image: DecodedImage | None = None) -> bytes:
        """The packed union of an image's mask files (busi.io.images.load_mask, cropped like `image` was),
        keyed by the files' contents like images are; UnreadableImageError names the mask file that failed."""
        crop, frame_size = (image.crop, image.frame_size) if image is not None else (None, None)
        digest = hashlib.sha256(b"mask-v2")  # v2: any non-zero pixel is lesion
        if crop is not None:
            digest.update(repr((crop, frame_size)).encode())
        for path in paths:
            digest.update(hashlib.sha256(read_file(path)).digest())
        key = digest.hexdigest()
        entry = self.entries.get(key)
        if entry is not None:
            self.mask_hits += 1
            if "error" in entry:
                raise UnreadableImageError(Path(entry["path"]), entry["error"])
            return entry["mask"]
        self.mask_misses += 1
        try:
            packed = pack_mask(load_mask(paths, self.image_size, crop, frame_size))
        except UnreadableImageError as error:
            self._store(key, {"error": error.reason, "path": str(error.path)})
            raise
        self._store(key, {"mask": packed})
        return packed

    def _store(self, key: str, entry: dict) -> None:
        if self.path is not None:
            self.entries[key] = entry
            self._dirty = True

    def close(self) -> None:
        """Save, then let go of the entries: the pixels that training keeps are held by the catalog."""
        self.save()
        self.entries = {}

    def save(self) -> None:
        """Write atomically: a crash while saving leaves the previous cache intact."""
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.path.parent, suffix=".tmp", delete=False) as handle:
            torch.save({"format": CACHE_FORMAT, "entries": self.entries}, handle)
        os.replace(handle.name, self.path)
        self._dirty = False
