"""The lesion decoder: its shape, its loss, the default model left as it was, and a real run that
segments: Dice in the report, masks from predict.py, a `lesion` output in the ONNX export."""

import csv
import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

import busi.commands.app
from busi.callbacks.prediction_writer import MEASUREMENT_COLUMNS, csv_columns
from busi.commands.app import Result, overlay_figure
from busi.commands.export import main as export_main
from busi.commands.predict import main as predict_main
from busi.evaluation.measurements import lesions
from busi.evaluation.plots import OUTLINE_COLOUR, overlay
from busi.io.images import MASK_UNKNOWN, as_three_channels, load_image, resize_map
from busi.model.classifier import BusiClassifier, load_classifier
from busi.model.ensemble import FoldEnsemble
from busi.model.losses import segmentation_loss
from busi.model.metrics import LESION_THRESHOLD
from busi.model.network import FEATURE_CHANNELS, parameter_counts
from busi.model.settings import Loss

from fake_busi import IMAGE_SIZE, train_args

DENSENET121_FEATURE_PARAMETERS = 6_953_856  # torchvision's densenet121().features


@pytest.mark.parametrize("size", [64, 128])
def test_the_decoder_predicts_a_lesion_map_at_a_quarter_of_the_input_side(size):
    classifier = BusiClassifier(weights=None, image_size=size, loss=Loss(segmentation_weight=0.5)).eval()
    with torch.no_grad():
        features, lesions = classifier.encode(torch.rand(2, 3, size, size))
    assert features.shape == (2, FEATURE_CHANNELS, size // 32, size // 32)
    assert lesions.shape == (2, 1, size // 4, size // 4)
    outputs = classifier.infer(torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8))
    assert outputs.lesions.shape == (2, size, size) and 0 <= outputs.lesions.min() <= outputs.lesions.max() <= 1


def test_without_segmentation_the_model_is_the_original():
    classifier = BusiClassifier(weights=None, image_size=256)
    assert not classifier.model.segments and not any("decoder" in key for key in classifier.state_dict())
    dense = [FEATURE_CHANNELS * 8 * 8, 1024, 1024, 512, 128, 3]  # Flatten(8·8·1024) → 1024-1024-512-128-3
    head = sum(inputs * outputs + outputs for inputs, outputs in pairwise(dense))
    assert parameter_counts(classifier.model) == (head, DENSENET121_FEATURE_PARAMETERS)
    segmenting = BusiClassifier(weights=None, image_size=256, loss=Loss(segmentation_weight=1.0))
    extra = set(segmenting.state_dict()) - set(classifier.state_dict())
    assert extra and all(key.startswith("model.decoder.") for key in extra)
    assert set(classifier.state_dict()) <= set(segmenting.state_dict())


def test_the_segmentation_loss_skips_unknown_masks_and_learns_empty_ones():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8)
    lesion = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    lesion[..., 8:24, 8:24] = 1
    empty = torch.zeros_like(lesion)
    unknown = torch.full_like(lesion, MASK_UNKNOWN)
    known_only = segmentation_loss(logits[:2], torch.cat([lesion, empty]))
    assert segmentation_loss(logits, torch.cat([lesion, empty, unknown])) == pytest.approx(float(known_only))
    changed = logits.clone()
    changed[2] = 50.0  # whatever is predicted on the image without a mask
    assert segmentation_loss(changed, torch.cat([lesion, empty, unknown])) == pytest.approx(float(known_only))
    silent, loud = torch.full((1, 1, 8, 8), -8.0), torch.full((1, 1, 8, 8), 8.0)
    assert segmentation_loss(silent, empty) < 0.3 < 1 < segmentation_loss(loud, empty)  # normal: no lesion
    only_unknown = segmentation_loss(logits.requires_grad_(), unknown.expand(3, -1, -1, -1))
    assert only_unknown == 0 and only_unknown.requires_grad


def test_a_run_with_the_decoder_reports_dice_and_its_checkpoint_loads_safely(segmenting_run):
    run_dir = segmenting_run
    report = json.loads((run_dir / "report.json").read_text())
    scores = report["splits"]["test"]["segmentation"]
    audit = json.loads((run_dir / "audit.json").read_text())
    split = list(csv.DictReader((run_dir / "split.csv").open()))
    tested = {name: sum(row["split"] == "test" and row["label"] == name for row in split) for name in scores}
    assert scores["normal"]["images"] == tested["normal"] and 0 <= scores["normal"]["predicted_lesion_share"] <= 1
    for name in ("benign", "malignant"):
        assert 0 < scores[name]["images"] <= tested[name] and 0 <= scores[name]["iou"] <= scores[name]["dice"] <= 1
    assert audit["per_class"]["benign"]["target_masks"] < audit["per_class"]["benign"]["images"]  # 2 without
    assert "Lesion segmentation, test split" in (run_dir / "report.txt").read_text()
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert any(key.startswith("model.decoder.") for key in checkpoint["state_dict"])
    classifier = load_classifier(run_dir / "checkpoints" / "best.ckpt")
    assert classifier.model.segments and classifier.settings.loss.segmentation_weight == 1


def test_predict_writes_lesion_masks_at_the_original_size(segmenting_run, busi_root, tmp_path):
    ckpt = segmenting_run / "checkpoints" / "best.ckpt"
    images = sorted(p for p in (busi_root / "malignant").glob("*.png") if "_mask" not in p.name)[:3]
    output, masks, cams = tmp_path / "p.csv", tmp_path / "masks", tmp_path / "cams"
    args = ["--ckpt", str(ckpt), *map(str, images), "--output", str(output)]
    assert predict_main([*args, "--masks", str(masks), "--cam", str(cams)]) == 0
    rows = list(csv.DictReader(output.open()))
    assert list(rows[0]) == [*csv_columns(("benign", "malignant", "normal")), "mask", *MEASUREMENT_COLUMNS]
    for image, row in zip(images, rows, strict=True):
        written = Image.open(row["mask"])
        assert written.size == Image.open(image).size and set(np.unique(np.asarray(written))) <= {0, 255}
        assert (cams / f"{image.stem}.png").is_file()
        found = lesions(np.asarray(written) > 0)  # the CSV measures the mask it wrote: in pixels, a PNG has no spacing
        assert int(row["lesions"]) == len(found) and row["long_axis_mm"] == row["area_mm2"] == ""
        if found:
            assert int(row["area_px"]) == found[0].area_px
            assert float(row["long_axis_px"]) == pytest.approx(found[0].long_axis_px, abs=0.05)
            assert row["orientation"] == found[0].orientation
    assert predict_main(args) == 0  # without --masks the CSV is what it always was
    assert next(csv.DictReader(output.open())).keys() == set(csv_columns(("benign", "malignant", "normal")))


def test_a_dicom_scans_lesion_is_measured_in_millimetres_at_its_region_spacing(segmenting_run, busi_root, tmp_path):
    pytest.importorskip("pydicom")
    from fake_dicom import write_dicom

    scan = np.asarray(Image.open(busi_root / "malignant" / "malignant (1).png").convert("L"))
    dicom = write_dicom(tmp_path / "scan.dcm", scan, region=(0, 0, scan.shape[1] - 1, scan.shape[0] - 1))
    output, masks = tmp_path / "p.csv", tmp_path / "masks"
    ckpt = segmenting_run / "checkpoints" / "best.ckpt"
    assert predict_main(["--ckpt", str(ckpt), str(dicom), "--output", str(output), "--masks", str(masks)]) == 0
    (row,) = csv.DictReader(output.open())
    spacing = (float(row["pixel_spacing_x_mm"]), float(row["pixel_spacing_y_mm"]))
    assert spacing == (0.125, 0.15)  # the region's PhysicalDeltaX/Y, 0.0125 and 0.015 cm
    found = lesions(np.asarray(Image.open(row["mask"])) > 0, spacing)
    assert int(row["lesions"]) == len(found) >= 1
    assert float(row["long_axis_mm"]) == pytest.approx(found[0].long_axis_mm, abs=0.005)
    assert float(row["area_mm2"]) == pytest.approx(found[0].area_px * 0.125 * 0.15, abs=0.005)
    assert float(row["depth_to_width"]) == pytest.approx(found[0].depth_mm / found[0].width_mm, abs=5e-4)


def test_masks_from_a_model_without_a_decoder_is_one_line(trained_run, busi_root, tmp_path, capsys):
    _, run_dir = trained_run
    image = next((busi_root / "benign").glob("* (3).png"))
    args = ["--ckpt", str(run_dir / "checkpoints/best.ckpt"), str(image), "--masks", str(tmp_path / "m")]
    assert predict_main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "no lesion decoder" in error and "--model.loss.segmentation_weight" in error


def test_the_fold_ensemble_lesion_map_is_the_mean_of_the_models(busi_root):
    torch.manual_seed(0)
    models = [
        BusiClassifier(weights=None, image_size=IMAGE_SIZE, loss=Loss(segmentation_weight=1.0)).eval() for _ in range(2)
    ]
    pixels = torch.stack(
        [as_three_channels(load_image(p, IMAGE_SIZE)) for p in sorted((busi_root / "benign").glob("* (?).png"))[:3]]
    )
    mean = FoldEnsemble(models).infer(pixels)
    expected = (models[0].infer(pixels).lesions + models[1].infer(pixels).lesions) / 2
    assert torch.allclose(mean.lesions, expected, atol=1e-6)


def test_onnx_export_has_a_lesion_output(segmenting_run, busi_root, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    ckpt = segmenting_run / "checkpoints" / "best.ckpt"
    output = tmp_path / "seg.onnx"
    assert export_main(["--ckpt", str(ckpt), "--output", str(output)]) == 0
    assert json.loads((tmp_path / "seg.onnx.json").read_text())["lesion_output"]["name"] == "lesion"
    classifier = load_classifier(ckpt)
    paths = sorted(p for p in (busi_root / "benign").glob("*.png") if "_mask" not in p.name)[:4]
    pixels = torch.stack([as_three_channels(load_image(p, IMAGE_SIZE)) for p in paths])
    expected = classifier.infer(pixels)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    probabilities, lesion = session.run(["probabilities", "lesion"], {"pixels": pixels.float().numpy()})
    assert np.abs(probabilities - expected.probabilities.numpy()).max() < 1e-4
    assert np.abs(lesion - expected.lesions.numpy()).max() < 1e-4


def test_overlays_outline_the_predicted_lesion():
    lesion = np.zeros((64, 64), dtype=bool)
    lesion[20:40, 10:30] = True
    picture = np.asarray(overlay(torch.zeros(1, 64, 64, dtype=torch.uint8), torch.zeros(64, 64), "x", lesion=lesion))
    magenta = np.all(picture[:64] == OUTLINE_COLOUR, axis=2)
    ring = lesion & ~np.pad(lesion, 1)[2:, 1:-1] | lesion & ~np.pad(lesion, 1)[:-2, 1:-1]
    assert magenta[:, :64].sum() == magenta[:, 64:].sum() == 2 * 20 + 2 * 18  # the square's border, on both
    assert magenta[:, :64][ring].all() and not magenta[:, :64][25:35, 15:25].any()
    scan = np.zeros((90, 120, 3), dtype=np.uint8)
    figure = overlay_figure(Result("x", [0.2, 0.7, 0.1], scan=scan, cam=np.zeros((64, 64)), lesion=lesion * 0.9), 0.5)
    assert all(axes.collections for axes in figure.axes[:2])  # a contour on the scan and on the heat-map
    figure = overlay_figure(Result("x", [0.2, 0.7, 0.1], scan=scan, cam=np.zeros((64, 64))), 0.5)
    assert not any(axes.collections for axes in figure.axes[:2])


def test_the_app_names_the_decoder_and_shows_the_lesion_dice(segmenting_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUSI_CHECKPOINT", str(segmenting_run / "checkpoints" / "best.ckpt"))
    test = AppTest.from_file(str(Path(busi.commands.app.__file__)), default_timeout=120)
    test.run()
    assert not test.exception
    panel = " ".join(m.value for m in test.sidebar.markdown)
    assert "lesion decoder (λ 1)" in panel
    measures = test.sidebar.table[0].value["measure"].tolist()
    assert "lesion Dice, benign" in measures and "lesion Dice, malignant" in measures


def test_the_app_measures_an_uploaded_scans_lesion_in_millimetres(segmenting_run, busi_root, tmp_path):
    pytest.importorskip("pydicom")
    from busi.commands.app import classify_upload

    from fake_dicom import write_dicom

    scan = np.asarray(Image.open(busi_root / "malignant" / "malignant (1).png").convert("L"))
    dicom = write_dicom(tmp_path / "scan.dcm", scan, region=(0, 0, scan.shape[1] - 1, scan.shape[0] - 1))
    model = load_classifier(segmenting_run / "checkpoints" / "best.ckpt")
    result = classify_upload(model, "scan.dcm", dicom.read_bytes())
    found = lesions(resize_map(result.lesion, (scan.shape[1], scan.shape[0])) >= LESION_THRESHOLD, (0.125, 0.15))
    assert result.lesions == [lesion.summary() for lesion in found] and " mm, area " in result.lesions[0]
    png = classify_upload(model, "scan.png", (busi_root / "malignant" / "malignant (1).png").read_bytes())
    assert "px (no pixel spacing)" in png.lesions[0]


def test_the_lesion_head_reads_the_decoder_and_exports_to_onnx(tmp_path):
    """`--model.head lesion`: the head's inputs are the final features and dense block 3, each averaged
    over the image and over the predicted lesion; a different lesion map changes the answer; the ONNX
    export answers as PyTorch does."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from busi.commands.export import export

    torch.manual_seed(0)
    classifier = BusiClassifier(
        weights=None, image_size=IMAGE_SIZE, head="lesion", loss=Loss(segmentation_weight=0.5), tta=True
    )
    classifier.eval()
    pixels = torch.randint(0, 256, (3, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    with torch.no_grad():
        features, lesions = classifier.encode(classifier.prepare_inputs(pixels))
    side = IMAGE_SIZE // 32
    assert features.shape == (3, 2 * FEATURE_CHANNELS + 1, side, side) and lesions.shape[1] == 1
    assert classifier.model.head[1].in_features == 4 * FEATURE_CHANNELS
    outputs = classifier.infer(pixels, explain=True)
    assert outputs.logits.shape == (3, 3) and outputs.cams.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        classifier.model.decoder.out.bias += 3.0  # the decoder sees more lesion: the head answers otherwise
    assert not torch.allclose(classifier.infer(pixels).logits, outputs.logits)

    output = export(classifier, "onnx", tmp_path / "lesion.onnx")
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    probabilities, lesion = session.run(["probabilities", "lesion"], {"pixels": pixels.float().numpy()})
    expected = classifier.infer(pixels)
    assert np.abs(probabilities - expected.probabilities.numpy()).max() < 1e-4
    assert np.abs(lesion - expected.lesions.numpy()).max() < 1e-4


def test_the_lesion_head_without_the_decoder_is_one_line(busi_root, tmp_path, capsys):
    from busi.commands.train import main

    assert main(train_args(busi_root, tmp_path, "--model.head=lesion", epochs=1)) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--model.head lesion" in error[0] and "--model.loss.segmentation_weight" in error[0]
