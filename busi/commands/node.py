"""`busi-node --ckpt CKPT --port 11112 --ae_title BUSI --spool DIR [--output DIR] [--send HOST:PORT:AET]`:
busi as a DICOM node. Scanners and archives send it ultrasound scans (C-STORE); it answers each with a
Structured Report and, with a lesion decoder, a Segmentation (and with --dicom_capture a Secondary Capture),
written to --output and sent on to --send."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from busi.commands.options import command_parser, malignant_threshold, operating_point, parse
from busi.errors import OptionError, run_command


def parser() -> ArgumentParser:
    parser = command_parser(
        "busi-node",
        "busi as a DICOM node: a Storage SCP that answers received ultrasound scans with an SR and a SEG.",
        "--ckpt",
        "--batch_size",
        "--malignant_threshold",
        batch_size={"default": 8, "help": "spooled instances answered together"},
    )
    parser.add_argument("--port", type=int, default=11112, help="DICOM port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on: 127.0.0.1 (this machine only)")
    parser.add_argument("--ae_title", default="BUSI", help="this node's AE title")
    parser.add_argument(
        "--spool", type=Path, required=True, help="folder where received instances wait until they are answered"
    )
    parser.add_argument(
        "--output", type=Path | None, default=None, help="folder of the SRs and SEGs (default SPOOL/results)"
    )
    parser.add_argument("--send", type=str | None, default=None, help="HOST:PORT:AET that receives every SR and SEG")
    parser.add_argument(
        "--dicom_capture",
        type=bool,
        default=False,
        help="also answer with a Secondary Capture: the scan with the lesion outlined and the answer under it",
    )
    parser.add_argument(
        "--modalities", type=list[str], default=[], help="answer only these modalities, e.g. [US]; default: any image"
    )
    return parser


def node(args) -> int:
    threshold = malignant_threshold(args.malignant_threshold)
    if len(args.ae_title) > 16 or not args.ae_title.strip():
        raise OptionError(f"--ae_title {args.ae_title}: an AE title has 1 to 16 characters")
    try:
        import highdicom  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError:
        raise OptionError("busi-node needs highdicom and pynetdicom: pip install 'busi[pacs]'") from None
    from busi.model.classifier import checkpoint_paths
    from busi.model.ensemble import load_model
    from busi.model.identity import identity
    from busi.serving.node import Destination, Node, Spool

    try:
        destination = Destination.parse(args.send) if args.send else None
    except ValueError as error:
        raise OptionError(f"--send {error}") from None
    model = load_model(args.ckpt)
    threshold, rule = operating_point(threshold, args.ckpt, model)
    model_identity = identity(args.ckpt, checkpoint_paths(args.ckpt), model.members[0].summary, model.image_size)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    spool = Spool(args.spool)
    output = args.output or args.spool / "results"
    busi_node = Node(
        model, model_identity, spool, output, args.ae_title, destination, args.batch_size, threshold, args.modalities,
        args.dicom_capture,
    )  # fmt: skip
    logging.getLogger("busi.node").info(
        "labels: %s; results in %s%s", rule, output, f", sent to {args.send}" if args.send else ""
    )
    try:
        busi_node.serve(args.host, args.port)
    except KeyboardInterrupt:
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv)
    return run_command(lambda: node(args))


if __name__ == "__main__":
    sys.exit(main())
