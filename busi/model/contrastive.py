"""Self-supervised pretraining of the DenseNet121 backbone on unlabelled training scans: SimCLR (Chen et al.
2020). Two random views of each scan go through the backbone and a projection head; the NT-Xent loss pulls
each scan's two views together and pushes them from the batch's other scans. The views are the
augmentations ultrasound tolerates (busi.data.augment: small rotations, scaling, shifts, left-right flips,
brightness, contrast, gamma, speckle) after a random crop: never colour, never upside down."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import densenet121

from busi.data.augment import augment_batch
from busi.io.images import to_model_input
from busi.model.network import FEATURE_CHANNELS

if TYPE_CHECKING:
    from busi.training.pretraining_settings import Pretraining


def random_crops(images: torch.Tensor, smallest_share: float) -> torch.Tensor:
    """Each image cropped to a random square of `smallest_share`…1 of its area, anywhere inside it, and
    resized back to its size (bilinear)."""
    n = images.shape[0]
    share = smallest_share + (1 - smallest_share) * torch.rand(n, device=images.device)
    side = share.sqrt()
    shift = (torch.rand(n, 2, device=images.device) * 2 - 1) * (1 - side)[:, None]
    zeros = torch.zeros_like(side)
    theta = torch.stack(
        [torch.stack([side, zeros, shift[:, 0]], dim=1), torch.stack([zeros, side, shift[:, 1]], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: (n, d) projections of two views of n scans; each of the 2n views is classified
    among the 2n − 1 others by cosine similarity / τ, its own scan's other view being the right answer."""
    z = F.normalize(torch.cat([first, second]).float(), dim=1)
    n = first.shape[0]
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(-math.inf)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


class ContrastivePretraining(L.LightningModule):
    """DenseNet121 `features` (as busi's classifier builds them) → ReLU → global average pooling → a
    1024-512-128 projection, trained with NT-Xent on two views of each scan. Only `features` is kept
    (busi.training.pretraining writes it where `--model.weights FILE` reads it)."""

    def __init__(self, settings: Pretraining, total_steps: int, preprocessing: str = "imagenet"):
        super().__init__()
        self.settings, self.total_steps, self.preprocessing = settings, max(1, total_steps), preprocessing
        self.features = densenet121(weights=None).features
        self.projection = nn.Sequential(
            nn.Linear(FEATURE_CHANNELS, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 128)
        )
        self.to(memory_format=torch.channels_last)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(F.relu(self.features(images)), 1).flatten(1)
        return self.projection(pooled)

    def view(self, pixels: torch.Tensor) -> torch.Tensor:
        cropped = random_crops(pixels.float() / 255, self.settings.crop_scale)
        images = to_model_input(augment_batch(cropped), self.preprocessing)
        return images.contiguous(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        pixels = batch[0]  # the labels and masks are not used
        loss = nt_xent(self.embed(self.view(pixels)), self.embed(self.view(pixels)), self.settings.temperature)
        self.log("pretrain/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(pixels))
        return loss

    def configure_optimizers(self):
        settings = self.settings
        optimizer = torch.optim.AdamW(self.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        warmup = max(1, self.total_steps // max(1, settings.epochs))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, self.total_steps - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
