"""Benchmark: `python -m benchmarks.bench --root DATA [--per-class 50] [--full] [--parts …]` prints tables of speeds.

Parts: `frozen` (data path, the frozen recipe, prediction), `training` (full-network training steps in
each precision, memory layout and compilation, at 128 and 256 px) and `epoch` (whole full-network
epochs on DATA at 128 px: fp32, the default precision, compiled, other evaluation batches, each split into
its steps, data fetching, validation and checkpoints, and the cost of writing last.ckpt).
Every figure is measured in this process; the protocol is printed with each table.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from busi import CLASS_NAMES
from busi.callbacks.prediction_writer import predict_files
from busi.data.catalog import read_catalog, scan_class_folders
from busi.data.dataset import ImageTensors
from busi.io.images import UnreadableImageError, as_three_channels, decode_file, load_image, to_model_input
from busi.model.classifier import BusiClassifier, load_classifier
from busi.model.settings import Optimizer
from busi.training.checkpointing import AtomicCheckpointIO
from busi.training.cli import DEFAULT_CONFIG
from busi.training.run import run


def clock(function, *args, **kwargs) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def subset_folder(root: Path, per_class: int, into: Path) -> Path:
    """The first `per_class` images of each class (with their masks), linked into a new folder."""
    records = scan_class_folders(root)[0]
    for name in CLASS_NAMES:
        (into / name).mkdir(parents=True)
    counts = dict.fromkeys(range(len(CLASS_NAMES)), 0)
    for record in records:
        if counts[record.label] < per_class:
            counts[record.label] += 1
            for path in (record.path, *record.masks):
                (into / CLASS_NAMES[record.label] / path.name).symlink_to(path.resolve())
    return into


def data_path(root: Path, image_size: int, cache_dir: Path) -> dict:
    records = scan_class_folders(root)[0]

    def cold_decode():
        for record in records:
            with contextlib.suppress(UnreadableImageError):
                decode_file(record.path, image_size)

    seconds, _ = clock(cold_decode)
    read_catalog(root, image_size, -1, cache_dir=cache_dir)  # fill the cache
    cached_seconds, catalog = clock(read_catalog, root, image_size, -1, cache_dir=cache_dir)
    dataset = ImageTensors(catalog, range(len(catalog.records)))

    def one_epoch():
        for pixels, *_ in DataLoader(dataset, batch_size=16, shuffle=True):
            to_model_input(pixels)

    epoch_seconds, _ = clock(one_epoch)
    n = len(records)
    return {
        "images": n,
        "cold_decode_images_per_s": n / seconds,
        "cache_images_per_s": n / cached_seconds,
        "epoch_loader_images_per_s": n / epoch_seconds,
        "cache_mib": catalog.cache.path.stat().st_size / 2**20,
    }


def recipe_args(root: Path, out: Path, epochs: int, cache_features: bool, cache_dir: Path) -> list[str]:
    return [
        "--model.weights=none",
        f"--model.speed.cache_features={str(cache_features).lower()}",
        f"--data.root={root}",
        f"--data.cache_dir={cache_dir}",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def timed_run(args: list[str]):
    """(seconds, cli) of one whole `train.py` run with `args`."""
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own report is not the benchmark's
        return clock(run, args)


def recipe_wall(root: Path, out: Path, epochs: int, cache_features: bool, cache_dir: Path) -> tuple[float, Path]:
    seconds, cli = timed_run(recipe_args(root, out, epochs, cache_features, cache_dir))
    return seconds, Path(cli.trainer.checkpoint_callback.best_model_path)


def recipe_parts(root: Path, out: Path, epochs: int, cache_dir: Path) -> dict:
    """The frozen recipe's parts timed alone: start-up, one backbone pass, head-only epochs."""
    from busi.data.module import BusiDataModule
    from busi.training.cli import BusiCLI

    def start_up():
        cli = BusiCLI(BusiClassifier, BusiDataModule, run=False, args=recipe_args(root, out, epochs, True, cache_dir))
        cli.datamodule.setup("fit")
        return cli

    start_seconds, cli = clock(start_up)
    model, datamodule = cli.model.eval(), cli.datamodule
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    features = {}

    @torch.no_grad()
    def backbone_pass():
        for split in ("train", "val", "test"):
            loader = DataLoader(datamodule.dataset(split), batch_size=datamodule.hparams.eval_batch_size)
            features[split] = [
                (model.model.extract(model.prepare_inputs(x.to(device))), y.to(device)) for x, y, *_ in loader
            ]

    backbone_seconds, _ = clock(backbone_pass)
    optimizer = model.configure_optimizers()
    train_features = torch.cat([f for f, _ in features["train"]])
    train_targets = torch.cat([y for _, y in features["train"]])

    def head_epoch():
        model.model.head.train()
        order = torch.randperm(len(train_targets), device=device)
        for start in range(0, len(order), datamodule.hparams.batch_size):
            batch = order[start : start + datamodule.hparams.batch_size]
            loss = F.cross_entropy(model.model.head(train_features[batch]), train_targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.model.head.eval()
        with torch.no_grad():
            for f, _ in features["val"]:
                model.model.head(f)

    head_epoch()  # warm-up: allocates Adam's state, as the real run's first step does
    head_seconds = statistics.median(clock(head_epoch)[0] for _ in range(3))
    return {"start_up_s": start_seconds, "backbone_pass_s": backbone_seconds, "head_epoch_s": head_seconds}


def prediction(checkpoint: Path, images: list[Path], device: str, repeats: int = 20) -> dict:
    classifier = load_classifier(checkpoint).to(device)
    list(predict_files(classifier, images[:8], 8, device))  # warm-up
    batch_seconds, predictions = clock(lambda: list(predict_files(classifier, images, 32, device)))
    single = [clock(lambda: list(predict_files(classifier, images[:1], 1, device)))[0] for _ in range(repeats)]
    # The same weights as a bare eager model: contiguous NCHW float32, no channels_last.
    bare = load_classifier(checkpoint).to(device).to(memory_format=torch.contiguous_format)
    readable = [p for p in predictions if p.probabilities is not None][:32]
    with torch.inference_mode():
        pixels = torch.stack([as_three_channels(load_image(p.path, bare.hparams.image_size)) for p in readable])
        inputs = to_model_input(pixels.to(device))
        bare_single = [clock(bare.model, inputs[:1])[0] for _ in range(repeats)]
        ours = torch.tensor([p.probabilities for p in readable])
        difference = (bare.model(inputs).softmax(1).cpu() - ours).abs().max()
    return {
        "batch_images_per_s": len(images) / batch_seconds,
        "single_image_ms": 1000 * statistics.median(single),
        "bare_eager_single_ms": 1000 * statistics.median(bare_single),
        "max_probability_difference": difference.item(),
    }


def gpu_backbone(batch: int = 128, steps: int = 20) -> dict:
    from torchvision.models import densenet121

    inputs = torch.randn(batch, 3, 256, 256, device="cuda").contiguous(memory_format=torch.channels_last)
    bare = densenet121(weights=None).cuda().eval().to(memory_format=torch.channels_last)
    ours = BusiClassifier(weights=None).cuda().eval()

    def throughput(function) -> float:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                function(inputs)
            seconds, _ = clock(lambda: [function(inputs) for _ in range(steps)])
        return batch * steps / seconds

    bare_rate = throughput(bare.features)
    our_rate = throughput(ours.model.extract)
    return {"bare_images_per_s": bare_rate, "ours_images_per_s": our_rate, "fraction": our_rate / bare_rate}


# Full-network training: the offline recipe's step (forward, backward, AdamW) in each setting.
# (label, bf16 autocast, channels-last, torch.compile, head under autocast too); the first is the
# baseline: today's fp32 eager path (channels-last has been the default since the speed issue 6).
TRAINING_SETTINGS = (
    ("fp32 eager, channels-last (baseline)", False, True, False, False),
    ("fp32 eager, NCHW", False, False, False, False),
    ("bf16-mixed eager, NCHW", True, False, False, False),
    ("bf16-mixed eager, channels-last (CPU default)", True, True, False, False),
    ("bf16-mixed eager, channels-last, head in bf16 too", True, True, False, True),
    ("fp32 compiled, channels-last", False, True, True, False),
    ("bf16-mixed compiled, channels-last", True, True, True, False),
)


def training_rate(
    image_size: int,
    bf16: bool,
    channels_last: bool,
    compile: bool,
    head_in_bf16: bool = False,
    batch: int = 16,
    warmup: int = 3,
    steps: int = 8,
) -> dict:
    """Images/s of full-network training steps of the offline recipe (random weights, AdamW) on a
    fixed random batch: median of `steps` timed steps after `warmup` (which includes compilation)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    torch._dynamo.reset()  # each compiled setting compiles afresh, for its input size (not dynamic shapes)
    model = BusiClassifier(
        weights=None,
        freeze_backbone=False,
        image_size=image_size,
        channels_last=channels_last,
        compile=compile,
        optimizer="adamw",
        weight_decay=0.01,
    ).to(device)
    model.train()
    optimizer = model.configure_optimizers()  # constant schedule: the optimizer alone
    pixels = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, device=device)
    targets = torch.arange(batch, device=device) % 3

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            features = model._extract(model.prepare_inputs(pixels))
            # nn.Sequential.forward skips FullPrecisionHead's float32 region: the head as autocast runs it
            logits = nn.Sequential.forward(model.model.head, features) if head_in_bf16 else model.model.head(features)
            loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    warmup_seconds, _ = clock(lambda: [step() for _ in range(warmup)])
    seconds = statistics.median(clock(step)[0] for _ in range(steps))
    return {"images_per_s": batch / seconds, "warmup_s": warmup_seconds}


def training_rates(image_sizes: tuple[int, ...] = (128, 256)) -> dict:
    return {
        str(size): {label: training_rate(size, *setting) for label, *setting in TRAINING_SETTINGS}
        for size in image_sizes
    }


class EpochClock(Callback):
    """Wall time of each training epoch, from its start to the next one's, and where it went: the
    training steps (forward, backward, optimiser), fetching their batches (the data path), the
    validation pass, and the rest (checkpoint writes, logging)."""

    def __init__(self):
        self.marks: list[float] = []
        self.phases: list[dict[str, float]] = []
        self._last = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()
        self.marks.append(self._last)
        self.phases.append(dict.fromkeys(("fetch", "steps", "validation"), 0.0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.phases[-1]["fetch"] += now - self._last
        self._last = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.phases[-1]["steps"] += now - self._last
        self._last = now

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.phases:  # not the sanity check
            self.phases[-1]["validation"] += time.perf_counter() - self._last

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        return [end - start for start, end in itertools.pairwise(self.marks)]


# Full-network epochs of configs/scratch.yaml at 128 px: (label, extra options); the first is the
# baseline (fp32), the second the CPU default (bf16-mixed where the CPU computes it natively).
EPOCH_SETTINGS = (
    ("fp32", ("--trainer.precision=32-true",)),
    ("default", ()),
    ("default, compiled", ("--model.speed.compile=true",)),
    ("default, eval batch 128", ("--data.eval_batch_size=128",)),
    ("default, eval batch 16", ("--data.eval_batch_size=16",)),
)


def full_network_epochs(root: Path, out: Path, cache_dir: Path, options: tuple[str, ...], epochs: int = 4) -> dict:
    """`train.py --config configs/scratch.yaml` at 128 px on all of `root` with `options`: seconds per
    epoch (the median of all but the first, which compiles where compilation is on) and their parts."""
    args = [
        f"--config={DEFAULT_CONFIG.parent / 'scratch.yaml'}",  # first: the options below override it
        *recipe_args(root, out, epochs, False, cache_dir),
        "--data.image_size=128",
        f"--trainer.callbacks+={EpochClock.__module__}.EpochClock",  # __main__ under python -m
        *options,
    ]
    wall, cli = timed_run(args)
    epoch_clock = next(c for c in cli.trainer.callbacks if isinstance(c, EpochClock))
    seconds, phases = epoch_clock.seconds, epoch_clock.phases
    later = range(1, len(seconds))
    parts = {name: statistics.median(phases[i][name] for i in later) for name in ("fetch", "steps", "validation")}
    parts["rest"] = statistics.median(seconds[i] - sum(phases[i].values()) for i in later)
    return {
        "precision": str(cli.trainer.precision),
        "first_epoch_s": seconds[0],
        "epoch_s": statistics.median(seconds[i] for i in later),
        "parts_s": parts,
        "run_s": wall,
        "train_images": len(cli.datamodule.dataset("train")),
        "losses": losses_by_epoch(Path(cli.trainer.log_dir) / "history.csv"),
    }


def losses_by_epoch(history: Path) -> dict[str, list[float]]:
    """train/loss and val/loss of each epoch: how far a faster setting moves what is computed."""
    with history.open() as handle:
        rows = list(csv.DictReader(handle))
    return {name: [float(r[name]) for r in rows] for name in ("train/loss", "val/loss")}


def checkpoint_write(image_size: int, out: Path) -> dict:
    """Seconds to write `last.ckpt` of the offline recipe (weights and AdamW state) atomically, as
    every epoch does, and its size."""
    model = BusiClassifier(
        weights=None, freeze_backbone=False, image_size=image_size, optimizer=Optimizer(name="adamw")
    )
    optimizer = model.configure_optimizers()
    model(model.prepare_inputs(torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8))).sum().backward()
    optimizer.step()  # creates AdamW's two state tensors per parameter
    state = {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    path = out / f"last_{image_size}.ckpt"
    seconds = statistics.median(clock(AtomicCheckpointIO().save_checkpoint, state, path)[0] for _ in range(3))
    return {"seconds": seconds, "mib": path.stat().st_size / 2**20}


PARTS = ("frozen", "training", "epoch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="BUSI-layout folder")
    parser.add_argument("--per-class", type=int, default=50, help="images per class for the recipe comparison")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="also run the cached recipe on the whole root")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated: frozen (data path, frozen recipe, prediction), training (full-network "
        "training steps at 128 and 256 px), epoch (full-network epochs on ROOT at 128 px, checkpoint writes)",
    )
    parser.add_argument("--output", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}")
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
    }
    print(f"busi benchmark, {results['date']}, {results['machine']}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        cache_dir = scratch / "cache"
        if "frozen" in parts:
            results.update(frozen_recipe(args, scratch, cache_dir))
            print("\n".join(frozen_table(results, args)), flush=True)
        if "training" in parts:
            results["training"] = training_rates()
            print("\n".join(training_table(results["training"])), flush=True)
        if "epoch" in parts:
            read_catalog(args.root, 128, -1, cache_dir=cache_dir)  # decoded once, before the clocks run
            results["epochs"] = {
                label: full_network_epochs(args.root, scratch / f"epochs_{n}", cache_dir, options)
                for n, (label, options) in enumerate(EPOCH_SETTINGS)
            }
            results["checkpoint_write"] = {str(size): checkpoint_write(size, scratch) for size in (128, 256)}
            print("\n".join(epoch_table(results, args)), flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    return 0


def frozen_recipe(args, scratch: Path, cache_dir: Path) -> dict:
    results = {"data_path": data_path(args.root, 256, cache_dir)}
    subset = subset_folder(args.root, args.per_class, scratch / "subset")
    recipe = {}
    recipe["cached_1_epoch_s"], _ = recipe_wall(subset, scratch / "r1", 1, True, cache_dir)
    recipe["cached_s"], checkpoint = recipe_wall(subset, scratch / "r2", args.epochs, True, cache_dir)
    recipe["uncached_s"], _ = recipe_wall(subset, scratch / "r3", args.epochs, False, cache_dir)
    results["recipe_subset"] = recipe
    if args.full:
        parts = recipe_parts(args.root, scratch / "p", args.epochs, cache_dir)
        parts["sum_s"] = parts["start_up_s"] + parts["backbone_pass_s"] + args.epochs * parts["head_epoch_s"]
        parts["wall_s"], _ = recipe_wall(args.root, scratch / "full", args.epochs, True, cache_dir)
        results["recipe_full"] = parts
    images = [r.path for r in scan_class_folders(subset)[0]]
    results["predict_cpu"] = prediction(checkpoint, images, "cpu")
    if torch.cuda.is_available():
        results["predict_gpu"] = prediction(checkpoint, images, "cuda")
        results["gpu_backbone"] = gpu_backbone()
    return results


def row(measure: str, value: float, baseline: float | None = None, value_format: str = "12.1f") -> str:
    """One table line; `baseline` adds the value's ratio to it (1.00 for the baseline itself)."""
    ratio = f"{value / baseline:8.2f}" if baseline else ""
    return f"{measure:<58} {value:{value_format}} {ratio}".rstrip()


HEADER = f"{'measure':<58} {'value':>12} {'ratio':>8}"


def frozen_table(results: dict, args) -> list[str]:
    data, recipe, epochs, per_class = results["data_path"], results["recipe_subset"], args.epochs, args.per_class
    cold = data["cold_decode_images_per_s"]
    lines = [
        "",
        f"data: {args.root} ({data['images']} images); recipe: frozen DenseNet121, no pretrained weights, "
        f"256 px, batch 16, split seed 42",
        "",
        HEADER,
        row("data path: cold decode (images/s)", cold, cold),
        row("data path: decoded-image cache (images/s)", data["cache_images_per_s"], cold),
        row("data path: one epoch from memory (images/s)", data["epoch_loader_images_per_s"], cold),
        row("cache file size (MiB)", data["cache_mib"]),
        row(
            f"recipe, {per_class}/class, {epochs} epochs, no feature cache (s)",
            recipe["uncached_s"],
            recipe["uncached_s"],
        ),
        row(f"recipe, {per_class}/class, {epochs} epochs, feature cache (s)", recipe["cached_s"], recipe["uncached_s"]),
        row(f"recipe, {per_class}/class, 1 epoch, feature cache (s)", recipe["cached_1_epoch_s"]),
        row(
            f"wall({epochs} epochs) / wall(1 epoch), feature cache",
            recipe["cached_s"] / recipe["cached_1_epoch_s"],
            value_format="12.2f",
        ),
    ]
    if "recipe_full" in results:
        full = results["recipe_full"]
        lines += [
            row("full data: start-up alone (s)", full["start_up_s"]),
            row("full data: one backbone pass over all images alone (s)", full["backbone_pass_s"]),
            row("full data: one head-only epoch alone (s)", full["head_epoch_s"]),
            row(f"full data: sum of parts, {epochs} epochs (s)", full["sum_s"], full["sum_s"]),
            row(f"full data: recipe wall, {epochs} epochs (s)", full["wall_s"], full["sum_s"]),
        ]
    for device in ("cpu", "gpu"):
        if f"predict_{device}" in results:
            predict = results[f"predict_{device}"]
            bare = predict["bare_eager_single_ms"]
            lines += [
                row(f"predict {device}: folder in batches of 32 (images/s)", predict["batch_images_per_s"]),
                row(f"predict {device}: bare eager model, one image (ms)", bare, bare),
                row(
                    f"predict {device}: predict.py path, one image incl. decode (ms)", predict["single_image_ms"], bare
                ),
                row(f"predict {device}: max |p - p_bare|", predict["max_probability_difference"], value_format="12.2e"),
            ]
    if "gpu_backbone" in results:
        gpu = results["gpu_backbone"]
        lines += [
            row(
                "gpu: bare torchvision densenet121 features (images/s)",
                gpu["bare_images_per_s"],
                gpu["bare_images_per_s"],
            ),
            row("gpu: busi feature extraction (images/s)", gpu["ours_images_per_s"], gpu["bare_images_per_s"]),
        ]
    return lines


def training_table(training: dict) -> list[str]:
    device = "GPU" if torch.cuda.is_available() else "CPU"
    lines = [
        "",
        f"full-network training on the {device}: offline recipe (random weights, AdamW), batch 16, forward + "
        "backward + optimiser step, median of 8 steps after 3 warm-up steps",
        "",
        HEADER,
    ]
    for size, rates in training.items():
        baseline = next(iter(rates.values()))["images_per_s"]
        for label, rate in rates.items():
            lines.append(row(f"{size} px, {label} (images/s)", rate["images_per_s"], baseline))
        for label, rate in rates.items():
            if "compiled" in label:
                lines.append(row(f"{size} px, {label}: 3 warm-up steps incl. compiling (s)", rate["warmup_s"]))
    return lines


def epoch_table(results: dict, args) -> list[str]:
    epochs = results["epochs"]
    baseline, default = epochs["fp32"], epochs["default"]
    first = next(iter(epochs.values()))
    lines = [
        "",
        f"full-network epochs: train.py --config configs/scratch.yaml --data.root {args.root} --data.image_size 128, "
        f"{len(first['losses']['val/loss'])} epochs, {first['train_images']} training images (split seed 42); an epoch is "
        "training, validation, checkpoints, from its start to the next one's; median of all but the first; "
        "settings: " + "; ".join(f"{label}: {' '.join(options) or 'no options'}" for label, options in EPOCH_SETTINGS),
        "",
        HEADER,
    ]
    for name, measured in epochs.items():
        name = f"{name} ({measured['precision']})"
        parts = measured["parts_s"]
        moved = max(
            abs(a - b)
            for key in ("train/loss", "val/loss")
            for a, b in zip(measured["losses"][key], default["losses"][key], strict=True)
        )
        lines += [
            row(f"{name}: one epoch (s)", measured["epoch_s"], baseline["epoch_s"]),
            row(f"{name}: first epoch (s)", measured["first_epoch_s"]),
            row(f"{name}: training steps / data fetch (s)", parts["steps"], value_format="12.2f")
            + f" / {parts['fetch']:.2f}",
            row(f"{name}: validation / checkpoints and rest (s)", parts["validation"], value_format="12.2f")
            + f" / {parts['rest']:.2f}",
            row(f"{name}: whole run incl. start-up and test report (s)", measured["run_s"], baseline["run_s"]),
            row(f"{name}: largest loss change against default", moved, value_format="12.2e"),
        ]
    for size, write in results["checkpoint_write"].items():
        lines += [
            row(f"last.ckpt at {size} px: size (MiB)", write["mib"]),
            row(f"last.ckpt at {size} px: atomic write, once per epoch (s)", write["seconds"]),
        ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
