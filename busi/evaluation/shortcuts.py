"""Does the model read the lesion or the marks drawn on the scan? Its scores on overlaid and on clean
images apart (busi.io.overlays flags them): calipers are placed on lesions, so a model that learned
them does better on the overlaid scans and worse on a clinic's clean ones."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score, multiclass_recall

MALIGNANT = "malignant"


def scores(probabilities: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...]) -> dict:
    classes = len(class_names)
    if not len(labels):
        return {"images": 0}
    predicted = probabilities.argmax(dim=1)
    result = {
        "images": len(labels),
        "per_class": {n: int((labels == k).sum()) for k, n in enumerate(class_names)},
        "accuracy": float(multiclass_accuracy(predicted, labels, classes, average="micro")),
        "macro_f1": float(multiclass_f1_score(predicted, labels, classes, average="macro")),
    }
    if MALIGNANT in class_names and bool((labels == class_names.index(MALIGNANT)).any()):
        recall = multiclass_recall(predicted, labels, classes, average=None)
        result["malignant_recall"] = float(recall[class_names.index(MALIGNANT)])
    return result


def by_overlay(
    probabilities: torch.Tensor, labels: torch.Tensor, overlaid: list[bool], class_names: tuple[str, ...]
) -> dict:
    """Accuracy, macro-F1 and malignant recall on the overlaid and on the clean images."""
    flags = torch.tensor(overlaid, dtype=torch.bool)
    return {
        "overlaid": scores(probabilities[flags], labels[flags], class_names),
        "clean": scores(probabilities[~flags], labels[~flags], class_names),
    }


def format_by_overlay(breakdown: dict, where: str) -> str:
    lines = [f"Drawn marks ({where}; busi.io.overlays): scores on overlaid and on clean images"]
    for kind in ("overlaid", "clean"):
        part = breakdown[kind]
        if not part["images"]:
            lines.append(f"{kind:>10}: no images")
            continue
        recall = f", malignant recall {part['malignant_recall']:.4f}" if "malignant_recall" in part else ""
        counts = " ".join(f"{n} {c}" for n, c in part["per_class"].items())
        lines.append(
            f"{kind:>10}: {part['images']} images ({counts}): accuracy {part['accuracy']:.4f}, "
            f"macro-F1 {part['macro_f1']:.4f}{recall}"
        )
    return "\n".join(lines)
