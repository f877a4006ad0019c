"""A BUSI-layout folder squashed to SIZE² for a machine that can only be sent a few tens of MB (the device
machine takes 64 MiB a call; the share is 87 MB). Each image is resized exactly as busi's training does
(busi.io.images.resize_to_tensor) and saved losslessly, and each image's masks become one `X_mask.png`, their
union resized like busi.io.images.load_mask does, so training at SIZE px on the copy reads the same pixels
and masks as training at SIZE px on the original. The duplicate groups are not the same: busi hashes the
image it reads, and on the squashed copy one more pair of scans falls within the hash distance, which
moves ~80 images to other folds. So the original's folds travel with the copy, one split CSV per (seed,
fold) (`busi-cv --only_folds I … --data.split_csv SPLITS/seedS_foldI.csv` trains fold I on exactly the
original's split):
    python -m benchmarks.compact_copy --data.root ../shared/data/busi/Dataset_BUSI_with_GT \
        --out .device/busi256 --splits .device/splits --seeds [42,7]
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from busi.data.catalog import scan_class_folders
from busi.data.module import BusiDataModule
from busi.data.splits import write_split_csv
from busi.errors import UnreadableImageError
from busi.io.images import decode_image, load_mask, resize_to_tensor


def compact_copy(root: Path, out: Path, size: int) -> int:
    """The number of images copied; unreadable ones are left out, as training leaves them out."""
    copied = 0
    for record in scan_class_folders(root)[0]:
        path = record.path
        try:
            pixels = resize_to_tensor(decode_image(path), size)
        except UnreadableImageError as error:
            print(f"left out: {error}")
            continue
        folder = out / path.parent.relative_to(root)
        folder.mkdir(parents=True, exist_ok=True)
        # the same name, so split CSVs match
        to_pil_image(pixels).save(folder / path.name, format="PNG", optimize=True)
        if record.masks:
            Image.fromarray(load_mask(record.masks, size)).save(folder / f"{path.stem}_mask.png")  # bool → 1-bit
        copied += 1
    return copied


def write_fold_splits(root: Path, out: Path, seeds: list[int], folds: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for fold in range(folds):
            datamodule = BusiDataModule(root=str(root), folds=folds, fold=fold, seed=seed, image_size=128)
            datamodule.setup("fit")
            write_split_csv(out / f"seed{seed}_fold{fold}.csv", datamodule.split_rows())


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.compact_copy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data.root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--splits", type=Path | None, default=None, help="write the original's folds here")
    parser.add_argument("--seeds", type=list[int], default=[42, 7])
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    copied = compact_copy(args.data.root, args.out, args.size)
    print(f"{copied} images squashed to {args.size}² → {args.out}")
    if args.splits is not None:
        write_fold_splits(args.data.root, args.splits, args.seeds, args.folds)
        print(f"the original's {args.folds} folds of split seeds {args.seeds} → {args.splits}")


if __name__ == "__main__":
    main()
