"""A fold ensemble (the best.ckpt of every fold of a busi-cv folder) answering as one model."""

from __future__ import annotations

import torch

from busi.inference import Outputs
from busi.model import BusiClassifier


def infer_mean(
    classifiers: list[BusiClassifier], pixels: torch.Tensor, explain: bool | torch.Tensor = False
) -> Outputs:
    """BusiClassifier.infer of several models: the mean of their calibrated probabilities and of their
    uncalibrated ones (no logits: a mean of probabilities has none); heat-maps are the mean of every
    model's Grad-CAM of the ensemble's class (rescaled to a maximum of 1); lesion maps the mean of the
    maps of the models with a decoder. One model answers as itself."""
    if len(classifiers) == 1:
        return classifiers[0].infer(pixels, explain=explain)
    if explain is True:  # the ensemble's class first: each model then explains that one
        explain = infer_mean(classifiers, pixels).probabilities.argmax(dim=1)
    outputs = [classifier.infer(pixels, explain=explain) for classifier in classifiers]
    probabilities = torch.stack([o.probabilities for o in outputs]).mean(dim=0)
    uncalibrated = torch.stack([o.uncalibrated for o in outputs]).mean(dim=0)
    segmenting = [o.lesions for o in outputs if o.lesions is not None]
    lesions = torch.stack(segmenting).mean(dim=0) if segmenting else None
    if explain is False:
        return Outputs(probabilities, uncalibrated, lesions=lesions)
    cams = torch.stack([o.cams for o in outputs]).mean(dim=0)
    cams = cams / cams.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return Outputs(probabilities, uncalibrated, cams=cams, explained=explain, lesions=lesions)
