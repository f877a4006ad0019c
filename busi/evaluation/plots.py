"""Pictures for people, from matplotlib `Figure`s (no pyplot state): the report's confusion matrix,
reliability diagram and training curves, and Grad-CAM overlays."""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter
from PIL import Image, ImageDraw

from busi.io.images import as_three_channels

CAPTION_HEIGHT = 32  # two lines of Pillow's default font
HEAT_MAP = matplotlib.colormaps["jet"]  # Grad-CAM's customary colour map: blue (0) to red (1)


def confusion_matrix_figure(matrix: list[list[int]], class_names: tuple[str, ...], title: str) -> Figure:
    """Counts and row shares (recall on the diagonal); colour by row share."""
    counts = np.asarray(matrix, dtype=np.float64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(4.8, 4.2), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if share[row, column] > 0.6 else "black"
        axes.text(column, row, f"{int(count)}\n{share[row, column]:.0%}", ha="center", va="center", color=colour)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names)
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="share of the true class", shrink=0.8)
    return figure


def reliability_figure(rows: list[dict], ece: float, title: str) -> Figure:
    """Accuracy against mean confidence per bin, beside the diagonal of perfect calibration; bar
    labels count the images in each bin."""
    figure = Figure(figsize=(4.8, 4.2), layout="constrained")
    axes = figure.add_subplot()
    lefts = [row["bin"][0] for row in rows]
    width = rows[0]["bin"][1] - rows[0]["bin"][0]
    accuracy = [row["accuracy"] or 0.0 for row in rows]
    axes.bar(lefts, accuracy, width=width, align="edge", edgecolor="white", label="accuracy in the bin")
    for left, row in zip(lefts, rows, strict=True):
        if row["images"]:
            axes.text(
                left + width / 2, 0.015, f"n={row['images']}", ha="center", va="bottom", fontsize=7, color="white"
            )
    filled = [row for row in rows if row["images"]]
    axes.plot(
        [row["confidence"] for row in filled],
        [row["accuracy"] for row in filled],
        "o",
        color="C1",
        label="bin: mean confidence, accuracy",
    )
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axes.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence of the predicted class", ylabel="accuracy")
    axes.set_title(f"{title}: ECE {ece:.3f} (n: images per bin)")
    axes.legend(loc="upper left", fontsize=8)
    return figure


def risk_coverage_figure(points: list[dict], title: str) -> Figure:
    """Accuracy on the scans answered when only the most confident share of them is answered
    (busi.evaluation.conformal.risk_coverage): the price in referrals of a higher accuracy."""
    figure = Figure(figsize=(4.8, 4.2), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([p["coverage"] for p in points], [p["accuracy"] for p in points], color="C0")
    for share in (0.5, 0.8):
        point = min(points, key=lambda p: abs(p["coverage"] - share))
        axes.plot(point["coverage"], point["accuracy"], "o", color="C1")
        axes.annotate(
            f"{point['accuracy']:.2f} at {point['coverage']:.0%}\n(confidence ≥ {point['confidence']:.2f})",
            (point["coverage"], point["accuracy"]), textcoords="offset points", xytext=(-10, -30), fontsize=8,
        )  # fmt: skip
    axes.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="share of scans answered (most confident first)", ylabel="accuracy")
    axes.set_title(f"{title}: risk–coverage ({len(points)} images)")
    axes.grid(alpha=0.3)
    return figure


CURVES = (("loss", "loss"), ("acc", "accuracy"), ("macro_f1", "macro-F1"))


def curves_figure(history: list[dict], title: str, best_epoch: int | None = None) -> Figure:
    """Training and validation loss, accuracy and macro-F1 per epoch (history's epochs, from 1)."""
    figure = Figure(figsize=(11, 3.4), layout="constrained")
    for column, (key, label) in enumerate(CURVES):
        axes = figure.add_subplot(1, len(CURVES), column + 1)
        for split in ("train", "val"):
            points = [(row["epoch"], row[f"{split}/{key}"]) for row in history if f"{split}/{key}" in row]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", markersize=3, label=split)
        if best_epoch is not None:
            axes.axvline(best_epoch, color="grey", linestyle=":", label="best epoch")
        axes.set(xlabel="epoch", ylabel=label, title=label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if key == "loss":
            loss_scale(axes)
        else:
            axes.set_ylim(0, 1)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def fold_curves_figure(histories: dict[int, list[dict]]) -> Figure:
    """Each cross-validation fold's validation loss and macro-F1 per epoch."""
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    for column, (key, label) in enumerate((("val/loss", "validation loss"), ("val/macro_f1", "validation macro-F1"))):
        axes = figure.add_subplot(1, 2, column + 1)
        for fold, history in histories.items():
            points = [(row["epoch"], row[key]) for row in history if key in row]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", markersize=2, label=f"fold {fold}")
        axes.set(xlabel="epoch", ylabel=label, title=label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if key == "val/loss":
            loss_scale(axes)
        axes.legend(fontsize=7)
    return figure


def loss_scale(axes) -> None:
    """A logarithmic loss axis: one early spike (a from-scratch network's first epochs reach 10–40) would
    otherwise flatten every later epoch onto the floor of a linear one."""
    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axes.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.grid(alpha=0.3, which="both")


OUTLINE_COLOUR = (255, 0, 255)  # the predicted lesion's outline: magenta, in neither grey scans nor `jet`


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of a bool mask that touch its outside (8-neighbourhood), thickened `width` − 1 times."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            inner &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    edge = mask & ~inner
    for _ in range(width - 1):
        padded = np.pad(edge, 1)
        edge = padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return edge


def overlay(
    pixels: torch.Tensor, cam: torch.Tensor, caption: str, alpha: float = 0.45, lesion: np.ndarray | None = None
) -> Image.Image:
    """The model's view of the image beside it with the heat-map over it, and a caption below; a
    predicted `lesion` (bool mask at the image's size) is outlined on both."""
    image = as_three_channels(pixels.cpu()).permute(1, 2, 0).numpy().astype(np.float32)
    heat = HEAT_MAP(cam.detach().cpu().numpy())[..., :3].astype(np.float32) * 255
    blended = ((1 - alpha) * image + alpha * heat).astype(np.uint8)
    image = image.astype(np.uint8)
    if lesion is not None:
        edge = outline(lesion, width=max(1, image.shape[0] // 128))
        image[edge] = blended[edge] = OUTLINE_COLOUR
    side = image.shape[0]
    canvas = Image.new("RGB", (2 * side, side + CAPTION_HEIGHT), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    canvas.paste(Image.fromarray(blended), (side, 0))
    ImageDraw.Draw(canvas).multiline_text((6, side + 4), caption, fill="black", spacing=2)
    return canvas
