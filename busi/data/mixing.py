"""MixUp and CutMix of training batches (torchvision's `v2.MixUp` / `v2.CutMix`), with the lesion masks
mixed the same way as their images: the mask rides along as a fourth channel, so CutMix pastes the
partner's mask in the box it pastes the partner's pixels in, and MixUp blends the masks with the images'
λ (a soft target, which the Dice + BCE loss takes). A pair in which either mask is unknown gets an
unknown mask (left out of the segmentation loss)."""

from __future__ import annotations

from typing import Literal

import torch
from torchvision.transforms import v2

from busi.io.images import MASK_UNKNOWN, mask_known

Mixing = Literal["none", "mixup", "cutmix"]


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    classes: int,
    kind: Mixing,
    alpha: float = 1.0,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Float (N, C, H, W) images and class indices (N,) → mixed images, soft targets (N, classes) and,
    with uint8 (N, 1, H, W) `masks` of the images' size, mixed float masks (MASK_UNKNOWN where a pair's
    mask is not known). Each image is paired with the one before it in the batch (torchvision's rule);
    one λ ~ Beta(α, α) per batch, drawn from torch's global generator (seeded per step by
    busi.callbacks.checkpointing.StepSeed)."""
    transform = {"mixup": v2.MixUp, "cutmix": v2.CutMix}[kind](alpha=alpha, num_classes=classes)
    if masks is None:
        return (*transform(images, targets), None)
    if masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape[-2:])} and images {tuple(images.shape[-2:])} differ in size")
    known = mask_known(masks)
    stacked = torch.cat([images, masks.to(images.dtype)], dim=1)
    mixed, soft_targets = transform(stacked, targets)
    mixed_images, mixed_masks = mixed[:, :-1], mixed[:, -1:]
    unknown = ~(known & known.roll(1, 0))
    mixed_masks[unknown] = MASK_UNKNOWN
    return mixed_images.contiguous(), soft_targets, mixed_masks
