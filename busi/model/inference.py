"""How a network's features become answers (calibrated probabilities, lesion maps, Grad-CAM), shared by
BusiClassifier.infer and the exported model (PixelsToProbabilities)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from busi.io.images import to_model_input
from busi.model.network import DenseNetClassifier


@dataclass
class Outputs:
    probabilities: torch.Tensor  # (N, classes) what busi reports: temperature-scaled, mirror-averaged with TTA
    uncalibrated: torch.Tensor  # (N, classes) softmax of the logits; of an ensemble, the mean of its models'
    logits: torch.Tensor | None = None  # (N, classes) float32, before the temperature; None for an ensemble
    cams: torch.Tensor | None = None  # (N, H, W) in [0, 1] at the input size, when explained
    explained: torch.Tensor | None = None  # (N,) the class each heat-map explains
    lesions: torch.Tensor | None = None  # (N, H, W) lesion probabilities at the input size, with a decoder


def join_outputs(parts: list[Outputs], classes: int) -> Outputs:
    """Outputs of several batches as one, on the CPU (fields that some batch lacks are left out)."""
    parts = [part for part in parts if len(part.probabilities)] or [
        Outputs(torch.empty((0, classes)), torch.empty((0, classes)))
    ]

    def joined(field: str) -> torch.Tensor | None:
        values = [getattr(part, field) for part in parts]
        return None if any(v is None for v in values) else torch.cat([v.cpu() for v in values])

    return Outputs(
        *(joined(field) for field in ("probabilities", "uncalibrated", "logits", "cams", "explained", "lesions"))
    )


def lesion_probabilities(lesion_logits: torch.Tensor | None, size) -> torch.Tensor | None:
    """Decoder logits (N, 1, h, w) → lesion probabilities (N, H, W) at `size` (bilinear, then sigmoid)."""
    if lesion_logits is None:
        return None
    upsampled = F.interpolate(lesion_logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return upsampled[:, 0].sigmoid()


def calibrated_probabilities(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    logits: torch.Tensor,
    temperature: torch.Tensor,
    tta: bool,
) -> torch.Tensor:
    """softmax(logits / temperature) of `images`, averaged with the mirror image's when `tta` is on
    (`classify`: images → logits)."""
    probabilities = (logits.float() / temperature).softmax(dim=1)
    if tta:
        mirrored = classify(images.flip(-1)).float()
        probabilities = (probabilities + (mirrored / temperature).softmax(dim=1)) / 2
    return probabilities


def grad_cam(
    head: nn.Module, features: torch.Tensor, size, classes: torch.Tensor | None, channels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(heat-maps (N, H, W) in [0, 1] at `size`, logits, the classes explained: `classes`, or the
    predicted ones), summed over the first `channels` maps of what the head reads (all by default).
    Only the head is differentiated, never the backbone; works inside Lightning's inference-mode loops."""
    with torch.inference_mode(False):
        features = features.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = head(features).float()
            # a clone: labels collated inside an inference-mode loop are inference tensors
            chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device).clone()
            (gradient,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), features)
        maps, gradient = features.detach()[:, :channels], gradient[:, :channels]
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * maps).sum(dim=1, keepdim=True)).float()
        cams = F.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        cams = cams / cams.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        return cams, logits.detach(), chosen.detach()


class PixelsToProbabilities(nn.Module):
    """What busi-export writes: (N, 3, S, S) float RGB pixels 0–255 → (N, classes) calibrated
    probabilities, and (N, S, S) lesion probabilities when the network has a decoder."""

    def __init__(
        self, network: DenseNetClassifier, temperature: torch.Tensor, tta: bool, preprocessing: str = "imagenet"
    ):
        super().__init__()
        self.preprocessing = preprocessing
        self.network = network.to(memory_format=torch.contiguous_format).eval()
        self.tta = tta
        self.register_buffer("temperature", temperature.detach().clone())

    def forward(self, pixels: torch.Tensor):
        images = to_model_input(pixels / 255, self.preprocessing)
        features, lesion_logits = self.network.encode(images)
        logits = self.network.head(features)
        probabilities = calibrated_probabilities(self.network, images, logits, self.temperature, self.tta)
        if lesion_logits is None:
            return probabilities
        return probabilities, lesion_probabilities(lesion_logits, images.shape[-2:])
