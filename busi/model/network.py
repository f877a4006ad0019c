"""The network: torchvision DenseNet121 `features` and the original 1024-1024-512-128-3 dense head, and
how backbone weights are found and loaded (ImageNet through the torch hub cache, a local file, or none)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet121_Weights, densenet121

from busi.errors import SettingError, WeightsError
from busi.io.keras_files import KERAS_BATCH_NORM_EPS, densenet_state_dict, is_keras_file, read_keras_file

FEATURE_CHANNELS = 1024
FEATURE_STRIDE = 32
DEFAULT_BATCH_NORM_EPS = 1e-5  # torch's, and torchvision's ImageNet weights'
# DenseNet121's dense blocks 1-3 (strides 4, 8, 16) feed the lesion decoder beside the final features.
SKIP_LAYERS = ("denseblock1", "denseblock2", "denseblock3")
SKIP_CHANNELS = (256, 512, 1024)
DECODER_WIDTHS = (128, 64, 32)  # at strides 16, 8, 4


class FullPrecisionHead(nn.Sequential):
    """The dense head, always in float32, also inside a bf16 autocast region: at batch 16 its first
    layer is bound by reading its weights (16.8 M at 128 px, 67 M at 256 px), and autocast would cast
    all of them to bf16 and their gradients back on every step, which costs more than the products."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return super().forward(features.float())


def conv_bn_relu(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)
    )


class LesionDecoder(nn.Module):
    """A light U-Net-style decoder over DenseNet121's feature pyramid: the final features (stride 32)
    are upsampled step by step and joined with 1×1-reduced dense-block outputs at strides 16, 8 and 4;
    returns lesion logits (N, 1, S/4, S/4). 0.74 M parameters."""

    def __init__(self):
        super().__init__()
        widths = DECODER_WIDTHS
        self.top = nn.Sequential(
            nn.Conv2d(FEATURE_CHANNELS, widths[0], 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            for c, w in zip(reversed(SKIP_CHANNELS), widths, strict=True)
        )
        above = (widths[0], *widths[:-1])
        self.fuse = nn.ModuleList(conv_bn_relu(a + w, w) for a, w in zip(above, widths, strict=True))
        self.out = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, features: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.top(features)
        for skip, lateral, fuse in zip(reversed(skips), self.lateral, self.fuse, strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, lateral(skip)], dim=1))
        return self.out(x)


class LesionPooling(nn.Module):
    """The lesion head's pooling: (N, C + 1, h, w) maps whose last channel is the lesion probability →
    (N, 2C): each map's mean over the image and its mean over the predicted lesion (attention)."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        maps, attention = maps[:, :-1], maps[:, -1:]
        inside = (maps * attention).sum(dim=(2, 3)) / attention.sum(dim=(2, 3)).clamp_min(1e-6)
        return torch.cat([maps.mean(dim=(2, 3)), inside], dim=1)


class DenseNetClassifier(nn.Module):
    """torchvision DenseNet121 `features` → ReLU → the dense head 1024-1024-512-128-classes (logits out),
    fed by `head`: `flatten`, the original (the whole S/32 × S/32 × 1024 feature map: 67 M weights in
    the first layer at 256 px), `pooled` (global average pooling: 1024 inputs at any image size) or
    `lesion` (needs `segment`: the final features and dense block 3's output, each averaged over the
    image and over the decoder's predicted lesion: 4096 inputs). With `segment`, a LesionDecoder beside
    the head predicts the lesion from the same features."""

    def __init__(
        self,
        image_size: int = 256,
        num_classes: int = 3,
        freeze_backbone: bool = True,
        head: str = "flatten",
        segment: bool = False,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if image_size % FEATURE_STRIDE:
            raise SettingError(f"{{image_size}} {image_size} must be a multiple of {FEATURE_STRIDE}")
        if head == "lesion" and not segment:
            raise SettingError("{head} lesion reads the lesion decoder's map: build the decoder too ({segment} True)")
        side = image_size // FEATURE_STRIDE
        self.freeze_backbone = freeze_backbone
        self.sees_lesion = head == "lesion"
        # The channels of what the head reads that Grad-CAM sums: the feature maps, never the lesion
        # probability the lesion head also reads (counted in, it pushed the heat-maps off the lesion)
        self.cam_channels = FEATURE_CHANNELS + (SKIP_CHANNELS[-1] if self.sees_lesion else 0)
        if not 0 <= drop_rate < 1:
            raise SettingError(f"{{drop_rate}} {drop_rate}: DenseNet's dropout after each dense layer, in [0, 1)")
        # torchvision's dropout after every dense layer (the DenseNet paper's 0.2 without augmentation)
        self.features = densenet121(weights=None, drop_rate=drop_rate).features
        if head == "flatten":
            inputs = [nn.Flatten(), nn.Linear(FEATURE_CHANNELS * side * side, 1024)]
        elif head == "lesion":
            inputs = [LesionPooling(), nn.Linear(2 * (FEATURE_CHANNELS + SKIP_CHANNELS[-1]), 1024)]
        else:
            inputs = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(FEATURE_CHANNELS, 1024)]
        self.head = FullPrecisionHead(
            *inputs,
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(1024, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )
        # absent (not None-valued) without segmentation: the original state-dict keys stay as they were
        if segment:
            self.decoder = LesionDecoder()
        self.features.requires_grad_(not freeze_backbone)
        self.train()

    def train(self, mode: bool = True) -> DenseNetClassifier:
        # Frozen like Keras: besides requires_grad=False, BatchNorm must keep its running
        # statistics, so the backbone stays in eval mode whatever `train()` is asked for.
        super().train(mode)
        if self.freeze_backbone:
            self.features.eval()
        return self

    @property
    def segments(self) -> bool:
        return hasattr(self, "decoder")

    def extract(self, images: torch.Tensor, skips: bool = False):
        """Final features (N, 1024, S/32, S/32); with `skips`, (features, [dense blocks 1-3 outputs])."""
        # torchvision applies this ReLU in DenseNet.forward, Keras as the last layer of `features`.
        if not skips:
            return F.relu(self.features(images))
        found, x = [], images
        for name, layer in self.features.named_children():
            x = layer(x)
            if name in SKIP_LAYERS:
                found.append(x)
        return F.relu(x), found

    def encode(self, images: torch.Tensor, extract=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(what the head reads, lesion logits (N, 1, S/4, S/4) or None without a decoder): the final
        features, or for the lesion head those joined with dense block 3's output (pooled to S/32) and
        the lesion probability; `extract`: this network's `extract` as compiled by the caller."""
        extract = extract or self.extract
        if not self.segments:
            return extract(images), None
        features, skips = extract(images, skips=True)
        lesions = self.decoder(features, skips)
        if self.sees_lesion:
            size = features.shape[-2:]
            block3 = F.adaptive_avg_pool2d(skips[-1], size)
            attention = F.adaptive_avg_pool2d(lesions.sigmoid(), size)
            features = torch.cat([features, block3, attention.to(features.dtype)], dim=1)
        return features, lesions

    def classify(self, images: torch.Tensor, extract=None) -> torch.Tensor:
        """Logits; the decoder runs only when the head reads its map."""
        if self.sees_lesion:
            return self.head(self.encode(images, extract)[0])
        return self.head((extract or self.extract)(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(images)


_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _feature_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a full DenseNet121 state dict, a `features` one, or a busi checkpoint's; fix legacy
    `norm.1` key names as torchvision does."""
    state_dict = state_dict.get("state_dict", state_dict)
    features = {}
    for key, value in state_dict.items():
        match = _LEGACY_KEY.match(key)
        if match:
            key = match.group(1) + match.group(2)
        if "features." in key:
            features[key.split("features.", 1)[1]] = value
        elif not key.startswith(("classifier.", "head.", "model.head.")):
            features[key] = value
    return features


def imagenet_weights_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(DenseNet121_Weights.IMAGENET1K_V1.url).name


def load_backbone_weights(features: nn.Module, weights: str | None) -> float | None:
    """Load `imagenet` (torch hub cache, else download), a state dict or busi checkpoint file, or a Keras
    DenseNet121 HDF5 file (busi.io.keras_files) into `features`; None/`none` loads nothing. Returns the
    BatchNorm epsilon the weights were trained with when it is not torch's (Keras: 1.001e-5)."""
    if weights is None or weights.lower() == "none":
        return None
    eps = None
    if weights.lower() == "imagenet":
        try:
            state_dict = DenseNet121_Weights.IMAGENET1K_V1.get_state_dict(
                progress=False, check_hash=True, weights_only=True
            )
        except (OSError, RuntimeError) as error:
            raise WeightsError(
                f"ImageNet weights for DenseNet121 are not in {imagenet_weights_file()} and could not be "
                f"downloaded ({type(error).__name__}: {error}). Copy densenet121-a639ec97.pth there "
                "(set $TORCH_HOME to move the cache), pass --model.weights /path/to/weights.pth, "
                "or train the recipe that learns without them: --config scratch"
            ) from None
    elif is_keras_file(weights):
        return load_keras_backbone(features, weights)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"{path}: weights file not found; pass a state dict file, a Keras .h5 file, 'imagenet' or 'none'"
            )
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightsError(f"{path}: not a loadable state dict ({type(error).__name__}: {error})") from None
        eps = (state_dict.get("hyper_parameters") or {}).get("batch_norm_eps")  # a busi checkpoint's
    try:
        features.load_state_dict(_feature_state_dict(state_dict))
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise WeightsError(f"{weights}: weights do not fit DenseNet121 features ({detail})") from None
    return eps


def load_keras_backbone(features: nn.Module, path: str | Path) -> float:
    keras = read_keras_file(path)
    features.load_state_dict(densenet_state_dict(keras, features.state_dict()))
    return KERAS_BATCH_NORM_EPS


def set_batch_norm_eps(module: nn.Module, eps: float) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.eps = eps


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return trainable, frozen
