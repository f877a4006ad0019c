"""What a sonographer drew on a scan: calipers and crosses, dotted measuring lines, text, colour marks.

Ultrasound is grey and its bright structures are broad or blurred; the marks scanners burn in are thin,
near-white strokes (one to three pixels) with sharp edges, or colour. A stroke pixel is bright (≥ 200)
and stands ≥ 120 above what a 5×5 grey opening (erosion, then dilation: it removes whatever is narrower
than five pixels) leaves there; a scan is overlaid when such pixels exceed 3 per 10,000 (or colour
pixels 10 per 10,000). The scanner's logo glyph in the top-left corner is not a mark (nearly every BUSI
scan has it) and is left out. The numbers were chosen on half of a labelled list of BUSI scans
(benchmarks/overlay_labels.csv) and measured on the other half: docs/experiments.md.

Inpainting puts the opening's value (the local background without the strokes) under the marks, their
dimmer parts (≥ 150, ≥ 70 above the opening, within 4 px of a stroke) and their antialiased rim; every
other pixel is left as it was."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

OPENING = 5  # px: strokes narrower than this vanish under the opening
BRIGHT = 200  # grey value a stroke pixel reaches
CONTRAST = 120  # above the opened image
FAINT = (150, 70)  # grey value and contrast of the dimmer strokes inpainted on a flagged scan
NEAR = 4  # px from a stroke, for them
RIM_CONTRAST = 40  # the antialiased edge of a stroke, next to one
STROKES_PER_10K = 3.0  # stroke pixels per 10,000 pixels that flag a scan
SATURATION = 50  # max − min of R, G, B: a colour pixel
COLOUR_PER_10K = 10.0
LOGO_CORNER = (32, 48)  # rows, columns of the top-left corner left out (the scanner's logo)


@dataclass(frozen=True)
class Overlay:
    """What was found on one image: the flag, and the pixels (bool, the image's size) to inpaint."""

    overlaid: bool
    stroke_pixels: int
    colour_pixels: int
    mask: np.ndarray

    @property
    def kinds(self) -> list[str]:
        per_10k = 1e4 / self.mask.size
        return [
            kind
            for kind, count, limit in (
                ("marks", self.stroke_pixels, STROKES_PER_10K),
                ("colour", self.colour_pixels, COLOUR_PER_10K),
            )
            if count * per_10k > limit
        ]


def opened(grey: Image.Image) -> np.ndarray:
    return np.asarray(
        grey.filter(ImageFilter.MinFilter(OPENING)).filter(ImageFilter.MaxFilter(OPENING)), dtype=np.int16
    )


def grown(mask: np.ndarray, steps: int) -> np.ndarray:
    """The mask dilated by `steps` pixels (8-neighbourhood)."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        rows, columns = mask.shape
        mask = np.logical_or.reduce([padded[y : y + rows, x : x + columns] for y in range(3) for x in range(3)])
    return mask


def find_overlays(image: Image.Image) -> Overlay:
    """The marks on an 8-bit L or RGB image (see the module)."""
    grey_image = image.convert("L")
    grey = np.asarray(grey_image, dtype=np.int16)
    background = opened(grey_image)
    standing = grey - background
    strokes = (grey >= BRIGHT) & (standing >= CONTRAST)
    strokes[: LOGO_CORNER[0], : LOGO_CORNER[1]] = False
    colour = np.zeros_like(strokes)
    if image.mode == "RGB":
        rgb = np.asarray(image, dtype=np.int16)
        colour = (rgb.max(axis=-1) - rgb.min(axis=-1)) > SATURATION
    per_10k = 1e4 / grey.size
    overlaid = strokes.sum() * per_10k > STROKES_PER_10K or colour.sum() * per_10k > COLOUR_PER_10K
    # dimmer parts of the marks (grey caliper arms, antialiased text), next to a stroke: thin echogenic
    # tissue (the skin line, Cooper's ligaments) is as bright and as thin, so not anywhere
    faint = strokes | (grown(strokes, NEAR) & (grey >= FAINT[0]) & (standing >= FAINT[1]))
    rim = grown(faint, 2) & (standing >= RIM_CONTRAST)
    mask = grown(faint | rim, 1) | grown(colour, 1)
    return Overlay(bool(overlaid), int(strokes.sum()), int(colour.sum()), mask)


def inpaint(image: Image.Image, overlay: Overlay | None = None) -> Image.Image:
    """The image with its marks replaced by the local background (grey), in the image's mode; an image
    that is not overlaid comes back unchanged."""
    overlay = overlay or find_overlays(image)
    if not overlay.overlaid:
        return image
    fill = opened(image.convert("L")).astype(np.uint8)
    pixels = np.array(image)
    if pixels.ndim == 3:
        pixels[overlay.mask] = fill[overlay.mask][:, None]
    else:
        pixels[overlay.mask] = fill[overlay.mask]
    return Image.fromarray(pixels, image.mode)
