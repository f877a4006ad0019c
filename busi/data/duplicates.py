"""Exact and near-duplicate detection: a DCT perceptual hash and grouping by Hamming distance."""

from __future__ import annotations

import numpy as np


def hamming_distances(hashes: np.ndarray, rows: slice) -> np.ndarray:
    """Hamming distances from hashes[rows] to every hash, as an integer matrix."""
    block = hashes[rows].astype(np.float32)
    every = hashes.astype(np.float32)
    return np.rint(block @ (1 - every).T + (1 - block) @ every.T).astype(np.int32)


def group_duplicates(hashes: np.ndarray, digests: list[str], max_distance: int) -> list[int]:
    """Connected components of 'same pixels or pHash within max_distance bits': one id per image."""
    count = len(digests)
    parent = list(range(count))

    def find(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(first: int, second: int) -> None:
        root_first, root_second = find(first), find(second)
        if root_first != root_second:
            parent[max(root_first, root_second)] = min(root_first, root_second)

    first_with_digest: dict[str, int] = {}
    for index, digest in enumerate(digests):
        union(index, first_with_digest.setdefault(digest, index))
    if count and max_distance >= 0:
        chunk = max(1, 2**22 // count)  # bounds memory: 4M distances at a time, whatever the count
        for start in range(0, count, chunk):
            distances = hamming_distances(hashes, slice(start, start + chunk))
            for row, column in zip(*np.nonzero(distances <= max_distance), strict=True):
                if start + row < column:
                    union(start + int(row), int(column))
    roots = [find(index) for index in range(count)]
    renumbered: dict[int, int] = {}
    return [renumbered.setdefault(root, len(renumbered)) for root in roots]
