"""Decode once: an on-disk cache of resized images, keyed by file content and preprocessing settings.

`python -m busi.cache ROOT [--image-size 256] [--cache-dir DIR]` fills it ahead of time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from busi.duplicates import perceptual_hash, pixel_digest
from busi.images import UnreadableImageError, decode_image, image_to_tensor, resize_to_tensor

# Bump when decoding or resizing changes: entries made by other code are then never used.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    if os.environ.get("BUSI_CACHE_DIR"):
        return Path(os.environ["BUSI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "busi"


@dataclass
class DecodedImage:
    """What training needs from one file, computed from a single decode."""

    pixels: torch.Tensor  # uint8 (1 or 3, S, S); grayscale stays one channel
    size: tuple[int, int]  # original width, height
    mode: str  # "L" or "RGB" after decoding
    phash: np.ndarray  # 64 bools
    digest: str  # of the decoded pixels, for exact duplicates


def decode_file(path: Path, image_size: int, data: bytes | None = None) -> DecodedImage:
    image = decode_image(path, data)
    return DecodedImage(
        resize_to_tensor(image, image_size), image.size, image.mode, perceptual_hash(image), pixel_digest(image)
    )


def _pack(decoded: DecodedImage) -> dict:
    pixels = decoded.pixels.numpy()
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    png = io.BytesIO()
    picture.save(png, "PNG", compress_level=1)  # lossless; ultrasound speckle compresses to ~60 %
    return {
        "png": png.getvalue(),
        "size": tuple(decoded.size),
        "mode": decoded.mode,
        "phash": np.packbits(decoded.phash).tobytes(),
        "digest": decoded.digest,
    }


def _unpack(entry: dict) -> DecodedImage:
    with Image.open(io.BytesIO(entry["png"])) as picture:
        pixels = image_to_tensor(picture)
    phash = np.unpackbits(np.frombuffer(entry["phash"], dtype=np.uint8)).astype(bool)
    return DecodedImage(pixels, tuple(entry["size"]), entry["mode"], phash, entry["digest"])


class DecodedImageCache:
    """Content-keyed: a changed file has a new key and is decoded again; a cache made with other
    settings, code or Pillow lives in another file and is never read."""

    def __init__(self, directory: Path | None, image_size: int):
        self.image_size = image_size
        self.path = None
        self.entries: dict[str, dict] = {}
        self.hits = self.misses = 0
        if directory is not None:
            name = f"decoded-{image_size}px-v{CACHE_FORMAT}-pillow{PIL.__version__}.pt"
            self.path = Path(directory).expanduser() / name
            self.entries = self._read()
        self._dirty = False

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            contents = torch.load(self.path, weights_only=True)
            return contents["entries"] if contents.get("format") == CACHE_FORMAT else {}
        except Exception as error:  # an unreadable cache is rebuilt, never trusted
            print(f"warning: ignoring unreadable image cache {self.path} ({type(error).__name__})", file=sys.stderr)
            return {}

    def decode(self, path: Path) -> DecodedImage:
        """Decoded image for `path`, from the cache when its bytes were seen before."""
        data = path.read_bytes()
        key = hashlib.sha256(data).hexdigest()
        entry = self.entries.get(key)
        if entry is not None:
            self.hits += 1
            if "error" in entry:
                raise UnreadableImageError(path, entry["error"])
            return _unpack(entry)
        self.misses += 1
        try:
            decoded = decode_file(path, self.image_size, data)
        except UnreadableImageError as error:
            self._store(key, {"error": error.reason})
            raise
        self._store(key, _pack(decoded))
        return decoded

    def _store(self, key: str, entry: dict) -> None:
        if self.path is not None:
            self.entries[key] = entry
            self._dirty = True

    def save(self) -> None:
        """Write atomically: a crash while saving leaves the previous cache intact."""
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.path.parent, suffix=".tmp", delete=False) as handle:
            torch.save({"format": CACHE_FORMAT, "entries": self.entries}, handle)
        os.replace(handle.name, self.path)
        self._dirty = False


def main(argv: list[str] | None = None) -> int:
    from busi.data import DataError, read_catalog

    parser = argparse.ArgumentParser(description="Decode a BUSI-layout folder once into the image cache.")
    parser.add_argument("root", type=Path, help="folder with benign/, malignant/, normal/")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    try:
        catalog = read_catalog(args.root, args.image_size, duplicate_distance=-1, cache_dir=args.cache_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cache = catalog.cache
    size_mb = cache.path.stat().st_size / 2**20 if cache.path.is_file() else 0
    print(
        f"{len(catalog.records)} images: {cache.hits} from the cache, {cache.misses} decoded → {cache.path} ({size_mb:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
