"""DenseNet121 features + the original 1024-1024-512-128-3 head, and the LightningModule that trains it."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchvision.models import DenseNet121_Weights, densenet121

from busi import CLASS_NAMES
from busi.augment import augment_batch
from busi.images import to_model_input
from busi.report import (
    SplitEvaluation,
    confusion_matrix_image,
    epoch_metrics,
    format_report,
    reliability_diagram_image,
    write_report,
)
from busi.splits import SPLIT_NAMES

FEATURE_CHANNELS = 1024
FEATURE_STRIDE = 32


class WeightsError(ValueError):
    """Backbone weights cannot be found or do not fit; the message says what to do."""


class FullPrecisionHead(nn.Sequential):
    """The dense head, always in float32, also inside a bf16 autocast region: at batch 16 its first
    layer is bound by reading its weights (16.8 M at 128 px, 67 M at 256 px), and autocast would cast
    all of them to bf16 and their gradients back on every step, which costs more than the products."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return super().forward(features.float())


class DenseNetClassifier(nn.Module):
    """torchvision DenseNet121 `features` → ReLU → Flatten → the original dense head (logits out)."""

    def __init__(self, image_size: int = 256, num_classes: int = 3, freeze_backbone: bool = True):
        super().__init__()
        if image_size % FEATURE_STRIDE:
            raise ValueError(f"image_size {image_size} must be a multiple of {FEATURE_STRIDE}")
        side = image_size // FEATURE_STRIDE
        self.freeze_backbone = freeze_backbone
        self.features = densenet121(weights=None).features
        self.head = FullPrecisionHead(
            nn.Flatten(),
            nn.Linear(FEATURE_CHANNELS * side * side, 1024),
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
        self.features.requires_grad_(not freeze_backbone)
        self.train()

    def train(self, mode: bool = True) -> DenseNetClassifier:
        # Frozen like Keras: besides requires_grad=False, BatchNorm must keep its running
        # statistics, so the backbone stays in eval mode whatever `train()` is asked for.
        super().train(mode)
        if self.freeze_backbone:
            self.features.eval()
        return self

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        # torchvision applies this ReLU in DenseNet.forward, Keras as the last layer of `features`.
        return F.relu(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.extract(images))


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


def load_backbone_weights(features: nn.Module, weights: str | None) -> None:
    """`imagenet` (torch hub cache, else download), a path to a state dict, or None/`none`."""
    if weights is None or weights.lower() == "none":
        return
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
                "or train without them: --model.weights none (see configs/scratch.yaml)"
            ) from None
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found; pass a state dict file, 'imagenet' or 'none'")
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightsError(f"{path}: not a loadable state dict ({type(error).__name__}: {error})") from None
    try:
        features.load_state_dict(_feature_state_dict(state_dict))
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise WeightsError(f"{weights}: weights do not fit DenseNet121 features ({detail})") from None


def compute_dtype(device_type: str) -> torch.dtype:
    """The dtype convolutions run in here: autocast's, else float32."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return trainable, frozen


class BusiClassifier(L.LightningModule):
    """Trains DenseNetClassifier with Adam and cross-entropy; tests the chosen checkpoint on every split.

    Args:
        weights: backbone weights: `imagenet` (torchvision IMAGENET1K_V1), a state-dict path, or `none`.
        freeze_backbone: keep the DenseNet121 features fixed (parameters and BatchNorm statistics).
        lr: Adam learning rate.
        image_size: input side in pixels (linked to data.image_size by train.py).
        class_names: output classes, in order.
        cache_features: with a frozen backbone, run it once per image and train the head on the
            kept features (the same model and checkpoints, computed once instead of every epoch).
        channels_last: NHWC memory layout for the convolutions (faster on GPUs and most CPUs).
        compile: run the backbone through torch.compile (checkpoints keep plain parameter names).
        feature_cache_mb: memory for cached features; images beyond it run the backbone every epoch.
        augment: random ultrasound-safe augmentation of training batches (busi.augment).
        class_weighting: `balanced` weighs the loss by the inverse class frequency of the train split.
        optimizer: `adam` (the original) or `adamw`.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: linear learning-rate warm-up from 0, then `schedule`.
        schedule: `constant` or `cosine` (decay to 0 at the last step).
        tta: test-time augmentation: average the probabilities of the image and its mirror image.
    """

    def __init__(
        self,
        weights: str | None = "imagenet",
        freeze_backbone: bool = True,
        lr: float = 1e-3,
        image_size: int = 256,
        class_names: tuple[str, ...] = CLASS_NAMES,
        cache_features: bool = True,
        channels_last: bool = True,
        compile: bool = False,
        feature_cache_mb: float = 4096,
        augment: bool = False,
        class_weighting: str = "none",
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        warmup_epochs: float = 0.0,
        schedule: str = "constant",
        tta: bool = False,
    ):
        super().__init__()
        if class_weighting not in ("none", "balanced") or optimizer not in ("adam", "adamw"):
            raise ValueError("class_weighting is none|balanced and optimizer adam|adamw")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule {schedule!r}: use constant or cosine")
        self.save_hyperparameters()
        self.class_names = tuple(class_names)
        self.model = DenseNetClassifier(image_size, len(self.class_names), freeze_backbone)
        load_backbone_weights(self.model.features, weights)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Kept outside the module tree so that state_dict keys never gain `_orig_mod.`.
        self._extract = torch.compile(self.model.extract) if compile else self.model.extract
        self._feature_cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._feature_cache_bytes = 0
        # Temperature scaling, fitted on the validation split after training (busi.calibration).
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("class_weight", torch.ones(len(self.class_names)), persistent=False)
        self.train_metrics = epoch_metrics(len(self.class_names), "train/")
        self.val_metrics = epoch_metrics(len(self.class_names), "val/")
        # torchmetrics rather than self.log averaging: exact over all processes under DDP
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_samples = SumMetric()
        # ModuleDict keys may not shadow nn.Module attributes such as `train`
        self.evaluations = nn.ModuleDict({f"{s}_split": SplitEvaluation(len(self.class_names)) for s in SPLIT_NAMES})
        self.report: dict | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.head(self._extract(images))

    @property
    def caches_features(self) -> bool:
        # Valid only while the backbone is a fixed function of the image: frozen weights, eval-mode
        # BatchNorm, and the same input pixels every epoch (no random augmentation).
        return self.hparams.freeze_backbone and self.hparams.cache_features and not self.hparams.augment

    def logits(self, images: torch.Tensor, keys: list[str] | None = None) -> torch.Tensor:
        """Class logits; with a frozen backbone and image keys (content digests), backbone features
        are computed once per image."""
        if keys is None or not self.caches_features:
            return self(images)
        # Features computed under bf16 autocast (training) are not those of an fp32 pass (testing).
        keys = [(key, compute_dtype(images.device.type)) for key in keys]
        if any(key not in self._feature_cache for key in keys):
            with torch.no_grad():
                features = self._extract(images)
            limit = self.hparams.feature_cache_mb * 2**20
            for key, feature in zip(keys, features, strict=True):
                size = feature.numel() * feature.element_size()
                if key not in self._feature_cache and self._feature_cache_bytes + size <= limit:
                    self._feature_cache[key] = feature.clone()  # not a view that keeps the whole batch alive
                    self._feature_cache_bytes += size
            return self.model.head(features)
        return self.model.head(torch.stack([self._feature_cache[key] for key in keys]))

    def prepare_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 1 or 3, H, W) → normalised float in the model's memory layout."""
        if images.dtype == torch.uint8:
            images = to_model_input(images)
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def probabilities(
        self, images: torch.Tensor, keys: list[str] | None = None, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Calibrated class probabilities (logits / temperature), averaged with the mirror image's
        when `tta` is on. `logits`: of `images`, when already computed."""
        logits = self.logits(images, keys) if logits is None else logits
        probabilities = (logits.float() / self.temperature).softmax(dim=1)
        if self.hparams.tta:
            mirrored = (self(images.flip(-1)).float() / self.temperature).softmax(dim=1)
            probabilities = (probabilities + mirrored) / 2
        return probabilities

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # BusiDataModule yields uint8 images: augmenting and normalising on the training device keeps
        # the data path a plain memory copy.
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            return batch  # augmented in training_step, after StepSeed has seeded the step
        images, *rest = (batch, []) if isinstance(batch, torch.Tensor) else batch
        images = self.prepare_inputs(images)
        return images if isinstance(batch, torch.Tensor) else [images, *rest]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"].setdefault("temperature", torch.ones(()))  # written before calibration existed
        current = self.model.features.state_dict()
        incoming = {k.removeprefix("model.features."): v for k, v in checkpoint["state_dict"].items()}
        if any(not torch.equal(value, incoming.get(key, value.new_empty(0))) for key, value in current.items()):
            self._feature_cache.clear()
            self._feature_cache_bytes = 0

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.hparams.class_weighting == "balanced" and hasattr(datamodule, "split_counts"):
            counts = torch.tensor(list(datamodule.split_counts()["train"].values()), dtype=torch.float32)
            self.class_weight = (counts.sum() / (len(counts) * counts.clamp_min(1))).to(self.device)
        trainable, frozen = parameter_counts(self.model)
        rank_zero_info(
            f"Parameters: {trainable:,} trainable, {frozen:,} frozen (freeze_backbone={self.hparams.freeze_backbone})"
        )

    def on_train_epoch_start(self) -> None:
        # Lightning restores each submodule's `training` flag directly after validation,
        # bypassing `train()`; re-assert the frozen backbone's eval mode every epoch.
        self.model.train()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets, keys = batch
        if self.hparams.augment:
            images = self.prepare_inputs(to_model_input(augment_batch(images)))
        logits = self.logits(images, keys)
        loss = F.cross_entropy(logits, targets, weight=self.class_weight)
        self.train_metrics.update(logits, targets)
        self.train_loss.update(loss.detach(), weight=len(targets))
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets, keys = batch
        logits = self.logits(images, keys)
        self.val_metrics.update(logits, targets)
        self.val_loss.update(F.cross_entropy(logits, targets), weight=len(targets))
        self.val_samples.update(len(targets))
        self.log("val/loss", self.val_loss, on_epoch=True)
        self.log("val/samples", self.val_samples, on_epoch=True)
        self.log_dict(self.val_metrics, on_epoch=True)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # The report scores the checkpoint as predict.py, calibration and the exports use it: in fp32,
        # whatever precision it was trained in.
        images, targets, keys = batch
        with torch.autocast(images.device.type, enabled=False):
            logits = self.logits(images, keys).float()
            probabilities = self.probabilities(images, keys, logits)
        loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), targets)
        raw = logits.softmax(dim=1)
        self.evaluations[f"{SPLIT_NAMES[dataloader_idx]}_split"].update(probabilities, targets, loss, raw)

    def on_test_epoch_end(self) -> None:
        splits = {}
        for split in SPLIT_NAMES:
            evaluation = self.evaluations[f"{split}_split"]
            if evaluation.loss.update_count:
                splits[split] = evaluation.compute_report(self.class_names)
            evaluation.reset()
        if "test" not in splits:
            return
        for split, values in splits.items():
            for name in ("loss", "accuracy", "macro_f1"):
                self.log(f"report/{split}_{name}", values[name], add_dataloader_idx=False, sync_dist=True)
        self.log("report/test_auroc_macro", splits["test"]["auroc_macro_ovr"], add_dataloader_idx=False, sync_dist=True)
        self.report = {"class_names": list(self.class_names), "checkpoint": self._tested_checkpoint(), "splits": splits}
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every process must ask
        if self.trainer.is_global_zero and log_dir:
            write_report(self.report, Path(log_dir))
            self._log_report_to_tensorboard()

    def _tested_checkpoint(self) -> str:
        path = self.trainer.ckpt_path
        return str(path) if path else "weights in memory (no checkpoint was loaded)"

    def _log_report_to_tensorboard(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        matrix = self.report["splits"]["test"]["confusion_matrix"]
        experiment.add_image(
            "test/confusion_matrix",
            confusion_matrix_image(matrix, self.class_names),
            self.global_step,
            dataformats="HWC",
        )
        test = self.report["splits"]["test"]
        experiment.add_image(
            "test/reliability_diagram",
            reliability_diagram_image(test["reliability"], test["ece"]),
            self.global_step,
            dataformats="HWC",
        )
        experiment.add_text(
            "test/report", "    " + format_report(self.report).replace("\n", "\n    "), self.global_step
        )

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        with torch.autocast(images.device.type, enabled=False):
            return self.probabilities(images)

    def configure_optimizers(self):
        hp = self.hparams
        parameters = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(parameters, lr=hp.lr, weight_decay=hp.weight_decay, fused=True)
        else:
            optimizer = torch.optim.Adam(parameters, lr=hp.lr, weight_decay=hp.weight_decay, fused=True)
        if hp.schedule == "constant" and not hp.warmup_epochs:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_epochs * total / max(1, self.trainer.max_epochs or 1))
        cosine = hp.schedule == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_classifier(checkpoint: Path | str, map_location: str | torch.device = "cpu") -> BusiClassifier:
    """Rebuild a trained classifier from a checkpoint without unpickling code (weights_only=True)
    and without fetching backbone weights again: the checkpoint holds all of them."""
    path = Path(checkpoint)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found; pass RUN/checkpoints/best.ckpt from a training run")
    try:
        contents = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        detail = f" ({refused[0]})" if refused else ""
        raise WeightsError(
            f"{path}: refused: the checkpoint holds pickled objects other than tensors and plain values{detail}; "
            "only load checkpoints written by busi's train.py"
        ) from None
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(contents, dict) or "state_dict" not in contents or "hyper_parameters" not in contents:
        raise WeightsError(f"{path}: not a busi checkpoint (no state_dict / hyper_parameters)")
    hparams = {k: v for k, v in contents["hyper_parameters"].items() if not k.startswith("_")}
    hparams.update(weights=None, compile=False)
    contents["state_dict"].setdefault("temperature", torch.ones(()))  # written before calibration existed
    try:
        classifier = BusiClassifier(**hparams)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{path}: not a busi checkpoint (its hyper-parameters do not fit: {error})") from None
    try:
        classifier.load_state_dict(contents["state_dict"])
    except RuntimeError as error:
        raise WeightsError(f"{path}: checkpoint does not match the busi model ({str(error).splitlines()[0]})") from None
    return classifier.eval()
