"""The report of a trained model on labelled images: assembled, formatted and written in one place
(report.json, report.txt, confusion_matrix.png, reliability.png, curves.png)."""

from __future__ import annotations

import json
from pathlib import Path

from busi.evaluation.history import format_training_cost, read_history
from busi.evaluation.plots import confusion_matrix_figure, curves_figure, reliability_figure, risk_coverage_figure
from busi.evaluation.shortcuts import format_by_overlay, format_probe
from busi.model.metrics import LESION_THRESHOLD, RELIABILITY_BINS


def build_report(
    class_names: tuple[str, ...],
    checkpoint: str,
    splits: dict[str, dict],
    calibration: dict | None = None,
    localisation: dict | None = None,
) -> dict:
    """`splits`: busi.callbacks.split_reports.SplitReports.splits; `calibration`: busi.evaluation.calibration.
    Calibration.as_dict; `localisation`: busi.evaluation.localisation.localisation_scores."""
    report = {"class_names": list(class_names), "checkpoint": checkpoint, "splits": splits}
    if calibration is not None:
        report["temperature"] = calibration["temperature"]
        report["calibration"] = calibration
    if localisation is not None:
        report["localisation"] = localisation
    return report


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
    scope, where = "test", "test split"  # a training run; busi-evaluate scores every image of a folder
    lines = [f"Checkpoint: {report['checkpoint']}", ""]
    ensemble = report.get("data", {}).get("models", 1) > 1
    if "data" in report:
        data = report["data"]
        scope, where = "all images", "all images"
        models = f", mean of {data['models']} fold models" if ensemble else ""
        lines[1:1] = [f"Evaluated on every image of {data['root']} ({data['images']} images{models})"]
    lines += [f"{'split':>6} {'images':>7} {'loss':>8} {'accuracy':>9} {'macro-F1':>9}"]
    for name, split in report["splits"].items():
        lines.append(
            f"{name:>6} {split['samples']:7d} {split['loss']:8.4f} {split['accuracy']:9.4f} {split['macro_f1']:9.4f}"
        )
    if "training" in report:
        lines += ["", f"Training: {format_training_cost(report['training'])}"]
    lines += ["", f"Classification report ({where})", format_classification_report(test, class_names), ""]
    lines += [f"Macro one-vs-rest AUROC ({scope}): {test['auroc_macro_ovr']:.4f}"]
    if ensemble:
        calibration = f"each fold model's own temperature; {test['ece_uncalibrated']:.4f} without them"
    else:
        fitted = report.get("calibration", {}).get("summary") or f"temperature {report.get('temperature', 1.0):.3f}"
        calibration = f"{fitted}; {test['ece_uncalibrated']:.4f} without it"
    lines += [f"Expected calibration error ({scope}, {RELIABILITY_BINS} bins): {test['ece']:.4f} ({calibration})", ""]
    lines += [
        f"Confusion matrix ({where}; rows: true class, columns: predicted)",
        format_confusion_matrix(test["confusion_matrix"], class_names),
    ]
    if test.get("segmentation"):
        lines += ["", format_segmentation(test["segmentation"], f"Lesion segmentation, {where}")]
    if report.get("localisation"):
        lines += ["", format_localisation(report["localisation"], f"Grad-CAM localisation, {where} (true class)")]
    if report.get("overlays"):
        lines += ["", format_by_overlay(report["overlays"], where)]
    if report.get("shortcuts"):
        lines += ["", format_probe(report["shortcuts"], where)]
    if report.get("conformal"):
        lines += ["", format_sets(report["conformal"], class_names, where)]
    return "\n".join(lines)


def format_sets(conformal: dict, class_names: tuple[str, ...], where: str) -> str:
    """Coverage, set sizes and what is referred (busi.evaluation.conformal.set_report), with the thresholds."""
    thresholds = ", ".join(f"{n} {conformal['thresholds'][n]:.4f}" for n in class_names)
    images = ", ".join(f"{n} {conformal['calibration_images'][n]}" for n in class_names)
    return "\n".join(
        [
            f"Prediction sets ({where}; miscoverage {conformal['alpha']:g}: each class's scans in their set "
            f"≥ {1 - conformal['alpha']:.0%} is promised)",
            f"  thresholds: {thresholds} (fitted on {conformal['fitted_on']}: {images} images)",
            *set_lines(conformal["test"], class_names),
        ]
    )


def set_lines(scored: dict, class_names: tuple[str, ...]) -> list[str]:
    per_class = ", ".join(
        f"{n} {scored['coverage_per_class'][n]:.3f}" for n in class_names if scored["coverage_per_class"][n] is not None
    )
    answered = scored["accuracy_answered"]
    return [
        f"  coverage {scored['coverage']:.3f} (per true class: {per_class}); mean set size "
        f"{scored['mean_set_size']:.2f}; images per set size {scored['set_sizes']}",
        f"  referred (not one class) {scored['referred']:.1%}; accuracy on the rest "
        + (f"{answered:.4f}" if answered is not None else "(none answered)"),
    ]


def format_segmentation(scores: dict, title: str) -> str:
    """The decoder's lesion masks against the images' masks (busi.model.metrics.SplitEvaluation.segmentation)."""
    lines = [f"{title} (images with masks; lesion = probability ≥ {LESION_THRESHOLD})"]
    lines.append(f"{'class':>10} {'images':>7} {'Dice':>7} {'IoU':>7}")
    for name, values in scores.items():
        if values["images"] == 0:
            lines.append(f"{name:>10} {0:>7}")
        elif "dice" in values:
            lines.append(f"{name:>10} {values['images']:>7} {values['dice']:>7.3f} {values['iou']:>7.3f}")
        else:
            lines.append(
                f"{name:>10} {values['images']:>7}   lesion predicted on {values['predicted_lesion_share']:.1%} of them"
            )
    return "\n".join(lines)


def format_localisation(
    scores: dict, title: str = "Grad-CAM localisation (true class, images with lesion masks)"
) -> str:
    lines = [
        title,
        f"{'class':>10} {'images':>7} {'energy in mask':>15} {'mask area':>10} {'pointing hit':>13}",
    ]
    for name, values in scores["per_class"].items():
        lines.append(
            f"{name:>10} {values['images']:>7} {values['energy_inside']:>15.3f} {values['mask_area']:>10.3f} "
            f"{values['pointing_hit']:>13.3f}"
        )
    lines.append(
        f"(mask area: the energy share of a uniform heat-map; pointing hit: peak within {scores['dilation_px']} px of the mask)"
    )
    return "\n".join(lines)


def write_report(report: dict, folder: Path, split: str = "test") -> None:
    """report.json, report.txt, confusion_matrix.png, reliability.png and, for a training run (its
    history.csv in `folder`), curves.png; busi.evaluation.publish hands them to the run's loggers."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (folder / "report.txt").write_text(format_report(report) + "\n", encoding="utf-8")
    scored = report["splits"][split]
    where = "all images" if "data" in report else f"{split} split"
    figures = {
        "confusion_matrix": confusion_matrix_figure(
            scored["confusion_matrix"], tuple(report["class_names"]), f"{where}: {scored['samples']} images"
        ),
        "reliability": reliability_figure(scored["reliability"], scored["ece"], where),
    }
    if report.get("conformal"):
        figures["risk_coverage"] = risk_coverage_figure(report["conformal"]["risk_coverage"], f"{where}")
    history = read_history(folder)
    if history:
        best = max(history, key=lambda row: row.get("val/macro_f1", float("-inf")))
        figures["curves"] = curves_figure(history, f"training curves of {folder.name}", best["epoch"])
    save_figures(figures, folder)


def save_figures(figures: dict, folder: Path) -> None:
    """Each figure as folder/NAME.png."""
    for name, figure in figures.items():
        figure.savefig(folder / f"{name}.png", dpi=120)
