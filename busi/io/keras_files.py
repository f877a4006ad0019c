"""Keras DenseNet121 HDF5 files read with h5py alone (no TensorFlow, no Keras): their weights in
torchvision's names and layouts, and the dense head of a full saved model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from busi.errors import WeightsError

KERAS_BATCH_NORM_EPS = 1.001e-5  # keras.applications.densenet; torch's BatchNorm2d default is 1e-5
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
HEAD_WIDTHS = (1024, 1024, 512, 128)  # the original project's dense layers before the class layer
BATCH_NORM_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")
TORCH_BATCH_NORM = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}

# Keras layer name (Keras 2 ImageNet file: `conv1/conv`; Keras 3: `conv1_conv`) → torchvision `features` module
_STEM = re.compile(r"(?:^|/)conv1[/_](conv|bn)$")
_DENSE_LAYER = re.compile(r"(?:^|/)conv(\d)_block(\d+)_(0_bn|1_conv|1_bn|2_conv)$")
_TRANSITION = re.compile(r"(?:^|/)pool(\d)_(bn|conv)$")
_FINAL_NORM = re.compile(r"(?:^|/)bn$")
_DENSE_LAYER_PARTS = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}


def is_keras_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in KERAS_SUFFIXES


@dataclass
class KerasFile:
    """What an HDF5 file written by Keras holds: `weights` ("layer path/variable" → array, in the order
    Keras wrote them) and, for a full saved model, its layers in order (`class_name`, `config`)."""

    path: Path
    weights: dict[str, np.ndarray]
    layers: list[dict] = field(default_factory=list)
    model_name: str | None = None
    keras_version: str | None = None

    def layer_weights(self, layer: str) -> dict[str, np.ndarray]:
        """The variables of the layer named `layer` (whatever model it is nested in)."""
        found = {}
        for key, value in self.weights.items():
            path, variable = key.rsplit("/", 1)
            if path == layer or path.endswith("/" + layer):
                found[variable] = value
        return found


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_file(path: str | Path) -> KerasFile:
    """Read a Keras HDF5 file: a full model saved as `model.h5` (Keras 2 or 3), a weights file of the
    Keras 2 layout (the ImageNet `…_notop.h5` files), or a Keras 3 `.weights.h5` file."""
    path = Path(path)
    try:
        import h5py
    except ImportError:
        raise WeightsError(f'{path}: reading Keras files needs h5py: pip install "busi[keras]"') from None
    if not path.is_file():
        raise WeightsError(f"{path}: Keras weights file not found")
    if path.suffix.lower() == ".keras":
        raise WeightsError(
            f"{path}: the .keras (zip) format is not read; in Keras, save it as HDF5: model.save('model.h5')"
        )
    try:
        with h5py.File(path, "r") as file:
            model = _model_config(file)
            root = file.get("model_weights", file)
            if "layer_names" in root.attrs:
                weights = _legacy_weights(root)
            elif "layers" in root:
                weights = _keras3_weights(root["layers"])
            else:
                raise WeightsError(
                    f"{path}: an HDF5 file without Keras weights (no layer_names, no layers group): "
                    "pass a Keras model.h5 or a Keras DenseNet121 weights file"
                )
            version = _text(root.attrs.get("keras_version", file.attrs.get("keras_version", ""))) or None
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise WeightsError(
            f"{path}: not a readable Keras HDF5 file ({type(error).__name__}: {reason}); if it was cut short, "
            "copy or save it again"
        ) from None
    layers = _flat_layers(model.get("config", {})) if model else []
    name = (model.get("config") or {}).get("name") if model else None
    return KerasFile(path, weights, layers, name, version)


def _model_config(file) -> dict | None:
    config = file.attrs.get("model_config")
    return json.loads(_text(config)) if config is not None else None


def _legacy_weights(root) -> dict[str, np.ndarray]:
    weights = {}
    for layer in root.attrs["layer_names"]:
        group = root[_text(layer)]
        for name in group.attrs.get("weight_names", []):
            name = _text(name)
            weights[name.removesuffix(":0")] = np.asarray(group[name])
    return weights


def _keras3_weights(layers) -> dict[str, np.ndarray]:
    """`.weights.h5` of Keras 3: layers/<attribute>/vars/<i> with the layer's name as an attribute."""
    weights = {}

    def visit(name: str, item) -> None:
        if not name.endswith("vars") or "name" not in item.attrs:
            return
        values = [np.asarray(item[key]) for key in sorted(item, key=int)]
        if not values:
            return
        variables = BATCH_NORM_VARIABLES if len(values) == 4 else ("kernel", "bias")
        for variable, value in zip(variables, values, strict=False):
            weights[f"{_text(item.attrs['name'])}/{variable}"] = value

    layers.visititems(visit)
    return weights


def _flat_layers(config: dict) -> list[dict]:
    """The model's layers in order, nested models (a DenseNet121 inside a Sequential) opened in place."""
    layers = []
    for layer in config.get("layers", []):
        inner = layer.get("config", {})
        if "layers" in inner:
            layers += _flat_layers(inner)
        else:
            layers.append(layer)
    return layers


def torchvision_name(layer: str) -> str | None:
    """The torchvision DenseNet121 `features` module of a Keras DenseNet121 layer path, or None."""
    if match := _STEM.search(layer):
        return "conv0" if match.group(1) == "conv" else "norm0"
    if match := _DENSE_LAYER.search(layer):
        stage, layer_index, part = match.groups()
        return f"denseblock{int(stage) - 1}.denselayer{int(layer_index)}.{_DENSE_LAYER_PARTS[part]}"
    if match := _TRANSITION.search(layer):
        stage, part = match.groups()
        return f"transition{int(stage) - 1}.{'norm' if part == 'bn' else 'conv'}"
    if _FINAL_NORM.search(layer):
        return "norm5"
    return None


def densenet_state_dict(keras: KerasFile, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Keras file's DenseNet121 weights as a state dict for torchvision's DenseNet121 `features`
    (`expected`: its state dict, for names and shapes): kernels HWIO → OIHW, Keras BatchNorm variables
    renamed. Anything that is not DenseNet121 is one WeightsError saying what was found."""
    state, foreign = {}, []
    for key, value in keras.weights.items():
        layer, variable = key.rsplit("/", 1)
        module = torchvision_name(layer)
        if module is None:
            if variable in ("kernel", *BATCH_NORM_VARIABLES) and not _is_head_layer(keras, layer):
                foreign.append(layer)
            continue
        if variable == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
            state[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(value)).float()
        elif variable in TORCH_BATCH_NORM:
            state[f"{module}.{TORCH_BATCH_NORM[variable]}"] = torch.from_numpy(np.ascontiguousarray(value)).float()
        else:  # a bias: DenseNet121's convolutions have none
            foreign.append(layer)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key.rsplit(".", 1)[0] + ".weight" in state:
            state[key] = torch.zeros_like(value)
    missing = [key for key in expected if key not in state]
    unexpected = sorted({key for key in state if key not in expected} | set(foreign))
    misshapen = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or misshapen:
        what = f"a Keras model '{keras.model_name}'" if keras.model_name else f"{len(keras.weights)} weights"
        details = []
        if unexpected:
            details.append(f"{len(unexpected)} layers DenseNet121 does not have (e.g. {unexpected[0]})")
        if missing:
            details.append(f"{len(missing)} DenseNet121 weights missing (e.g. {missing[0]})")
        if misshapen:
            key = misshapen[0]
            details.append(
                f"{len(misshapen)} of other shapes (e.g. {key}: {tuple(state[key].shape)}, "
                f"DenseNet121 has {tuple(expected[key].shape)})"
            )
        raise WeightsError(
            f"{keras.path}: not a Keras DenseNet121: found {what} with {'; '.join(details)}. "
            "Pass DenseNet121's Keras weights (densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5) or a model "
            "saved from keras.applications.DenseNet121"
        )
    return state


def _is_head_layer(keras: KerasFile, layer: str) -> bool:
    names = {entry.get("config", {}).get("name") for entry in keras.layers if entry.get("class_name") == "Dense"}
    return layer.rsplit("/", 1)[-1] in names


@dataclass
class KerasHead:
    """The dense layers after DenseNet121 in a full Keras model: the original project's head."""

    image_size: int
    class_count: int
    linear: list[tuple[torch.Tensor, torch.Tensor]]  # (weight, bias) of each torch Linear layer, in order


def original_head(keras: KerasFile, channels: int, stride: int) -> KerasHead:
    """The original project's head (Flatten → Dense 1024 → 1024 → 512 → 128 → classes, ReLU between,
    softmax last) from a full model, as torch Linear weights; Flatten's (h, w, c) order becomes torch's
    (c, h, w). Any other head is one WeightsError saying what was found."""
    if not keras.layers:
        raise WeightsError(
            f"{keras.path}: holds weights only, no model: pass the whole model saved with model.save('model.h5') "
            "(a weights-only file goes to busi-train --model.weights)"
        )
    kinds = [layer.get("class_name") for layer in keras.layers]
    dense = [layer["config"] for layer in keras.layers if layer.get("class_name") == "Dense"]
    shapes = [keras.layer_weights(config["name"]).get("kernel") for config in dense]
    found = " → ".join(
        [("Flatten" if "Flatten" in kinds else "pooling" if any("Pooling" in k for k in kinds) else "?")]
        + [f"Dense {config.get('units')} {config.get('activation')}" for config in dense]
    )
    original = "Flatten → Dense 1024 relu → Dense 1024 relu → Dense 512 relu → Dense 128 relu → Dense 3 softmax"
    activations = [config.get("activation") for config in dense]
    widths = tuple(config.get("units") for config in dense)
    if (
        "Flatten" not in kinds
        or len(dense) != len(HEAD_WIDTHS) + 1
        or widths[:-1] != HEAD_WIDTHS
        or activations != ["relu"] * len(HEAD_WIDTHS) + ["softmax"]
        or any(shape is None for shape in shapes)
    ):
        raise WeightsError(
            f"{keras.path}: the head after DenseNet121 is {found}; busi imports the original project's head "
            f"({original})"
        )
    rows = shapes[0].shape[0]
    side = round((rows / channels) ** 0.5)
    if side * side * channels != rows:
        raise WeightsError(f"{keras.path}: the first Dense layer takes {rows} inputs, not a square map of {channels}")
    linear = []
    for index, config in enumerate(dense):
        variables = keras.layer_weights(config["name"])
        kernel = torch.from_numpy(np.ascontiguousarray(variables["kernel"])).float()
        if index == 0:  # (h·w·c, out) → (out, c·h·w)
            kernel = kernel.reshape(side, side, channels, -1).permute(3, 2, 0, 1).reshape(kernel.shape[1], -1)
        else:
            kernel = kernel.T
        linear.append((kernel.contiguous(), torch.from_numpy(np.ascontiguousarray(variables["bias"])).float()))
    return KerasHead(side * stride, widths[-1], linear)
