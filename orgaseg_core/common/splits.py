"""Seeded, stratified assignment of groups (source images) to train/val/test splits.

Shared by ``split`` (files grouped by source image) and ``train-classifier`` (objects of
annotated images grouped by image): whole groups are assigned, so no split sees pixels of an
image another split was made from. Pure numpy.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .errors import OptionError


def validate_ratios(train: float, val: float, test: float) -> dict[str, float]:
    """Check the split fractions: each in [0, 1] and summing to 1 (within 1e-6)."""
    ratios = {"train": train, "val": val, "test": test}
    for name, value in ratios.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise OptionError(f"--{name} must be a number, got {value!r}") from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise OptionError(f"--{name} must be between 0 and 1, got {value}")
        ratios[name] = value
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise OptionError(
            f"split fractions must add up to 1, got train={ratios['train']} + val={ratios['val']} "
            f"+ test={ratios['test']} = {total:g}")
    return ratios


def assign_groups(group_counts: Mapping[str, Mapping[str, int]], ratios: Mapping[str, float],
                  seed: int = 0, *, refine: bool = True) -> dict[str, str]:
    """Assign every group to a split, stratified by class, deterministic for ``seed``.

    ``group_counts`` maps group -> {class: number of files}; ``ratios`` maps split -> fraction.
    The quantity kept small is sum over splits and classes of w_k (assigned - target)^2 with
    w_k = 1 / (class total)^2, so rare classes count as much as common ones.

    Greedy: the groups are shuffled with ``seed`` (this decides between equal groups), then
    taken largest first; each goes to the split (with a non-zero ratio) where it increases that
    quantity least, i.e. the split with the largest deficit weighted by the group's class
    composition; ties are broken at random (seeded). With ``refine`` a local search then moves
    single groups to another split, or swaps two groups, while that strictly improves the
    balance (greedy alone can overshoot a class whose files sit in the largest groups).
    Returns group -> split name.
    """
    rng = np.random.default_rng(seed)
    splits = [s for s, r in ratios.items() if r > 0]
    if not splits:
        raise OptionError("at least one split fraction must be above 0")
    classes = sorted({c for counts in group_counts.values() for c in counts})
    index = {c: k for k, c in enumerate(classes)}
    names = sorted(group_counts)
    vectors = np.zeros((len(names), len(classes)))
    for g, name in enumerate(names):
        for c, n in group_counts[name].items():
            vectors[g, index[c]] = n
    totals = vectors.sum(axis=0)
    weights = 1.0 / np.maximum(totals, 1) ** 2
    target = np.array([[ratios[s] * t for t in totals] for s in splits])  # (splits, classes)
    assigned = np.zeros_like(target)
    split_of = np.zeros(len(names), dtype=np.int64)

    order = rng.permutation(len(names))
    sizes = vectors.sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, shuffled among equals
    for g in order:
        c = vectors[g]
        deficit = target - assigned
        # Change of sum_k w_k (assigned_k - target_k)^2 when adding c: w_k c_k (c_k - 2 deficit_k).
        cost = (weights * c * (c - 2 * deficit)).sum(axis=1)
        best = np.flatnonzero(cost <= cost.min() + 1e-12)
        s = int(best[0] if len(best) == 1 else rng.choice(best))
        assigned[s] += c
        split_of[g] = s
    if refine and len(splits) > 1:
        _refine_assignment(vectors, split_of, assigned - target, weights, order)
    return {names[g]: splits[int(split_of[g])] for g in range(len(names))}


def _refine_assignment(vectors: np.ndarray, split_of: np.ndarray, excess: np.ndarray,
                       weights: np.ndarray, order: np.ndarray, *, max_passes: int = 20,
                       max_swap_groups: int = 3000) -> None:
    """Improve a group assignment in place by single moves and pairwise swaps.

    ``excess`` (splits, classes) is assigned minus target counts and is updated in place.
    Only strict improvements are taken, so the search ends; groups are visited in ``order``
    (the seeded order), which keeps the result deterministic for a seed. Swaps are tried for
    up to ``max_swap_groups`` groups (their cost grows with the square of the group count).
    """
    eps = 1e-12
    for _ in range(max_passes):
        improved = False
        for g in order:
            c, s = vectors[g], int(split_of[g])
            # Moving g from s to t changes the objective by sum_k w_k (2c^2 - 2c E_s + 2c E_t).
            delta = (weights * (2 * c * c - 2 * c * excess[s] + 2 * c * excess)).sum(axis=1)
            delta[s] = 0.0
            t = int(np.argmin(delta))
            if delta[t] < -eps:
                excess[s] -= c
                excess[t] += c
                split_of[g] = t
                improved = True
                continue
            if len(order) > max_swap_groups:
                continue
            # Swapping g (in s) with h (in t != s): d = c_h - c_g moves into s, out of t;
            # change = sum_k w_k (2 d^2 + 2 d (E_s - E_t)).
            others = np.flatnonzero(split_of != s)
            if others.size == 0:
                continue
            d = vectors[others] - c
            e_t = excess[split_of[others]]
            swap = (weights * (2 * d * d + 2 * d * (excess[s] - e_t))).sum(axis=1)
            k = int(np.argmin(swap))
            if swap[k] < -eps:
                h = int(others[k])
                t = int(split_of[h])
                excess[s] += d[k]
                excess[t] -= d[k]
                split_of[g], split_of[h] = t, s
                improved = True
        if not improved:
            break
