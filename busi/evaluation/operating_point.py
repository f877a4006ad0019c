"""The malignant operating point: label a scan malignant whenever p_malignant reaches a threshold (a
missed cancer costs more than a false alarm), chosen on a model's validation split when it is trained
or read off a cross-validation's pooled out-of-fold predictions, and kept with the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torchmetrics.classification import BinarySpecificityAtSensitivity

MALIGNANT = "malignant"
TARGET_SENSITIVITY = 0.80


def decided_class(probabilities: list[float], class_names: tuple[str, ...], malignant_threshold: float | None) -> int:
    """The label's class: malignant when a threshold is given and p_malignant reaches it, else the most
    probable class (of the others, when a threshold was given and not reached)."""
    classes = range(len(probabilities))
    if malignant_threshold is not None and MALIGNANT in class_names:
        malignant = class_names.index(MALIGNANT)
        if probabilities[malignant] >= malignant_threshold:
            return malignant
        classes = [c for c in classes if c != malignant]
    return max(classes, key=probabilities.__getitem__)


def threshold_at_sensitivity(probabilities: torch.Tensor, labels: torch.Tensor, positive: int) -> tuple[float, float]:
    """(threshold, specificity) at TARGET_SENSITIVITY for class `positive` against the rest."""
    specificity, threshold = BinarySpecificityAtSensitivity(min_sensitivity=TARGET_SENSITIVITY)(
        probabilities[:, positive], (labels == positive).long()
    )
    return float(threshold), float(specificity)


def validation_operating_point(probabilities: torch.Tensor, labels: torch.Tensor, class_names) -> dict | None:
    """The malignant threshold that reaches the target sensitivity on a model's validation split (its
    calibrated probabilities); None without malignant validation images."""
    if MALIGNANT not in class_names or not bool((labels == class_names.index(MALIGNANT)).any()):
        return None
    threshold, specificity = threshold_at_sensitivity(probabilities, labels, class_names.index(MALIGNANT))
    return {
        "class": MALIGNANT,
        "threshold": threshold,
        "target_sensitivity": TARGET_SENSITIVITY,
        "specificity": specificity,
        "chosen_on": f"the validation split ({len(labels)} images)",
    }


def kept_with_model(ckpt: Path, summary: dict | None, key: str) -> tuple[dict, Path | None] | None:
    """(the entry `key`, the cv_summary.json it came from or None) kept with a model: a busi-cv folder's
    pooled out-of-fold entry in cv_summary.json, or the summary in a checkpoint (`summary`); None without."""
    if Path(ckpt).is_dir():
        summary_file = Path(ckpt) / "cv_summary.json"
        if not summary_file.is_file():
            return None
        entry = json.loads(summary_file.read_text(encoding="utf-8"))["out_of_fold"].get(key)
        return (entry, summary_file) if entry else None
    entry = (summary or {}).get(key)
    return (entry, None) if entry else None


def stored_operating_point(ckpt: Path, summary: dict | None) -> tuple[float, str] | None:
    """(threshold, where it comes from) kept with a model: a busi-cv folder's cv_summary.json, or the
    summary in a checkpoint (`summary`); None when there is none."""
    kept = kept_with_model(ckpt, summary, "operating_point")
    if kept is None:
        return None
    point, summary_file = kept
    if summary_file is not None:
        where = f"sensitivity {point['target_sensitivity']:.0%} on the pooled out-of-fold predictions"
        return point["threshold_at_target"], f"stored in {summary_file}: {where}"
    return point[
        "threshold"
    ], f"stored in {ckpt}: sensitivity {point['target_sensitivity']:.0%} on {point['chosen_on']}"
