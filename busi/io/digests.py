"""Digests of decoded pixels: exact (SHA-256 of the pixels) and perceptual (a 64-bit DCT hash, for near-duplicates)."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_SIDE = 32  # the image is reduced to 32×32 before the DCT


HASH_BITS_SIDE = 8  # the 8×8 lowest frequencies make a 64-bit hash


@lru_cache(maxsize=1)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """64-bit pHash as a bool vector: robust to resizing, re-encoding and small marks."""
    small = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float64)
    dct = _dct_matrix(HASH_SIDE)
    low = (dct @ pixels @ dct.T)[:HASH_BITS_SIDE, :HASH_BITS_SIDE].flatten()
    return low > np.median(low[1:])  # the DC term only measures brightness


def pixel_digest(image: Image.Image) -> str:
    """Digest of the decoded RGB pixels: equal for byte-identical and losslessly re-encoded files."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
