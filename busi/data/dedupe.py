"""Grouping exact and near-duplicate images, so that no group straddles the splits.

BUSI holds re-exported copies of the same frame, some filed under two classes. A group
whose members carry different labels is a label conflict: reported, and dropped by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from busi.config.schema import DedupeMode
from busi.data.scan import Sample


@dataclass(frozen=True)
class Group:
    """Samples that are the same image (exactly or nearly). ``id`` is stable: ``g`` + first member's index."""

    id: str
    members: tuple[int, ...]  # indices into the sample list, ascending
    labels: tuple[str, ...]  # distinct labels, in member order

    @property
    def conflict(self) -> bool:
        return len(self.labels) > 1


def group_duplicates(
    samples: Sequence[Sample], mode: DedupeMode = "near", threshold: int = 6
) -> list[Group]:
    """Partition samples into groups: singletons, identical files, and (``near``) images whose
    perceptual hashes differ in at most ``threshold`` bits. Deterministic for a sample order."""
    n = len(samples)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    if mode in ("exact", "near"):
        first: dict[str, int] = {}
        for i, s in enumerate(samples):
            if s.sha256 in first:
                union(first[s.sha256], i)
            else:
                first[s.sha256] = i
    if mode == "near" and n > 1:
        for i, j in _near_pairs([s.phash for s in samples], threshold):
            union(i, j)

    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    groups = []
    for root in sorted(members):
        idx = tuple(members[root])
        labels = tuple(dict.fromkeys(samples[i].label for i in idx))
        groups.append(Group(id=f"g{idx[0]:05d}", members=idx, labels=labels))
    return groups


def _near_pairs(hashes: Sequence[int], threshold: int, chunk: int = 1024) -> list[tuple[int, int]]:
    """All (i, j), i < j, with Hamming(hash_i, hash_j) <= threshold; vectorised in chunks."""
    h = np.array(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(h), chunk):
        block = h[start : start + chunk]
        x = block[:, None] ^ h[None, :]
        dist = popcount64(x)
        ii, jj = np.nonzero(dist <= threshold)
        ii = ii + start
        keep = ii < jj
        pairs.extend(zip(ii[keep].tolist(), jj[keep].tolist()))
    return pairs


def popcount64(x: np.ndarray) -> np.ndarray:
    bytes_ = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(bytes_, axis=-1).sum(axis=-1)
