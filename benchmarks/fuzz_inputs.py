"""Fuzzed inputs: real files of every format busi reads (PNG, JPEG, TIFF, DICOM), mutated (bit flips,
truncation, header fields set to absurd values: 1×1 and 30,000×30,000 images declared), then one
`busi-predict` run over all of them. Counts files tried, predicted rows, error rows and tracebacks (must
be 0), with the run's peak memory.

    python -m benchmarks.fuzz_inputs --ckpt RUN/checkpoints/best.ckpt [--root BUSI_ROOT] [--images 4]
"""

from __future__ import annotations

import argparse
import csv
import io
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"
ABSURD_SIZES = ((1, 1), (30_000, 30_000))


def seed_files(root: Path, count: int, folder: Path) -> list[Path]:
    """`count` BUSI images per format: PNG as published, JPEG and TIFF re-encoded, DICOM written with
    pydicom (RGB; MONOCHROME2 RLE-compressed with a tissue region), and pydicom's ultrasound examples."""
    sys.path.insert(0, str(REPO / "tests"))
    import pydicom.examples

    from fake_dicom import write_dicom

    images = sorted(p for p in (root / "benign").glob("*.png") if "_mask" not in p.name)[:count]
    seeds = []
    for index, path in enumerate(images):
        image = Image.open(path).convert("RGB")
        seeds.append(shutil.copy(path, folder / f"s{index}.png"))
        image.save(folder / f"s{index}.jpg", quality=90)
        image.save(folder / f"s{index}.tif")
        pixels = np.asarray(image)
        seeds += [folder / f"s{index}.jpg", folder / f"s{index}.tif"]
        seeds.append(write_dicom(folder / f"s{index}_rgb.dcm", pixels))
        region = (8, 8, pixels.shape[1] - 9, pixels.shape[0] - 9)
        seeds.append(write_dicom(folder / f"s{index}_gray.dcm", pixels[..., 0], region=region, rle=True))
    for name in ("ybr_color", "palette_color", "jpeg2k", "rgb_color"):
        seeds.append(Path(shutil.copy(pydicom.examples.get_path(name), folder / f"example_{name}.dcm")))
    return [Path(p) for p in seeds]


def flipped(data: bytes, bits: int, rng: np.random.Generator) -> bytes:
    array = bytearray(data)
    for position in rng.integers(0, len(array) * 8, size=bits):
        array[position // 8] ^= 1 << (position % 8)
    return bytes(array)


def png_with_size(data: bytes, width: int, height: int) -> bytes:
    """IHDR declaring another size, with a valid CRC: only decoding can find out."""
    header = data[12:16] + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + header + struct.pack(">I", zlib.crc32(header)) + data[33:]


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    start = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    return data[: start + 5] + struct.pack(">HH", height, width) + data[start + 9 :]


def tiff_with_size(data: bytes, width: int, height: int) -> bytes:
    """Little-endian TIFF: ImageWidth (256) and ImageLength (257) of the first IFD rewritten as LONGs."""
    array = bytearray(data)
    offset = struct.unpack_from("<I", array, 4)[0]
    for entry in range(struct.unpack_from("<H", array, offset)[0]):
        at = offset + 2 + 12 * entry
        tag = struct.unpack_from("<H", array, at)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", array, at, tag, 4, 1, width if tag == 256 else height)
    return bytes(array)


def dicom_with(data: bytes, **fields) -> bytes:
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in fields.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def header_mutations(path: Path, data: bytes) -> dict[str, bytes]:
    suffix = path.suffix
    mutations = {}
    for width, height in ABSURD_SIZES:
        size = f"{width}x{height}"
        if suffix == ".png":
            mutations[size] = png_with_size(data, width, height)
        elif suffix == ".jpg":
            mutations[size] = jpeg_with_size(data, width, height)
        elif suffix == ".tif":
            mutations[size] = tiff_with_size(data, width, height)
        else:
            mutations[size] = dicom_with(data, Rows=height, Columns=width)
    if suffix == ".dcm":
        mutations["frames"] = dicom_with(data, NumberOfFrames=100_000)
        mutations["bits"] = dicom_with(data, BitsAllocated=64, BitsStored=64)
        mutations["samples"] = dicom_with(data, SamplesPerPixel=7)
        mutations["photometric"] = dicom_with(data, PhotometricInterpretation="PALETTE COLOR")
    return mutations


def mutate(seeds: list[Path], folder: Path, seed: int) -> Counter:
    rng = np.random.default_rng(seed)
    tried: Counter = Counter()
    for path in seeds:
        data = path.read_bytes()
        variants = {f"flip{bits}": flipped(data, bits, rng) for bits in (1, 10, 100)}
        variants |= {f"cut{share}": data[: len(data) * share // 100] for share in (10, 50, 90)}
        variants |= header_mutations(path, data)
        for name, mutated in variants.items():
            (folder / f"{path.stem}_{name}{path.suffix}").write_bytes(mutated)
            tried["dicom" if path.suffix == ".dcm" else path.suffix.lstrip(".")] += 1
    return tried


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=BUSI, help="a BUSI-layout folder to take the seed images from")
    parser.add_argument("--images", type=int, default=4, help="seed images per format")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        seeds_dir, fuzzed = Path(work) / "seeds", Path(work) / "fuzzed"
        seeds_dir.mkdir()
        fuzzed.mkdir()
        tried = mutate(seed_files(args.root, args.images, seeds_dir), fuzzed, args.seed)
        output = Path(work) / "predictions.csv"
        start = time.perf_counter()
        finished = subprocess.run(
            [sys.executable, "predict.py", "--ckpt", str(args.ckpt), str(fuzzed), "--output", str(output), "--quiet"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with output.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    errors = [row for row in rows if row["error"]]
    tracebacks = finished.stderr.count("Traceback")
    print(f"fuzzed files: {sum(tried.values())} ({', '.join(f'{k} {v}' for k, v in sorted(tried.items()))})")
    print(f"busi-predict: exit {finished.returncode}, {seconds:.1f} s, peak memory {peak_mib:.0f} MiB")
    print(f"rows: {len(rows)}, predicted {len(rows) - len(errors)}, error rows {len(errors)}, tracebacks {tracebacks}")
    reasons = Counter(row["error"].split(": ", 1)[1].split(" (")[0].split(";")[0] for row in errors)
    for reason, count in reasons.most_common():
        print(f"  {count:4d}  {reason}")
    if tracebacks:
        print(finished.stderr[-3000:])
    return 1 if tracebacks or len(rows) != sum(tried.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
