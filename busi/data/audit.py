"""The dataset audit: what a folder holds (counts, masks, sizes, modes, duplicate groups, images filed
under two classes, unreadable and ignored files), as a dict for audit.json and as text."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from busi.data.catalog import Catalog

SOURCE_RECORD = "busi-download.json"  # written by busi-download beside the class folders: where the data came from


def read_source(root: Path) -> dict | None:
    path = Path(root) / SOURCE_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def build_audit(catalog: Catalog, class_names, sizes, modes, unreadable, orphan_masks, ignored) -> dict:
    """Counts, sizes, modes, duplicate groups, images filed under two classes and the files left out."""
    digests = catalog.digests
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(catalog.groups):
        members[group].append(index)
    duplicate_groups = [indices for indices in members.values() if len(indices) > 1]
    conflicts = []
    for indices in duplicate_groups:
        labels = {catalog.records[i].label for i in indices}
        if len(labels) > 1:
            exact = len({digests[i] for i in indices}) < len(indices)
            conflicts.append(
                {
                    "paths": [catalog.relative(i) for i in indices],
                    "labels": [class_names[catalog.records[i].label] for i in indices],
                    "identical_pixels": exact,
                }
            )
    widths, heights = zip(*sizes, strict=True)
    relative = lambda paths: [p.relative_to(catalog.root).as_posix() for p in paths]  # noqa: E731
    return {
        "root": str(catalog.root),
        "images": len(catalog.records),
        "per_class": {
            name: {
                "images": sum(r.label == label for r in catalog.records),
                "with_masks": sum(r.label == label and bool(r.masks) for r in catalog.records),
                "masks": sum(len(r.masks) for r in catalog.records if r.label == label),
                "target_masks": sum(
                    r.label == label and m is not None for r, m in zip(catalog.records, catalog.masks, strict=True)
                ),
            }
            for label, name in enumerate(class_names)
        },
        "masks_per_image": dict(sorted(Counter(str(len(r.masks)) for r in catalog.records).items())),
        "size": {
            "min_width": min(widths),
            "max_width": max(widths),
            "min_height": min(heights),
            "max_height": max(heights),
        },
        "modes": dict(sorted(modes.items())),
        "duplicate_groups": [[catalog.relative(i) for i in indices] for indices in duplicate_groups],
        "conflicting_labels": conflicts,
        "overlays": {
            "per_class": {
                name: sum(
                    r.label == label and drawn for r, drawn in zip(catalog.records, catalog.overlaid, strict=True)
                )
                for label, name in enumerate(class_names)
            },
            "images": [catalog.relative(i) for i, drawn in enumerate(catalog.overlaid) if drawn],
            "treated": catalog.overlays,
        },
        "unreadable": unreadable,
        "orphan_masks": relative(orphan_masks),
        "ignored_files": relative(ignored),
        **({"source": source} if (source := read_source(catalog.root)) else {}),
    }


def format_audit(audit: dict, split_counts: dict[str, dict[str, int]] | None = None) -> str:
    size = audit["size"]
    grouped = sum(len(group) for group in audit["duplicate_groups"])
    lines = [
        f"Dataset audit of {audit['root']}",
        f"  images: {audit['images']}  "
        + "  ".join(f"{name} {c['images']} ({c['masks']} masks)" for name, c in audit["per_class"].items()),
        "  masks per image: " + ", ".join(f"{k}: {v}" for k, v in audit["masks_per_image"].items()),
        "  formats: " + ", ".join(f"{name} {count}" for name, count in audit.get("formats", {}).items()),
        f"  size: width {size['min_width']}-{size['max_width']}, height {size['min_height']}-{size['max_height']}"
        f"  modes: {audit['modes']}",
        f"  duplicate groups: {len(audit['duplicate_groups'])} holding {grouped} images (kept on one side of every split)",
        f"  conflicting labels: {len(audit['conflicting_labels'])}",
    ]
    if "overlays" in audit:
        marks = audit["overlays"]
        treated = (
            "inpainted before use" if marks["treated"] == "inpaint" else "kept; --data.overlays inpaint removes them"
        )
        lines.append(
            f"  drawn marks (calipers, lines, text, colour): {len(marks['images'])} images  "
            + "  ".join(f"{name} {n}" for name, n in marks["per_class"].items())
            + f" ({treated}; listed in audit.json)"
        )
    if "source" in audit:
        source = audit["source"]
        lines.insert(1, f"  downloaded from {source['url']} on {source['downloaded'][:10]}, SHA-256 {source['sha256']}")
    for conflict in audit["conflicting_labels"]:
        kind = "identical pixels" if conflict["identical_pixels"] else "near-duplicates"
        pairs = ", ".join(f"{p} [{lab}]" for p, lab in zip(conflict["paths"], conflict["labels"], strict=True))
        lines.append(f"    {kind}: {pairs}")
    lines.append(f"  unreadable (skipped): {len(audit['unreadable'])}")
    lines += [f"    {item['reason']}" for item in audit["unreadable"]]
    if audit.get("unreadable_masks"):
        lines.append(
            f"  unreadable masks (image kept, left out of the segmentation loss): {len(audit['unreadable_masks'])}"
        )
        lines += [f"    {item['reason']}" for item in audit["unreadable_masks"]]
    without = {name: c["images"] - c["target_masks"] for name, c in audit["per_class"].items() if "target_masks" in c}
    if any(without.values()):
        lines.append(
            "  images without a lesion mask (left out of the segmentation loss): "
            + ", ".join(f"{name} {n}" for name, n in without.items() if n)
        )
    if audit["orphan_masks"]:
        lines.append(f"  masks without an image: {len(audit['orphan_masks'])}: {', '.join(audit['orphan_masks'][:5])}")
    if audit.get("unknown_folders"):
        lines.append(f"  ignored folders (not a class): {', '.join(audit['unknown_folders'])}")
    if audit.get("streamed_from_disk"):
        lines.append(f"  read from disk every epoch (beyond memory_limit_mb): {audit['streamed_from_disk']} images")
    if audit["ignored_files"]:
        lines.append(
            f"  ignored files (hidden, not an image): {len(audit['ignored_files'])}: {', '.join(audit['ignored_files'][:5])}"
        )
    if split_counts:
        for split, counts in split_counts.items():
            lines.append(
                f"  {split:>5}: {sum(counts.values()):4d}  " + "  ".join(f"{k} {v}" for k, v in counts.items())
            )
    return "\n".join(lines)
