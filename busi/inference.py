"""The one way a trained classifier turns pixels into answers: the test report, calibration, predict.py,
the cross-validation's out-of-fold file, Grad-CAM overlays and localisation, the TensorBoard grid and
the web app all call `infer`. It runs in float32 whatever precision training used, with the frozen
backbone's feature cache (given image keys), the temperature and mirror test-time augmentation, and,
when asked, Grad-CAM (Selvaraju et al. 2017) of the predicted or given classes on the final DenseNet121
feature map, and the lesion probability map of a model with a decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Outputs:
    probabilities: torch.Tensor  # (N, classes) what busi reports: temperature-scaled, mirror-averaged with TTA
    logits: torch.Tensor  # (N, classes) float32, before the temperature
    cams: torch.Tensor | None = None  # (N, H, W) in [0, 1] at the input size, when explained
    explained: torch.Tensor | None = None  # (N,) the class each heat-map explains
    lesions: torch.Tensor | None = None  # (N, H, W) lesion probabilities at the input size, with a decoder


def lesion_probabilities(lesion_logits: torch.Tensor | None, size) -> torch.Tensor | None:
    """Decoder logits (N, 1, h, w) → lesion probabilities (N, H, W) at `size` (bilinear, then sigmoid)."""
    if lesion_logits is None:
        return None
    upsampled = F.interpolate(lesion_logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return upsampled[:, 0].sigmoid()


def infer(
    classifier, pixels: torch.Tensor, keys: list[str] | None = None, explain: bool | torch.Tensor = False
) -> Outputs:
    """Outputs of `classifier` (a BusiClassifier) for a batch of uint8 (N, 1 or 3, H, W) pixels or of
    already prepared inputs. `keys` (content digests) let a frozen backbone reuse cached features.
    `explain`: True for Grad-CAM of the predicted classes, or a tensor of the classes to explain."""
    images = classifier.prepare_inputs(pixels.to(classifier.device))
    with torch.autocast(images.device.type, enabled=False):
        if explain is False:
            with torch.no_grad():
                features, lesion_logits = classifier.encode(images, keys)
                logits = classifier.model.head(features).float()
                lesions = lesion_probabilities(lesion_logits, images.shape[-2:])
                return Outputs(classifier.probabilities(images, keys, logits), logits, lesions=lesions)
        return _grad_cam(classifier, images, None if explain is True else explain)


def _grad_cam(classifier, images: torch.Tensor, classes: torch.Tensor | None) -> Outputs:
    # Works inside Lightning's inference-mode loops: only the head is differentiated, never the backbone.
    with torch.inference_mode(False):
        with torch.no_grad():
            features, lesion_logits = classifier.encode(images.clone())
            lesions = lesion_probabilities(lesion_logits, images.shape[-2:])
        features = features.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = classifier.model.head(features).float()
            chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
            (gradient,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), features)
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * features.detach()).sum(dim=1, keepdim=True)).float()
        cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cams = cams / cams.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        logits = logits.detach()
        with torch.no_grad():
            probabilities = classifier.probabilities(images, logits=logits)
        return Outputs(probabilities, logits, cams, chosen.detach(), lesions)


def infer_mean(classifiers: list, pixels: torch.Tensor, explain: bool | torch.Tensor = False) -> Outputs:
    """`infer` for a fold ensemble: the mean of the models' calibrated probabilities; `logits` are the
    log of their mean uncalibrated probabilities; heat-maps are the mean of every model's Grad-CAM of
    the ensemble's class (rescaled to a maximum of 1); lesion maps the mean of the models' maps."""
    if len(classifiers) == 1:
        return infer(classifiers[0], pixels, explain=explain)
    if explain is True:  # the ensemble's class first: each model then explains that one
        explain = infer_mean(classifiers, pixels).probabilities.argmax(dim=1)
    outputs = [infer(classifier, pixels, explain=explain) for classifier in classifiers]
    probabilities = torch.stack([o.probabilities for o in outputs]).mean(dim=0)
    logits = torch.stack([o.logits.softmax(dim=1) for o in outputs]).mean(dim=0).log()
    segmenting = [o.lesions for o in outputs if o.lesions is not None]
    lesions = torch.stack(segmenting).mean(dim=0) if segmenting else None  # the models with a decoder
    if explain is False:
        return Outputs(probabilities, logits, lesions=lesions)
    cams = torch.stack([o.cams for o in outputs]).mean(dim=0)
    cams = cams / cams.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return Outputs(probabilities, logits, cams, explain, lesions)


def infer_loader(classifier, loader) -> tuple[Outputs, torch.Tensor]:
    """Outputs and labels of every batch of a BusiDataModule loader, (pixels, labels, keys) each."""
    outputs, labels = [], []
    for pixels, targets, keys, _ in loader:
        outputs.append(infer(classifier, pixels, list(keys)))
        labels.append(targets)
    joined = Outputs(torch.cat([o.probabilities for o in outputs]).cpu(), torch.cat([o.logits for o in outputs]).cpu())
    return joined, torch.cat(labels)
