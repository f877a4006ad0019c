"""Experiment: the original Keras notebook's model, trained by Keras itself, then imported and scored by busi.

python -m benchmarks.keras_original --pool DIR/pool --out DIR/keras [--image_size 128] [--epochs 10]
    Trains the notebook's recipe in Keras 3 on the PyTorch backend (no TensorFlow): DenseNet121
    (frozen; ImageNet weights from --weights FILE.h5 when given, else none, as on our offline machines)
    → Flatten → Dense 1024 → Dropout 0.5 → Dense 1024 → Dropout 0.3 → Dense 512 → Dense 128 →
    Dense 3 softmax, Adam 1e-3, batch 16, categorical cross-entropy, on the images of a BUSI-layout
    folder (masks skipped) resized to S×S and divided by 255, as its app fed them; saves
    DIR/keras/model.h5 as the notebook did (`model.save`). Then, with busi:
busi-import-keras DIR/keras/model.h5 --output DIR/keras/imported
busi-evaluate --ckpt DIR/keras/imported/best.ckpt --data.root DIR/holdout
    (DIR/pool and DIR/holdout from `python -m benchmarks.holdout link`: the holdout is busi's test split.)
    With --holdout DIR/holdout it also prints Keras's own accuracy there (a model.h5 already in --out
    is scored, not trained again), to set beside busi-evaluate's.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from busi import CLASS_NAMES
from busi.io.images import is_image_file, is_mask

os.environ.setdefault("KERAS_BACKEND", "torch")


def load_folder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        for path in sorted((root / name).iterdir()):
            if is_image_file(path) and not is_mask(path):
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)))
                labels.append(label)
    return np.stack(images).astype("float32") / 255, np.array(labels)


def original_model(size: int, weights: str | None):
    import keras

    base = keras.applications.DenseNet121(weights=weights, include_top=False, input_shape=(size, size, 3))
    base.trainable = False
    model = keras.Sequential(
        [
            base,
            keras.layers.Flatten(),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(len(CLASS_NAMES), activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, required=True, help="BUSI-layout folder to train on")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--weights", default=None, help="Keras DenseNet121 notop .h5 (ImageNet); default: none")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--holdout", type=Path, default=None, help="BUSI-layout folder to score Keras's model on")
    args = parser.parse_args()

    import keras

    saved = args.out / "model.h5"
    if saved.is_file():
        model = keras.models.load_model(str(saved))
    else:
        keras.utils.set_random_seed(args.seed)
        images, labels = load_folder(args.pool, args.image_size)
        model = original_model(args.image_size, args.weights)
        started = time.perf_counter()
        targets = keras.utils.to_categorical(labels, len(CLASS_NAMES))
        model.fit(images, targets, batch_size=16, epochs=args.epochs, verbose=2)
        args.out.mkdir(parents=True, exist_ok=True)
        model.save(str(saved))
        print(
            f"trained on {len(labels)} images × {args.epochs} epochs in {time.perf_counter() - started:.0f} s → {saved}"
        )
    if args.holdout is not None:
        images, labels = load_folder(args.holdout, args.image_size)
        predicted = model.predict(images, verbose=0).argmax(axis=1)
        print(f"Keras on {args.holdout}: accuracy {np.mean(predicted == labels):.4f} ({len(labels)} images)")


if __name__ == "__main__":
    main()
