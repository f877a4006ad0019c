"""`busi-cache --data.root DATA [--data.image_size 256]`: decode a folder once into the image cache."""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from busi.commands.options import command_parser, parse
from busi.errors import run_command


def parser() -> ArgumentParser:
    parser = command_parser(
        "busi-cache", "Decode a BUSI-layout folder once into the image cache.", "--data.root", "--quiet"
    )
    parser.add_argument("--data.image_size", type=int, default=256)
    parser.add_argument(
        "--data.cache_dir", type=Path | None, default=None, help="default: $BUSI_CACHE_DIR or ~/.cache/busi"
    )
    return parser


def fill_cache(root: Path, image_size: int, cache_dir: Path | None, quiet: bool = False) -> None:
    # imported here, not above: --help and option errors come before torch and Lightning load
    from busi.data.cache import default_cache_dir
    from busi.data.catalog import read_catalog

    cache_dir = cache_dir or default_cache_dir()
    catalog = read_catalog(root, image_size, duplicate_distance=-1, cache_dir=cache_dir, progress=not quiet)
    cache = catalog.cache
    size_mb = cache.path.stat().st_size / 2**20 if cache.path.is_file() else 0
    print(
        f"{len(catalog.records)} images: {cache.hits} from the cache, {cache.misses} decoded → {cache.path} ({size_mb:.1f} MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv)
    data = args.data
    return run_command(lambda: fill_cache(data.root, data.image_size, data.cache_dir, args.quiet))


if __name__ == "__main__":
    sys.exit(main())
