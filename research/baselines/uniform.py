"""Uniform random ranking ("random"): the cold-start baseline of the paper's Table 7.

Without interaction data a model that ignores metadata can only rank the cold items uniformly
at random (section 4.4: "without any history even item popularity is unknown"). The scorer draws
i.i.d. U(0, 1) scores for every (case, item) from a generator seeded at ``fit``, so the metrics
it gets are measured, not assumed; ``expected_random_metrics`` gives what they should average to,
to check the measurement (and the harness) against.

Analytic expectations for a uniformly random order of N candidates holding m targets
(continuous scores: no ties, so the pessimistic tie rule never applies). The first target sits
at position f with P(f > j) = prod_{i<j} (N - m - i) / (N - i), and the expected hits in the
top K are K m / N, so (PROTOCOLS.md section 2 definitions)::

    precision@K = m / N             recall@K = K / N        hit@K = P(f <= K)
    mrr@K      = sum_{j<=K} P(f = j) / j                    (K = N: the uncut MRR)
    ndcg@K     = (m / N) sum_{i<=K} 1 / log2(1 + i) / IDCG(min(m, K))

With one target (m = 1): mrr@K = H_K / N (H_K the K-th harmonic number), uncut MRR = H_N / N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.evaluation.baselines.features import BaselineError


class UniformRandomScorer(Scorer):
    """I.i.d. U(0, 1) scores for every item of every case; no learning, seeded at ``fit``."""

    name = "random"
    outputs_distribution = False  # random scores are not a model of the data: no PPL

    def __init__(self, seed: int | None = None):
        self.seed = seed  # None: TrainData.seed
        self.n_items = 0
        self._gen: torch.Generator | None = None

    def fit(self, data: TrainData) -> None:
        self.n_items = int(data.n_items)
        self._gen = torch.Generator().manual_seed(data.seed if self.seed is None else int(self.seed))

    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self._gen is None:
            raise BaselineError("random: call fit before score")
        return torch.rand(len(batch.rows), self.n_items, generator=self._gen)  # (B, n_items)


def expected_random_metrics(n_candidates: int, ks: Sequence[int], n_targets: int = 1) -> dict[str, float]:
    """Expected hit/recall/precision/mrr/ndcg at each K (keys ``"mrr@5"``...) and the uncut
    ``"mrr"`` of a uniformly random ranking of ``n_candidates`` items holding ``n_targets``."""
    n, m = int(n_candidates), int(n_targets)
    if not 1 <= m <= n:
        raise BaselineError(f"need 1 <= n_targets <= n_candidates, got {m} and {n}")
    j = np.arange(1, n - m + 2, dtype=np.float64)  # possible positions of the first target
    survive = np.cumprod((n - m - (j - 1)) / (n - (j - 1)))  # P(f > j)
    p_first = np.concatenate([[1.0], survive[:-1]]) - survive  # P(f = j)
    out: dict[str, float] = {}
    for k in ks:
        kk = min(int(k), n)
        ideal = sum(1.0 / math.log2(1 + i) for i in range(1, min(m, kk) + 1))
        out[f"hit@{k}"] = float(p_first[:kk].sum())
        out[f"recall@{k}"] = kk / n
        out[f"precision@{k}"] = kk * m / n / k
        out[f"mrr@{k}"] = float((p_first[:kk] / j[:kk]).sum())
        out[f"ndcg@{k}"] = m / n * sum(1.0 / math.log2(1 + i) for i in range(1, kk + 1)) / ideal
    out["mrr"] = float((p_first / j).sum())
    return out
