"""Web app: `streamlit run busi/app.py` (after `pip install -e ".[app]"`).

Upload one or more ultrasound images and see, for each, the predicted class, the probabilities as a
bar chart, and the Grad-CAM heat-map of the predicted class. The sidebar picks the checkpoint (default:
$BUSI_CHECKPOINT, else the newest runs/**/checkpoints/best.ckpt). Bad uploads get a message; the app
keeps running.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from busi.images import UnreadableImageError, as_three_channels, decode_image, resize_to_tensor
from busi.inference import infer
from busi.model import BusiClassifier, WeightsError, load_classifier
from busi.plots import overlay

MAX_UPLOAD_MB = 50
IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]


def default_checkpoint() -> str:
    if os.environ.get("BUSI_CHECKPOINT"):
        return os.environ["BUSI_CHECKPOINT"]
    found = sorted(Path("runs").glob("**/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else ""


@st.cache_resource(max_entries=2)
def cached_classifier(path: str, modified: float) -> BusiClassifier:  # `modified`: reload a rewritten file
    return load_classifier(Path(path))


def classify_upload(classifier: BusiClassifier, name: str, data: bytes):
    """(probabilities, overlay picture) for one uploaded file, or UnreadableImageError saying why not."""
    if not data:
        raise UnreadableImageError(Path(name), "empty file (0 bytes)")
    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise UnreadableImageError(
            Path(name), f"file too large ({len(data) / 2**20:.0f} MB; at most {MAX_UPLOAD_MB} MB)"
        )
    pixels = resize_to_tensor(decode_image(Path(name), data), classifier.hparams.image_size)
    outputs = infer(classifier, as_three_channels(pixels)[None], explain=True)
    probabilities = outputs.probabilities[0].tolist()
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    caption = f"{classifier.class_names[best]} {probabilities[best]:.1%}"
    return probabilities, overlay(pixels, outputs.cams[0], caption)


def show(classifier: BusiClassifier, upload) -> None:
    st.subheader(upload.name)
    try:
        probabilities, picture = classify_upload(classifier, upload.name, upload.getvalue())
    except UnreadableImageError as error:
        st.error(str(error))
        return
    except Exception as error:
        st.error(f"{upload.name}: could not be classified ({type(error).__name__}: {error})")
        return
    names = classifier.class_names
    best = max(range(len(names)), key=probabilities.__getitem__)
    st.markdown(f"**{names[best]}** with probability {probabilities[best]:.1%}")
    chart, heat_map = st.columns(2)
    chart.bar_chart({"probability": dict(zip(names, probabilities, strict=True))}, horizontal=True)
    heat_map.image(picture, caption="model input (left) and Grad-CAM of the predicted class (right)")


def main() -> None:
    st.set_page_config(page_title="busi: breast ultrasound classifier", layout="wide")
    st.title("Breast ultrasound: benign, malignant or normal")
    st.caption("A research tool, not a medical device: every prediction needs a clinician's reading.")
    with st.sidebar:
        path = st.text_input(
            "Checkpoint", value=default_checkpoint(), help="RUN/checkpoints/best.ckpt of a training run"
        )
    if not path:
        st.info("Enter the path of a checkpoint (RUN/checkpoints/best.ckpt from `python train.py`) in the sidebar.")
        return
    try:
        classifier = cached_classifier(path, Path(path).stat().st_mtime if Path(path).is_file() else 0.0)
    except WeightsError as error:
        st.error(str(error))
        return
    st.sidebar.caption(f"classes: {', '.join(classifier.class_names)}; input {classifier.hparams.image_size} px")
    uploads = st.file_uploader("Ultrasound images", type=IMAGE_TYPES, accept_multiple_files=True)
    for upload in uploads or []:
        show(classifier, upload)


main()
