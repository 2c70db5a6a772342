"""Cases, errors and metrics of the rating task (``research.rating``): the protocol's test cases
whose target event carries a value, RMSE and MAE.

Its own module so that ``research.rating`` (which runs every model, the value decoder included)
and ``research.rating_head`` (the value decoder, fitted on these cases) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from hrnn_core.evaluation.baselines.base import ScoreBatch
from hrnn_core.errors import HrnnError
from hrnn_core.evaluation.splits import Cases, Split
from research.fm_rating import event_values


class RatingError(HrnnError):
    """The rating task cannot run on this split (no rated events, multi-target cases...)."""


@dataclass(frozen=True)
class RatedCases:
    """Single-target evaluation cases whose target event has a value."""

    cases: Cases  # the protocol's cases, restricted to rated targets
    item: np.ndarray  # (N,) target item_idx
    rating: np.ndarray  # (N,) target event's raw value
    n_unrated: int  # cases left out: target without a value

    def __len__(self) -> int:
        return len(self.item)

    def batch(self) -> ScoreBatch:
        c = self.cases
        return ScoreBatch(c.sequences, c.row, c.pos, c.owner, c.target_timestamp, target_event_id=c.target_event_id)


def rated_cases(split: Split, cases: Cases) -> RatedCases:
    """The cases of ``split`` (its ``test`` or ``valid``) whose target event carries a value."""
    if len(cases) and not cases.single_target:
        raise RatingError(f"{split.protocol}: rating prediction needs one target event per case "
                          "(use temporal, rolling, leave_one_out or cold_start_items)")
    data = split.data
    values = event_values(data.sequences)
    order = np.argsort(data.event_id, kind="stable")
    k = np.minimum(np.searchsorted(data.event_id[order], cases.target_event_id), len(order) - 1)
    if len(cases) and not np.array_equal(data.event_id[order[k]], cases.target_event_id):
        raise RatingError("a case's target event is not in the snapshot; rebuild the split")
    rating = values[order[k]] if len(cases) else np.zeros(0)
    keep = np.flatnonzero(np.isfinite(rating))
    sub = cases.subset(keep)
    return RatedCases(sub, sub.target_items[sub.target_offsets[:-1]].astype(np.int64), rating[keep],
                      len(cases) - len(keep))


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error; NaN when there are no events."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sqrt(np.mean(d * d))) if len(d) else float("nan")


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    d = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.mean(np.abs(d))) if len(d) else float("nan")


def training_ratings(train: pa.Table) -> np.ndarray:
    """The finite values of a training table's events (raises when there are none)."""
    v = event_values(train)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        raise RatingError("no training event has an event_value: nothing to learn ratings from")
    return v
