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
from torchmetrics import MeanMetric, SumMetric

from busi import CLASS_NAMES
from busi.data.augment import MAX_ROTATION_DEGREES, augment_batch
from busi.errors import OptionError, WeightsError
from busi.io.images import mask_known, to_model_input
from busi.model.answering import Answering
from busi.model.feature_cache import FeatureCache
from busi.model.inference import Outputs, calibrated_probabilities, grad_cam, lesion_probabilities
from busi.model.metrics import epoch_metrics, overlap_scores
from busi.model.network import (
    DEFAULT_BATCH_NORM_EPS,
    DenseNetClassifier,
    load_backbone_weights,
    parameter_counts,
    set_batch_norm_eps,
)

SUMMARY_KEY = "busi_summary"  # in best.ckpt: recipe, training data and test scores (busi.training.finish.model_summary)
IMPORT_KEY = "busi_import"  # in a checkpoint written by busi-import-keras: the file it came from


class BusiClassifier(Answering, L.LightningModule):
    """Trains DenseNetClassifier with Adam and cross-entropy (and the lesion decoder's Dice + BCE);
    `infer` is how it answers; every command reaches it through `predict_step` (busi.model.answering).

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
        augment: random ultrasound-safe augmentation of training batches (busi.data.augment).
        class_weighting: `balanced` weighs the loss by the inverse class frequency of the train split.
        label_smoothing: the training loss's target puts this share of the probability evenly on all
            classes (validation loss, calibration and the report use the hard labels).
        optimizer: `adam` (the original) or `adamw`.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: linear learning-rate warm-up from 0, then `schedule`.
        schedule: `constant` or `cosine` (decay to 0 at the last step).
        tta: test-time augmentation: average the probabilities of the image and its mirror image.
        head: `flatten` (the original: the whole feature map into the first dense layer), `pooled`
            (global average pooling first: 67 M fewer parameters at 256 px) or `lesion` (with the
            decoder: final features and dense block 3, averaged over the image and over the predicted
            lesion, so the classifier sees what the decoder found).
        segmentation_weight: λ > 0 adds a lesion decoder (busi.model.network.LesionDecoder) trained with
            λ·(Dice + BCE) on the lesion masks beside the classification loss; 0: no decoder.
        unfreeze_backbone_at_epoch: fine-tuning (freeze_backbone false): the backbone's weights stay
            fixed for this many epochs while the head and decoder train, then train too (BatchNorm
            layers train throughout).
        backbone_lr_ratio: the backbone's learning rate as a share of `lr` (fine-tuning).
        augment_rotation: with `augment`, rotations drawn up to ± this many degrees (10: what a
            probe's tilt gives; up to 180 for long from-scratch runs).
        augment_vertical_flip: with `augment`, turn half of the images upside down (no scanner does;
            a regulariser for long from-scratch runs).
        loss: the head's training loss: `cross_entropy`, or `focal` (Lin et al. 2017: each image's
            cross-entropy scaled by (1 − p_true)^γ, so confidently right images count less), both
            with the class weights.
        focal_gamma: γ of the focal loss (0: cross-entropy).
        teacher: a busi-cv folder whose models teach this one (busi.training.distillation): the training loss
            becomes (1 − w)·the loss above + w·the cross-entropy against the teacher's probabilities.
        teacher_targets: `out_of_fold` (each training image scored by the fold model that never saw
            it) or `ensemble` (the mean of all fold models, each of which trained on most of them).
        distillation_weight: w, the teacher's share of the training loss.
        preprocessing: how uint8 pixels become the network's input: `imagenet` (÷255, then ImageNet
            mean and std: torchvision's and Keras DenseNet's `preprocess_input`) or `divide255` (÷255
            only: the original Keras project's app; set by busi-import-keras).
        batch_norm_eps: the backbone's BatchNorm epsilon; None: the weights' own (Keras files 1.001e-5,
            otherwise torch's 1e-5). Recorded in checkpoints.
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
        class_weighting: Literal["none", "balanced"] = "none",
        label_smoothing: float = 0.0,
        optimizer: Literal["adam", "adamw"] = "adam",
        weight_decay: float = 0.0,
        warmup_epochs: float = 0.0,
        schedule: Literal["constant", "cosine"] = "constant",
        tta: bool = False,
        head: Literal["flatten", "pooled", "lesion"] = "flatten",
        segmentation_weight: float = 0.0,
        unfreeze_backbone_at_epoch: int = 0,
        backbone_lr_ratio: float = 1.0,
        preprocessing: Literal["imagenet", "divide255"] = "imagenet",
        batch_norm_eps: float | None = None,
        augment_rotation: float = MAX_ROTATION_DEGREES,
        augment_vertical_flip: bool = False,
        loss: Literal["cross_entropy", "focal"] = "cross_entropy",
        focal_gamma: float = 2.0,
        teacher: str | None = None,
        teacher_targets: Literal["out_of_fold", "ensemble"] = "out_of_fold",
        distillation_weight: float = 0.5,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = tuple(class_names)
        if not 0 <= label_smoothing < 1:
            raise OptionError(f"--model.label_smoothing {label_smoothing}: must be at least 0 and below 1 (0: off)")
        if loss == "focal" and (label_smoothing or focal_gamma < 0):
            raise OptionError("--model.loss focal takes --model.focal_gamma ≥ 0 and no --model.label_smoothing")
        if not 0 <= distillation_weight <= 1:
            raise OptionError(f"--model.distillation_weight {distillation_weight}: must be in [0, 1]")
        if segmentation_weight < 0:
            raise OptionError(f"--model.segmentation_weight {segmentation_weight}: must be 0 (off) or positive")
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def configure_models(self) -> None:
        hp = self.hparams
        segment = hp.segmentation_weight > 0
        self.model = DenseNetClassifier(hp.image_size, len(self.class_names), hp.freeze_backbone, hp.head, segment)
        weights_eps = load_backbone_weights(self.model.features, hp.weights)
        hp.batch_norm_eps = hp.batch_norm_eps or weights_eps or DEFAULT_BATCH_NORM_EPS
        set_batch_norm_eps(self.model.features, hp.batch_norm_eps)
        if hp.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Kept outside the module tree so that state_dict keys never gain `_orig_mod.`.
        self._extract = torch.compile(self.model.extract) if hp.compile else self.model.extract
        self.feature_cache = FeatureCache(hp.feature_cache_mb)
        # Temperature scaling, fitted on the validation split after training (busi.training.finish).
        self.register_buffer("temperature", torch.ones(()))
        self.summary: dict | None = None  # read from a checkpoint's SUMMARY_KEY
        self.imported: dict | None = None  # read from a checkpoint's IMPORT_KEY

    def configure_losses(self) -> None:
        # set from the train split's class counts when the fit starts (class_weighting: balanced)
        self.register_buffer("class_weight", torch.ones(len(self.class_names)), persistent=False)
        # the teacher's probabilities by image digest, set when the fit starts (busi.training.distillation.TeacherTargets)
        self.soft_targets: dict[str, torch.Tensor] = {}

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
        hp = self.hparams
        return hp.freeze_backbone and hp.cache_features and not hp.augment and not self.model.segments

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
            hp = self.hparams
            geometry = {"max_rotation_degrees": hp.augment_rotation, "vertical_flip": hp.augment_vertical_flip}
            if moved:
                augmented, masks = augment_batch(pixels, masks, **geometry)
            else:
                augmented = augment_batch(pixels, **geometry)
            images = to_model_input(augmented, self.hparams.preprocessing)
        else:
            images = to_model_input(pixels, self.hparams.preprocessing) if pixels.dtype == torch.uint8 else pixels
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images if masks is None else (images, masks)

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
        with torch.autocast(images.device.type, enabled=False):
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
        hp = self.hparams
        if not hp.freeze_backbone and hp.unfreeze_backbone_at_epoch:  # a function of the epoch: exact on resume
            self.model.features.requires_grad_(self.current_epoch >= hp.unfreeze_backbone_at_epoch)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        pixels, targets, keys, masks = batch
        images, masks = self.prepare_inputs(pixels, masks, augment=self.hparams.augment)
        features, lesions = self.encode(images, keys)
        logits = self.model.head(features)
        loss = self.classification_loss(logits, targets)
        if self.hparams.teacher:
            if not self.soft_targets:
                raise OptionError("--model.teacher: no soft targets; train through busi-train (TeacherTargets)")
            soft = torch.stack([self.soft_targets[key] for key in keys])
            weight = self.hparams.distillation_weight
            loss = (1 - weight) * loss + weight * soft_cross_entropy(logits, soft)
        self.train_metrics.update(logits, targets)
        self.train_loss.update(loss.detach(), weight=len(targets))
        self.train_samples.update(len(targets))
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/samples", self.train_samples, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        if self.model.segments:
            segmentation = segmentation_loss(lesions, masks)
            loss = loss + self.hparams.segmentation_weight * segmentation
            self.train_segmentation_loss.update(segmentation.detach(), weight=len(targets))
            self.log("train/segmentation_loss", self.train_segmentation_loss, on_step=False, on_epoch=True)
        return loss

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of the head: cross-entropy with the class weights and label smoothing, or
        the focal loss with the class weights."""
        hp = self.hparams
        if hp.loss == "focal":
            return focal_loss(logits, targets, hp.focal_gamma, self.class_weight)
        return F.cross_entropy(logits, targets, weight=self.class_weight, label_smoothing=hp.label_smoothing)

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
        hp = self.hparams
        parameters = [p for p in self.parameters() if p.requires_grad]
        if not hp.freeze_backbone and (hp.unfreeze_backbone_at_epoch or hp.backbone_lr_ratio != 1):
            backbone = list(self.model.features.parameters())
            chosen = set(backbone)
            rest = [p for p in parameters if p not in chosen]
            parameters = [{"params": rest}, {"params": backbone, "lr": hp.lr * hp.backbone_lr_ratio}]
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


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−Σ_c q_c log p_c, averaged over the batch (q: a teacher's probabilities)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """−w_t (1 − p_t)^γ log p_t, averaged with the class weights as F.cross_entropy averages (γ 0: equal)."""
    log_true = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None])[:, 0]
    weights = torch.ones_like(log_true) if weight is None else weight[targets]
    return (-((1 - log_true.exp()) ** gamma) * log_true * weights).sum() / weights.sum()


def segmentation_loss(lesion_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE of the lesion logits (upsampled to the mask size) over the batch's images whose
    masks are known (normal images: empty masks); 0, still connected to the decoder, when there is none."""
    known = mask_known(masks)
    logits = F.interpolate(lesion_logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    if not known.any():
        return logits.sum() * 0.0  # keeps every decoder parameter in the graph (DDP)
    logits, targets = logits[known], masks[known].float()
    probabilities = logits.sigmoid()
    dice = 1 - (2 * (probabilities * targets).sum() + 1) / (probabilities.sum() + targets.sum() + 1)
    return dice + F.binary_cross_entropy_with_logits(logits, targets)


def load_classifier(checkpoint: Path | str, map_location: str | torch.device = "cpu") -> BusiClassifier:
    """A trained classifier from a checkpoint, through Lightning's `load_from_checkpoint` with
    `weights_only=True` (no code is unpickled) and without fetching backbone weights again (the
    checkpoint holds all of them); every failure is one WeightsError line naming the file."""
    path = Path(checkpoint)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found; pass RUN/checkpoints/best.ckpt from a training run")
    try:
        classifier = BusiClassifier.load_from_checkpoint(
            path, map_location=map_location, weights_only=True, weights=None, compile=False
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


def load_classifiers(path: Path | str, map_location: str | torch.device = "cpu") -> list[BusiClassifier]:
    """One checkpoint, or every fold's best.ckpt of a `busi-cv` folder (a fold ensemble)."""
    path = Path(path)
    if not path.is_dir():
        return [load_classifier(path, map_location)]
    paths = sorted(path.glob("fold_*/lightning_logs/version_*/checkpoints/best.ckpt"))
    if not paths:
        raise WeightsError(
            f"{path}: no fold_*/lightning_logs/version_*/checkpoints/best.ckpt; pass a checkpoint or a busi-cv folder"
        )
    classifiers = [load_classifier(p, map_location) for p in paths]
    if len({(c.class_names, c.hparams.image_size) for c in classifiers}) > 1:
        raise WeightsError(f"{path}: the fold models differ in classes or image size; they cannot be averaged")
    return classifiers
