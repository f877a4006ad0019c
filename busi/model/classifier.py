"""BusiClassifier: the LightningModule that trains busi.model.network.DenseNetClassifier and answers with it;
loading trained classifiers from checkpoints."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from busi import CLASS_NAMES
from busi.data.augment import augment_batch
from busi.data.mixing import mix_batch
from busi.errors import SettingError, WeightsError
from busi.io.images import to_model_input
from busi.model.answering import Answering
from busi.model.feature_cache import FeatureCache
from busi.model.inference import Outputs, calibrated_probabilities, grad_cam, lesion_probabilities
from busi.model.losses import ClassificationLoss, segmentation_loss
from busi.model.metrics import epoch_metrics, overlap_scores
from busi.model.migration import migrate_hyperparameters
from busi.model.network import (
    DEFAULT_BATCH_NORM_EPS,
    DenseNetClassifier,
    load_backbone_weights,
    parameter_counts,
    set_batch_norm_eps,
)
from busi.model.settings import Augmentation, Loss, Optimizer, Settings, Speed

SUMMARY_KEY = "busi_summary"  # in best.ckpt: recipe, training data and test scores (busi.training.finish.model_summary)
IMPORT_KEY = "busi_import"  # in a checkpoint written by busi-import-keras: the file it came from


class BusiClassifier(Answering, L.LightningModule):
    """Trains DenseNetClassifier (DenseNet121 → the head, and a lesion decoder when the loss has one);
    `infer` is how it answers; every command reaches it through `predict_step` (busi.model.answering).
    Distillation from a teacher and unfreezing the backbone mid-run are training callbacks
    (busi.callbacks.distillation, busi.callbacks.finetuning), not settings of the model.

    Args:
        weights: backbone weights: `imagenet` (torchvision IMAGENET1K_V1), a state-dict path, or `none`.
        freeze_backbone: keep the DenseNet121 features fixed (parameters and BatchNorm statistics).
        image_size: input side in pixels (linked to data.image_size by train.py).
        class_names: output classes, in order.
        head: `flatten` (the original: the whole feature map into the first dense layer), `pooled`
            (global average pooling first: 67 M fewer parameters at 256 px) or `lesion` (with the
            decoder: final features and dense block 3, averaged over the image and over the predicted
            lesion, so the classifier sees what the decoder found).
        drop_rate: dropout after each of DenseNet's dense layers while training (torchvision's
            `drop_rate`; the DenseNet paper trains without augmentation with 0.2); 0: none, the original.
        preprocessing: how uint8 pixels become the network's input: `imagenet` (÷255, then ImageNet
            mean and std: torchvision's and Keras DenseNet's `preprocess_input`) or `divide255` (÷255
            only: the original Keras project's app; set by busi-import-keras).
        batch_norm_eps: the backbone's BatchNorm epsilon; None: the weights' own (Keras files 1.001e-5,
            otherwise torch's 1e-5). Recorded in checkpoints.
        tta: test-time augmentation: average the probabilities of the image and its mirror image.
        conformal_alpha: prediction sets' miscoverage (busi.evaluation.conformal): after the temperature,
            per-class thresholds fitted on the validation split and stored in best.ckpt; 0: none.
        overlays: what the images it was trained on had done to their drawn marks (linked to
            data.overlays): `inpaint` makes every path that answers for it inpaint them too.
        optimizer: the optimiser and its schedule (busi.model.settings.Optimizer).
        loss: the training losses; `loss.segmentation_weight` > 0 adds the lesion decoder (Loss).
        augmentation: random augmentation of training batches (Augmentation).
        speed: feature caching, memory layout, torch.compile (Speed): how fast, never what.
    """

    def __init__(
        self,
        weights: str | None = "imagenet",
        freeze_backbone: bool = True,
        image_size: int = 256,
        class_names: tuple[str, ...] = CLASS_NAMES,
        head: Literal["flatten", "pooled", "lesion"] = "flatten",
        drop_rate: float = 0.0,
        preprocessing: Literal["imagenet", "divide255"] = "imagenet",
        batch_norm_eps: float | None = None,
        tta: bool = False,
        conformal_alpha: float = 0.0,
        overlays: Literal["keep", "inpaint"] = "keep",
        optimizer: Optimizer = Optimizer(),
        loss: Loss = Loss(),
        augmentation: Augmentation = Augmentation(),
        speed: Speed = Speed(),
    ):
        super().__init__()
        self.settings = Settings.of(optimizer=optimizer, loss=loss, augmentation=augmentation, speed=speed)
        # the groups as plain dicts: checkpoints load with weights_only, which reads no classes
        self.save_hyperparameters(
            {
                "weights": weights,
                "freeze_backbone": freeze_backbone,
                "image_size": image_size,
                "class_names": class_names,
                "head": head,
                "drop_rate": drop_rate,
                "preprocessing": preprocessing,
                "batch_norm_eps": batch_norm_eps,
                "tta": tta,
                "conformal_alpha": conformal_alpha,
                "overlays": overlays,
                **self.settings.as_dicts(),
            }
        )
        self.class_names = tuple(class_names)
        if not 0 <= conformal_alpha < 1:
            raise SettingError(
                f"{{conformal_alpha}} {conformal_alpha}: give a miscoverage in [0, 1), e.g. 0.1 (0: no prediction sets)"
            )
        if self.settings.augmentation.mixing != "none" and self.settings.loss.name == "focal":
            raise SettingError(
                "{augmentation.mixing} gives soft targets, which {loss.name} focal does not take: "
                "use {loss.name} cross_entropy with it"
            )
        if head == "lesion" and not self.settings.loss.segmentation_weight:
            raise SettingError(
                "{head} lesion reads the lesion decoder's map: turn the decoder on with "
                "{loss.segmentation_weight} 0.5 (any value above 0)"
            )
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def configure_models(self) -> None:
        hp, speed = self.hparams, self.settings.speed
        segment = self.settings.loss.segmentation_weight > 0
        self.model = DenseNetClassifier(
            hp.image_size, len(self.class_names), hp.freeze_backbone, hp.head, segment, hp.get("drop_rate", 0.0)
        )
        weights_eps = load_backbone_weights(self.model.features, hp.weights)
        hp.batch_norm_eps = hp.batch_norm_eps or weights_eps or DEFAULT_BATCH_NORM_EPS
        set_batch_norm_eps(self.model.features, hp.batch_norm_eps)
        if speed.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Kept outside the module tree so that state_dict keys never gain `_orig_mod.`.
        self._extract = torch.compile(self.model.extract) if speed.compile else self.model.extract
        self.feature_cache = FeatureCache(speed.feature_cache_mb)
        # Temperature scaling, fitted on the validation split after training (busi.training.finish).
        self.register_buffer("temperature", torch.ones(()))
        self.summary: dict | None = None  # read from a checkpoint's SUMMARY_KEY
        self.imported: dict | None = None  # read from a checkpoint's IMPORT_KEY

    def configure_losses(self) -> None:
        # the head's training loss, called with (logits, labels, image digests); a training callback may
        # wrap it (busi.callbacks.distillation)
        self.training_loss: nn.Module = ClassificationLoss(self.settings.loss, len(self.class_names))

    def configure_metrics(self) -> None:
        classes = len(self.class_names)
        self.train_metrics = epoch_metrics(classes, "train/")
        self.val_metrics = epoch_metrics(classes, "val/")
        # torchmetrics rather than self.log averaging: exact over all processes under DDP
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.train_segmentation_loss, self.val_dice = MeanMetric(), MeanMetric()
        self.train_samples, self.val_samples = SumMetric(), SumMetric()

    @property
    def image_size(self) -> int:
        return self.hparams.image_size

    @property
    def overlays(self) -> str:
        """`inpaint`: its images' drawn marks are inpainted before it sees them (trained so)."""
        return self.hparams.get("overlays", "keep")

    @property
    def segments(self) -> bool:
        """The network has a lesion decoder."""
        return self.model.segments

    @property
    def members(self) -> list[BusiClassifier]:
        return [self]

    @property
    def caches_features(self) -> bool:
        # Valid only while the backbone is a fixed function of the image: frozen weights, eval-mode
        # BatchNorm, and the same input pixels every epoch (no random augmentation). The decoder
        # needs the dense blocks' outputs too, which are not kept.
        cached = self.hparams.freeze_backbone and self.settings.speed.cache_features
        return cached and not self.settings.augmentation.changes_pixels and not self.model.segments

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.classify(images, self._extract)

    def prepare_inputs(
        self, pixels: torch.Tensor, masks: torch.Tensor | None = None, augment: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 (N, 1 or 3, H, W) pixels → normalised float in the model's memory layout: the one place
        batches are prepared. With `augment` (training), randomly augmented first (busi.data.augment), the
        lesion `masks` moved with their images; returns (inputs, masks) when `masks` are given. Float
        pixels are taken as already prepared."""
        if augment:
            moved = masks is not None and self.model.segments
            augmentation = self.settings.augmentation
            geometry = {"max_rotation_degrees": augmentation.rotation, "vertical_flip": augmentation.vertical_flip}
            if moved:
                augmented, masks = augment_batch(pixels, masks, **geometry)
            else:
                augmented = augment_batch(pixels, **geometry)
            images = to_model_input(augmented, self.hparams.preprocessing)
        else:
            images = to_model_input(pixels, self.hparams.preprocessing) if pixels.dtype == torch.uint8 else pixels
        images = self.in_layout(images)
        return images if masks is None else (images, masks)

    def in_layout(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the model's memory layout (channels-last when `speed.channels_last`)."""
        if self.settings.speed.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def encode(self, images: torch.Tensor, keys: list[str] | None = None):
        """(final features, lesion logits or None without a decoder); with a frozen backbone and image
        keys (content digests), backbone features are computed once per image."""
        if self.model.segments or keys is None or not self.caches_features:
            return self.model.encode(images, self._extract)
        return self.feature_cache.features(keys, images.device.type, lambda: self._extract(images)), None

    def infer(
        self, pixels: torch.Tensor, keys: list[str] | None = None, explain: bool | torch.Tensor = False
    ) -> Outputs:
        """What the model answers for uint8 (N, 1 or 3, H, W) pixels, in float32 whatever precision it
        trained in: calibrated probabilities, lesion maps with a decoder and, with `explain`, Grad-CAM of
        the predicted classes (True) or of the given ones (a tensor). `keys` (content digests) let a
        frozen backbone reuse cached features. Reports, calibration, prediction and the app use it."""
        images = self.prepare_inputs(pixels.to(self.device))
        cams = explained = None
        bf16 = self.answer_dtype == torch.bfloat16 and explain is False  # busi-serve --precision bf16
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            if explain is False:
                with torch.no_grad():
                    features, lesion_logits = self.encode(images, keys)
                    logits = self.model.head(features).float()
            else:
                with torch.inference_mode(False), torch.no_grad():
                    images = images.clone()  # not an inference tensor: the head is differentiated next
                    features, lesion_logits = self.encode(images)
                classes = None if explain is True else explain
                cams, logits, explained = grad_cam(
                    self.model.head, features, images.shape[-2:], classes, self.model.cam_channels
                )
            with torch.no_grad():
                probabilities = calibrated_probabilities(self, images, logits, self.temperature, self.hparams.tta)
                lesions = lesion_probabilities(lesion_logits, images.shape[-2:])
        return Outputs(probabilities, logits.softmax(dim=1), logits, cams, explained, lesions)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state_dict = checkpoint.get("state_dict")
        if not isinstance(state_dict, dict) or not any(key.startswith("model.features.") for key in state_dict):
            raise WeightsError("not a busi checkpoint (no busi model weights in its state_dict)")
        state_dict.setdefault("temperature", torch.ones(()))  # written before calibration existed
        self.summary = checkpoint.get(SUMMARY_KEY)
        self.imported = checkpoint.get(IMPORT_KEY)
        expected, found = set(self.state_dict()), set(state_dict)
        if expected != found:
            differ = sorted(expected ^ found)
            raise WeightsError(
                f"checkpoint does not match the busi model ({len(differ)} keys differ, e.g. {differ[0]})"
            )
        current = self.model.features.state_dict()
        incoming = {k.removeprefix("model.features."): v for k, v in state_dict.items()}
        if any(not torch.equal(value, incoming.get(key, value.new_empty(0))) for key, value in current.items()):
            self.feature_cache.clear()

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.settings.loss.class_weighting == "balanced" and hasattr(datamodule, "split_counts"):
            counts = torch.tensor(list(datamodule.split_counts()["train"].values()), dtype=torch.float32)
            self.training_loss.class_weight = (counts.sum() / (len(counts) * counts.clamp_min(1))).to(self.device)
        trainable, frozen = parameter_counts(self.model)
        rank_zero_info(
            f"Parameters: {trainable:,} trainable, {frozen:,} frozen (freeze_backbone={self.hparams.freeze_backbone})"
        )

    def on_train_epoch_start(self) -> None:
        # Lightning restores each submodule's `training` flag directly after validation,
        # bypassing `train()`; re-assert the frozen backbone's eval mode every epoch.
        self.model.train()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        pixels, targets, keys, masks = batch
        augmentation = self.settings.augmentation
        images, masks = self.prepare_inputs(pixels, masks, augment=augmentation.enabled)
        answers = targets  # what the loss learns: the labels, or mixed pairs' soft targets
        if augmentation.mixing != "none":
            images, answers, masks = mix_batch(
                images,
                targets,
                len(self.class_names),
                augmentation.mixing,
                augmentation.mixing_alpha,
                masks if self.model.segments else None,
            )
            images = self.in_layout(images)
        features, lesions = self.encode(images, keys)
        logits = self.model.head(features)
        loss = self.training_loss(logits, answers, keys)
        self.train_metrics.update(logits, targets)  # against each image's own label, mixed or not
        self.train_loss.update(loss.detach(), weight=len(targets))
        self.train_samples.update(len(targets))
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/samples", self.train_samples, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        if self.model.segments:
            segmentation = segmentation_loss(lesions, masks)
            loss = loss + self.settings.loss.segmentation_weight * segmentation
            self.train_segmentation_loss.update(segmentation.detach(), weight=len(targets))
            self.log("train/segmentation_loss", self.train_segmentation_loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        pixels, targets, keys, masks = batch
        features, lesions = self.encode(self.prepare_inputs(pixels), keys)
        logits = self.model.head(features)
        if lesions is not None:
            overlap = overlap_scores(lesion_probabilities(lesions, masks.shape[-2:]), masks)
            if overlap.has_lesion.any():
                self.val_dice.update(overlap.dice[overlap.has_lesion])
                self.log("val/dice", self.val_dice, on_epoch=True)
        self.val_metrics.update(logits, targets)
        self.val_loss.update(F.cross_entropy(logits, targets), weight=len(targets))
        self.val_samples.update(len(targets))
        self.log("val/loss", self.val_loss, on_epoch=True)
        self.log("val/samples", self.val_samples, on_epoch=True)
        self.log_dict(self.val_metrics, on_epoch=True)

    def configure_optimizers(self):
        hp = self.settings.optimizer
        frozen = self.hparams.freeze_backbone
        # A backbone that trains is optimised from the start, even while a fine-tuning callback
        # (busi.callbacks.finetuning) holds its weights fixed: no parameter group is added mid-run.
        parameters = [p for p in self.parameters() if p.requires_grad or not frozen]
        if not frozen and hp.backbone_lr_ratio != 1:
            backbone = list(self.model.features.parameters())
            chosen = set(backbone)
            rest = [p for p in parameters if p not in chosen]
            parameters = [{"params": rest}, {"params": backbone, "lr": hp.lr * hp.backbone_lr_ratio}]
        kind = torch.optim.AdamW if hp.name == "adamw" else torch.optim.Adam
        optimizer = kind(parameters, lr=hp.lr, weight_decay=hp.weight_decay, fused=True)
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
    """A trained classifier from a checkpoint, through Lightning's `load_from_checkpoint` with
    `weights_only=True` (no code is unpickled) and without fetching backbone weights again (the
    checkpoint holds all of them); every failure is one WeightsError line naming the file."""
    path = Path(checkpoint)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found; pass RUN/checkpoints/best.ckpt from a training run")
    try:
        # hyper-parameters of earlier busi versions in today's form (busi.model.migration); they override
        # the checkpoint's own, whose old names the constructor does not take
        hparams = migrate_hyperparameters(stored_hyperparameters(path))
        speed = {**hparams.get("speed", {}), "compile": False}
        classifier = BusiClassifier.load_from_checkpoint(
            path, map_location=map_location, weights_only=True, **{**hparams, "weights": None, "speed": speed}
        )
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from None
    except pickle.UnpicklingError as error:
        refused = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        detail = f" ({refused[0]})" if refused else ""
        raise WeightsError(
            f"{path}: refused: the checkpoint holds pickled objects other than tensors and plain values{detail}; "
            "only load checkpoints written by busi's train.py"
        ) from None
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        if "state_dict" in reason:  # load_state_dict: the tensors' shapes differ
            raise WeightsError(f"{path}: checkpoint does not match the busi model ({reason})") from None
        raise WeightsError(f"{path}: not a readable checkpoint ({reason})") from None  # torch.load
    except Exception as error:  # a readable file with other contents (Lightning's migration, hparams)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"{path}: not a busi checkpoint ({type(error).__name__}: {reason})") from None
    return classifier.eval()


def stored_hyperparameters(path: Path) -> dict:
    """A checkpoint's hyper-parameters, read without loading its tensors (mmap) where its format allows."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a checkpoint in torch's legacy format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    return (state.get("hyper_parameters") if isinstance(state, dict) else None) or {}


def checkpoint_paths(path: Path | str) -> list[Path]:
    """The checkpoint itself, or every fold's best.ckpt of a `busi-cv` folder (WeightsError when it has none)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    paths = sorted(path.glob("fold_*/lightning_logs/version_*/checkpoints/best.ckpt"))
    if not paths:
        raise WeightsError(
            f"{path}: no fold_*/lightning_logs/version_*/checkpoints/best.ckpt; pass a checkpoint or a busi-cv folder"
        )
    return paths


def load_classifiers(path: Path | str, map_location: str | torch.device = "cpu") -> list[BusiClassifier]:
    """One checkpoint, or every fold's best.ckpt of a `busi-cv` folder (a fold ensemble)."""
    path = Path(path)
    classifiers = [load_classifier(p, map_location) for p in checkpoint_paths(path)]
    if len({(c.class_names, c.hparams.image_size) for c in classifiers}) > 1:
        raise WeightsError(f"{path}: the fold models differ in classes or image size; they cannot be averaged")
    return classifiers
