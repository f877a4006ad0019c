"""The web app, `busi-app` (after `pip install -e ".[app]"`): uploads classified with their Grad-CAM
heat-maps and lesion outlines, a summary table and downloads; bad uploads get one line each."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from busi import __version__
from busi.callbacks.prediction_writer import CsvLayout, csv_columns, csv_row, lesion_mask
from busi.commands.options import MAX_UPLOAD_MB
from busi.data.files import Prediction
from busi.errors import WeightsError
from busi.evaluation.conformal import prediction_sets, refers, stored_thresholds
from busi.evaluation.measurements import lesions
from busi.evaluation.operating_point import decided_class, stored_operating_point
from busi.evaluation.plots import HEAT_MAP, OUTLINE_COLOUR
from busi.io.images import (
    UnreadableImageError,
    as_three_channels,
    decode_frames,
    resize_map,
    resize_to_tensor,
    without_overlays,
)
from busi.model.answering import answer
from busi.model.classifier import BusiClassifier
from busi.model.ensemble import FoldEnsemble, load_model
from busi.model.metrics import LESION_THRESHOLD

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"]  # DICOM with busi[dicom]
DISCLAIMER = (
    "Research tool, not a medical device. Every prediction needs a clinician's reading; the heat-map shows "
    "where the model looked, not where a lesion is."
)


def default_checkpoint(runs: Path = Path("runs")) -> tuple[str, str]:
    """(the checkpoint the page opens with, why that one): $BUSI_CHECKPOINT (busi-app --ckpt), else the
    newest busi-cv folder under `runs` (its fold models answer as one: better than any one of them),
    else the newest training run's best.ckpt there; ("", why not) when there is none."""
    if os.environ.get("BUSI_CHECKPOINT"):
        return os.environ["BUSI_CHECKPOINT"], "given with busi-app --ckpt ($BUSI_CHECKPOINT)"
    folders = sorted((summary.parent for summary in runs.glob("**/cv_summary.json")), key=lambda p: p.stat().st_mtime)
    if folders:
        return str(folders[-1]), f"the newest cross-validation under {runs}/: its fold models, averaged"
    inside_cv = {folder.resolve() for folder in folders}
    found = sorted(
        (p for p in runs.glob("**/checkpoints/best.ckpt") if not inside_cv & set(p.resolve().parents)),
        key=lambda p: p.stat().st_mtime,
    )
    if found:
        return str(found[-1]), f"the newest training run under {runs}/ (no cross-validation there)"
    return "", f"no checkpoint under {runs}/"


def percent(probability: float) -> str:
    """A calibrated probability as people read it: never a certain-looking 100.0 % or 0.0 %."""
    if probability > 0.999:
        return "> 99.9 %"
    if probability < 0.001:
        return "< 0.1 %"
    return f"{probability:.1%}".replace("%", " %")


@dataclass
class Result:
    name: str
    probabilities: list[float] | None = None
    error: str = ""
    scan: np.ndarray | None = None  # the decoded image, (H, W, 3) uint8 at its own size
    cam: np.ndarray | None = None  # heat-map in [0, 1] at the model's input size
    lesion: np.ndarray | None = None  # lesion probabilities at the model's input size, with a decoder
    lesions: list[str] | None = None  # each predicted lesion's measurements (Lesion.summary), largest first


@st.cache_resource(max_entries=2)
def cached_model(path: str, modified: float) -> BusiClassifier | FoldEnsemble:  # `modified`: reload a rewritten file
    return load_model(Path(path))


def classify_upload(model: BusiClassifier | FoldEnsemble, name: str, data: bytes) -> Result:
    """Probabilities and heat-map for one uploaded file, or UnreadableImageError saying why not."""
    if not data:
        raise UnreadableImageError(Path(name), "empty file (0 bytes)")
    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise UnreadableImageError(
            Path(name), f"file too large ({len(data) / 2**20:.0f} MB; at most {MAX_UPLOAD_MB} MB)"
        )
    frame = decode_frames(Path(name), data)[0]
    image = frame.image
    pixels = as_three_channels(resize_to_tensor(without_overlays(image, model.overlays), model.image_size))
    outputs = answer(model, DataLoader([{"pixels": pixels[None]}], batch_size=None), explain="predicted")
    lesion = None if outputs.lesions is None else outputs.lesions[0].cpu().numpy()
    found = None if lesion is None else lesions(lesion_mask(lesion, image.size), frame.spacing_mm)
    return Result(
        name,
        outputs.probabilities[0].tolist(),
        scan=np.asarray(image.convert("RGB")),
        cam=outputs.cams[0].cpu().numpy(),
        lesion=lesion,
        lesions=None if found is None else [measured.summary() for measured in found],
    )


@st.cache_data(max_entries=256, show_spinner=False)
def analyse(path: str, modified: float, name: str, data: bytes) -> dict:
    """One upload's result as Result's fields, cached by the checkpoint and the file's content."""
    try:
        return vars(classify_upload(cached_model(path, modified), name, data))
    except UnreadableImageError as error:
        return vars(Result(name, error=str(error)))
    except Exception as error:  # a result for this file, never a crashed page
        return vars(Result(name, error=f"{name}: could not be classified ({type(error).__name__}: {error})"))


def overlay_figure(result: Result, opacity: float) -> Figure:
    """The scan at its true aspect ratio beside the same scan under the heat-map, with a colour bar;
    the predicted lesion outlined on both when the model has a decoder."""
    height, width = result.scan.shape[:2]
    heat = resize_map(result.cam, (width, height))
    figure = Figure(figsize=(10, 10 * height / (2 * width) + 0.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.imshow(result.scan)
    left.set_title("scan", fontsize=10)
    right.imshow(result.scan)
    shown = right.imshow(heat, cmap=HEAT_MAP, alpha=opacity, vmin=0, vmax=1)
    right.set_title("Grad-CAM of the predicted class", fontsize=10)
    for axes in (left, right):
        axes.set_axis_off()
        if result.lesion is not None and (result.lesion >= LESION_THRESHOLD).any():
            lesion = resize_map(result.lesion, (width, height))
            axes.contour(lesion, levels=[LESION_THRESHOLD], colors=[np.array(OUTLINE_COLOUR) / 255], linewidths=1.5)
    if result.lesion is not None:
        left.set_title("scan, predicted lesion outlined", fontsize=10)
    bar = figure.colorbar(shown, ax=[left, right], orientation="horizontal", fraction=0.04, shrink=0.5)
    bar.set_label("model attention: low → high", fontsize=9)
    bar.solids.set_alpha(1)
    return figure


@st.cache_data(max_entries=256, show_spinner=False)
def overlay_png(path: str, modified: float, name: str, data: bytes, opacity: float) -> bytes:
    """The overlay picture of one upload, cached like its result (and by the opacity)."""
    buffer = io.BytesIO()
    overlay_figure(Result(**analyse(path, modified, name, data)), opacity).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def predictions_csv(
    results: list[Result], class_names: tuple[str, ...], threshold: float | None = None, sets: list[float] | None = None
) -> bytes:
    """The CSV predict.py writes, with the upload's file name as the path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    layout = CsvLayout(malignant_threshold=threshold, set_thresholds=tuple(sets) if sets else None)
    writer.writerow(csv_columns(class_names, layout))
    for result in results:
        writer.writerow(csv_row(Prediction(Path(result.name), result.probabilities, result.error), class_names, layout))
    return buffer.getvalue().encode("utf-8")


def model_panel(model: BusiClassifier | FoldEnsemble, path: str) -> None:
    classifiers = model.members
    classifier = classifiers[0]
    summary = classifier.summary
    st.subheader("Model" if len(classifiers) == 1 else f"Ensemble of {len(classifiers)} fold models")
    if summary is None and classifier.imported:
        source, hparams = classifier.imported, classifier.hparams
        scaling = "÷255" if hparams.preprocessing == "divide255" else "÷255, ImageNet mean/std"
        st.caption(
            f"Imported from Keras ({Path(source['file']).name}, Keras {source.get('keras_version') or '?'}): "
            f"{hparams.image_size} px input, {scaling}. busi neither trained nor scored it: score it with "
            "busi-evaluate on images it never saw."
        )
        return
    if summary is None:
        st.caption(
            f"{classifier.hparams.image_size} px input. This checkpoint holds no training summary (written by "
            "an older busi): its run's report.txt has the scores."
        )
        return
    decoder = (
        f" · lesion decoder (λ {classifier.settings.loss.segmentation_weight:g})" if classifier.model.segments else ""
    )
    st.markdown(
        f"**{summary['recipe']}** recipe · {summary['image_size']} px · {summary['head']} head{decoder} · "
        f"weights: {summary['weights']}{' (frozen)' if summary['freeze_backbone'] else ''}  \n"
        f"trained {summary['trained'][:10]} with busi {summary['busi_version']} (this app: {__version__})"
    )
    data = summary["data"]
    st.caption(
        f"Trained on {data['root']}: "
        + ", ".join(f"{name} {count}" for name, count in data["per_class"].items())
        + " images; split "
        + " / ".join(f"{split} {sum(counts.values())}" for split, counts in data["splits"].items())
    )
    cv_summary = Path(path) / "cv_summary.json"
    if len(classifiers) > 1 and cv_summary.is_file():
        cross_validation(json.loads(cv_summary.read_text(encoding="utf-8")))
        model_card_panel(summary)  # the first fold model's: the same recipe and data as the others
        return
    test = summary["test"]
    st.markdown(f"**Held-out test split** ({test['images']} images)")
    rows = [
        ("accuracy", test["accuracy"]),
        ("macro-F1", test["macro_f1"]),
        ("malignant recall", test["recall"].get("malignant", float("nan"))),
        ("calibration error (ECE)", test["ece"]),
    ]
    rows += lesion_dice_rows(test.get("segmentation"))
    st.table({"measure": [name for name, _ in rows], "value": [f"{value:.3f}" for _, value in rows]})
    model_card_panel(summary)


def model_card_panel(summary: dict) -> None:
    """The model card busi wrote when the model was trained (model_card.md of its run)."""
    if summary.get("model_card"):
        with st.expander("Model card: what it is, what it was trained on, intended use, known limits"):
            st.markdown(summary["model_card"])


def lesion_dice_rows(segmentation: dict | None) -> list[tuple[str, object]]:
    """Table rows of the per-class lesion Dice (a value, or a mean ± sd), for the classes that have one."""
    return [
        (f"lesion Dice, {name}", values["dice"])
        for name, values in (segmentation or {}).items()
        if values.get("dice") is not None
    ]


def cross_validation(summary: dict) -> None:
    """The fold models' test scores, each on its own held-out fold, as mean ± sd."""
    scores = summary["mean_sd"]
    st.markdown(f"**{summary['folds']}-fold cross-validation** (each fold tested on images it never saw)")
    rows = [("accuracy", scores["accuracy"]), ("macro-F1", scores["macro_f1"])]
    if "malignant" in scores["recall"]:
        rows.append(("malignant recall", scores["recall"]["malignant"]))
    rows.append(("calibration error (ECE)", scores["ece"]))
    rows += lesion_dice_rows(scores.get("segmentation"))
    st.table(
        {"measure": [name for name, _ in rows], "mean ± sd": [f"{v['mean']:.3f} ± {v['sd']:.3f}" for _, v in rows]}
    )


def malignant_threshold(model: BusiClassifier | FoldEnsemble, path: str) -> float | None:
    """The operating point the labels follow, said in the sidebar: busi-app --malignant_threshold
    ($BUSI_MALIGNANT_THRESHOLD: a number, or `stored`), or the one kept with the model when the box is
    ticked; None: the most probable class."""
    given = os.environ.get("BUSI_MALIGNANT_THRESHOLD")
    if given and given != "stored":
        st.caption(
            f"Labels: malignant when p_malignant ≥ {float(given):.3f} (given with busi-app --malignant_threshold)"
        )
        return float(given)
    stored = stored_operating_point(Path(path), model.members[0].summary)
    if stored is None or "malignant" not in model.class_names:
        return None
    threshold, why = stored
    if st.checkbox(f"Label malignant from p_malignant ≥ {threshold:.3f}", value=given == "stored", help=why):
        st.caption(f"Labels follow the operating point {why}.")
        return threshold
    return None


def prediction_set(model: BusiClassifier | FoldEnsemble, path: str) -> list[float] | None:
    """The conformal thresholds kept with the model (said in the sidebar), or None."""
    stored = stored_thresholds(Path(path), model.members[0].summary, model.class_names)
    if stored is None:
        return None
    thresholds, why = stored
    st.caption(
        f"Prediction sets: every class the scan may be ({why}; the coverage holds for scans like those, "
        "see docs/trust.md); more than one class, none, or one that is not the label means refer."
    )
    return thresholds


def show(
    result: Result,
    overlay: bytes | None,
    class_names: tuple[str, ...],
    threshold: float | None = None,
    sets: list[float] | None = None,
) -> None:
    """One upload on the page."""
    st.subheader(result.name)
    if result.error:
        st.error(result.error)
        return
    probabilities = result.probabilities
    best = decided_class(probabilities, class_names, threshold)
    picture, numbers = st.columns([3, 1])
    picture.image(overlay, width="stretch")
    numbers.markdown(f"**{class_names[best]}** · {percent(probabilities[best])}")
    for name, probability in zip(class_names, probabilities, strict=True):
        numbers.progress(float(probability), text=f"{name}: {percent(probability)}")
    numbers.caption("Calibrated probabilities; the bars run from 0 to 1.")
    if sets:
        members = prediction_sets(torch.tensor([probabilities]), sets)
        named = " or ".join(n for n, inside in zip(class_names, members[0].tolist(), strict=True) if inside)
        if not refers(members, torch.tensor([best]))[0]:
            numbers.success(f"Prediction set: **{named}** only")
        else:
            numbers.warning(f"Prediction set: **{named or 'none'}**: unsure, **refer**", icon="⚠️")
    if result.lesions is not None:
        numbers.markdown(
            "**Predicted lesion**  \n" + "  \n".join(result.lesions) if result.lesions else "No lesion predicted."
        )
        if result.lesions:
            numbers.caption(
                "Long × short axis, from the predicted outline (magenta): a model's estimate, not a measurement."
            )


def main() -> None:
    """The page. The sidebar picks the checkpoint (default_checkpoint, and says why that one) or a busi-cv folder (its fold models averaged) and says what it is, what it
    was trained on and how it scored. Each upload: the scan at its true aspect ratio beside the same scan under
    the heat-map of the predicted class (the predicted lesion outlined in magenta, with a decoder) and the
    calibrated probabilities on a fixed 0–1 scale; results are cached by file content."""
    st.set_page_config(page_title="busi: breast ultrasound classifier", layout="wide")
    st.title("Breast ultrasound: benign, malignant or normal")
    st.warning(DISCLAIMER, icon="⚠️")
    default, why = default_checkpoint()
    with st.sidebar:
        path = st.text_input(
            "Checkpoint",
            value=default,
            help="RUN/checkpoints/best.ckpt of a training run, or a busi-cv folder (its fold models averaged)",
        )
        if path and path == default:
            st.caption(f"Opened {why}. Another: type its path here, or start with busi-app --ckpt PATH.")
    if not path:
        st.info("Enter the path of a checkpoint (RUN/checkpoints/best.ckpt from `busi-train`) in the sidebar.")
        return
    modified = Path(path).stat().st_mtime if Path(path).is_file() else 0.0
    try:
        model = cached_model(path, modified)
    except WeightsError as error:
        st.error(str(error))
        return
    with st.sidebar:
        model_panel(model, path)
        threshold = malignant_threshold(model, path)
        sets = prediction_set(model, path)
        opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05)
    uploads = st.file_uploader(
        f"Ultrasound images ({', '.join(IMAGE_TYPES)}; up to {MAX_UPLOAD_MB} MB each)",
        type=IMAGE_TYPES,
        accept_multiple_files=True,
    )
    if not uploads:
        return
    names = model.class_names
    results = [Result(**analyse(path, modified, upload.name, upload.getvalue())) for upload in uploads]
    st.subheader("All uploads")
    table = list(csv.DictReader(io.StringIO(predictions_csv(results, names, threshold, sets).decode("utf-8"))))
    st.dataframe(table, hide_index=True)
    downloads = st.columns(2)
    downloads[0].download_button(
        "Download the table (predict.py's CSV)",
        predictions_csv(results, names, threshold, sets),
        "predictions.csv",
        "text/csv",
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for upload, result in zip(uploads, results, strict=True):
            overlay = None if result.error else overlay_png(path, modified, upload.name, upload.getvalue(), opacity)
            show(result, overlay, names, threshold, sets)
            if overlay is not None:
                bundle.writestr(f"{Path(upload.name).stem}_gradcam.png", overlay)
    downloads[1].download_button("Download the overlays (zip)", archive.getvalue(), "overlays.zip", "application/zip")


if __name__ == "__main__":
    main()
