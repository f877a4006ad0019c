"""`busi-import-keras model.h5 --output DIR`: the original Keras project's trained model (DenseNet121 →
Flatten → 1024-1024-512-128-3) as a busi checkpoint, DIR/best.ckpt, with its preprocessing inside."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from busi import CLASS_NAMES
from busi.commands.options import command_parser, parse
from busi.errors import OptionError, WeightsError, run_command

if TYPE_CHECKING:
    from busi.model.classifier import BusiClassifier


def import_keras_model(
    model_file: Path,
    preprocessing: Literal["divide255", "imagenet"] = "divide255",
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> BusiClassifier:
    """A BusiClassifier holding the Keras model's weights: frozen DenseNet121 with Keras's BatchNorm
    epsilon, the original flatten head, temperature 1 (uncalibrated, as the Keras model answered)."""
    # imported here, not above: --help and option errors come before torch and Lightning load
    import torch
    from torch import nn
    from torchvision.models import densenet121

    from busi.io.keras_files import KERAS_BATCH_NORM_EPS, densenet_state_dict, original_head, read_keras_file
    from busi.model.classifier import BusiClassifier
    from busi.model.network import FEATURE_CHANNELS, FEATURE_STRIDE

    keras = read_keras_file(model_file)
    backbone = densenet_state_dict(keras, densenet121(weights=None).features.state_dict())  # the backbone first
    head = original_head(keras, FEATURE_CHANNELS, FEATURE_STRIDE)
    if head.class_count != len(class_names):
        raise WeightsError(
            f"{model_file}: the model answers {head.class_count} classes; busi-import-keras was given "
            f"{len(class_names)} ({', '.join(class_names)}): pass its classes in order with --class_names"
        )
    classifier = BusiClassifier(
        weights=None,
        image_size=head.image_size,
        class_names=tuple(class_names),
        preprocessing=preprocessing,
        batch_norm_eps=KERAS_BATCH_NORM_EPS,
    )
    classifier.model.features.load_state_dict(backbone)
    layers = [layer for layer in classifier.model.head if isinstance(layer, nn.Linear)]
    with torch.no_grad():
        for layer, (weight, bias) in zip(layers, head.linear, strict=True):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    classifier.imported = {
        "file": str(model_file),
        "sha256": hashlib.sha256(Path(model_file).read_bytes()).hexdigest(),
        "keras_version": keras.keras_version,
        "model_name": keras.model_name,
    }
    return classifier.eval()


def save_checkpoint(classifier: BusiClassifier, output: Path) -> Path:
    """DIR/best.ckpt in the layout Lightning's load_from_checkpoint reads (weights and hyperparameters)."""
    import lightning as L

    from busi.model.classifier import IMPORT_KEY
    from busi.training.checkpointing import AtomicCheckpointIO

    path = output / "best.ckpt"
    state = {
        "state_dict": classifier.state_dict(),
        "hyper_parameters": dict(classifier.hparams),
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
        IMPORT_KEY: classifier.imported,
    }
    output.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint(state, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "busi-import-keras",
        "Turn the original Keras project's model.h5 into a busi checkpoint (DIR/best.ckpt) that "
        "busi-predict, busi-evaluate, busi-export and the app take.",
        "--output",
        output={"type": Path, "required": True, "help": "folder for best.ckpt"},
    )
    parser.add_argument("model", type=Path, help="the Keras model saved with model.save('model.h5')")
    parser.add_argument(
        "--preprocessing",
        type=Literal["divide255", "imagenet"],
        default="divide255",
        help="what the model was fed: divide255 (pixels ÷ 255, the original app) or imagenet (Keras's "
        "densenet.preprocess_input: ÷ 255, then ImageNet mean and std)",
    )
    parser.add_argument("--class_names", type=list[str], default=list(CLASS_NAMES), help="the output classes, in order")
    args = parse(parser, argv)

    def run() -> None:
        if len(set(args.class_names)) != len(args.class_names):
            raise OptionError(f"--class_names {args.class_names}: names must differ")
        classifier = import_keras_model(args.model, args.preprocessing, tuple(args.class_names))
        path = save_checkpoint(classifier, args.output)
        size = classifier.hparams.image_size
        print(
            f"{args.model} → {path}: DenseNet121 at {size}×{size}, head 1024-1024-512-128-{len(classifier.class_names)}, "
            f"classes {', '.join(classifier.class_names)}, input ÷255"
            + (" then ImageNet mean/std" if args.preprocessing == "imagenet" else "")
            + f". Score it: busi-evaluate --ckpt {path} --data.root FOLDER"
        )

    return run_command(run)


if __name__ == "__main__":
    raise SystemExit(main())
