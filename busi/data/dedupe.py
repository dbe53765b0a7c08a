"""Grouping exact and near-duplicate images, and the images of one patient, so that no group
straddles the splits.

BUSI holds re-exported copies of the same frame, some filed under two classes. A duplicate
group whose members carry different labels is a label conflict: reported, and dropped by
default. A patient's images (from a label table's group column or ``data.group_pattern`` on
the file names) are joined with the duplicate groups (``group_patients``): the groups the split,
the cv folds and the overlap check see. A patient's images may carry different labels (two
lesions); that is no conflict.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable, Sequence

import numpy as np

from busi.config.schema import DedupeMode
from busi.data.scan import Sample, natural_key


@dataclass(frozen=True)
class Group:
    """Samples that are the same image (exactly or nearly), or (``group_patients``) also the
    images of one patient. ``id`` is stable: ``g`` + first member's index, or the patient's ID."""

    id: str
    members: tuple[int, ...]  # indices into the sample list, ascending
    labels: tuple[str, ...]  # distinct labels, in member order
    patients: tuple[str, ...] = ()  # patient IDs of the members (group_patients), natural order

    @property
    def conflict(self) -> bool:
        """Members carry different labels: a label conflict in a duplicate group (of
        ``group_duplicates``); in a patient's group it may be two lesions, which is no conflict."""
        return len(self.labels) > 1


def group_duplicates(
    samples: Sequence[Sample], mode: DedupeMode = "near", threshold: int = 6
) -> list[Group]:
    """Partition samples into groups: singletons, identical files, and (``near``) images whose
    perceptual hashes differ in at most ``threshold`` bits. Deterministic for a sample order."""
    n = len(samples)
    pairs: list[tuple[int, int]] = []
    if mode in ("exact", "near"):
        first: dict[str, int] = {}
        for i, s in enumerate(samples):
            if s.sha256 in first:
                pairs.append((first[s.sha256], i))
            else:
                first[s.sha256] = i
    if mode == "near" and n > 1:
        pairs.extend(_near_pairs([s.phash for s in samples], threshold))
    groups = []
    for idx in _components(range(n), pairs):
        labels = tuple(dict.fromkeys(samples[i].label for i in idx))
        groups.append(Group(id=f"g{idx[0]:05d}", members=idx, labels=labels))
    return groups


def group_patients(
    samples: Sequence[Sample], duplicates: Sequence[Group], patients: Sequence[str | None],
    drop: Iterable[int] = (),
) -> list[Group]:
    """The groups a split keeps whole: ``duplicates`` joined wherever they share a patient
    (``patients[i]``: sample i's patient ID, None where unknown) or a file (the frames of a cine
    loop), samples in ``drop`` left out.

    A group with patients takes the first patient's ID (natural order) as its ``id``; one without
    keeps its duplicate group's ``id``. Without patients and ``drop`` this is ``duplicates``.
    """
    dropped = set(drop)
    keep = [i for i in range(len(samples)) if i not in dropped]
    pairs: list[tuple[int, int]] = []
    for g in duplicates:
        kept = [i for i in g.members if i not in dropped]
        if kept:
            pairs.extend((kept[0], i) for i in kept[1:])
    first_of: dict[str, int] = {}
    first_frame: dict[str, int] = {}
    for i in keep:
        p = patients[i]
        if p is not None:
            if p in first_of:
                pairs.append((first_of[p], i))
            else:
                first_of[p] = i
        if samples[i].frame is not None:  # the frames of one cine loop: one group, whatever dedupe says
            pairs.append((first_frame.setdefault(samples[i].path, i), i))
    dup_id = {i: g.id for g in duplicates for i in g.members}
    groups = []
    for idx in _components(keep, pairs):
        found = tuple(sorted({p for i in idx if (p := patients[i]) is not None}, key=natural_key))
        labels = tuple(dict.fromkeys(samples[i].label for i in idx))
        groups.append(Group(id=found[0] if found else dup_id.get(idx[0], f"g{idx[0]:05d}"), members=idx,
                            labels=labels, patients=found))
    taken = Counter(g.id for g in groups)
    # a patient literally named like another group's id (g00012): that group keeps its index id
    return [dataclasses.replace(g, id=f"g{g.members[0]:05d}") if g.patients and taken[g.id] > 1 else g
            for g in groups]


def patients_from_names(paths: Sequence[str], pattern: str) -> list[str | None]:
    """Each path's patient: ``pattern``'s group named ``group`` (else its first group) searched in
    the file name (``bus_0001-l.png`` with ``^(bus_\\d+)`` is ``bus_0001``); None where it does
    not match."""
    regex = re.compile(pattern)
    out: list[str | None] = []
    for p in paths:
        m = regex.search(PurePosixPath(p).name)
        value = None if m is None else (m.group("group") if "group" in regex.groupindex else m.group(1))
        out.append(value or None)
    return out


def _components(nodes: Iterable[int], pairs: Iterable[tuple[int, int]]) -> list[tuple[int, ...]]:
    """The connected components of ``nodes`` joined by ``pairs`` (union-find), each ascending,
    in order of their smallest member."""
    parent = {i: i for i in nodes}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in sorted(parent):
        members.setdefault(find(i), []).append(i)
    return [tuple(members[root]) for root in sorted(members)]


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
