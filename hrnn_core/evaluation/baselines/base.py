"""The scoring interface every evaluated model implements (HRNN-meta included).

The evaluation harness fits a scorer on a protocol's training data, then asks it for scores
over the whole catalogue for batches of evaluation cases. A case reads events ``[0, pos)`` of
row ``row`` of ``batch.sequences`` (the owner's history before the target) at time
``target_timestamp``; see ``hrnn_core.evaluation.protocols`` for how each protocol builds cases.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch


@dataclass(frozen=True)
class TrainData:
    """What a scorer may learn from: training events only (no leakage by construction)."""

    sequences: pa.Table  # sequences.parquet layout (one row per owner), training events only
    item_frequency: np.ndarray  # (n_items,) training events per item
    n_items: int  # catalogue size (the snapshot's item index)
    items: pa.Table | None  # items.parquet of the snapshot: item_idx, item_id, categorical, numeric, ...
    users: pa.Table | None  # users.parquet of the snapshot: user_idx, user_id, categorical, numeric
    seed: int = 0  # seed for anything random in fitting
    snapshot_dir: Path | None = None  # the same training data as a snapshot folder (for the trainer)
    # leave_one_out: train + the validation targets as a snapshot whose holdout.parquet marks them;
    # a trainer that early-stops trains on exactly the training events and stops on the protocol's
    # validation events (never test events) instead of holding out training events of its own
    early_stopping_snapshot_dir: Path | None = None


@dataclass(frozen=True)
class ScoreBatch:
    """A batch of evaluation cases."""

    sequences: pa.Table  # histories: case i reads row rows[i], events [0, pos[i])
    rows: np.ndarray  # (B,) row of each case in ``sequences``
    pos: np.ndarray  # (B,) number of history events the case may read
    owners: np.ndarray  # (B,) user_idx of the owner
    target_timestamp: np.ndarray  # (B,) time of the request (epoch s)
    target_event_id: np.ndarray | None = None  # (B,) event id of the target (its request context)

    def history(self, i: int, column: str = "item_idx") -> list:
        """The readable history of case ``i`` for one sequences column."""
        return self.sequences.column(column)[int(self.rows[i])].as_py()[: int(self.pos[i])]


class Scorer(abc.ABC):
    """A model the harness can fit and score. Scores are higher-is-better over all items."""

    name: str = "scorer"
    #: True when ``score`` returns logits of a softmax over the catalogue (PPL is then defined).
    outputs_distribution: bool = False

    @abc.abstractmethod
    def fit(self, data: TrainData) -> None:
        """Learn from ``data`` (training events only)."""

    @abc.abstractmethod
    def score(self, batch: ScoreBatch) -> torch.Tensor:
        """(B, n_items) scores for the batch's cases."""

    def save(self, folder: Path) -> None:  # pragma: no cover - overridden where registered
        """Write the fitted state into ``folder`` (files only; for the model registry)."""
        raise NotImplementedError(f"{self.name} cannot be saved")
