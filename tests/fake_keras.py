"""Keras files written by Keras itself (Keras 3 on the PyTorch backend, no TensorFlow): the original
project's model (DenseNet121 → Flatten → 1024-1024-512-128-3) with seeded weights and non-trivial
BatchNorm statistics, saved as legacy HDF5, and its backbone as a Keras-2-era weights file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")


def original_model(image_size: int, seed: int = 0, classes: int = 3, head=(1024, 1024, 512, 128)):
    """The original notebook's model at `image_size`, every weight seeded; a few BatchNorm channels get
    a variance near 1e-5, where Keras's epsilon (1.001e-5) and torch's (1e-5) differ visibly."""
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.DenseNet121(weights=None, include_top=False, input_shape=(image_size, image_size, 3))
    x = keras.layers.Flatten()(base.output)
    for index, width in enumerate(head):
        x = keras.layers.Dense(width, activation="relu")(x)
        if index < 2:
            x = keras.layers.Dropout((0.5, 0.3)[index])(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(base.input, outputs)
    rng = np.random.default_rng(seed)
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:  # moving statistics = the statistics of one batch, so activations stay in range
        layer.momentum = 0.0
    base(rng.uniform(0, 1, (8, image_size, image_size, 3)).astype("float32"), training=True)
    for layer in norms:
        layer.momentum = 0.99
        gamma, _, mean, variance = (np.asarray(w) for w in layer.get_weights())
        channels = len(gamma)
        gamma = rng.uniform(0.7, 1.3, channels)
        tiny = rng.random(channels) < 0.02
        variance = variance * rng.uniform(0.8, 1.25, channels)
        variance[tiny], gamma[tiny] = 1e-5, 1e-3
        mean = mean + rng.normal(0, 0.1, channels) * np.sqrt(variance)
        layer.set_weights([gamma, rng.normal(0, 0.1, channels), mean, variance])
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 0.05, bias])  # keeps the softmax away from 0 and 1, so differences show
    return model, base


def save_model_h5(model, path: Path) -> Path:
    model.save(str(path))  # legacy HDF5: model_config + model_weights
    return path


def keras2_layer_name(name: str) -> str:
    """Keras 2's ImageNet DenseNet121 file names its stem `conv1/conv`, `conv1/bn`; the rest alike."""
    return {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn", "conv1_relu": "conv1/relu"}.get(name, name)


def save_keras2_weights(base, path: Path) -> Path:
    """The backbone as a weights-only HDF5 file laid out as Keras 2's `save_weights` wrote the
    `densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5` file."""
    import h5py

    with h5py.File(path, "w") as file:
        names = [keras2_layer_name(layer.name) for layer in base.layers]
        file.attrs["layer_names"] = [name.encode() for name in names]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.1.5"
        for layer, name in zip(base.layers, names, strict=True):
            group = file.create_group(name)
            weight_names = [f"{name}/{variable.name}:0" for variable in layer.weights]
            for weight_name, variable in zip(weight_names, layer.weights, strict=True):
                group.create_dataset(weight_name, data=np.asarray(variable.numpy()))
            group.attrs["weight_names"] = [weight_name.encode() for weight_name in weight_names]
    return path
