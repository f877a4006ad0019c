"""Backbone features kept per image while the backbone is a fixed function of the image (frozen weights,
eval-mode BatchNorm, no random augmentation): the head then trains on features computed once."""

from __future__ import annotations

from collections.abc import Callable

import torch


def compute_dtype(device_type: str) -> torch.dtype:
    """The dtype convolutions run in here: autocast's, else float32."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32


class FeatureCache:
    """Features by (image key, compute dtype), up to `limit_mb`; images beyond it are computed every time.
    The dtype is part of the key: features computed under bf16 autocast (training) are not those of an
    fp32 pass (the report)."""

    def __init__(self, limit_mb: float):
        self.limit_bytes = limit_mb * 2**20
        self._features: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._features)

    @property
    def bytes(self) -> int:
        return self._bytes

    def features(self, keys: list[str], device_type: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The batch's features: from the cache when every image is in it, else from `compute()`,
        keeping those that fit."""
        keys = [(key, compute_dtype(device_type)) for key in keys]
        if all(key in self._features for key in keys):
            return torch.stack([self._features[key] for key in keys])
        with torch.no_grad():
            features = compute()
        for key, feature in zip(keys, features, strict=True):
            size = feature.numel() * feature.element_size()
            if key not in self._features and self._bytes + size <= self.limit_bytes:
                self._features[key] = feature.clone()  # not a view that keeps the whole batch alive
                self._bytes += size
        return features

    def clear(self) -> None:
        self._features.clear()
        self._bytes = 0
