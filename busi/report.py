"""Evaluation report: torchmetrics collections → report.json, report.txt and a confusion-matrix image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.utilities import dim_zero_cat

RELIABILITY_BINS = 10


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


class SplitEvaluation(torch.nn.Module):
    """Mean loss plus the report metrics of one split."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.loss = MeanMetric()
        self.metrics = report_metrics(num_classes)
        self.uncalibrated_ece = MulticlassCalibrationError(num_classes, n_bins=RELIABILITY_BINS, norm="l1")

    def update(
        self, probabilities: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, uncalibrated: torch.Tensor
    ) -> None:
        """`probabilities`: what the model reports (temperature, TTA); `uncalibrated`: softmax(logits)."""
        self.loss.update(loss, weight=targets.numel())
        self.metrics.update(probabilities, targets)
        self.uncalibrated_ece.update(uncalibrated, targets)

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
            "reliability": self.reliability(),
            "per_class": per_class,
            "averages": averages,
            "confusion_matrix": matrix.tolist(),
        }

    def reliability(self) -> list[dict]:
        """Per confidence bin: images, mean confidence, accuracy (from the calibration metric's states)."""
        ece = self.metrics["ece"]
        with ece.sync_context():  # every process's images under DDP
            confidences, correct = dim_zero_cat(ece.confidences).float(), dim_zero_cat(ece.accuracies).float()
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

    def reset(self) -> None:
        self.loss.reset()
        self.metrics.reset()
        self.uncalibrated_ece.reset()


def format_classification_report(split: dict, class_names: tuple[str, ...]) -> str:
    """Same layout as scikit-learn's classification_report, which the original project printed."""
    width = max(len(name) for name in (*class_names, "weighted avg"))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for name in class_names:
        row = split["per_class"][name]
        lines.append(
            f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:9d}"
        )
    lines += ["", f"{'accuracy':>{width}} {'':>9} {'':>9} {split['accuracy']:9.4f} {split['samples']:9d}"]
    for average in ("macro", "weighted"):
        row = split["averages"][average]
        label = f"{average} avg"
        lines.append(
            f"{label:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:9d}"
        )
    return "\n".join(lines)


def format_confusion_matrix(matrix: list[list[int]], class_names: tuple[str, ...]) -> str:
    width = max(len(name) for name in class_names) + 2
    corner = "true \\ predicted"
    header = f"{corner:>{width + 6}}" + "".join(f"{name:>{width}}" for name in class_names)
    rows = [
        f"{name:>{width + 6}}" + "".join(f"{n:>{width}d}" for n in row)
        for name, row in zip(class_names, matrix, strict=True)
    ]
    return "\n".join([header, *rows])


def format_report(report: dict) -> str:
    class_names = tuple(report["class_names"])
    test = report["splits"]["test"]
    lines = [f"Checkpoint: {report['checkpoint']}", ""]
    lines += [f"{'split':>6} {'images':>7} {'loss':>8} {'accuracy':>9} {'macro-F1':>9}"]
    for name, split in report["splits"].items():
        lines.append(
            f"{name:>6} {split['samples']:7d} {split['loss']:8.4f} {split['accuracy']:9.4f} {split['macro_f1']:9.4f}"
        )
    lines += ["", "Test classification report", format_classification_report(test, class_names), ""]
    lines += [f"Macro one-vs-rest AUROC (test): {test['auroc_macro_ovr']:.4f}"]
    lines += [
        f"Expected calibration error (test, {RELIABILITY_BINS} bins): {test['ece']:.4f} "
        f"(temperature {report.get('temperature', 1.0):.3f}; {test['ece_uncalibrated']:.4f} without it)",
        "",
    ]
    lines += [
        "Test confusion matrix (rows: true class, columns: predicted)",
        format_confusion_matrix(test["confusion_matrix"], class_names),
    ]
    if report.get("localisation"):
        from busi.explain import format_localisation

        lines += ["", format_localisation(report["localisation"], "Grad-CAM localisation, test split (true class)")]
    return "\n".join(lines)


def write_report(report: dict, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (run_dir / "report.txt").write_text(format_report(report) + "\n", encoding="utf-8")


def confusion_matrix_image(matrix: list[list[int]], class_names: tuple[str, ...], cell: int = 96) -> np.ndarray:
    """A labelled confusion-matrix picture (H, W, 3 uint8) drawn with Pillow alone."""
    counts = np.asarray(matrix, dtype=np.float64)
    row_totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    share = counts / row_totals
    margin, size = 110, len(class_names)
    image = Image.new("RGB", (margin + size * cell + 10, margin + size * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 10), "predicted ->", fill="black")
    draw.text((10, 10), "true (rows)", fill="black")
    for i, name in enumerate(class_names):
        draw.text((margin + i * cell + 8, margin - 25), name, fill="black")
        draw.text((10, margin + i * cell + cell // 2 - 6), name, fill="black")
        for j in range(size):
            shade = int(255 - 200 * share[i, j])
            box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell, margin + (i + 1) * cell)
            draw.rectangle(box, fill=(shade, shade, 255), outline="gray")
            text_colour = "white" if share[i, j] > 0.6 else "black"
            draw.text((box[0] + 10, box[1] + cell // 2 - 12), f"{int(counts[i, j])}", fill=text_colour)
            draw.text((box[0] + 10, box[1] + cell // 2 + 2), f"{share[i, j]:.0%}", fill=text_colour)
    return np.asarray(image)


def reliability_diagram_image(rows: list[dict], ece: float, size: int = 320) -> np.ndarray:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration (H, W, 3 uint8)."""
    margin = 40
    image = Image.new("RGB", (size + 2 * margin, size + 2 * margin), "white")
    draw = ImageDraw.Draw(image)
    x0, y0 = margin, margin + size  # origin at the bottom left
    draw.rectangle((x0, margin, x0 + size, y0), outline="black")
    draw.line((x0, y0, x0 + size, margin), fill="gray")
    width = size / len(rows)
    for index, row in enumerate(rows):
        if row["images"]:
            top = y0 - row["accuracy"] * size
            draw.rectangle((x0 + index * width + 2, top, x0 + (index + 1) * width - 2, y0), fill=(90, 120, 220))
            draw.text((x0 + index * width + 4, y0 + 4), str(row["images"]), fill="black")
    draw.text((x0, 8), f"reliability (test): ECE {ece:.3f}", fill="black")
    draw.text((x0, y0 + 20), "confidence -> (bar labels: images)", fill="black")
    draw.text((4, margin), "acc.", fill="black")
    return np.asarray(image)
