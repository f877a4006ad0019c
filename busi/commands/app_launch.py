"""`busi-app [--ckpt CKPT] [--port 8501] [--address 127.0.0.1] [Streamlit options …]`: the web app
(busi/commands/app.py) served by Streamlit with busi's settings: its upload limit, a reader's toolbar, no
usage statistics (on a hospital network nothing leaves the machine unasked), this machine only unless
--address says otherwise."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from busi.commands.options import MAX_UPLOAD_MB, command_parser, malignant_threshold, parse
from busi.errors import OptionError

APP = Path(__file__).with_name("app.py")
OWN = ("--ckpt", "--malignant_threshold", "--port", "--address")


def parser():
    parser = command_parser(
        "busi-app",
        __doc__.split("\n\n")[0].replace("`", ""),
        "--ckpt",
        ckpt={
            "required": False,
            "default": None,
            "help": "checkpoint or busi-cv folder to load (default: $BUSI_CHECKPOINT, else the newest busi-cv "
            "folder under runs/, else the newest run's best.ckpt; the page says which and why)",
        },
    )
    parser.add_argument(
        "--malignant_threshold",
        type=str | None,
        default=None,
        help="label malignant whenever p_malignant reaches this (a number in [0, 1]), or `stored`: the operating "
        "point kept with the model (the page can switch it on too)",
    )
    parser.add_argument("--port", type=int, default=8501, help="port to serve on")
    parser.add_argument(
        "--address", default="127.0.0.1", help="address to serve on: 127.0.0.1 (this machine), 0.0.0.0 (any)"
    )
    return parser


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(busi-app's own options, the Streamlit options passed through, such as --server.headless=true)."""
    own, passed, index = [], [], 0
    while index < len(argv):
        name = argv[index].split("=")[0]
        takes_value = "=" not in argv[index] and name in OWN
        target = own if name in (*OWN, "-h", "--help") else passed
        target += argv[index : index + 1 + takes_value]
        index += 1 + takes_value
    return own, passed


def main(argv: list[str] | None = None) -> int:
    own, passed = split_arguments(list(sys.argv[1:] if argv is None else argv))
    args = parse(parser(), own)  # --help ends here, before Streamlit is imported
    if args.ckpt is not None:
        os.environ["BUSI_CHECKPOINT"] = str(args.ckpt)
    if args.malignant_threshold is not None:
        try:
            os.environ["BUSI_MALIGNANT_THRESHOLD"] = str(malignant_threshold(args.malignant_threshold))
        except OptionError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    from streamlit.web import cli as streamlit_cli

    sys.argv = [
        "streamlit", "run", str(APP), f"--server.maxUploadSize={MAX_UPLOAD_MB}", "--client.toolbarMode=minimal",
        "--browser.gatherUsageStats=false", f"--server.port={args.port}", f"--server.address={args.address}", *passed,
    ]  # fmt: skip
    return streamlit_cli.main()


if __name__ == "__main__":
    sys.exit(main())
