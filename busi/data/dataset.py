"""A catalog's images as a torch Dataset, and the class-balanced training sampler."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils.data import Dataset, DistributedSampler

from busi.data.catalog import Catalog
from busi.images import as_three_channels


class ImageTensors(Dataset):
    """Some of a catalog's images as (uint8 3×H×W, label, key, uint8 1×H×W lesion mask): normalisation
    happens on the batch, on the training device (BusiClassifier.prepare_inputs). The key, a
    digest of the decoded pixels, identifies the image for the frozen-backbone feature cache. The mask
    is 0/1, or MASK_UNKNOWN everywhere for a lesion image without a mask."""

    def __init__(self, catalog: Catalog, indices: list[int]):
        self.catalog = catalog
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str, torch.Tensor]:
        i = self.indices[index]
        catalog = self.catalog
        return as_three_channels(catalog.image(i)), catalog.records[i].label, catalog.digests[i], catalog.mask(i)


class ClassBalancedSampler(DistributedSampler):
    """An epoch of len(dataset) draws with replacement, each class equally likely: a function of
    (seed, epoch) only, so a resumed run draws what the uninterrupted one drew, and sharded over
    processes like DistributedSampler (Lightning leaves DistributedSampler subclasses unwrapped)."""

    def __init__(self, dataset: Dataset, labels: list[int], num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        counts = Counter(labels)
        self.weights = torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(draws[self.rank : self.total_size : self.num_replicas].tolist())
