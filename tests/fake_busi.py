"""BUSI-like folders written by the tests: several image modes and sizes, masks, a near-duplicate
pair, a corrupt file and a byte-identical image filed under two classes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from busi import CLASS_NAMES

IMAGE_SIZE = 64  # keeps DenseNet121 fast on CPU: 2×2×1024 features


def lesion_disc(height: int, width: int) -> np.ndarray:
    """The lesion of the fake benign and malignant scans, and their mask: a centred disc."""
    yy, xx = np.mgrid[:height, :width]
    return (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 5) ** 2


def ultrasound_like(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray:
    """Blocky low-frequency texture (distinct perceptual hashes) plus a class-dependent dark or bright
    disc (the lesion)."""
    coarse = rng.uniform(40, 200, size=(6, 6))
    texture = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
    pixels = texture.astype(np.float64) + rng.normal(0, 12, size=(height, width))
    if label < 2:
        pixels[lesion_disc(height, width)] = 15 if label == 0 else 240
    return np.clip(pixels, 0, 255).astype(np.uint8)


def save_mode(pixels: np.ndarray, path: Path, mode: str) -> None:
    if mode == "L":
        Image.fromarray(pixels, "L").save(path)
    elif mode == "RGB":
        Image.fromarray(np.stack([pixels, pixels, np.roll(pixels, 3, axis=1)], axis=2), "RGB").save(path)
    elif mode == "RGBA":
        rgb = np.stack([pixels] * 3, axis=2)
        Image.fromarray(np.dstack([rgb, np.full_like(pixels, 255)]), "RGBA").save(path)
    elif mode == "I;16":
        Image.fromarray(pixels.astype(np.uint16) * 257).save(path)
    elif mode == "P":
        Image.fromarray(pixels, "L").convert("P").save(path)
    else:
        raise ValueError(mode)


def write_busi_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    modes = ["L", "RGB", "L", "RGBA", "I;16", "L", "P", "L"]
    for label, name in enumerate(CLASS_NAMES):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(1, per_class + 1):
            height, width = int(rng.integers(70, 130)), int(rng.integers(70, 130))
            pixels = ultrasound_like(rng, label, height, width)
            image_path = folder / f"{name} ({index}).png"
            save_mode(pixels, image_path, modes[(index + label) % len(modes)])
            mask = np.zeros((height, width), dtype=np.uint8)
            if label < 2:
                mask[lesion_disc(height, width)] = 255
            Image.fromarray(mask).convert("1").save(folder / f"{name} ({index})_mask.png")
            if index % 4 == 0:
                Image.fromarray(mask).save(folder / f"{name} ({index})_mask_1.png")
    # a near-duplicate: the same scan re-saved slightly brighter and cropped by two pixels
    original = np.asarray(Image.open(root / "benign" / "benign (1).png").convert("L"), dtype=np.int16)
    near = np.clip(original[2:-2, 2:-2] + 3, 0, 255).astype(np.uint8)
    Image.fromarray(near).save(root / "benign" / f"benign ({per_class + 1}).png")
    # a byte-identical image filed under two classes, as BUSI has
    shutil.copy(root / "malignant" / "malignant (2).png", root / "benign" / f"benign ({per_class + 2}).png")
    # a corrupt file: a PNG cut in half
    data = (root / "normal" / "normal (1).png").read_bytes()
    (root / "normal" / f"normal ({per_class + 1}).png").write_bytes(data[: len(data) // 2])
    return root


def real_busi_root() -> Path | None:
    """The shared BUSI folder: $BUSI_ROOT, or ../shared/data/busi/Dataset_BUSI_with_GT beside the repo."""
    candidates = [os.environ.get("BUSI_ROOT")]
    candidates.append(str(Path(__file__).resolve().parents[2] / "shared/data/busi/Dataset_BUSI_with_GT"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "benign").is_dir():
            return Path(candidate)
    return None


def train_args(root: Path, runs: Path, *extra: str, epochs: int = 2) -> list[str]:
    """The tests' busi-train options: the default recipe without pretrained weights, at 64 px, batch 8;
    `extra` options come last and override these."""
    return [
        "--model.weights=none", f"--data.root={root}", f"--data.image_size={IMAGE_SIZE}", "--data.batch_size=8",
        f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={runs}", "--trainer.enable_progress_bar=false",
        *extra,
    ]  # fmt: skip
