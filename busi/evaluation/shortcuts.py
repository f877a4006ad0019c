"""Does the model read the lesion or the marks drawn on the scan? Its scores on overlaid and on clean
images apart (busi.io.overlays flags them): calipers are placed on lesions, so a model that learned
them does better on the overlaid scans and worse on a clinic's clean ones. And a probe that takes the
marks away or draws them on, and counts the answers that change."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score, multiclass_recall

from busi.io.images import as_three_channels, resize_to_tensor, without_overlays
from busi.io.overlays import Overlay, find_overlays, inpaint
from busi.model.answering import answer
from busi.model.inference import Outputs

MALIGNANT = "malignant"


def scores(probabilities: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...]) -> dict:
    classes = len(class_names)
    if not len(labels):
        return {"images": 0}
    predicted = probabilities.argmax(dim=1)
    result = {
        "images": len(labels),
        "per_class": {n: int((labels == k).sum()) for k, n in enumerate(class_names)},
        "accuracy": float(multiclass_accuracy(predicted, labels, classes, average="micro")),
        "macro_f1": float(multiclass_f1_score(predicted, labels, classes, average="macro")),
    }
    if MALIGNANT in class_names and bool((labels == class_names.index(MALIGNANT)).any()):
        recall = multiclass_recall(predicted, labels, classes, average=None)
        result["malignant_recall"] = float(recall[class_names.index(MALIGNANT)])
    return result


def by_overlay(
    probabilities: torch.Tensor, labels: torch.Tensor, overlaid: list[bool], class_names: tuple[str, ...]
) -> dict:
    """Accuracy, macro-F1 and malignant recall on the overlaid and on the clean images."""
    flags = torch.tensor(overlaid, dtype=torch.bool)
    return {
        "overlaid": scores(probabilities[flags], labels[flags], class_names),
        "clean": scores(probabilities[~flags], labels[~flags], class_names),
    }


def format_by_overlay(breakdown: dict, where: str) -> str:
    lines = [f"Drawn marks ({where}; busi.io.overlays): scores on overlaid and on clean images"]
    for kind in ("overlaid", "clean"):
        part = breakdown[kind]
        if not part["images"]:
            lines.append(f"{kind:>10}: no images")
            continue
        recall = f", malignant recall {part['malignant_recall']:.4f}" if "malignant_recall" in part else ""
        counts = " ".join(f"{n} {c}" for n, c in part["per_class"].items())
        lines.append(
            f"{kind:>10}: {part['images']} images ({counts}): accuracy {part['accuracy']:.4f}, "
            f"macro-F1 {part['macro_f1']:.4f}{recall}"
        )
    return "\n".join(lines)


# -- the probe: take the marks away, or draw them where there were none, and count what changes ----------


def model_pixels(model, image: Image.Image) -> torch.Tensor:
    """uint8 (3, S, S) as every answering path feeds `model` (its overlays setting applied)."""
    return as_three_channels(resize_to_tensor(without_overlays(image, model.overlays), model.image_size))


def answers(model, images: list[Image.Image], explain: bool = False, batch_size: int = 16) -> Outputs:
    batches = [
        {"pixels": torch.stack([model_pixels(model, image) for image in images[k : k + batch_size]])}
        for k in range(0, len(images), batch_size)
    ]
    return answer(model, DataLoader(batches, batch_size=None), explain="predicted" if explain else False)


def pasted(clean: Image.Image, donor: Image.Image, found: Overlay) -> Image.Image:
    """`clean` with the marks of `donor` (another scan's calipers, lines and text: `found`, what
    busi.io.overlays finds on it) drawn on it at the same place relative to the image's size."""
    mask = np.asarray(Image.fromarray(found.mask).resize(clean.size, Image.Resampling.NEAREST))
    marks = np.asarray(donor.convert("L").resize(clean.size, Image.Resampling.BILINEAR))
    pixels = np.array(clean)
    pixels[mask] = marks[mask][:, None] if pixels.ndim == 3 else marks[mask]
    return Image.fromarray(pixels, clean.mode)


def changes(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, class_names) -> dict:
    """How many answers (argmax of the calibrated probabilities) changed, from which class to which, and
    the accuracy before and after."""
    first, then = before.argmax(dim=1), after.argmax(dim=1)
    changed = first != then
    moves = Counter(f"{class_names[a]}→{class_names[b]}" for a, b in zip(first[changed], then[changed], strict=True))
    return {
        "images": len(labels),
        "changed": int(changed.sum()),
        "share_changed": float(changed.double().mean()) if len(labels) else float("nan"),
        "moves": dict(sorted(moves.items())),
        "toward": dict(sorted(Counter(class_names[b] for b in then[changed]).items())),
        "accuracy_before": float((first == labels).double().mean()) if len(labels) else float("nan"),
        "accuracy_after": float((then == labels).double().mean()) if len(labels) else float("nan"),
    }


def cam_on_marks(cams: torch.Tensor, marks: list[Overlay]) -> dict:
    """The share of each Grad-CAM's energy on the marks of its image (busi.io.overlays' mask at the
    model's size), beside the marks' share of the image (what a uniform heat-map would put there)."""
    energy, area = [], []
    for cam, found in zip(cams, marks, strict=True):
        side = cam.shape[-1]
        mask = Image.fromarray(found.mask).resize((side, side), Image.Resampling.BILINEAR)
        mask = torch.from_numpy(np.asarray(mask) > 0)  # any part of a mark in the cell
        energy.append(float(cam[mask].sum() / cam.sum().clamp_min(1e-12)))
        area.append(float(mask.double().mean()))
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    return {"images": len(energy), "energy_on_marks": mean(energy), "area_of_marks": mean(area)}


def probe(model, images: list[Image.Image], labels: torch.Tensor, overlaid: list[bool]) -> dict:
    """(a) the overlaid images with their marks inpainted, (b) the clean images with the marks of an
    overlaid one pasted on (the k-th clean image gets the (k mod n)-th overlaid image's), and the Grad-CAM
    energy on the marks of the overlaid images. A model that reads the lesion changes few answers."""
    names = model.class_names
    marked = [i for i, drawn in enumerate(overlaid) if drawn]
    clean = [i for i, drawn in enumerate(overlaid) if not drawn]
    result: dict = {"overlays": model.overlays}
    if marked:
        originals = [images[i] for i in marked]
        found = [find_overlays(image) for image in originals]  # once each: inpainting, heat-maps, pasting
        before = answers(model, originals, explain=True)
        after = answers(model, [inpaint(image, marks) for image, marks in zip(originals, found, strict=True)])
        result["inpainted"] = changes(before.probabilities, after.probabilities, labels[marked], names)
        result["cam"] = cam_on_marks(before.cams, found)
    if marked and clean:
        donors = [(originals[k % len(marked)], found[k % len(marked)]) for k in range(len(clean))]
        drawn = [pasted(images[c], *donor) for c, donor in zip(clean, donors, strict=True)]
        before = answers(model, [images[c] for c in clean])
        after = answers(model, drawn)
        result["pasted"] = changes(before.probabilities, after.probabilities, labels[clean], names)
    return result


def format_probe(result: dict, where: str) -> str:
    lines = [f"Shortcut probe ({where}; model trained with overlays {result['overlays']})"]
    for key, what in (
        ("inpainted", "marks inpainted on the overlaid images"),
        ("pasted", "marks pasted on the clean images"),
    ):
        if key not in result:
            continue
        part = result[key]
        moves = ", ".join(f"{move} {n}" for move, n in part["moves"].items()) or "none"
        lines.append(
            f"  {what}: {part['changed']} of {part['images']} answers changed ({part['share_changed']:.1%}; {moves}); "
            f"accuracy {part['accuracy_before']:.4f} → {part['accuracy_after']:.4f}"
        )
    if "cam" in result:
        cam = result["cam"]
        lines.append(
            f"  Grad-CAM energy on the marks of the overlaid images: {cam['energy_on_marks']:.1%} "
            f"(the marks cover {cam['area_of_marks']:.1%} of the image: what a uniform heat-map would put there)"
        )
    return "\n".join(lines)
