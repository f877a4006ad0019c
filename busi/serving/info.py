"""What busi-serve says about its model: the model card of GET /info, from what best.ckpt (or a busi-cv
folder) holds."""

from __future__ import annotations

import json
from pathlib import Path

from busi.evaluation.model_card import LIMITS

INTENDED_USE = (
    "Research on breast ultrasound classification only. Not a medical device, not validated for clinical use, "
    "not for diagnosing or triaging patients."
)
WARNING = "Research use only: not a medical device; every answer needs a radiologist's reading."


def model_card(model_identity: dict, class_names: tuple[str, ...], summary: dict | None, ckpt: Path) -> dict:
    """GET /info: the model card as JSON. `summary` is the one busi.training.finish.model_summary kept in
    best.ckpt (None for an imported or an older checkpoint: the card then says so)."""
    card = {
        "identity": model_identity,
        "classes": list(class_names),
        "intended_use": INTENDED_USE,
        "warning": WARNING,
        "known_limits": list(LIMITS),
    }
    if summary is None:
        card["training"] = None
        card["note"] = "this checkpoint holds no training summary (imported, or written by an older busi)"
        return card
    card["training"] = {
        key: summary.get(key) for key in ("trained", "weights", "freeze_backbone", "head", "protocol", "data")
    }
    card["test_split"] = summary.get("test")
    card["calibration"] = {
        "temperature": summary["test"].get("temperature"),
        "summary": summary["test"].get("calibration"),
        "ece": summary["test"].get("ece"),
    }
    card["operating_point"] = summary.get("operating_point")
    cv_summary = Path(ckpt) / "cv_summary.json"
    if cv_summary.is_file():
        card["cross_validation"] = json.loads(cv_summary.read_text(encoding="utf-8"))
    card["model_card_markdown"] = summary.get("model_card")
    return card
