"""`busi-download`: fetch and unpack the BUSI archive (busi.data.download)."""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse import ArgumentParser

from busi import CLASS_NAMES
from busi.commands.options import command_parser, parse
from busi.data.audit import SOURCE_RECORD
from busi.data.download import FOLDER_NAME, OFFICIAL_URL, download_busi
from busi.errors import run_command


def parser() -> ArgumentParser:
    parser = command_parser(
        "busi-download",
        __doc__.split("\n\n")[0],
        "--data.root",
        "--quiet",
        data_root={
            "required": False,
            "default": Path("data") / FOLDER_NAME,
            "help": f"the folder to create, with benign/, malignant/, normal/ (ends in {FOLDER_NAME})",
        },
    )
    parser.add_argument("--url", default=OFFICIAL_URL, help="where the archive is (a mirror, a local server)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv, {"--root": ("--data.root", lambda root: str(Path(root) / FOLDER_NAME))})

    def download() -> None:
        target = args.data.root
        already = all((target / name).is_dir() for name in CLASS_NAMES)
        download_busi(target, args.url, args.quiet)
        if already:
            print(f"{target}: BUSI is there already; nothing downloaded")
            return
        record = json.loads((target / SOURCE_RECORD).read_text(encoding="utf-8"))
        counts = ", ".join(
            f"{name} {c['images']} images / {c['masks']} masks" for name, c in record["per_class"].items()
        )
        print(f"{target}: {counts}; archive SHA-256 {record['sha256']}. Train: busi-train --data.root {target}")

    return run_command(download)


if __name__ == "__main__":
    raise SystemExit(main())
