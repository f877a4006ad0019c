"""A busi-cv folder's summary: every fold's report and the pooled out-of-fold predictions, the
malignant operating point, the text, figures and logger copies of it."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from torchmetrics.classification import (
    BinaryRecall,
    BinarySpecificity,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
)

from busi.evaluation.conformal import class_thresholds, risk_coverage, set_report
from busi.evaluation.history import format_training_cost, read_history
from busi.evaluation.operating_point import MALIGNANT, TARGET_SENSITIVITY, threshold_at_sensitivity
from busi.evaluation.plots import (
    confusion_matrix_figure,
    fold_curves_figure,
    reliability_figure,
    risk_coverage_figure,
)
from busi.evaluation.publish import publish
from busi.evaluation.report import format_confusion_matrix, save_figures, set_lines
from busi.evaluation.shortcuts import by_overlay, format_by_overlay
from busi.model.metrics import LESION_THRESHOLD, RELIABILITY_BINS, reliability

SUMMARY_KEYS = ("accuracy", "macro_f1", "auroc_macro_ovr", "ece")


POSITIVE_CLASS = MALIGNANT  # a missed cancer costs more than a false alarm


def fold_dir(cv_dir: Path, fold: int) -> Path:
    return cv_dir / f"fold_{fold}" / "lightning_logs" / "version_0"


def fold_done(cv_dir: Path, fold: int) -> bool:
    return (fold_dir(cv_dir, fold) / "out_of_fold.csv").is_file()


def read_out_of_fold(path: Path, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    labels = torch.tensor([int(row[1]) for row in rows])
    calibrated = torch.tensor([[float(v) for v in row[2 : 2 + classes]] for row in rows])
    raw = torch.tensor([[float(v) for v in row[2 + classes : 2 + 2 * classes]] for row in rows])
    return labels, calibrated, raw


def read_overlaid(path: Path) -> list[bool] | None:
    """out_of_fold.csv's `overlaid` column (busi.io.overlays), where the fold wrote one."""
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["overlaid"] == "1" for row in rows] if rows and "overlaid" in rows[0] else None


def summarise(cv_dir: Path, folds: int) -> dict:
    reports = [json.loads((fold_dir(cv_dir, k) / "report.json").read_text()) for k in range(folds)]
    class_names = reports[0]["class_names"]
    per_fold = []
    for k, report in enumerate(reports):
        test = report["splits"]["test"]
        per_fold.append(
            {
                "fold": k,
                "images": test["samples"],
                **{key: test[key] for key in SUMMARY_KEYS},
                "recall": {name: test["per_class"][name]["recall"] for name in class_names},
                "temperature": report.get("temperature", 1.0),
                **({"segmentation": test["segmentation"]} if "segmentation" in test else {}),
                **({"localisation": report["localisation"]["per_class"]} if report.get("localisation") else {}),
                **({"training": report["training"]} if "training" in report else {}),
            }
        )

    def mean_sd(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    summary = {key: mean_sd([fold[key] for fold in per_fold]) for key in SUMMARY_KEYS}
    summary["recall"] = {name: mean_sd([fold["recall"][name] for fold in per_fold]) for name in class_names}

    def per_class(field: str, keys: tuple[str, ...]) -> dict:
        """Mean ± sd of the per-class scores every fold has (lesion segmentation, Grad-CAM localisation)."""
        scores = {
            name: {
                key: mean_sd([fold[field][name][key] for fold in per_fold])
                for key in keys
                if all(fold[field].get(name, {}).get(key) is not None for fold in per_fold)
            }
            for name in per_fold[0][field]
        }
        return {name: values for name, values in scores.items() if values}

    costs = [fold.get("training", {}) for fold in per_fold]
    for key in ("images_seen", "images_seen_to_best"):
        if all(cost.get(key) is not None for cost in costs):
            summary[key] = mean_sd([cost[key] for cost in costs])
    if all(cost.get("wall_s") is not None for cost in costs):
        summary["wall_s_total"] = sum(cost["wall_s"] for cost in costs)
    if all("segmentation" in fold for fold in per_fold):
        summary["segmentation"] = per_class("segmentation", ("dice", "iou", "predicted_lesion_share"))
    if all("localisation" in fold for fold in per_fold):
        summary["localisation"] = per_class("localisation", ("pointing_hit", "energy_inside"))
    pooled = [read_out_of_fold(fold_dir(cv_dir, k) / "out_of_fold.csv", len(class_names)) for k in range(folds)]
    labels = torch.cat([p[0] for p in pooled])
    calibrated, raw = torch.cat([p[1] for p in pooled]), torch.cat([p[2] for p in pooled])
    predicted = calibrated.argmax(dim=1)
    matrix = MulticlassConfusionMatrix(len(class_names))(predicted, labels)
    ece = MulticlassCalibrationError(len(class_names), n_bins=RELIABILITY_BINS, norm="l1")
    out_of_fold = {
        "images": int(labels.numel()),
        "accuracy": float((predicted == labels).float().mean()),
        "confusion_matrix": matrix.tolist(),
        "ece_calibrated": float(ece(calibrated, labels)),
        "ece_uncalibrated": float(ece(raw, labels)),
        "reliability": reliability(calibrated.max(dim=1).values, (predicted == labels).float()),
    }
    if POSITIVE_CLASS in class_names:
        out_of_fold["operating_point"] = operating_point(calibrated, labels, class_names.index(POSITIVE_CLASS))
    marks = [read_overlaid(fold_dir(cv_dir, k) / "out_of_fold.csv") for k in range(folds)]
    if all(m is not None for m in marks):
        out_of_fold["overlays"] = by_overlay(calibrated, labels, [m for ms in marks for m in ms], tuple(class_names))
    if all(report.get("conformal") for report in reports):
        out_of_fold["conformal"] = pooled_sets(reports, pooled, tuple(class_names))
    return {
        "folds": folds,
        "class_names": class_names,
        "per_fold": per_fold,
        "mean_sd": summary,
        "out_of_fold": out_of_fold,
    }


def pooled_sets(reports: list[dict], pooled: list, class_names: tuple[str, ...]) -> dict:
    """Each fold's prediction sets (its own validation thresholds) on its test fold, pooled; and the thresholds
    the fold ensemble answers with, fitted on the pooled out-of-fold predictions (each image scored by the
    one fold model that never saw it: the ensemble's own scores are sharper, so its coverage on new scans
    is measured, not promised)."""
    alpha = reports[0]["conformal"]["alpha"]
    labels = torch.cat([p[0] for p in pooled])
    calibrated = torch.cat([p[1] for p in pooled])
    per_image = torch.cat(  # each image's thresholds: its fold model's
        [
            torch.tensor([[r["conformal"]["thresholds"][n] for n in class_names]] * len(p[0]), dtype=torch.float64)
            for r, p in zip(reports, pooled, strict=True)
        ]
    )
    return {
        "alpha": alpha,
        "folds": set_report(calibrated, labels, per_image, class_names),
        "ensemble_thresholds": dict(zip(class_names, class_thresholds(calibrated, labels, alpha), strict=True)),
        "risk_coverage": risk_coverage(calibrated, labels),
    }


def operating_point(probabilities: torch.Tensor, labels: torch.Tensor, positive: int) -> dict:
    """Positive class against the rest: where the reported argmax decision sits, and what the pooled
    out-of-fold ROC would give at the target sensitivity. The latter threshold is read off the test
    predictions themselves, so it describes the models; it is not a validated operating point."""
    is_positive = (labels == positive).long()
    predicted = (probabilities.argmax(dim=1) == positive).long()
    threshold, specificity = threshold_at_sensitivity(probabilities, labels, positive)
    return {
        "class": POSITIVE_CLASS,
        "rule": "argmax",
        "sensitivity": float(BinaryRecall()(predicted, is_positive)),
        "specificity": float(BinarySpecificity()(predicted, is_positive)),
        "target_sensitivity": TARGET_SENSITIVITY,
        "specificity_at_target": float(specificity),
        "threshold_at_target": float(threshold),
    }


def format_summary(summary: dict) -> str:
    names = summary["class_names"]
    header = f"{'fold':>5} {'images':>7} {'accuracy':>9} {'macro-F1':>9} {'AUROC':>7} {'ECE':>7} {'T':>6} " + " ".join(
        f"{'rec ' + n[:9]:>14}" for n in names
    )
    lines = [f"{summary['folds']}-fold cross-validation (test = held-out fold)", header]
    for fold in summary["per_fold"]:
        lines.append(
            f"{fold['fold']:>5} {fold['images']:>7} {fold['accuracy']:>9.4f} {fold['macro_f1']:>9.4f} "
            f"{fold['auroc_macro_ovr']:>7.4f} {fold['ece']:>7.4f} {fold['temperature']:>6.3f} "
            + " ".join(f"{fold['recall'][n]:>14.4f}" for n in names)
        )
    m = summary["mean_sd"]
    lines.append(
        f"{'mean':>5} {'':>7} {m['accuracy']['mean']:>9.4f} {m['macro_f1']['mean']:>9.4f} "
        f"{m['auroc_macro_ovr']['mean']:>7.4f} {m['ece']['mean']:>7.4f} {'':>6} "
        + " ".join(f"{m['recall'][n]['mean']:>14.4f}" for n in names)
    )
    lines.append(
        f"{'sd':>5} {'':>7} {m['accuracy']['sd']:>9.4f} {m['macro_f1']['sd']:>9.4f} "
        f"{m['auroc_macro_ovr']['sd']:>7.4f} {m['ece']['sd']:>7.4f} {'':>6} "
        + " ".join(f"{m['recall'][n]['sd']:>14.4f}" for n in names)
    )
    if any("training" in fold for fold in summary["per_fold"]):
        lines += ["", "Training cost per fold model"]
        lines += [
            f"{fold['fold']:>5}: " + format_training_cost(fold["training"])
            for fold in summary["per_fold"]
            if "training" in fold
        ]
        if "images_seen" in m:
            seen, to_best = m["images_seen"], m["images_seen_to_best"]
            lines.append(
                f"{'mean':>5}: {seen['mean']:,.0f} ± {seen['sd']:,.0f} images drawn per model "
                f"({to_best['mean']:,.0f} ± {to_best['sd']:,.0f} up to the best epoch)"
                + (f"; {m['wall_s_total'] / 60:.1f} min of training in all" if "wall_s_total" in m else "")
            )
    if "segmentation" in m:
        lines += [
            "",
            f"Lesion segmentation, test folds (mean ± sd over folds; lesion = probability ≥ {LESION_THRESHOLD})",
        ]
        for name, scores in m["segmentation"].items():
            if "dice" in scores:
                lines.append(
                    f"{name:>10}: Dice {scores['dice']['mean']:.4f} ± {scores['dice']['sd']:.4f}, "
                    f"IoU {scores['iou']['mean']:.4f} ± {scores['iou']['sd']:.4f}"
                )
            elif "predicted_lesion_share" in scores:
                share = scores["predicted_lesion_share"]
                lines.append(f"{name:>10}: lesion predicted on {share['mean']:.1%} ± {share['sd']:.1%} of the images")
    if m.get("localisation"):
        lines += ["", "Grad-CAM localisation of the true class, test folds (mean ± sd over folds)"]
        for name, scores in m["localisation"].items():
            hit, energy = scores["pointing_hit"], scores["energy_inside"]
            lines.append(
                f"{name:>10}: pointing hit {hit['mean']:.4f} ± {hit['sd']:.4f}, "
                f"energy in mask {energy['mean']:.4f} ± {energy['sd']:.4f}"
            )
    oof = summary["out_of_fold"]
    lines += [
        "",
        f"Pooled out-of-fold: {oof['images']} images, accuracy {oof['accuracy']:.4f}, "
        f"ECE {oof['ece_calibrated']:.4f} after temperature scaling ({oof['ece_uncalibrated']:.4f} before)",
        format_confusion_matrix(oof["confusion_matrix"], tuple(names)),
    ]
    if "operating_point" in oof:
        point = oof["operating_point"]
        lines += [
            "",
            f"Operating point ({point['class']} against the rest, {point['rule']} of the calibrated probabilities): "
            f"sensitivity {point['sensitivity']:.4f}, specificity {point['specificity']:.4f}",
            f"Pooled out-of-fold ROC at sensitivity >= {point['target_sensitivity']:.2f}: specificity "
            f"{point['specificity_at_target']:.4f} (p({point['class']}) >= {point['threshold_at_target']:.4f}; "
            "read off these predictions, so descriptive, not a validated threshold)",
        ]
    if "overlays" in oof:
        lines += ["", format_by_overlay(oof["overlays"], "pooled out-of-fold")]
    if "conformal" in oof:
        sets = oof["conformal"]
        ensemble = ", ".join(f"{n} {t:.4f}" for n, t in sets["ensemble_thresholds"].items())
        lines += [
            "",
            f"Prediction sets, pooled out-of-fold (miscoverage {sets['alpha']:g}; each fold model with the "
            "thresholds of its own validation fold)",
            *set_lines(sets["folds"], tuple(names)),
            f"  the fold ensemble answers with thresholds {ensemble} (fitted on these pooled predictions)",
        ]
    return "\n".join(lines)


def write_summary(summary: dict, cv_dir: Path, fold_loggers: list[Logger] = ()) -> None:
    """cv_summary.json/.txt, the pooled out-of-fold confusion matrix and reliability diagram and every
    fold's validation curves as files; all of it to TensorBoard in cv_dir and, when the folds logged to
    MLflow, to a cross-validation run there (the folds' runs nested under it)."""
    (cv_dir / "cv_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (cv_dir / "cv_summary.txt").write_text(format_summary(summary) + "\n", encoding="utf-8")
    oof, folds = summary["out_of_fold"], summary["folds"]
    title = f"{folds}-fold out-of-fold, {oof['images']} images"
    figures = {
        "confusion_matrix": confusion_matrix_figure(oof["confusion_matrix"], tuple(summary["class_names"]), title),
        "reliability": reliability_figure(oof["reliability"], oof["ece_calibrated"], f"{folds}-fold out-of-fold"),
        "curves": fold_curves_figure({k: read_history(fold_dir(cv_dir, k)) for k in range(folds)}),
    }
    if "conformal" in oof:
        figures["risk_coverage"] = risk_coverage_figure(oof["conformal"]["risk_coverage"], f"{folds}-fold out-of-fold")
    save_figures(figures, cv_dir)
    loggers = [TensorBoardLogger(save_dir=cv_dir, name="", version=""), *cv_mlflow_runs(cv_dir, fold_loggers)]
    for fold in summary["per_fold"]:
        scalars = {f"cv/{key}": fold[key] for key in SUMMARY_KEYS}
        for name, scores in fold.get("segmentation", {}).items():
            for key in ("dice", "predicted_lesion_share"):
                if scores.get(key) is not None:
                    scalars[f"cv/{key}_{name}"] = scores[key]
        for logger in loggers:
            logger.log_metrics(scalars, fold["fold"])
    images = {f"cv/out_of_fold_{name}" if name != "curves" else "cv/curves": f"{name}.png" for name in figures}
    publish(loggers, cv_dir, ["cv_summary.json", "cv_summary.txt"], images, {"cv/summary": format_summary(summary)}, {})
    for logger in loggers:
        logger.finalize("success")


def cv_mlflow_runs(cv_dir: Path, fold_loggers: list[Logger]) -> list[MLFlowLogger]:
    """One MLflow run for the summary in each experiment the folds logged to, the folds' runs under it."""
    runs = {}
    for logger in fold_loggers:
        if isinstance(logger, MLFlowLogger):
            key = (logger._tracking_uri, logger.experiment_id)  # the tracking URI is kept only there
            if key not in runs:
                name = logger.experiment.get_experiment(logger.experiment_id).name
                runs[key] = MLFlowLogger(name, run_name=f"{cv_dir.name} (cross-validation)", tracking_uri=key[0])
            logger.experiment.set_tag(logger.run_id, "mlflow.parentRunId", runs[key].run_id)
    return list(runs.values())
