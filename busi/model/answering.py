"""The one way busi answers for images: Lightning's predict loop over a model's `predict_step`
(BusiClassifier or a FoldEnsemble), on as many devices as the Trainer is given."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.utils.data import DataLoader

from busi.model.inference import Outputs, join_outputs

Explain = Literal[False, "predicted", "label"]
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def batch_inputs(batch) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """(pixels, labels, keys) of a batch: a data module's (pixels, labels, keys, masks) or a batch of
    files (busi.data.files.collate_files: no labels, no keys)."""
    if isinstance(batch, dict):
        return batch["pixels"], None, None
    pixels, labels, keys, _ = batch
    return pixels, labels, list(keys)


class Answering:
    """predict_step and test_step of every busi model: `infer` of the batch's pixels. `explain` asks
    for Grad-CAM heat-maps: of the predicted class (`predicted`) or of the batch's labels (`label`)."""

    explain: Explain = False
    answer_dtype: torch.dtype = torch.float32  # bfloat16: the network answers under bf16 autocast (answer_in_bfloat16)

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0) -> Outputs:
        pixels, labels, keys = batch_inputs(batch)
        if not len(pixels):  # a batch of unreadable files
            empty = torch.empty((0, len(self.class_names)))
            return Outputs(empty, empty.clone())
        if self.explain == "label" and labels is None:
            raise ValueError("explain='label' needs labelled batches (pixels, labels, keys, masks)")
        explain = {False: False, "predicted": True, "label": labels}[self.explain]
        return self.infer(pixels, keys, explain=explain)

    def test_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0) -> Outputs:
        # The report scores the checkpoint as prediction, calibration and the exports use it: in fp32,
        # whatever precision it was trained in. busi.callbacks.split_reports.SplitReports collects what this returns.
        return self.predict_step(batch, batch_idx, dataloader_idx)


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN runs bf16 convolutions natively (elsewhere it emulates them, slowly)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def answer_in_bfloat16(model) -> None:
    """Every model of `model` (one, or a fold ensemble's) answers with its network under bf16 autocast
    (the dense head and the calibration stay float32); Grad-CAM is still computed in float32."""
    for member in model.members:
        member.answer_dtype = torch.bfloat16


def device_options(device: str | torch.device = "cpu") -> dict:
    """Trainer options that put one process on `device` (`auto`, `cpu`, `cuda`, `cuda:1`, a torch.device)."""
    device = str(device)
    if device == "auto":
        return {"accelerator": "auto", "devices": 1}
    device = torch.device(device)
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    return {"accelerator": device.type, "devices": 1}


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Without Lightning's start-up lines ("GPU available: …") and its advice on loader workers."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings(
                "ignore", message=r".*isinstance\(treespec, LeafSpec\).*"
            )  # torch 2.14 vs Lightning 2.6
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def answering_trainer(device: str | torch.device = "cpu", callbacks: Sequence[Callback] = (), **options) -> L.Trainer:
    """A Trainer that only answers: no logger, checkpoints, summary or progress bar; `options` override
    the device (`accelerator`, `devices`, `strategy`, `num_nodes`)."""
    with quiet_lightning():
        return L.Trainer(
            **{**device_options(device), **options},
            callbacks=list(callbacks),
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            precision="32-true",
        )


def run_predict(trainer: L.Trainer, model: L.LightningModule, loader: DataLoader, keep: bool = True) -> list | None:
    """`trainer.predict` without Lightning's start-up lines; the model keeps the Trainer it had (a
    training run's, when calibration or the out-of-fold rows answer in the middle of it)."""
    previous = model._trainer
    try:
        with quiet_lightning():
            return trainer.predict(model, loader, return_predictions=keep)
    finally:
        model.trainer = previous


def answer(
    model: L.LightningModule,
    loader: DataLoader,
    explain: Explain = False,
    callbacks: Sequence[Callback] = (),
) -> Outputs:
    """Every batch of `loader` answered by `model` on its own device in one process (also inside a DDP
    run), joined on the CPU."""
    device = next(model.parameters()).device
    model.explain, before = explain, model.explain
    try:
        # one process on this device, even inside a DDP run (calibration, out-of-fold rows): Lightning
        # would otherwise read the process group from the environment and answer a shard of the loader
        alone = {"strategy": SingleDeviceStrategy(device), "use_distributed_sampler": False}
        answers = run_predict(answering_trainer(device, callbacks, **alone), model, loader)
    finally:
        model.explain = before
    return join_outputs(answers, len(model.class_names))
