import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from busi.commands.export import main as export_main
from busi.io.images import as_three_channels, load_image, resize_to_tensor
from busi.model.classifier import load_classifier

from fake_busi import IMAGE_SIZE


def pixels_and_reference(ckpt, folder):
    """Real image files, preprocessed as the export's JSON says, and the PyTorch probabilities."""
    classifier = load_classifier(ckpt)
    paths = sorted(p for p in folder.glob("*.png") if "_mask" not in p.name)[:6]
    pixels = torch.stack([as_three_channels(load_image(p, IMAGE_SIZE)) for p in paths])
    with torch.no_grad():
        expected = classifier.infer(pixels).probabilities  # with its temperature
    return pixels.float(), expected


def test_onnx_export_gives_the_pytorch_probabilities(trained_run, busi_root, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    _, run_dir = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    output = tmp_path / "busi.onnx"
    assert export_main(["--ckpt", str(ckpt), "--format", "onnx", "--output", str(output)]) == 0
    spec = json.loads((tmp_path / "busi.onnx.json").read_text())
    assert spec["input"]["shape"] == ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
    assert spec["class_names"] == ["benign", "malignant", "normal"]
    pixels, expected = pixels_and_reference(ckpt, busi_root / "malignant")
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for batch in (pixels, pixels[:1]):  # any batch size
        (probabilities,) = session.run(["probabilities"], {"pixels": batch.numpy()})
        assert np.abs(probabilities - expected[: len(batch)].numpy()).max() < 1e-4


@pytest.mark.parametrize("model_format", ["torchscript", "exported-program"])
def test_pytorch_exports_give_the_same_probabilities(trained_run, busi_root, tmp_path, model_format):
    _, run_dir = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    output = tmp_path / "busi.model"
    assert export_main(["--ckpt", str(ckpt), "--format", model_format, "--output", str(output)]) == 0
    pixels, expected = pixels_and_reference(ckpt, busi_root / "benign")
    if model_format == "torchscript":
        with pytest.warns(FutureWarning):  # torch.jit is deprecated
            model = torch.jit.load(str(output))
    else:
        model = torch.export.load(output).module()
    with torch.no_grad():
        assert (model(pixels) - expected).abs().max() < 1e-5


def test_export_of_a_missing_checkpoint_exits_with_one_line(tmp_path, capsys):
    assert export_main(["--ckpt", str(tmp_path / "none.ckpt")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_the_export_names_the_exact_resize_and_following_it_gives_busis_pixels(trained_run, busi_root, tmp_path):
    _, run_dir = trained_run
    output = tmp_path / "busi.onnx"
    assert export_main(["--ckpt", str(run_dir / "checkpoints" / "best.ckpt"), "--output", str(output)]) == 0
    resize = json.loads((tmp_path / "busi.onnx.json").read_text())["input"]["resize"]
    assert (
        "antialias" in resize["filter"]
        and "Resampling.BILINEAR" in resize["filter"]
        and "INTER_LINEAR" in resize["not"]
    )
    image = Image.open(sorted((busi_root / "benign").glob("* (?).png"))[0]).convert("RGB")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    as_the_json_says = F.interpolate(
        pixels, size=(IMAGE_SIZE,) * 2, mode="bilinear", antialias=True, align_corners=False
    )
    plain = F.interpolate(pixels, size=(IMAGE_SIZE,) * 2, mode="bilinear", antialias=False, align_corners=False)
    busi = resize_to_tensor(image, IMAGE_SIZE).float()[None]
    assert (as_the_json_says - busi).abs().mean() < 0.5 < (plain - busi).abs().mean()
