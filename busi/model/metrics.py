"""What is measured: the metrics logged every epoch and those of the report, from torchmetrics."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchmetrics import CatMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from busi import NORMAL
from busi.io.images import mask_known

RELIABILITY_BINS = 10
LESION_THRESHOLD = 0.5  # a pixel is predicted lesion from this probability on


def epoch_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """What is logged every epoch: accuracy and macro-F1."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


def report_metrics(num_classes: int) -> MetricCollection:
    """Everything the report shows, from probabilities and targets."""
    metrics = {
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "confusion_matrix": MulticlassConfusionMatrix(num_classes),
        "auroc_macro": MulticlassAUROC(num_classes, average="macro"),
        "ece": MulticlassCalibrationError(num_classes, n_bins=RELIABILITY_BINS, norm="l1"),
    }
    for average in ("none", "macro", "weighted"):
        name = "per_class" if average == "none" else average
        metrics[f"precision_{name}"] = MulticlassPrecision(num_classes, average=average)
        metrics[f"recall_{name}"] = MulticlassRecall(num_classes, average=average)
        metrics[f"f1_{name}"] = MulticlassF1Score(num_classes, average=average)
    return MetricCollection(metrics)


class Overlap(NamedTuple):
    """Per image, of a predicted lesion map against its mask."""

    dice: torch.Tensor  # 2|P∩T| / (|P| + |T|); 1 when both are empty
    iou: torch.Tensor  # |P∩T| / |P∪T|; 1 when both are empty
    predicted_lesion: torch.Tensor  # any pixel predicted lesion
    has_lesion: torch.Tensor  # a known mask with lesion pixels
    known: torch.Tensor  # the mask is known (not MASK_UNKNOWN)


def overlap_scores(probabilities: torch.Tensor, masks: torch.Tensor) -> Overlap:
    """`probabilities` (N, H, W) of lesion, `masks` uint8 (N, 1, H, W) as BusiDataModule gives them."""
    known = mask_known(masks)
    target = (masks[:, 0] == 1).flatten(1)
    predicted = (probabilities >= LESION_THRESHOLD).flatten(1)
    both = (predicted & target).sum(dim=1).float()
    sizes = predicted.sum(dim=1).float() + target.sum(dim=1).float()
    union = sizes - both
    dice = torch.where(sizes > 0, 2 * both / sizes.clamp_min(1), torch.ones_like(sizes))
    iou = torch.where(union > 0, both / union.clamp_min(1), torch.ones_like(union))
    return Overlap(dice, iou, predicted.any(dim=1), known & target.any(dim=1), known)


class SplitEvaluation(torch.nn.Module):
    """Mean loss plus the report metrics of one split."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.loss = MeanMetric()
        self.metrics = report_metrics(num_classes)
        self.uncalibrated_ece = MulticlassCalibrationError(num_classes, n_bins=RELIABILITY_BINS, norm="l1")
        self.confidence, self.correct = CatMetric(), CatMetric()  # for the reliability diagram
        # per image with a known mask, when the model segments
        self.lesion_label, self.dice, self.iou, self.predicted_lesion = (
            CatMetric(),
            CatMetric(),
            CatMetric(),
            CatMetric(),
        )

    def update(
        self,
        probabilities: torch.Tensor,
        targets: torch.Tensor,
        uncalibrated: torch.Tensor,
        lesions: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> None:
        """`probabilities`: what the model reports (temperature, TTA); `uncalibrated`: softmax(logits).
        The loss is the negative log-likelihood of the reported probabilities. `lesions`: predicted
        lesion probabilities (N, H, W) and their `masks`, for the segmentation scores."""
        if lesions is not None and masks is not None:
            overlap = overlap_scores(lesions, masks.to(lesions.device))
            known = overlap.known
            if known.any():
                self.lesion_label.update(targets[known].float())
                self.dice.update(overlap.dice[known])
                self.iou.update(overlap.iou[known])
                self.predicted_lesion.update(overlap.predicted_lesion[known].float())
        loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), targets)
        self.loss.update(loss, weight=targets.numel())
        self.metrics.update(probabilities, targets)
        self.uncalibrated_ece.update(uncalibrated, targets)
        confidence, predicted = probabilities.max(dim=1)
        self.confidence.update(confidence)
        self.correct.update((predicted == targets).float())

    def compute_report(self, class_names: tuple[str, ...]) -> dict:
        values = {k: v.detach().cpu() for k, v in self.metrics.compute().items()}
        matrix = values["confusion_matrix"].long()
        support = matrix.sum(dim=1).tolist()
        per_class = {
            name: {
                "precision": values["precision_per_class"][i].item(),
                "recall": values["recall_per_class"][i].item(),
                "f1": values["f1_per_class"][i].item(),
                "support": support[i],
            }
            for i, name in enumerate(class_names)
        }
        averages = {
            average: {
                "precision": values[f"precision_{average}"].item(),
                "recall": values[f"recall_{average}"].item(),
                "f1": values[f"f1_{average}"].item(),
                "support": sum(support),
            }
            for average in ("macro", "weighted")
        }
        return {
            "samples": sum(support),
            "loss": self.loss.compute().item(),
            "accuracy": values["accuracy"].item(),
            "macro_f1": averages["macro"]["f1"],
            "auroc_macro_ovr": values["auroc_macro"].item(),
            "ece": values["ece"].item(),
            "ece_uncalibrated": self.uncalibrated_ece.compute().item(),
            "reliability": reliability(self.confidence.compute(), self.correct.compute()),
            "per_class": per_class,
            "averages": averages,
            "confusion_matrix": matrix.tolist(),
            **({"segmentation": self.segmentation(class_names)} if self.dice.update_count else {}),
        }

    def segmentation(self, class_names: tuple[str, ...]) -> dict:
        """Per class: images with a known mask and their mean Dice and IoU at LESION_THRESHOLD; for the
        normal class (empty masks), the share of images with any predicted lesion pixel instead."""
        labels = self.lesion_label.compute().long().cpu()
        dice, iou = self.dice.compute().float().cpu(), self.iou.compute().float().cpu()
        predicted = self.predicted_lesion.compute().float().cpu()
        scores = {}
        for index, name in enumerate(class_names):
            chosen = labels == index
            count = int(chosen.sum())
            if name == NORMAL:
                share = float(predicted[chosen].mean()) if count else None
                scores[name] = {"images": count, "predicted_lesion_share": share}
            else:
                dice_mean, iou_mean = (float(v[chosen].mean()) if count else None for v in (dice, iou))
                scores[name] = {"images": count, "dice": dice_mean, "iou": iou_mean}
        return scores

    def reset(self) -> None:
        self.loss.reset()
        self.metrics.reset()
        self.uncalibrated_ece.reset()
        self.confidence.reset()
        self.correct.reset()
        for metric in (self.lesion_label, self.dice, self.iou, self.predicted_lesion):
            metric.reset()


def reliability(confidences: torch.Tensor, correct: torch.Tensor) -> list[dict]:
    """Per confidence bin: images, mean confidence and accuracy (what the ECE averages over)."""
    confidences, correct = confidences.detach().float().cpu(), correct.detach().float().cpu()
    bins = torch.clamp((confidences * RELIABILITY_BINS).long(), max=RELIABILITY_BINS - 1)
    rows = []
    for b in range(RELIABILITY_BINS):
        chosen = bins == b
        count = int(chosen.sum())
        rows.append(
            {
                "bin": [b / RELIABILITY_BINS, (b + 1) / RELIABILITY_BINS],
                "images": count,
                "confidence": float(confidences[chosen].mean()) if count else None,
                "accuracy": float(correct[chosen].mean()) if count else None,
            }
        )
    return rows
