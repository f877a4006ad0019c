"""After a fit, busi-train and every busi-cv fold finish alike: calibrate the best checkpoint, test it on
every split, write the report, and store temperature and summary in best.ckpt (written once)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from busi import __version__
from busi.callbacks.split_reports import SplitReports
from busi.data.module import BusiDataModule
from busi.data.splits import CALIBRATION
from busi.evaluation.calibration import Calibration, calibration
from busi.evaluation.conformal import class_thresholds, risk_coverage, set_report
from busi.evaluation.history import read_history, training_cost
from busi.evaluation.localisation import localisation_scores
from busi.evaluation.model_card import MODEL_CARD_FILE, model_card
from busi.evaluation.operating_point import validation_operating_point
from busi.evaluation.publish import publish_report
from busi.evaluation.report import build_report, format_report, write_report
from busi.evaluation.shortcuts import by_overlay
from busi.model.answering import answer
from busi.model.classifier import SUMMARY_KEY, BusiClassifier
from busi.training.checkpointing import AtomicCheckpointIO

# present when weight averaging made best.ckpt a full checkpoint: not needed to predict
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "current_model_state", "averaging_state")


def finish(trainer: L.Trainer, model: BusiClassifier, datamodule: BusiDataModule, recipe: str) -> dict | None:
    """Calibrate, test, report and store; returns the report (on the main process, when there is a
    test split), which is also printed."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    state = load_weights(model, Path(best)) if best else None
    fitted, point, validation = calibrate(trainer, model, datamodule) if best else (None, None, None)
    trainer.test(model, datamodule=datamodule, verbose=False)  # the weights just loaded
    splits = next(c for c in trainer.callbacks if isinstance(c, SplitReports)).splits
    log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
    report = None
    if trainer.is_global_zero:
        if "test" in splits:
            test_images = [i for i, split in enumerate(datamodule.split_of) if split == "test"]
            report = build_report(
                model.class_names,
                best or "weights in memory (no checkpoint was loaded)",
                splits,
                fitted.as_dict() if fitted else None,
                localisation_scores(model, datamodule.catalog, test_images),
            )
            report.update(from_test_answers(model, datamodule, validation))
            if log_dir:
                history = read_history(Path(log_dir))
                if history and state is not None:
                    report["training"] = training_cost(history, state["epoch"] + 1)  # Lightning counts from 0
                write_report(report, Path(log_dir))
                publish_report(report, Path(log_dir), trainer.loggers, model.global_step)
        if best:
            state["state_dict"]["temperature"] = model.temperature.detach().cpu().clone()
            if report is not None:
                state[SUMMARY_KEY] = model_summary(model, datamodule, report, recipe, point)
                if "conformal" in report:
                    state[SUMMARY_KEY]["conformal"] = stored_sets(report["conformal"])
                card = model_card(state[SUMMARY_KEY], report)
                state[SUMMARY_KEY]["model_card"] = card  # for the app
                if log_dir:
                    (Path(log_dir) / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
            AtomicCheckpointIO().save_checkpoint(state, best)
        if report is not None:
            print(format_report(report))
            print(f"\nRun directory: {log_dir}")
    trainer.strategy.barrier()  # best.ckpt is complete for every process
    return report


def load_weights(model: BusiClassifier, best: Path) -> dict:
    """Load the best checkpoint's weights into `model`; returns the checkpoint without training state."""
    state = torch.load(best, map_location="cpu", weights_only=True)
    for key in TRAINING_STATE_KEYS:
        state.pop(key, None)
    model.load_state_dict(state["state_dict"])
    return state


def calibrate(
    trainer: L.Trainer, model: BusiClassifier, datamodule: BusiDataModule
) -> tuple[Calibration, dict | None, tuple[torch.Tensor, torch.Tensor]]:
    """Fit the model's temperature on the validation split (busi.evaluation.calibration) and set it (1
    where the fit is not trusted; under DDP every process takes the main process's); with it, the
    malignant operating point on the same images (validation_operating_point), and the validation
    images' (calibrated probabilities, labels)."""
    # all of it, on every process (val_dataloader is sharded under DDP); a calibration split where there is one
    validation = datamodule.dataset(calibration_split(datamodule))
    outputs = answer(model.eval(), DataLoader(validation, batch_size=datamodule.hparams.eval_batch_size))
    fitted = trainer.strategy.broadcast(calibration(outputs.logits, validation.labels), src=0)
    model.temperature.fill_(fitted.temperature)
    probabilities = (outputs.logits / fitted.temperature).softmax(dim=1)
    point = validation_operating_point(probabilities, validation.labels, model.class_names)
    return fitted, point, (probabilities, validation.labels)


def from_test_answers(model: BusiClassifier, datamodule: BusiDataModule, validation) -> dict:
    """The report's entries that need every test answer: the scores on overlaid and on clean images
    apart and, with conformal_alpha, the prediction sets (fitted on `validation`)."""
    test = datamodule.dataset("test")
    outputs = answer(model.eval(), DataLoader(test, batch_size=datamodule.hparams.eval_batch_size))
    overlaid = [datamodule.catalog.overlaid[i] for i in test.indices]
    entries = {"overlays": by_overlay(outputs.probabilities, test.labels, overlaid, model.class_names)}
    if validation is not None and model.hparams.get("conformal_alpha"):
        entries["conformal"] = conformal_sets(model, validation, outputs.probabilities, test.labels)
        if calibration_split(datamodule) == CALIBRATION:
            entries["conformal"]["fitted_on"] = "the calibration split (neither trained on nor picked the epoch)"
    return entries


def calibration_split(datamodule: BusiDataModule) -> str:
    """Where the temperature, the operating point and the prediction sets are fitted."""
    return CALIBRATION if CALIBRATION in datamodule.split_of else "val"


def conformal_sets(
    model: BusiClassifier,
    validation: tuple[torch.Tensor, torch.Tensor],
    probabilities: torch.Tensor,
    labels: torch.Tensor,
) -> dict:
    """The per-class thresholds fitted on the validation images (the ones that fitted the temperature too),
    and what their sets do on the test split (its calibrated `probabilities`, `labels`); its risk–coverage curve."""
    alpha, names = model.hparams.conformal_alpha, model.class_names
    thresholds = class_thresholds(*validation, alpha)
    return {
        "alpha": alpha,
        "thresholds": dict(zip(names, thresholds, strict=True)),
        "calibration_images": {n: int((validation[1] == k).sum()) for k, n in enumerate(names)},
        "fitted_on": "the validation split, which also fitted the temperature",
        "test": set_report(probabilities, labels, thresholds, names),
        "risk_coverage": risk_coverage(probabilities, labels),
    }


def stored_sets(conformal: dict) -> dict:
    """What a checkpoint keeps of them to answer with sets (busi.evaluation.conformal.stored_thresholds)."""
    return {key: conformal[key] for key in ("alpha", "thresholds", "calibration_images", "fitted_on")}


def model_summary(
    model: BusiClassifier, datamodule: BusiDataModule, report: dict, recipe: str, operating_point: dict | None = None
) -> dict:
    """What a checkpoint is, what it was trained on and how it scored, and its malignant operating point,
    kept inside it for the web app and `busi-predict --malignant_threshold stored`."""
    hparams = model.hparams
    test = report["splits"]["test"]
    return {
        "busi_version": __version__,
        "trained": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe,
        "image_size": hparams.image_size,
        "weights": str(hparams.weights),
        "freeze_backbone": hparams.freeze_backbone,
        "head": hparams.head,
        "operating_point": operating_point,
        "protocol": {
            key: datamodule.hparams[key] for key in ("seed", "val_fraction", "test_fraction", "folds", "fold")
        },
        "data": {
            "root": str(datamodule.hparams.root),
            "per_class": {name: c["images"] for name, c in datamodule.catalog.audit["per_class"].items()},
            "splits": datamodule.split_counts(),
        },
        "test": {
            "images": test["samples"],
            "accuracy": test["accuracy"],
            "macro_f1": test["macro_f1"],
            "recall": {name: values["recall"] for name, values in test["per_class"].items()},
            "ece": test["ece"],
            "temperature": report.get("temperature", 1.0),
            "calibration": report.get("calibration", {}).get("summary"),
            **({"segmentation": test["segmentation"]} if "segmentation" in test else {}),
        },
    }
