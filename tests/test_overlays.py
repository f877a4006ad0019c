"""Marks drawn on scans: found on BUSI-like images the tests draw them on (coloured crosses, white calipers
with a dotted line, a text line), not on clean ones; inpainting changes only the marks; the audit counts
them; `--data.overlays inpaint` makes training and busi-predict see the same inpainted pixels."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from busi.commands.predict import main as predict_main
from busi.commands.train import main as train_main
from busi.io.overlays import find_overlays, grown, inpaint

from fake_busi import train_args, ultrasound_like, write_busi_folder


def scan(seed: int = 0, label: int = 0) -> Image.Image:
    return Image.fromarray(ultrasound_like(np.random.default_rng(seed), label, 420, 520), "L")


def calipers(image: Image.Image, at: tuple[int, int] = (150, 140), length: int = 180) -> Image.Image:
    """Two white crosses joined by a dotted line, as scanners draw a measurement."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    (x, y), end = at, (at[0] + length, at[1] + 40)
    for cx, cy in ((x, y), end):  # BUSI's crosses: arms of ~10 px, 2 px wide
        draw.line([(cx - 10, cy), (cx + 10, cy)], fill=255, width=2)
        draw.line([(cx, cy - 10), (cx, cy + 10)], fill=255, width=2)
    for k in range(0, 100, 3):  # 2×2 dots
        px, py = x + (end[0] - x) * k / 100, y + (end[1] - y) * k / 100
        draw.rectangle([(px, py), (px + 1, py + 1)], fill=245)
    return image


def text(image: Image.Image) -> Image.Image:
    image = image.copy()
    ImageDraw.Draw(image).text((60, 330), "RT UOQ 3", fill=235, font=ImageFont.load_default(size=22))
    return image


def coloured_crosses(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    for cx, cy in ((200, 200), (320, 240)):
        draw.line([(cx - 10, cy), (cx + 10, cy)], fill=(255, 220, 0), width=3)
        draw.line([(cx, cy - 10), (cx, cy + 10)], fill=(255, 220, 0), width=3)
    return image


@pytest.mark.parametrize("draw, kind", [(calipers, "marks"), (text, "marks"), (coloured_crosses, "colour")])
def test_drawn_marks_are_found_and_clean_scans_are_not_flagged(draw, kind):
    for seed in range(4):
        clean = scan(seed, label=seed % 3)
        assert not find_overlays(clean).overlaid, seed
        marked = draw(clean)
        found = find_overlays(marked)
        assert found.overlaid and kind in found.kinds
        # what was drawn and stands out (≥ 120 brighter, or coloured) is what inpainting replaces
        change = np.abs(np.asarray(marked.convert("RGB"), dtype=int) - np.asarray(clean.convert("RGB"), dtype=int))
        drawn = change.max(axis=-1) >= 120
        assert found.mask[drawn].mean() > 0.95


def test_inpainting_changes_the_marks_only_and_removes_them():
    clean = scan(1)
    marked = text(calipers(clean))
    found = find_overlays(marked)
    repaired = inpaint(marked, found)
    before, after = np.asarray(marked), np.asarray(repaired)
    assert np.array_equal(before[~found.mask], after[~found.mask])  # away from the marks: unchanged
    assert not find_overlays(repaired).overlaid
    # under the marks: close to the clean scan, not white
    drawn = np.asarray(marked) != np.asarray(clean)
    error = np.abs(after[drawn].astype(int) - np.asarray(clean)[drawn].astype(int)).mean()
    assert error < 40 and after[drawn].mean() < 200
    assert inpaint(clean) is clean  # a clean scan is left alone
    assert not grown(np.zeros((5, 5), dtype=bool), 2).any()


@pytest.fixture(scope="module")
def marked_root(tmp_path_factory):
    """A BUSI-like folder where some benign and malignant scans carry calipers."""
    root = write_busi_folder(tmp_path_factory.mktemp("marked") / "Dataset_BUSI_with_GT")
    marked = []
    for label, name in enumerate(("benign", "malignant")):
        for k in range(3):
            path = root / name / f"{name} ({100 + k}).png"
            calipers(scan(10 + 3 * label + k, label), at=(50, 60), length=150).save(path)  # beside the lesion
            marked.append(f"{name}/{path.name}")
    return root, marked


def test_the_audit_counts_and_lists_the_marked_scans_and_inpainting_reaches_busi_predict(marked_root, tmp_path):
    root, marked = marked_root
    runs = tmp_path / "runs"
    assert train_main(train_args(root, runs, "--data.overlays=inpaint", epochs=1)) == 0
    run = next(runs.glob("lightning_logs/version_*"))
    audit = json.loads((run / "audit.json").read_text())["overlays"]
    assert set(marked) <= set(audit["images"]) and audit["treated"] == "inpaint"
    assert audit["per_class"]["benign"] >= 3 and audit["per_class"]["malignant"] >= 3
    assert "drawn marks (calipers, lines, text, colour)" in (run / "audit.txt").read_text()
    # the report scores overlaid and clean test images apart
    report = json.loads((run / "report.json").read_text())
    tested = [r["path"] for r in csv.DictReader((run / "split.csv").open()) if r["split"] == "test"]
    breakdown = report["overlays"]
    assert breakdown["overlaid"]["images"] == sum(p in audit["images"] for p in tested)
    assert breakdown["overlaid"]["images"] + breakdown["clean"]["images"] == report["splits"]["test"]["samples"]
    assert "Drawn marks (test split" in (run / "report.txt").read_text()
    ckpt = run / "checkpoints" / "best.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["overlays"] == "inpaint"
    # busi-predict inpaints for this model: a marked scan and its inpainted copy get the same answer
    source = root / marked[0]
    repaired = tmp_path / "repaired.png"
    inpaint(Image.open(source).convert("L")).save(repaired)
    output = tmp_path / "p.csv"
    assert predict_main(["--ckpt", str(ckpt), str(source), str(repaired), "--output", str(output)]) == 0
    first, second = csv.DictReader(output.open())
    for column in ("p_benign", "p_malignant", "p_normal"):
        assert float(first[column]) == pytest.approx(float(second[column]), abs=1e-6)


def marked_scan(rng: np.random.Generator, marked: bool) -> Image.Image:
    """A small grey scan (any class's texture), with a bold cross and a word when `marked`."""
    pixels = ultrasound_like(rng, 2, 96, 128)
    image = Image.fromarray(np.clip(pixels, 0, 150).astype(np.uint8), "L")
    if marked:
        draw = ImageDraw.Draw(image)
        x, y = int(rng.integers(30, 90)), int(rng.integers(25, 60))
        draw.line([(x - 12, y), (x + 12, y)], fill=255, width=2)
        draw.line([(x, y - 12), (x, y + 12)], fill=255, width=2)
        draw.text((10, 75), "RT 2", fill=250, font=ImageFont.load_default(size=14))
    return image


@pytest.fixture(scope="module")
def mark_reader(tmp_path_factory):
    """A model trained where the class is the mark: malignant scans carry it, benign and normal do not."""
    root = tmp_path_factory.mktemp("shortcut") / "Dataset_BUSI_with_GT"
    rng = np.random.default_rng(5)
    for name in ("benign", "malignant", "normal"):
        (root / name).mkdir(parents=True)
        for k in range(24):
            marked_scan(rng, name == "malignant").save(root / name / f"{name} ({k + 1}).png")
    runs = tmp_path_factory.mktemp("shortcut_runs")
    assert train_main(train_args(root, runs, "--model.head=pooled", epochs=12)) == 0
    return root, next(runs.glob("lightning_logs/version_*")) / "checkpoints" / "best.ckpt"


def test_the_probe_sees_a_model_that_reads_the_mark(mark_reader, tmp_path):
    from busi.commands.evaluate import main as evaluate_main

    root, ckpt = mark_reader
    output = tmp_path / "evaluation"
    assert evaluate_main(["--ckpt", str(ckpt), "--data.root", str(root), "--output", str(output), "--shortcuts"]) == 0
    report = json.loads((output / "report.json").read_text())
    breakdown, probe = report["overlays"], report["shortcuts"]
    assert breakdown["overlaid"]["per_class"]["malignant"] == 24 and breakdown["overlaid"]["images"] == 24
    assert breakdown["overlaid"]["malignant_recall"] > 0.8  # it found the marks, and so the class
    inpainted, drawn = probe["inpainted"], probe["pasted"]
    assert inpainted["images"] == 24 and drawn["images"] == 48
    # the marks taken away: malignant answers go; drawn on: they come
    assert inpainted["share_changed"] >= 0.4 and set(inpainted["toward"]) <= {"benign", "normal"}
    assert drawn["share_changed"] >= 0.4 and set(drawn["toward"]) == {"malignant"}
    assert inpainted["accuracy_after"] < inpainted["accuracy_before"]
    assert 0 <= probe["cam"]["energy_on_marks"] <= 1 and 0 < probe["cam"]["area_of_marks"] < 0.2
    assert "Shortcut probe" in (output / "report.txt").read_text()
