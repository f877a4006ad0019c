"""A fold ensemble (the best.ckpt of every fold of a busi-cv folder) answering as one model, and
`load_model`, which gives a checkpoint's model or a busi-cv folder's ensemble."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from busi.model.answering import Answering
from busi.model.classifier import BusiClassifier, load_classifiers
from busi.model.inference import Outputs


class FoldEnsemble(Answering, L.LightningModule):
    """Several trained classifiers answering as one: the mean of their calibrated probabilities and of
    their uncalibrated ones (no logits: a mean of probabilities has none); heat-maps are the mean of
    every model's Grad-CAM of the ensemble's class (rescaled to a maximum of 1); lesion maps the mean
    of the maps of the models with a decoder. One model answers as itself."""

    def __init__(self, classifiers: list[BusiClassifier]):
        super().__init__()
        if len({(c.class_names, c.image_size) for c in classifiers}) > 1:
            raise ValueError("the fold models differ in classes or image size; they cannot be averaged")
        self.classifiers = nn.ModuleList(classifiers)
        self.class_names = classifiers[0].class_names
        self.eval()

    @property
    def image_size(self) -> int:
        return self.classifiers[0].image_size

    @property
    def overlays(self) -> str:
        kinds = {c.overlays for c in self.classifiers}
        if len(kinds) > 1:
            raise ValueError("the fold models were trained with different --data.overlays; they cannot be averaged")
        return kinds.pop()

    @property
    def segments(self) -> bool:
        """Every model has a lesion decoder."""
        return all(c.segments for c in self.classifiers)

    @property
    def members(self) -> list[BusiClassifier]:
        return list(self.classifiers)

    def infer(
        self, pixels: torch.Tensor, keys: list[str] | None = None, explain: bool | torch.Tensor = False
    ) -> Outputs:
        """BusiClassifier.infer of the ensemble (see the class)."""
        classifiers = self.members
        if len(classifiers) == 1:
            return classifiers[0].infer(pixels, keys, explain=explain)
        if explain is True:  # the ensemble's class first: each model then explains that one
            explain = self.infer(pixels, keys).probabilities.argmax(dim=1)
        outputs = [classifier.infer(pixels, keys, explain=explain) for classifier in classifiers]
        probabilities = torch.stack([o.probabilities for o in outputs]).mean(dim=0)
        uncalibrated = torch.stack([o.uncalibrated for o in outputs]).mean(dim=0)
        segmenting = [o.lesions for o in outputs if o.lesions is not None]
        lesions = torch.stack(segmenting).mean(dim=0) if segmenting else None
        if explain is False:
            return Outputs(probabilities, uncalibrated, lesions=lesions)
        cams = torch.stack([o.cams for o in outputs]).mean(dim=0)
        cams = cams / cams.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        return Outputs(probabilities, uncalibrated, cams=cams, explained=explain, lesions=lesions)


def load_model(path: Path | str, map_location: str | torch.device = "cpu") -> BusiClassifier | FoldEnsemble:
    """A checkpoint's classifier, or a busi-cv folder's fold models as one FoldEnsemble (WeightsError
    naming the file when one cannot be used)."""
    classifiers = load_classifiers(path, map_location)
    return FoldEnsemble(classifiers) if Path(path).is_dir() else classifiers[0]
