"""Augmentations that ultrasound tolerates, drawn independently per image on the training device
(by default never a vertical flip or a large rotation: the transducer is always at the top; long
from-scratch runs may ask for both, as regularisation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION_DEGREES = 10
MAX_SCALE_CHANGE = 0.10
MAX_SHIFT = 0.06  # of the image side
MAX_BRIGHTNESS_CHANGE = 0.20
MAX_CONTRAST_CHANGE = 0.20
MAX_GAMMA = 1.25
SPECKLE_SIGMA = 0.08


def _uniform(n: int, bound: float, like: torch.Tensor) -> torch.Tensor:
    return (torch.rand(n, device=like.device) * 2 - 1) * bound


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    max_rotation_degrees: float = MAX_ROTATION_DEGREES,
    vertical_flip: bool = False,
):
    """uint8 or [0, 1] float (N, C, H, W) → augmented float in [0, 1], same shape. With `masks` (uint8
    (N, 1, H, W)), returns (images, masks): each mask moved by its image's rotation, scaling, shift and
    flips (nearest neighbour, so 0/1 and unknown values stay what they were; what enters from outside
    the image is background). Mirrored left-right half of the time; upside down half of the time only
    with `vertical_flip`."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    n = x.shape[0]
    angle = _uniform(n, math.radians(max_rotation_degrees), x)
    scale = 1 + _uniform(n, MAX_SCALE_CHANGE, x)
    flip = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0)
    upside_down = (
        torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0) if vertical_flip else torch.ones_like(flip)
    )
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin * upside_down, _uniform(n, 2 * MAX_SHIFT, x)], dim=1),
            torch.stack([sin * flip, cos * upside_down, _uniform(n, 2 * MAX_SHIFT, x)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # black outside, like the scan's surround
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        moved = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        masks = moved.to(masks.dtype)
    per_image = (n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + _uniform(n, MAX_CONTRAST_CHANGE, x).view(per_image)
    brightness = 1 + _uniform(n, MAX_BRIGHTNESS_CHANGE, x).view(per_image)
    x = (((x - mean) * contrast + mean) * brightness).clamp(0, 1)
    gamma = torch.exp(_uniform(n, math.log(MAX_GAMMA), x)).view(per_image)
    x = x.clamp_min(1e-6) ** gamma
    speckle = 1 + SPECKLE_SIGMA * torch.randn(n, 1, *x.shape[-2:], device=x.device)
    x = (x * speckle).clamp(0, 1)
    return x if masks is None else (x, masks)
