"""Encoded events -> the network's step inputs: the one gather that training, the evaluation scorer
(and through it the rating head) use to turn positions of an ``EncodedEvents`` table into
``StepInputs``. (It lives beside ``features`` rather than in it because ``network`` imports
``features``, and ``StepInputs`` is the network's type.)"""

from __future__ import annotations

import numpy as np
import torch

from hrnn_core.model.features import EncodedEvents
from hrnn_core.model.network import StepInputs


def gather_steps(enc: EncodedEvents, flat: np.ndarray | torch.Tensor, users: np.ndarray | torch.Tensor,
                 reset: torch.Tensor | None = None, lengths: np.ndarray | torch.Tensor | None = None) -> StepInputs:
    """StepInputs (B, L) of the events at flat positions ``flat`` (B, L) of ``enc``, on CPU.

    Step ``(b, l)`` is the request at which event ``flat[b, l]`` happened (``EncodedEvents``).
    Positions outside ``[0, E)`` (padding such as -1) read the nearest real event; ``lengths`` (B,)
    says how many steps of each row are real (the network never computes the rest; None: all).
    ``users`` is the user_idx of each row (B,) or of each step (B, L); ``reset`` (B,) marks rows whose
    first step starts a new owner (None: none do). Every tensor is a new one, so a caller may overwrite
    steps (e.g. a request step).
    """
    flat = torch.as_tensor(flat, dtype=torch.int64)
    b, length = flat.shape
    take = flat.clamp(0, max(len(enc.target) - 1, 0))
    users = torch.as_tensor(users, dtype=torch.int64)
    if users.dim() == 1:
        users = users[:, None].expand(b, length)

    def per_user(table: torch.Tensor) -> torch.Tensor:
        return table[users] if len(table) else table.new_zeros(b, length, table.shape[1])

    return StepInputs(prev_item=enc.prev_item[take], prev_type=enc.prev_type[take], prev_value=enc.prev_value[take],
                      time_bucket=enc.time_bucket[take], context=enc.context[take],
                      user_cat=per_user(enc.user_cat), user_num=per_user(enc.user_num),
                      reset=torch.zeros(b, dtype=torch.bool) if reset is None else reset,
                      lengths=None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64))
