"""A catalog's images as a torch Dataset, and the training samplers that reweigh the classes."""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch.utils.data import Dataset, DistributedSampler

from busi.data.catalog import Catalog
from busi.io.images import as_three_channels


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

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([self.catalog.records[i].label for i in self.indices], dtype=torch.long)

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


class ClassRepeatSampler(DistributedSampler):
    """Oversampling: every training image repeated round(1 / its class's share) times per epoch (BUSI's
    shares give benign ×2, malignant ×4, normal ×6: epochs about 3× longer), in one shuffled order per
    (seed, epoch): exact under resume, and sharded over processes like DistributedSampler, the shards
    interleaving back to the single-process order."""

    def __init__(self, dataset: Dataset, labels: list[int], num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        counts = Counter(labels)
        self.repeats = {label: max(1, round(len(labels) / count)) for label, count in counts.items()}
        self.order = torch.tensor([i for i, label in enumerate(labels) for _ in range(self.repeats[label])])
        self.num_samples = math.ceil(len(self.order) / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        draws = self.order[torch.randperm(len(self.order), generator=generator)]
        padding = self.total_size - len(draws)  # repeats the first draws, as DistributedSampler does
        draws = torch.cat([draws, draws[:padding]]) if padding else draws
        return iter(draws[self.rank : self.total_size : self.num_replicas].tolist())
