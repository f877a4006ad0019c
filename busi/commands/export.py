"""`busi-export --ckpt RUN/checkpoints/best.ckpt --format onnx`: a checkpoint as an ONNX, TorchScript or
torch.export model that takes RGB pixels and returns calibrated probabilities."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from busi.commands.options import command_parser, parse
from busi.errors import OptionError, run_command

if TYPE_CHECKING:
    from busi.model.classifier import BusiClassifier

NORMALISATION = {
    "imagenet": "inside the model (divided by 255, then ImageNet mean and std)",
    "divide255": "inside the model (divided by 255 only: a model imported from Keras)",
}
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported-program": ".pt2"}


def preprocessing(classifier: BusiClassifier, model_format: str) -> dict:
    from busi.model.metrics import LESION_THRESHOLD

    size = classifier.hparams.image_size
    return {
        "format": model_format,
        "input": {
            "name": "pixels",
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "values": "RGB pixel values 0-255 (grayscale replicated to 3 channels, 16-bit scaled to 8-bit)",
            "resize": {
                "to": f"{size}x{size}, squashed (the aspect ratio is not kept)",
                "filter": "antialiased bilinear: Pillow's Image.resize(..., Image.Resampling.BILINEAR) on the 8-bit "
                "image, whose filter widens with the reduction (torch interpolate(mode='bilinear', antialias=True) "
                "is the same to about 2e-5)",
                "not": "plain bilinear (OpenCV INTER_LINEAR, torch antialias=False) samples 4 pixels whatever the "
                "reduction: probabilities then differ by up to 0.05",
            },
            "normalisation": NORMALISATION[classifier.hparams.preprocessing],
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(classifier.class_names)],
            "softmax": True,
            "temperature": float(classifier.temperature),
            "mirror_averaged": bool(classifier.hparams.tta),
        },
        "class_names": list(classifier.class_names),
        "image_size": size,
        **(
            {
                "lesion_output": {
                    "name": "lesion",
                    "shape": ["batch", size, size],
                    "values": "lesion probability per pixel (sigmoid)",
                    "threshold": LESION_THRESHOLD,
                    "resize": "stretch back to the image's width x height, bilinear, then threshold",
                }
            }
            if classifier.model.segments
            else {}
        ),
    }


def export(classifier: BusiClassifier, model_format: str, output: Path) -> Path:
    """Write the model in `model_format` to `output` and its preprocessing to `output` + `.json`.

    The exported model takes images decoded to 8-bit RGB (grayscale: the same value in R, G and B;
    16-bit: scaled to 8 bits) and squashed to S×S (bilinear; S: `image_size` in the JSON), as float32
    pixel values 0–255 in an (N, 3, S, S) array named `pixels`. Normalisation happens inside (the JSON says which);
    `probabilities` (N, classes) follow `class_names`. A model with a lesion decoder also returns
    `lesion` (N, S, S): per-pixel lesion probabilities (lesion from 0.5 on; stretch the map back to the
    image's size as it was squashed)."""
    import torch

    from busi.model.inference import PixelsToProbabilities

    hparams = classifier.hparams
    module = PixelsToProbabilities(classifier.model, classifier.temperature, bool(hparams.tta), hparams.preprocessing)
    module.eval()
    size = classifier.hparams.image_size
    example = torch.rand(2, 3, size, size) * 255
    batch = torch.export.Dim("batch", min=1)
    output.parent.mkdir(parents=True, exist_ok=True)
    if model_format == "onnx":
        torch.onnx.export(
            module,
            (example,),
            output,
            input_names=["pixels"],
            output_names=["probabilities", "lesion"] if classifier.model.segments else ["probabilities"],
            dynamic_shapes={"pixels": {0: batch}},
            dynamo=True,
            external_data=False,  # one self-contained file (the head alone is 0.27 GB at 256 px)
        )
    elif model_format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still widely deployed
            # the input's shape and the normalisation constants are fixed in an export: traced as constants
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.jit.trace(module, example).save(str(output))
    else:
        torch.export.save(torch.export.export(module, (example,), dynamic_shapes={"pixels": {0: batch}}), output)
    Path(f"{output}.json").write_text(json.dumps(preprocessing(classifier, model_format), indent=2), encoding="utf-8")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "busi-export",
        "Export a busi checkpoint to ONNX, TorchScript or torch.export.",
        "--ckpt",
        "--output",
        ckpt={"help": "RUN/checkpoints/best.ckpt of a training run"},
        output={"help": "the model file; default: beside the checkpoint, e.g. best.onnx"},
    )
    parser.add_argument("--format", default="onnx", type=Literal["onnx", "torchscript", "exported-program"])
    args = parse(parser, argv)
    return run_command(lambda: export_checkpoint(args.ckpt, args.format, args.output))


def export_checkpoint(ckpt: Path, model_format: str, output: Path | None) -> None:
    # imported here, not above: --help and option errors come before torch and Lightning load
    from busi.model.classifier import load_classifier

    classifier = load_classifier(ckpt)
    output = output or ckpt.with_suffix(FORMATS[model_format])
    try:
        export(classifier, model_format, output)
    except ImportError as error:
        raise OptionError(f"{model_format} export needs more packages ({error}); pip install '.[export]'") from None
    print(f"{model_format} model → {output}; preprocessing → {output}.json")


if __name__ == "__main__":
    sys.exit(main())
