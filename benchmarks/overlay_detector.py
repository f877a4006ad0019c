"""The overlay detector (busi.io.overlays) against a list labelled by looking at the scans.

    python -m benchmarks.overlay_detector [--root BUSI_ROOT] [--labels benchmarks/overlay_labels.csv]

benchmarks/overlay_labels.csv: 90 BUSI scans, 30 per class drawn with random.Random(36), each labelled
by eye as `none` or what was drawn on it (calipers, text, marks: a body-marker pictogram); the scanner's
logo glyph in the top-left corner, on nearly every scan, does not count. The detector's numbers were
chosen on the even rows; the odd rows were not looked at while choosing them. Prints sensitivity and
specificity on both halves and on all, the scans it gets wrong, and how many scans of each class of
the whole folder it flags.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from PIL import Image

from benchmarks.fuzz_inputs import BUSI
from busi.io.overlays import find_overlays

LABELS = Path(__file__).with_name("overlay_labels.csv")


def rates(rows: list[tuple[bool, bool]]) -> str:
    positives = [found for truth, found in rows if truth]
    negatives = [not found for truth, found in rows if not truth]
    return (
        f"sensitivity {sum(positives)}/{len(positives)} = {sum(positives) / max(len(positives), 1):.3f}, "
        f"specificity {sum(negatives)}/{len(negatives)} = {sum(negatives) / max(len(negatives), 1):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=BUSI)
    parser.add_argument("--labels", type=Path, default=LABELS)
    args = parser.parse_args(argv)
    labelled = list(csv.DictReader(args.labels.open(encoding="utf-8")))
    results = []
    for row in labelled:
        overlay = find_overlays(Image.open(args.root / row["path"]).convert("RGB"))
        results.append((row, row["marks"] != "none", overlay.overlaid))
    halves = {"tuned on (even rows)": results[0::2], "held out (odd rows)": results[1::2], "all": results}
    for name, part in halves.items():
        print(f"{name:>22}: {rates([(truth, found) for _, truth, found in part])}")
    for name in ("benign", "malignant", "normal"):
        part = [(truth, found) for row, truth, found in results if row["class"] == name]
        print(f"{name:>22}: {rates(part)}")
    for row, truth, found in results:
        if truth != found:
            print(f"  {'missed' if truth else 'false alarm'}: {row['path']} ({row['marks']})")
    flagged, images = Counter(), Counter()
    for path in sorted(args.root.glob("*/*.png")):
        if "_mask" in path.name:
            continue
        images[path.parent.name] += 1
        flagged[path.parent.name] += find_overlays(Image.open(path).convert("RGB")).overlaid
    print("whole folder: " + ", ".join(f"{c} {flagged[c]}/{images[c]}" for c in sorted(images)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
