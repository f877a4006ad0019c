"""How well Grad-CAM heat-maps of the true class point at the lesion masks (energy inside, pointing game)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from busi.data.catalog import Catalog
from busi.data.dataset import ImageTensors
from busi.model.answering import answer
from busi.model.classifier import BusiClassifier

POINTING_DILATION = 5  # pixels at the model's input size: a peak on the lesion's border counts


def localisation(cam: torch.Tensor, mask: torch.Tensor, dilation: int = POINTING_DILATION) -> dict[str, float]:
    """Energy inside the mask, the uniform-map baseline (the mask's area share), and the pointing hit."""
    mask = mask.to(cam.device)
    dilated = F.max_pool2d(mask[None, None].float(), 2 * dilation + 1, stride=1, padding=dilation)[0, 0] > 0
    return {
        "energy_inside": float((cam * mask).sum() / cam.sum().clamp_min(1e-12)),
        "mask_area": float(mask.float().mean()),
        "pointing_hit": float(dilated.flatten()[cam.flatten().argmax()]),
    }


def summarise(rows: list[dict], class_names: tuple[str, ...]) -> dict:
    """Mean scores per class (images with a non-empty mask only)."""
    summary = {}
    for name in class_names:
        scored = [row for row in rows if row["label"] == name]
        if scored:
            summary[name] = {
                "images": len(scored),
                **{
                    key: float(np.mean([row[key] for row in scored]))
                    for key in ("energy_inside", "mask_area", "pointing_hit")
                },
            }
    return summary


def localisation_scores(classifier: BusiClassifier, catalog: Catalog, indices: list[int], batch_size: int = 32) -> dict:
    """Grad-CAM of the true class for every image of `indices` that has a non-empty lesion mask (the
    catalog's, decoded with the images and at the same size)."""
    candidates = [i for i in indices if catalog.masks[i] is not None and catalog.mask(i).any()]
    loader = DataLoader(ImageTensors(catalog, candidates), batch_size=batch_size)
    cams = answer(classifier.eval(), loader, explain="label").cams if candidates else []
    rows = []
    for index, cam in zip(candidates, cams, strict=True):
        label = classifier.class_names[catalog.records[index].label]
        mask = catalog.mask(index)[0].bool()
        rows.append({"path": catalog.relative(index), "label": label, **localisation(cam, mask)})
    return {"dilation_px": POINTING_DILATION, "per_class": summarise(rows, classifier.class_names), "images": rows}
