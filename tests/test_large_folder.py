"""20,000 images: training runs within the memory limit, reading what does not fit from disk."""

import json
from pathlib import Path

import pytest

from benchmarks.bench_memory import write_synthetic_folder
from busi.data.cache import DecodedImageCache
from busi.training.run import run

COUNT = 20_000
LIMIT_MB = 2


@pytest.mark.slow
def test_twenty_thousand_images_train_within_the_memory_limit(tmp_path):
    root = write_synthetic_folder(tmp_path / "large", COUNT, side=40)
    cli = run([
        "--model.weights=none", f"--data.root={root}", "--data.image_size=32", f"--data.memory_limit_mb={LIMIT_MB}",
        f"--model.speed.feature_cache_mb={LIMIT_MB}", f"--data.cache_dir={tmp_path / 'cache'}", "--data.batch_size=16",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2", "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
    ])  # fmt: skip
    catalog = cli.datamodule.catalog
    held = sum(p.numel() for p in catalog.pixels if p is not None)
    assert len(catalog.records) == COUNT
    assert 0 < held <= LIMIT_MB * 2**20 and catalog.streamed > COUNT // 2
    assert cli.trainer.global_step == 3 and cli.datamodule.num_workers >= 1  # workers decode from disk
    assert 0 < cli.model.feature_cache.bytes <= LIMIT_MB * 2**20
    cache = DecodedImageCache(tmp_path / "cache", 32, LIMIT_MB * 2**20)
    assert len(cache.entries) == COUNT and cache.pixel_bytes <= LIMIT_MB * 2**20
    audit = json.loads((Path(cli.trainer.log_dir) / "audit.json").read_text())
    assert audit["streamed_from_disk"] == catalog.streamed
