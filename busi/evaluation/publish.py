"""What a finished run wrote into its folder, handed to each of its loggers that takes it: scalars to
every Lightning logger, pictures and text to TensorBoard, the files themselves to MLflow as artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from PIL import Image

from busi.evaluation.report import format_report


def publish(
    loggers: list[Logger],
    folder: Path,
    files: list[str],
    images: dict[str, str],
    text: dict[str, str],
    scalars: dict[str, float],
    step: int = 0,
) -> None:
    """`files`, and the PNGs `images` (tag → file name), are in `folder`; `text`: tag → text."""
    for logger in loggers:
        if scalars:
            logger.log_metrics(scalars, step)
        if isinstance(logger, TensorBoardLogger):
            for tag, name in images.items():
                pixels = np.asarray(Image.open(folder / name).convert("RGB"))
                logger.experiment.add_image(tag, pixels, step, dataformats="HWC")
            for tag, value in text.items():  # TensorBoard renders markdown: indented, it stays a table
                logger.experiment.add_text(tag, "    " + value.replace("\n", "\n    "), step)
            logger.experiment.flush()
        elif isinstance(logger, MLFlowLogger):
            for name in [*files, *images.values()]:
                logger.experiment.log_artifact(logger.run_id, str(folder / name))


def publish_report(report: dict, folder: Path, loggers: list[Logger], step: int = 0, split: str = "test") -> None:
    """busi.evaluation.report.write_report's files in `folder`, to the run's loggers."""
    tags = {"confusion_matrix": "confusion_matrix", "reliability": "reliability_diagram", "curves": "curves"}
    images = {f"{split}/{tag}": f"{name}.png" for name, tag in tags.items() if (folder / f"{name}.png").is_file()}
    publish(
        loggers,
        folder,
        ["report.json", "report.txt"],
        images,
        {f"{split}/report": format_report(report)},
        report_scalars(report, split),
        step,
    )


def report_scalars(report: dict, split: str) -> dict[str, float]:
    """The localisation and lesion scores of the report (the classification scores are logged by
    busi.callbacks.split_reports.SplitReports while testing)."""
    scalars = {}
    for name, values in (report.get("localisation") or {}).get("per_class", {}).items():
        for key in ("energy_inside", "pointing_hit"):
            scalars[f"report/{split}_cam_{key}_{name}"] = values[key]
    for name, values in (report["splits"][split].get("segmentation") or {}).items():
        for key in ("dice", "iou", "predicted_lesion_share"):
            if values.get(key) is not None:
                scalars[f"report/{split}_{key}_{name}"] = values[key]
    return scalars
