"""RunFiles: the split and the dataset audit, written into the run directory when a fit starts."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from busi.data.audit import format_audit
from busi.data.module import BusiDataModule
from busi.data.splits import write_split_csv


class RunFiles(Callback):
    """`split.csv` (which image went where: a resumed run reads it back) and the dataset audit
    (`audit.json`, `audit.txt`), written into the run directory when the fit starts."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or log_dir is None or not isinstance(datamodule, BusiDataModule):
            return
        run_dir, counts = Path(log_dir), datamodule.split_counts()
        write_split_csv(run_dir / "split.csv", datamodule.split_rows())
        audit = datamodule.catalog.audit
        (run_dir / "audit.json").write_text(json.dumps({**audit, "splits": counts}, indent=2))
        (run_dir / "audit.txt").write_text(format_audit(audit, counts) + "\n", encoding="utf-8")
