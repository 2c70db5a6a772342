"""Negative sampling from q_j proportional to freq_j ** alpha with the alias method (Walker 1974).

Building the tables is O(n) once; each draw is O(1): one uniform slot, one biased coin, two table
lookups. Draws come with their log-probabilities ``log q_j``, which the sampled softmax subtracts
from the scores (paper eq. 4 and the discussion after it; ``hrnn_core.model.losses``).
"""

from __future__ import annotations

import numpy as np
import torch

from hrnn_core.errors import HrnnError


class SamplerError(HrnnError):
    """The sampling weights are unusable (empty, negative, all zero, not finite)."""


def alias_tables(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's O(n) construction of the alias tables for probabilities ``p`` (sums to 1).

    Slot ``i`` keeps item ``i`` with probability ``prob[i]`` and otherwise gives ``alias[i]``.
    """
    n = len(p)
    scaled = (p * n).tolist()  # python floats: the loop below is a tight scalar loop
    prob = [0.0] * n
    alias = list(range(n))
    small = [i for i, x in enumerate(scaled) if x < 1.0]
    large = [i for i, x in enumerate(scaled) if x >= 1.0]
    while small and large:
        s, g = small.pop(), large[-1]
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0  # the large item gives away 1 - p_s of its mass
        if scaled[g] < 1.0:
            small.append(large.pop())
    for i in large + small:  # leftovers are 1 up to rounding
        prob[i] = 1.0
    return np.asarray(prob, dtype=np.float64), np.asarray(alias, dtype=np.int64)


class AliasSampler:
    """Draws item ids with probability ``q_j = w_j / sum(w)``, ``w_j = (freq_j + smoothing) ** alpha``.

    ``smoothing`` keeps items never seen in training (cold items) sampleable as negatives;
    set it to 0 to never draw them.
    """

    def __init__(self, freq: np.ndarray | torch.Tensor, alpha: float = 0.75, smoothing: float = 1.0,
                 seed: int = 0, device: str | torch.device = "cpu"):
        w = np.asarray(freq.cpu() if isinstance(freq, torch.Tensor) else freq, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0:
            raise SamplerError("sampler weights must be a non-empty 1-d array (one per item)")
        if not np.isfinite(w).all() or (w < 0).any():
            raise SamplerError("sampler weights must be finite and >= 0; check item_frequency")
        w = (w + smoothing) ** alpha
        total = w.sum()
        if total <= 0:
            raise SamplerError("all sampler weights are 0: no item can be drawn (raise smoothing)")
        q = w / total
        prob, alias = alias_tables(q)
        self.n_items = len(q)
        self.device = torch.device(device)
        self.prob = torch.as_tensor(prob, dtype=torch.float64, device=self.device)  # (n,)
        self.alias = torch.as_tensor(alias, device=self.device)  # (n,)
        with np.errstate(divide="ignore"):
            self.log_q = torch.as_tensor(np.log(q), dtype=torch.float32, device=self.device)  # (n,)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` i.i.d. item ids and their ``log q``; O(1) per draw, whatever the catalog size."""
        slot = torch.randint(self.n_items, (n,), generator=self.generator, device=self.device)  # (n,)
        coin = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)  # (n,)
        ids = torch.where(coin < self.prob[slot], slot, self.alias[slot])  # (n,)
        return ids, self.log_q[ids]

    def log_inclusion(self, n_draws: int) -> torch.Tensor:
        """(n_items,) log P(item drawn at least once in ``n_draws``) = log(1 - (1 - q_j)^n).

        This is log q_j + log n for rare items (the paper's log q correction up to a constant
        shared by all items, which the softmax ignores) and saturates at 0 for items so frequent
        that they are drawn almost surely; the sampled softmax counts each item once per row, so
        this is the probability its column is there at all.
        """
        log1m_q = torch.log1p(-self.log_q.double().exp())  # log(1 - q_j)
        return torch.log(-torch.expm1(n_draws * log1m_q)).float()

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
