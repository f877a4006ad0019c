import numpy as np
import pytest
import torch
from PIL import Image

from busi.io.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    UnreadableImageError,
    decode_image,
    is_mask,
    load_image,
    to_model_input,
)

from fake_busi import save_mode


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3), ("RGBA", 3), ("I;16", 1), ("P", 1)])
def test_every_mode_decodes_to_8bit_with_the_same_pixels(tmp_path, mode, channels):
    pixels = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 1))
    path = tmp_path / f"scan_{mode.replace(';', '')}.png"
    save_mode(pixels, path, mode)
    loaded = load_image(path, 32)
    if mode == "P":  # Pillow quantises grayscale to an RGB palette
        channels = 3
    assert loaded.dtype == torch.uint8
    assert loaded.shape == (channels, 32, 32)
    decoded = np.asarray(decode_image(path).getchannel(0), dtype=np.int16)
    assert np.abs(decoded - pixels).max() <= 1  # 16-bit values are scaled back to 0-255


def test_model_input_has_three_normalised_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 30), 255, dtype=np.uint8)).save(path)
    inputs = to_model_input(load_image(path, 32))
    assert inputs.shape == (3, 32, 32)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(inputs[:, 0, 0], torch.tensor(expected), atol=1e-5)


def test_truncated_and_fake_pngs_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(UnreadableImageError, match=str(path)):
            decode_image(path)


def test_mask_names_are_recognised(tmp_path):
    assert is_mask(tmp_path / "benign (3)_mask.png")
    assert is_mask(tmp_path / "benign (3)_mask_1.png")
    assert not is_mask(tmp_path / "benign (3).png")
