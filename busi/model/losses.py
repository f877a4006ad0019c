"""The training losses: the head's (cross-entropy or focal, with class weights), the lesion decoder's
(Dice + BCE), and distillation from a teacher's probabilities, which wraps the head's loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from busi.io.images import mask_known
from busi.model.settings import Loss


class ClassificationLoss(nn.Module):
    """The head's training loss: cross-entropy with the class weights and label smoothing, or the focal
    loss with the class weights. `class_weight` is set when a fit starts (`loss.class_weighting balanced`:
    from the train split's class counts); it is not kept in checkpoints. Targets are class indices, or
    (N, classes) probabilities (mixed pairs, busi.data.mixing: cross-entropy only; the class weights
    then weigh each class's term, and the batch mean is not divided by their sum)."""

    def __init__(self, settings: Loss, classes: int):
        super().__init__()
        self.settings = settings
        self.register_buffer("class_weight", torch.ones(classes), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, keys: list[str] | None = None) -> torch.Tensor:
        settings = self.settings
        if settings.name == "focal":
            return focal_loss(logits, targets, settings.focal_gamma, self.class_weight)
        return F.cross_entropy(logits, targets, weight=self.class_weight, label_smoothing=settings.label_smoothing)


class DistillationLoss(nn.Module):
    """(1 − w)·the wrapped loss + w·the cross-entropy against a teacher's probabilities of each training
    image, looked up by the image's content digest (busi.callbacks.distillation puts it in place)."""

    def __init__(self, loss: nn.Module, soft_targets: dict[str, torch.Tensor], weight: float):
        super().__init__()
        self.loss, self.soft_targets, self.weight = loss, soft_targets, weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, keys: list[str]) -> torch.Tensor:
        soft = torch.stack([self.soft_targets[key] for key in keys]).to(logits.device)
        return (1 - self.weight) * self.loss(logits, targets, keys) + self.weight * soft_cross_entropy(logits, soft)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−Σ_c q_c log p_c, averaged over the batch (q: a teacher's probabilities)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """−w_t (1 − p_t)^γ log p_t, averaged with the class weights as F.cross_entropy averages (γ 0: equal)."""
    log_true = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None])[:, 0]
    weights = torch.ones_like(log_true) if weight is None else weight[targets]
    return (-((1 - log_true.exp()) ** gamma) * log_true * weights).sum() / weights.sum()


def segmentation_loss(lesion_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE of the lesion logits (upsampled to the mask size) over the batch's images whose
    masks are known (normal images: empty masks); 0, still connected to the decoder, when there is none."""
    known = mask_known(masks)
    logits = F.interpolate(lesion_logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    if not known.any():
        return logits.sum() * 0.0  # keeps every decoder parameter in the graph (DDP)
    logits, targets = logits[known], masks[known].float()
    probabilities = logits.sigmoid()
    dice = 1 - (2 * (probabilities * targets).sum() + 1) / (probabilities.sum() + targets.sum() + 1)
    return dice + F.binary_cross_entropy_with_logits(logits, targets)
