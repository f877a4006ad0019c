"""Prediction sets with a coverage guarantee: class-conditional split conformal prediction (Vovk's
Mondrian conformal predictor with the score 1 − p_y of the calibrated probabilities; Sadinle, Lei and
Wasserman 2019 call it LAC). For each class y, the validation images of that class give a threshold
t_y; a scan's set holds every class whose probability reaches its threshold. If calibration and new
scans are exchangeable, a scan of true class y has y in its set with probability at least 1 − α, for
every class separately (a missed cancer is not traded for easy normals).

Written here rather than taken from TorchCP, crepes or MAPIE: the whole method is a per-class order
statistic (a dozen lines of torch), and those libraries would bring scikit-learn or their own
training loops to a project that needs neither."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from busi.evaluation.operating_point import kept_with_model

ALPHA_HELP = "miscoverage of the prediction sets, e.g. 0.1 (each class's true scans in their set ≥ 90 %); 0: off"


def check_alpha(alpha: float) -> None:
    if not 0 <= alpha < 1:
        raise ValueError(f"conformal_alpha {alpha}: give a miscoverage in [0, 1), e.g. 0.1; 0 turns the sets off")


def class_thresholds(probabilities: torch.Tensor, labels: torch.Tensor, alpha: float) -> list[float]:
    """The probability each class needs to enter a set. With n validation images of class y, the score
    1 − p_y of the ⌈(n + 1)(1 − α)⌉-th smallest: 0 (always in the set) when n is too small for the
    guarantee (n < 1/α − 1), which is honest rather than useful."""
    check_alpha(alpha)
    thresholds = []
    for k in range(probabilities.shape[1]):
        scores = torch.sort(1 - probabilities[labels == k, k].double()).values
        rank = math.ceil((len(scores) + 1) * (1 - alpha))
        thresholds.append(0.0 if rank > len(scores) else float(1 - scores[rank - 1]))
    return thresholds


def prediction_sets(probabilities: torch.Tensor, thresholds: list[float] | torch.Tensor) -> torch.Tensor:
    """Bool (images, classes): class k is in an image's set when its probability reaches thresholds[k]
    (one list for every image, or a row per image)."""
    return probabilities.double() >= torch.as_tensor(thresholds, dtype=torch.float64, device=probabilities.device)


def set_name(members: list[bool], class_names: tuple[str, ...]) -> str:
    """`benign|malignant`; `none` for an empty set (no class is likely enough: refer as well)."""
    return "|".join(n for n, inside in zip(class_names, members, strict=True) if inside) or "none"


def refers(members: torch.Tensor, decided: torch.Tensor) -> torch.Tensor:
    """Bool (images,): the set is not the decided class alone (two or three classes, none, or one other
    class than the label: per-class thresholds can leave the most probable class out)."""
    alone = members.sum(dim=1) == 1
    return ~(alone & members[torch.arange(len(decided)), decided])


def set_report(probabilities: torch.Tensor, labels: torch.Tensor, thresholds, class_names) -> dict:
    """What the sets did on labelled images: coverage overall and per true class, mean set size, the share
    referred (busi.evaluation.conformal.refers, the label being the most probable class), and the
    accuracy on the scans not referred."""
    sets = prediction_sets(probabilities, thresholds)
    covered = sets[torch.arange(len(labels)), labels]
    sizes = sets.sum(dim=1)
    single = ~refers(sets, probabilities.argmax(dim=1))
    answered_right = single & covered
    return {
        "images": len(labels),
        "coverage": float(covered.double().mean()) if len(labels) else float("nan"),
        "coverage_per_class": {
            name: float(covered[labels == k].double().mean()) if bool((labels == k).any()) else None
            for k, name in enumerate(class_names)
        },
        "mean_set_size": float(sizes.double().mean()) if len(labels) else float("nan"),
        "set_sizes": {str(size): int((sizes == size).sum()) for size in range(len(class_names) + 1)},
        "referred": float((~single).double().mean()) if len(labels) else float("nan"),
        "sets_without_the_label": int(((sizes == 1) & ~single).sum()),
        "accuracy_answered": float(answered_right.sum() / single.sum()) if bool(single.any()) else None,
    }


def risk_coverage(probabilities: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Accuracy on the most confident scans, answering a growing share of them (selective prediction by the
    top probability): one point per share k/n."""
    confidence, predicted = probabilities.max(dim=1)
    order = torch.argsort(confidence, descending=True, stable=True)
    right = (predicted[order] == labels[order]).double().cumsum(dim=0)
    counts = torch.arange(1, len(labels) + 1, dtype=torch.float64)
    return [
        {"coverage": float(c / len(labels)), "accuracy": float(r / c), "confidence": float(confidence[order][i])}
        for i, (r, c) in enumerate(zip(right, counts, strict=True))
    ]


def stored_thresholds(ckpt: Path, summary: dict | None, class_names: tuple[str, ...]) -> tuple[list[float], str] | None:
    """(thresholds in class order, where they come from) kept with a model: for a busi-cv folder the fold
    ensemble's in cv_summary.json, for a checkpoint its own (trained with conformal_alpha); None without."""
    kept = kept_with_model(ckpt, summary, "conformal")
    if kept is None:
        return None
    sets, summary_file = kept
    if summary_file is not None:
        where = f"miscoverage {sets['alpha']:g}, fitted on the pooled out-of-fold predictions in {summary_file}"
        return [sets["ensemble_thresholds"][n] for n in class_names], where
    where = f"miscoverage {sets['alpha']:g}, fitted on {sum(sets['calibration_images'].values())} validation images"
    return [sets["thresholds"][n] for n in class_names], where
