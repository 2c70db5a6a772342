"""Test events by group: whose they are (new or returning users) and what they ask for (how popular the target
item was in training, cold items included). The one home of these groupings: the HTML report
(``evaluation/report.py``) and the research breakdowns (``research/leaderboards/``) call them.

Every grouping is a dict ``label -> (n_test_cases,) bool mask`` over ``split.test`` in case order, the order of
the per-event metric arrays (``ModelResult.per_event``, ``per_event.npz``), so ``group_means`` can average any
model's arrays by it.
"""

from __future__ import annotations

import numpy as np

from hrnn_core.evaluation.splits import Split

# Training events of the target item: [0, 1) = cold, then decades. Dataset-agnostic and readable; a study with
# its own cut points passes ``edges`` (research/leaderboards/loo_breakdown.py).
POPULARITY_EDGES = (0, 1, 10, 100, 1000)


def returning_users(split: Split) -> np.ndarray:
    """(n_test,) bool: the test case's owner has training events (models that learn user ids know it)."""
    train = split.train
    known = train["user_idx"].to_numpy()[train["n_events"].to_numpy() > 0]
    return np.isin(split.test.owner, known)


def user_segments(split: Split) -> dict[str, np.ndarray]:
    """Returning users (events in training) and new users (none: a cold start from the history read at test time)."""
    returning = returning_users(split)
    return {"returning users": returning, "new users": ~returning}


def target_popularity(split: Split) -> np.ndarray | None:
    """(n_test,) training events of each test case's target item; None when cases have several targets each
    (user_holdout: no one popularity per case)."""
    if not split.test.single_target:
        return None
    return np.asarray(split.item_frequency, dtype=np.int64)[split.test.target]


def _bucket_label(lo: float, hi: float | None) -> str:
    if lo == 0 and hi == 1:
        return "cold (0 training events)"
    if hi is None:
        return f"{lo:g}+ training events"
    return f"{lo:g}-{np.ceil(hi) - 1:g} training events" if hi > lo + 1 else f"{lo:g} training events"


def popularity_buckets(split: Split, edges=POPULARITY_EDGES) -> dict[str, np.ndarray] | None:
    """Test cases by the target's training events, in half-open buckets ``[edges[i], edges[i+1])`` (the last
    open-ended); None for multi-target cases. Empty buckets are kept (an empty row says none were tested)."""
    pop = target_popularity(split)
    if pop is None:
        return None
    out = {}
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        mask = (pop >= lo) if hi is None else (pop >= lo) & (pop < hi)
        out[_bucket_label(lo, hi)] = mask
    return out


def cold_targets(split: Split) -> np.ndarray | None:
    """(n_test,) bool: the target item has no training events (a cold item); None for multi-target cases."""
    pop = target_popularity(split)
    return None if pop is None else pop == 0


def group_means(per_event: dict[str, np.ndarray], groups: dict[str, np.ndarray]) -> dict[str, dict]:
    """``{label: {"n": cases, metric: mean over the group's cases (None when empty)}}``."""
    out = {}
    for label, mask in groups.items():
        n = int(mask.sum())
        out[label] = {"n": n, **{m: (float(np.asarray(v)[mask].mean()) if n else None) for m, v in per_event.items()}}
    return out
