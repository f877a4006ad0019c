"""The original Keras project's files, written by Keras itself: its DenseNet121 weights load into the
backbone and its whole model imports as a busi checkpoint that answers as Keras does; other files get
one line."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 without TensorFlow
pytest.importorskip("keras")
pytest.importorskip("h5py")

from busi.commands.evaluate import main as evaluate_main
from busi.commands.export import main as export_main
from busi.commands.import_keras import main as import_main
from busi.commands.predict import main as predict_main
from busi.errors import WeightsError
from busi.io.images import as_three_channels, decode_file, is_image_file, is_mask
from busi.io.keras_files import KERAS_BATCH_NORM_EPS
from busi.model.classifier import BusiClassifier, load_classifier

from fake_busi import IMAGE_SIZE, train_args
from fake_keras import original_model, save_keras2_weights, save_model_h5

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras on numpy 2


@pytest.fixture(scope="module")
def keras_project(busi_root, tmp_path_factory):
    """The original model at 64 px saved by Keras (model.h5, a Keras-3 `.weights.h5` of the backbone)
    and the backbone in the Keras-2 ImageNet file's layout, with Keras's answers on real images."""
    folder = tmp_path_factory.mktemp("keras")
    model, base = original_model(IMAGE_SIZE, seed=3)
    images = sorted(p for p in (busi_root / "malignant").iterdir() if is_image_file(p) and not is_mask(p))[:4]
    pixels = torch.stack([as_three_channels(decode_file(path, IMAGE_SIZE).pixels) for path in images])
    inputs = pixels.permute(0, 2, 3, 1).numpy().astype("float32") / 255  # the original app: ÷255, NHWC
    base.save_weights(str(folder / "densenet121.weights.h5"))
    return {
        "model": save_model_h5(model, folder / "model.h5"),
        "keras2": save_keras2_weights(base, folder / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        "keras3": folder / "densenet121.weights.h5",
        "images": images,
        "pixels": pixels,
        "probabilities": model.predict(inputs, verbose=0),
        "features": base.predict(inputs, verbose=0),
    }


def features_of(classifier: BusiClassifier, pixels: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return classifier.model.extract(classifier.prepare_inputs(pixels)).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("file", ["keras2", "keras3", "model"])
def test_keras_weights_load_into_the_backbone_and_give_keras_features(keras_project, file):
    classifier = BusiClassifier(
        weights=str(keras_project[file]), image_size=IMAGE_SIZE, preprocessing="divide255"
    ).eval()
    assert classifier.hparams.batch_norm_eps == KERAS_BATCH_NORM_EPS
    expected = keras_project["features"]
    difference = np.abs(features_of(classifier, keras_project["pixels"]) - expected).max()
    assert difference <= 1e-4 * np.abs(expected).max(), difference
    # torch's own epsilon is visibly further from Keras on the channels with variance near 1e-5
    for layer in classifier.model.features.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.eps = 1e-5
    assert np.abs(features_of(classifier, keras_project["pixels"]) - expected).max() > 3 * difference


def test_the_imported_model_answers_as_keras_in_every_command(keras_project, busi_root, tmp_path, capsys):
    output = tmp_path / "imported"
    assert import_main([str(keras_project["model"]), "--output", str(output)]) == 0
    assert "Score it: busi-evaluate" in capsys.readouterr().out
    checkpoint = output / "best.ckpt"
    classifier = load_classifier(checkpoint)
    assert classifier.hparams.preprocessing == "divide255"
    assert classifier.hparams.image_size == IMAGE_SIZE
    assert classifier.model.features.norm0.eps == KERAS_BATCH_NORM_EPS
    probabilities = classifier.infer(keras_project["pixels"]).probabilities.numpy()
    assert np.abs(probabilities - keras_project["probabilities"]).max() <= 1e-4

    predictions = tmp_path / "predictions.csv"
    paths = [str(path) for path in keras_project["images"]]
    assert predict_main(["--ckpt", str(checkpoint), "--output", str(predictions), "--quiet", *paths]) == 0
    with predictions.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    predicted = np.array([[float(row[f"p_{name}"]) for name in classifier.class_names] for row in rows])
    assert np.abs(predicted - keras_project["probabilities"]).max() <= 1e-4

    report = tmp_path / "evaluation"
    assert evaluate_main(["--ckpt", str(checkpoint), "--data.root", str(busi_root), "--output", str(report)]) == 0
    assert (report / "report.json").is_file()

    exported = tmp_path / "model.torchscript.pt"
    assert export_main(["--ckpt", str(checkpoint), "--format", "torchscript", "--output", str(exported)]) == 0
    scripted = torch.jit.load(str(exported))
    with torch.no_grad():
        answered = scripted(keras_project["pixels"].float()).numpy()
    assert np.abs(answered - keras_project["probabilities"]).max() <= 1e-4
    assert "divided by 255 only" in Path(f"{exported}.json").read_text()


def test_imagenet_preprocessing_travels_in_the_checkpoint(keras_project, tmp_path):
    output = tmp_path / "imported"
    assert import_main([str(keras_project["model"]), "--output", str(output), "--preprocessing", "imagenet"]) == 0
    classifier = load_classifier(output / "best.ckpt")
    assert classifier.hparams.preprocessing == "imagenet"
    inputs = classifier.prepare_inputs(keras_project["pixels"])
    assert inputs.min() < -1.5  # ImageNet mean/std, not 0–1


def other_keras_files(folder: Path) -> dict[str, tuple[Path, str]]:
    import h5py
    import keras

    resnet = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    resnet.save(str(folder / "resnet50_notop.h5"))
    pooled, _ = original_model(IMAGE_SIZE, head=(256,), classes=3)
    pooled.save(str(folder / "other_head.h5"))
    two_classes, _ = original_model(IMAGE_SIZE, classes=2)
    two_classes.save(str(folder / "two_classes.h5"))
    with h5py.File(folder / "not_keras.h5", "w") as file:
        file["scan"] = np.zeros((4, 4))
    data = (folder / "two_classes.h5").read_bytes()
    (folder / "truncated.h5").write_bytes(data[: len(data) // 3])
    two_classes.save(str(folder / "model.keras"))
    return {
        "resnet": (folder / "resnet50_notop.h5", "not a Keras DenseNet121: found a Keras model 'resnet50'"),
        "head": (folder / "other_head.h5", "the head after DenseNet121 is Flatten → Dense 256 relu → Dense 3 softmax"),
        "classes": (folder / "two_classes.h5", "the model answers 2 classes"),
        "not_keras": (folder / "not_keras.h5", "an HDF5 file without Keras weights"),
        "truncated": (folder / "truncated.h5", "not a readable Keras HDF5 file"),
        "keras_format": (folder / "model.keras", "save it as HDF5: model.save('model.h5')"),
    }


def test_other_files_get_one_line_saying_what_was_found(tmp_path, capsys):
    for name, (path, expected) in other_keras_files(tmp_path).items():
        assert import_main([str(path), "--output", str(tmp_path / name)]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith(f"error: {path}: ") and expected in errors[0], errors
        assert not (tmp_path / name / "best.ckpt").exists()
        if name in ("resnet", "not_keras", "truncated", "keras_format"):
            with pytest.raises(WeightsError, match="Keras"):
                BusiClassifier(weights=str(path), image_size=IMAGE_SIZE)


def test_the_imported_model_fine_tunes_from_its_checkpoint(keras_project, busi_root, tmp_path):
    """`--ckpt_path DIR/best.ckpt`: a new run starts from the imported weights, with their preprocessing
    and BatchNorm epsilon; at learning rate 0 it still answers as Keras does."""
    from busi.training.run import run

    output = tmp_path / "imported"
    assert import_main([str(keras_project["model"]), "--output", str(output)]) == 0
    args = train_args(
        busi_root, tmp_path / "runs", f"--ckpt_path={output / 'best.ckpt'}", "--model.optimizer.lr=0", epochs=1
    )
    finished = run(args)
    classifier = load_classifier(finished.run_dir / "checkpoints" / "best.ckpt")
    assert classifier.hparams.preprocessing == "divide255"
    assert classifier.hparams.batch_norm_eps == KERAS_BATCH_NORM_EPS
    uncalibrated = classifier.infer(keras_project["pixels"]).uncalibrated.numpy()
    assert np.abs(uncalibrated - keras_project["probabilities"]).max() <= 1e-4


def test_the_app_says_where_an_imported_model_came_from(keras_project, busi_root, tmp_path, monkeypatch):
    streamlit_testing = pytest.importorskip("streamlit.testing.v1")
    output = tmp_path / "imported"
    assert import_main([str(keras_project["model"]), "--output", str(output)]) == 0
    monkeypatch.setenv("BUSI_CHECKPOINT", str(output / "best.ckpt"))
    app = streamlit_testing.AppTest.from_file(
        str(Path(__file__).parents[1] / "busi" / "commands" / "app.py"), default_timeout=120
    )
    app.run()
    assert not app.exception and not app.error
    captions = " ".join(caption.value for caption in app.sidebar.caption)
    assert "Imported from Keras (model.h5, Keras 3." in captions and "÷255" in captions
