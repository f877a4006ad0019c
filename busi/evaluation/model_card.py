"""The model card of a trained checkpoint (after Mitchell et al., 2019, "Model Cards for Model
Reporting"): what the model is, what it was trained and tested on and how, its figures, calibration,
intended use and known limits. Written as RUN/model_card.md and kept in best.ckpt for the app."""

from __future__ import annotations

MODEL_CARD_FILE = "model_card.md"

LIMITS = (
    "Trained on BUSI (or a part of it)? BUSI comes from one hospital (Baheya Hospital, Cairo, 2018) and one scanner make (GE LOGIQ E9 / "
    "LOGIQ E9 Agile), from women aged 25 to 75: other hospitals, scanners, presets and populations are untested "
    "until `busi-evaluate` scores their images.",
    "Many BUSI images carry the sonographer's calipers, text and marks, in the training images too; a model "
    "can learn from them rather than from the tissue. Grad-CAM localisation against the masks (report.txt) "
    "is a partial check only.",
    "The dataset is small (hundreds of images); test figures on one split carry an uncertainty of several "
    "points: cross-validation (`busi-cv`) gives a spread.",
    "BUSI's labels are the dataset's own (benign, malignant, normal); 'normal' scans have no lesion mask.",
)


def model_card(summary: dict, report: dict) -> str:
    """Markdown from busi.training.finish.model_summary's summary and the run's report."""
    data, test, protocol = summary["data"], summary["test"], summary.get("protocol", {})
    splits = data["splits"]
    weights = summary["weights"]
    pretrained = str(weights).lower() not in ("none", "null")
    lines = [
        "# Model card",
        "",
        "## Model",
        f"- DenseNet121 with the {summary['head']} dense head (1024-1024-512-128-{len(report['class_names'])})"
        + (", and a lesion decoder" if test.get("segmentation") else "")
        + f"; {summary['image_size']} px input; classes {', '.join(report['class_names'])}.",
        f"- Backbone weights: {weights}" + (" (frozen)" if summary["freeze_backbone"] else " (trained)") + ".",
        f"- Recipe `{summary['recipe']}`, trained {summary['trained'][:10]} with busi {summary['busi_version']}.",
        "",
        "## Training data",
        f"- {data['root']}: "
        + ", ".join(f"{name} {count}" for name, count in data["per_class"].items())
        + " images (masks are never counted as images).",
        "- Split: "
        + ", ".join(f"{name} {sum(counts.values())}" for name, counts in splits.items())
        + " images"
        + (
            f", stratified and duplicate-aware (near-duplicates kept together), seed {protocol['seed']}"
            if protocol
            else ""
        )
        + (f"; cross-validation fold {protocol['fold']} of {protocol['folds']}" if protocol.get("folds") else "")
        + ".",
        "",
        "## Figures (held-out test split)",
        f"- {test['images']} test images: accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}, "
        + ", ".join(f"{name} recall {value:.3f}" for name, value in test["recall"].items())
        + ".",
        f"- Calibration: {test.get('calibration') or 'temperature ' + format(test['temperature'], '.3f')}; "
        f"expected calibration error {test['ece']:.3f} (10 bins).",
        "- One split of one dataset: see the limits below. A busi-cv folder's cv_summary.txt has the figures "
        "of 5-fold cross-validation with their spread.",
        "",
        "## Intended use",
        "- Research on breast ultrasound classification only. Not a medical device, not validated for "
        "clinical use, not for diagnosing or triaging patients.",
        "",
        "## Known limits",
        *(f"- {limit}" for limit in LIMITS),
    ]
    if not pretrained:
        lines.append(
            "- Trained without pretrained weights: with a frozen backbone only the head learned, on the features "
            "of a random network."
            if summary["freeze_backbone"]
            else "- Trained without pretrained weights (from scratch), on a few hundred images."
        )
    return "\n".join(lines) + "\n"
