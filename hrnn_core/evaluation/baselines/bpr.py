"""BPR matrix factorization (Rendle et al. 2009, "BPR: Bayesian Personalized Ranking from Implicit
Feedback"), as a ``Scorer`` ("bpr").

Model: x_uj = <p_u, q_j> + b_j (user factors p, item factors q, item bias b).
Training: one (owner u, positive item i) pair per training event, negatives j drawn from the items
seen in training, uniformly (Rendle's choice) or by popularity^alpha; loss per triple
-log sigmoid(x_ui - x_uj) + l2 (|p_u|^2 + |q_i|^2 + |q_j|^2 + b_i^2 + b_j^2) (the paper's
regularised BPR-Opt, on the factors the triple touches), AdamW, a fixed number of epochs.

Scoring
    * owner with training events -> p_u;
    * any other owner (user_holdout test users, users who arrive after the temporal cut) ->
      fold-in: the mean item factor of the case's readable history (the newest
      ``history_length`` items), i.e. scores = mean_{h in history} <q_h, q_j> + b_j;
      empty history -> p = 0, scores = b_j (a learned popularity).
    * items never seen in training have no trained factors: they rank below every trained item
      (their score is set to the row's minimum minus 1).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.evaluation.baselines.features import BaselineError, flat_events, last_items, load_files, optimizer_step, save_files
from hrnn_core.model.checkpoint import resolve_device
from hrnn_core.model.sampler import AliasSampler


@dataclass(frozen=True)
class BPRConfig:
    factors: int = 64  # latent dimension of p_u and q_j
    epochs: int = 30  # passes over the training events
    batch_size: int = 2048  # (u, i, j) triples per step
    negatives_per_positive: int = 4  # sampled j per (u, i); the loss averages over them
    negative_sampling: str = "uniform"  # "uniform" over training items, or "popularity" (freq^alpha)
    negative_alpha: float = 0.75  # popularity exponent when negative_sampling == "popularity"
    lr: float = 0.005  # AdamW learning rate
    l2: float = 3e-3  # BPR-Opt regularisation lambda on the factors/biases of each triple
    weight_decay: float = 0.0  # AdamW decoupled decay (on top of l2; 0 = off)
    init_std: float = 0.1  # normal init of the factors (biases start at 0)
    history_length: int = 200  # fold-in reads at most this many newest history items

    # Defaults picked on ml-100k leave_one_out *validation* cases (NDCG@10 0.065 vs 0.059 for
    # l2 = 1e-3 / 20 epochs); about 20 s of fitting on 2 CPU cores.

    def __post_init__(self) -> None:
        if self.negative_sampling not in ("uniform", "popularity"):
            raise BaselineError(f"negative_sampling must be 'uniform' or 'popularity', got {self.negative_sampling!r}")
        for k in ("factors", "epochs", "batch_size", "negatives_per_positive"):
            if getattr(self, k) < 1:
                raise BaselineError(f"{k} must be >= 1, got {getattr(self, k)}")


class BPRModel(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, factors: int):
        super().__init__()
        self.user = torch.nn.Embedding(n_users, factors)  # p_u
        self.item = torch.nn.Embedding(n_items, factors)  # q_j
        self.bias = torch.nn.Embedding(n_items, 1)  # b_j

    def pair_scores(self, p: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """x for user vectors p (B, d) and items (B, K) -> (B, K)."""
        return (self.item(items) * p.unsqueeze(1)).sum(-1) + self.bias(items).squeeze(-1)


class BPRScorer(Scorer):
    """BPR-MF with fold-in for owners unseen in training. See the module docstring."""

    name = "bpr"
    outputs_distribution = False

    def __init__(self, device: str = "cpu", **config):
        try:
            self.config = BPRConfig(**config)
        except TypeError as e:
            raise BaselineError(f"BPRScorer: {e}; valid keys: {sorted(BPRConfig.__dataclass_fields__)}") from e
        self.device = resolve_device(device)
        self.model: BPRModel | None = None
        self.known: torch.Tensor | None = None  # (n_users,) bool: owner had training events
        self.trained_items: torch.Tensor | None = None  # (n_items,) bool: item had training events
        self.fit_seconds = 0.0
        self.losses: list[float] = []  # mean loss per epoch

    # ------------------------------------------------------------------ training

    def fit(self, data: TrainData) -> None:
        t0 = time.perf_counter()
        cfg = self.config
        flat = flat_events(data.sequences)
        user = np.repeat(flat.owner, np.diff(flat.offsets))  # (E,) owner of each event
        freq = np.asarray(data.item_frequency, dtype=np.float64)
        if len(user) == 0:
            raise BaselineError("no training events: BPR needs at least one (user, item) event")
        n_users = int(max(user.max(), flat.owner.max(),
                          data.users["user_idx"].to_numpy().max() if data.users is not None and len(data.users) else 0)) + 1
        g = torch.Generator().manual_seed(data.seed)
        model = BPRModel(n_users, data.n_items, cfg.factors)
        with torch.no_grad():
            model.user.weight.normal_(0.0, cfg.init_std, generator=g)
            model.item.weight.normal_(0.0, cfg.init_std, generator=g)
            model.bias.weight.zero_()
        model.to(self.device)
        weights = (freq > 0).astype(np.float64) if cfg.negative_sampling == "uniform" else freq
        sampler = AliasSampler(weights, alpha=1.0 if cfg.negative_sampling == "uniform" else cfg.negative_alpha,
                               smoothing=0.0, seed=data.seed, device=self.device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        users_t = torch.as_tensor(user, device=self.device)
        items_t = torch.as_tensor(flat.item, device=self.device)
        self.losses = []
        model.train()
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(user), generator=g).to(self.device)
            total, steps = 0.0, 0
            for start in range(0, len(perm), cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                u, i = users_t[idx], items_t[idx]  # (B,)
                j = sampler.draw(len(idx) * cfg.negatives_per_positive)[0].view(len(idx), -1)  # (B, K)
                p = model.user(u)  # (B, d)
                x_ui = model.pair_scores(p, i.unsqueeze(1))  # (B, 1)
                x_uj = model.pair_scores(p, j)  # (B, K)
                loss = -F.logsigmoid(x_ui - x_uj).mean()
                reg = (p.pow(2).sum(-1) + model.item(i).pow(2).sum(-1) + model.bias(i).squeeze(-1).pow(2)
                       + (model.item(j).pow(2).sum(-1) + model.bias(j).squeeze(-1).pow(2)).mean(-1))
                loss = loss + cfg.l2 * reg.mean()
                total += optimizer_step(opt, loss, "BPR", epoch, "lower lr or raise l2")
                steps += 1
            self.losses.append(total / max(steps, 1))
        model.eval()
        known = np.zeros(n_users, dtype=bool)
        known[user] = True
        self.model = model
        self.known = torch.as_tensor(known, device=self.device)
        self.trained_items = torch.as_tensor(freq > 0, device=self.device)
        self.fit_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def user_vectors(self, batch: ScoreBatch) -> torch.Tensor:
        """(B, d): p_u for owners seen in training, else the mean item factor of the history."""
        model = self.model
        owners = torch.as_tensor(np.asarray(batch.owners, dtype=np.int64), device=self.device)
        in_range = (owners >= 0) & (owners < len(self.known))
        known = in_range.clone()
        known[in_range] = self.known[owners[in_range]]
        p = torch.zeros((len(owners), self.config.factors), device=self.device)
        if known.any():
            p[known] = model.user(owners[known])
        unknown = (~known).nonzero().squeeze(1)
        if len(unknown):
            flat = flat_events(batch.sequences)
            rows = np.asarray(batch.rows)[unknown.cpu().numpy()]
            pos = np.asarray(batch.pos)[unknown.cpu().numpy()]
            hist, n = last_items(flat, rows, pos, self.config.history_length)  # (U, L), (U,)
            h = torch.as_tensor(hist, device=self.device)
            mask = (h >= 0).float().unsqueeze(-1)  # (U, L, 1)
            mean = (model.item(h.clamp(min=0)) * mask).sum(1) / torch.as_tensor(n, device=self.device).clamp(min=1).unsqueeze(1)
            p[unknown] = mean  # zeros when the history is empty
        return p

    @torch.no_grad()
    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self.model is None:
            raise BaselineError("score() before fit(): fit the scorer or load a saved one")
        p = self.user_vectors(batch)  # (B, d)
        s = p @ self.model.item.weight.T + self.model.bias.weight.T  # (B, n_items)
        cold = ~self.trained_items
        if cold.any() and (~cold).any():
            floor = s[:, ~cold].min(dim=1, keepdim=True).values - 1.0  # (B, 1)
            s = torch.where(cold.unsqueeze(0), floor, s)
        return s

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path) -> None:
        if self.model is None:
            raise BaselineError("save() before fit()")
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state.update(known=self.known, trained_items=self.trained_items)
        save_files(folder, self.name, {"config": asdict(self.config), "n_users": len(self.known),
                                       "n_items": len(self.trained_items)}, state)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> BPRScorer:
        meta, state = load_files(folder, cls.name)
        scorer = cls(device=device, **meta["config"])
        model = BPRModel(meta["n_users"], meta["n_items"], scorer.config.factors)
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        scorer.model = model.to(scorer.device).eval()
        scorer.known = state["known"].to(scorer.device)
        scorer.trained_items = state["trained_items"].to(scorer.device)
        return scorer
