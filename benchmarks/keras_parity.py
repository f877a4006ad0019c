"""Experiment: how closely busi reproduces Keras on Keras's own files (the figures behind tests/test_keras.py).

python -m benchmarks.keras_parity [--image_size 64] [--images 16] [--seed 3]
    Builds the original project's model in Keras 3 (PyTorch backend) with seeded weights and BatchNorm
    statistics (tests/fake_keras.py), saves it as model.h5, its backbone as a Keras-3 `.weights.h5` and
    in the Keras-2 ImageNet file's layout, loads each into busi and prints the largest differences from
    Keras's `predict` on random pixels: backbone features, and the imported model's probabilities.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/fake_keras.py

from busi.commands.import_keras import import_keras_model
from busi.model.classifier import BusiClassifier

from fake_keras import original_model, save_keras2_weights, save_model_h5


def features(classifier: BusiClassifier, pixels: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return classifier.model.extract(classifier.prepare_inputs(pixels)).permute(0, 2, 3, 1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    model, base = original_model(args.image_size, seed=args.seed)
    pixels = torch.from_numpy(
        np.random.default_rng(args.seed).integers(0, 256, (args.images, 3, args.image_size, args.image_size), np.uint8)
    )
    inputs = pixels.permute(0, 2, 3, 1).numpy().astype("float32") / 255
    expected_features = base.predict(inputs, verbose=0)
    expected = model.predict(inputs, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        files = {
            "Keras-2 weights (ImageNet file layout)": save_keras2_weights(base, Path(folder) / "keras2_notop.h5"),
            "Keras-3 .weights.h5": Path(folder) / "base.weights.h5",
            "Keras-3 model.h5": save_model_h5(model, Path(folder) / "model.h5"),
        }
        base.save_weights(str(files["Keras-3 .weights.h5"]))
        scale = np.abs(expected_features).max()
        print(f"{args.images} images of {args.image_size} px; features up to {scale:.2f}")
        for name, path in files.items():
            classifier = BusiClassifier(weights=str(path), image_size=args.image_size, preprocessing="divide255").eval()
            found = np.abs(features(classifier, pixels) - expected_features).max()
            for layer in classifier.model.features.modules():
                if isinstance(layer, torch.nn.BatchNorm2d):
                    layer.eps = 1e-5
            torch_eps = np.abs(features(classifier, pixels) - expected_features).max()
            print(
                f"{name:40s} features max |Δ| {found:.2e} ({found / scale:.1e} of the range); torch's eps: {torch_eps:.2e}"
            )
        imported = import_keras_model(files["Keras-3 model.h5"])
        probabilities = imported.infer(pixels).probabilities.numpy()
        print(f"{'imported model.h5':40s} probabilities max |Δ| {np.abs(probabilities - expected).max():.2e}")


if __name__ == "__main__":
    main()
