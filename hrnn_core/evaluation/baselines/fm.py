"""A factorization machine (Rendle 2010, "Factorization Machines") ranking the catalogue, as a
``Scorer`` ("fm").

Features (one global id space, 0 = padding; ``hrnn_core.evaluation.baselines.features.FieldEncoder``)
    user side (the request):  user id (owners with training events), user metadata (users.parquet
                              categorical + numeric), request context, and the owner's history
                              as an implicit-feedback set field: its newest ``history_length``
                              items, each with value 1/n (libFM's SVD++-style set field; these
                              history-item vectors are separate from the candidate item-id vectors)
    item side (the candidate): item id (items with training events), item metadata (items.parquet
                              categorical, multi-valued "a|b" as a mean, + numeric).
    Request context: the contexts of the case's *last readable event* (the target event's own
    context is not part of a ``ScoreBatch``: a case reads events [0, pos) only); training uses
    the same rule (the context of the event before each training event), none for a first event.

Score of item j for a request with user-side features u (FM of degree 2, x_f = feature values)::

    y(u, j) = w0 + sum_f w_f x_f + sum_{f < g} <v_f, v_g> x_f x_g
            = const(u) + [lin_j + pair_j] + <U, V_j>

    U   = sum_{f in user side} v_f x_f                                (B, d)
    V_j = sum_{f in item side of j} v_f x_f                           (n_items, d)
    lin_j = sum_{f in item side} w_f x_f,  pair_j = sum of <v_f, v_g> x_f x_g within j's side

``const(u)`` (w0, user-side linear and user-user pairwise terms) is the same for every item, so it
cancels in the ranking loss (it would get no gradient) and in every ranking: it is left out.
Scoring the whole catalogue is then one (B, d) x (d, n_items) product plus a precomputed vector.

Training: BPR loss -log sigmoid(y(u, i) - y(u, j)) on ``negatives_per_positive`` negatives per
training event, drawn uniformly from the items seen in training; AdamW (its decoupled weight
decay is the regulariser), a fixed number of epochs.

Cold items and users
    * item-id dropout: with probability ``item_id_dropout`` a training triple (positive and its
      negatives together, so they stay comparable) loses its item-id features, so the metadata
      vectors alone must rank the positive first. At scoring time items never seen in training
      (``item_frequency == 0``) are scored from metadata only (their id vector was never trained).
    * user-id dropout: with probability ``user_id_dropout`` a training event loses its user id, so
      the history set field and user metadata learn to stand in for it. Owners unseen in training
      (user_holdout, new users after the temporal cut) are scored from their readable history
      (the mean of its history-item vectors), user metadata and context: the fold-in.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.evaluation.baselines.features import (BaselineError, FieldEncoder, entity_table, flat_events, last_items,
                                          load_files, optimizer_step, save_files)
from hrnn_core.model.checkpoint import resolve_device
from hrnn_core.model.sampler import AliasSampler


@dataclass(frozen=True)
class FMConfig:
    factors: int = 64  # d: dimension of the feature vectors v_f
    epochs: int = 40  # passes over the training events
    batch_size: int = 2048  # training events per step
    negatives_per_positive: int = 4  # sampled negatives per event; the loss averages over them
    lr: float = 0.005  # AdamW learning rate
    weight_decay: float = 0.2  # AdamW decoupled weight decay: the regulariser
    init_std: float = 0.05  # normal init of v (w starts at 0)
    item_id_dropout: float = 0.25  # P(a training triple drops its item ids): trains metadata vectors
    user_id_dropout: float = 0.1  # P(a training event drops its user id): trains the fold-in
    history_length: int = 10  # newest history items in the user's set field (0 = no history field)
    max_categories: int = 1000  # categorical fields with more distinct values are skipped
    max_distinct_share: float = 0.5  # ... and those with more than this share of rows distinct (ids, titles)
    numeric_bins: int = 5  # quantile buckets per numeric field (besides the standardized value)
    max_values: int = 8  # values kept per multi-valued field and row ("a|b|...")

    # Defaults picked on ml-100k leave_one_out *validation* cases (NDCG@10): history_length 8-15
    # beat 30 (0.095) and 100 (0.072) and no history field at all (0.054): the newest items carry
    # the signal; 40 epochs with weight_decay 0.2 beat 20 epochs / 0.05. About 30 s of fitting on
    # one CPU thread.

    def __post_init__(self) -> None:
        for k in ("factors", "epochs", "batch_size", "negatives_per_positive"):
            if getattr(self, k) < 1:
                raise BaselineError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("item_id_dropout", "user_id_dropout"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise BaselineError(f"{k} must be in [0, 1), got {getattr(self, k)}")


@dataclass(frozen=True)
class Layout:
    """Where each field's ids start in the global id space (0 = padding)."""

    n_users: int  # user ids: 1 .. n_users
    n_items: int
    history_offset: int  # history-set item j: history_offset + j
    item_offset: int  # candidate item id j: item_offset + j
    n_features: int  # total, padding included

    def user_id(self, user: np.ndarray) -> np.ndarray:
        return 1 + user

    def to_dict(self) -> dict:
        return asdict(self)


class FMModel(torch.nn.Module):
    """The FM's parameters; sums over features are EmbeddingBag sums (fast sparse backward on CPU)."""

    def __init__(self, n_features: int, factors: int):
        super().__init__()
        self.v = torch.nn.Embedding(n_features, factors, padding_idx=0)  # v_f
        self.w = torch.nn.Embedding(n_features, 1, padding_idx=0)  # w_f

    @classmethod
    def initialised(cls, n_features: int, factors: int, init_std: float, seed: int) -> FMModel:
        """Factors ~ N(0, init_std) (seeded), linear weights 0, padding row 0."""
        model = cls(n_features, factors)
        with torch.no_grad():
            model.v.weight.normal_(0.0, init_std, generator=torch.Generator().manual_seed(seed))
            model.v.weight[0].zero_()
            model.w.weight.zero_()
        return model

    def _bag(self, table: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(ids, table, per_sample_weights=vals, mode="sum", padding_idx=0)

    def user_vector(self, ids: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """U = sum_f v_f x_f: (B, W) ids and values -> (B, d)."""
        return self._bag(self.v.weight, ids, vals)

    def item_side(self, ids: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, W) ids/values -> V (N, d) and lin + pair (N,)."""
        s = self._bag(self.v.weight, ids, vals)  # (N, d)
        sq = self._bag(self.v.weight.pow(2).sum(1, keepdim=True), ids, vals.pow(2)).squeeze(1)  # sum x^2 |v|^2
        pair = 0.5 * (s.pow(2).sum(-1) - sq)  # Rendle 2010, lemma 3.1
        lin = self._bag(self.w.weight, ids, vals).squeeze(1)
        return s, lin + pair


class FMScorer(Scorer):
    """Factorization machine over user, item, metadata, context and history features."""

    name = "fm"
    outputs_distribution = False

    def __init__(self, device: str = "cpu", **config):
        try:
            self.config = FMConfig(**config)
        except TypeError as e:
            raise BaselineError(f"FMScorer: {e}; valid keys: {sorted(FMConfig.__dataclass_fields__)}") from e
        self.device = resolve_device(device)
        self.model: FMModel | None = None
        self.layout: Layout | None = None
        self.user_enc: FieldEncoder | None = None
        self.context_enc: FieldEncoder | None = None
        self.item_enc: FieldEncoder | None = None
        self.user_feats: tuple[torch.Tensor, torch.Tensor] | None = None  # (n_users, Wu) ids, values
        self.item_feats: tuple[torch.Tensor, torch.Tensor] | None = None  # (n_items, 1 + Wi): id column first
        self.known_users: torch.Tensor | None = None  # (n_users,) bool
        self.trained_items: torch.Tensor | None = None  # (n_items,) bool
        self.fit_seconds = 0.0
        self.losses: list[float] = []
        self._items_cache: tuple[torch.Tensor, torch.Tensor] | None = None  # V (n, d), lin + pair (n,)
        self._context_cache: tuple[object, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ features

    def _fit_features(self, data: TrainData, owners: np.ndarray) -> None:
        cfg = self.config
        n_users = int(max(owners.max() if len(owners) else 0,
                          data.users["user_idx"].to_numpy().max() if data.users is not None and len(data.users) else 0)) + 1
        known = np.zeros(n_users, dtype=bool)
        known[owners] = True
        trained = np.asarray(data.item_frequency) > 0
        opts = dict(max_categories=cfg.max_categories, max_distinct_share=cfg.max_distinct_share,
                    n_bins=cfg.numeric_bins, max_values=cfg.max_values)
        # users: fit on owners with training events
        ucat, unum, _ = entity_table(data.users, "user_idx", n_users)
        sel = pa.array(known)
        self.user_enc = FieldEncoder.fit(ucat.filter(sel) if ucat is not None else None,
                                         unum.filter(sel) if unum is not None else None,
                                         offset=1 + n_users, multi_valued=True, **opts)
        # contexts: the training events' contexts
        ctx = _flat_contexts(data.sequences)
        self.context_enc = FieldEncoder.fit(ctx, None, offset=self.user_enc.end, multi_valued=False, **opts)
        history_offset = self.context_enc.end
        item_offset = history_offset + data.n_items
        # items: fit on items with training events
        icat, inum, _ = entity_table(data.items, "item_idx", data.n_items)
        sel = pa.array(trained)
        self.item_enc = FieldEncoder.fit(icat.filter(sel) if icat is not None else None,
                                         inum.filter(sel) if inum is not None else None,
                                         offset=item_offset + data.n_items, multi_valued=True, **opts)
        self.layout = Layout(n_users, data.n_items, history_offset, item_offset, self.item_enc.end)
        uid, uval = self.user_enc.encode(ucat, unum, n_users)
        iid, ival = self.item_enc.encode(icat, inum, data.n_items)
        id_col = np.where(trained, item_offset + np.arange(data.n_items), 0)[:, None]  # cold: no id feature
        self.user_feats = (torch.as_tensor(uid), torch.as_tensor(uval))
        self.item_feats = (torch.as_tensor(np.concatenate([id_col, iid], 1)),
                           torch.as_tensor(np.concatenate([trained[:, None].astype(np.float32), ival], 1)))
        self.known_users = torch.as_tensor(known)
        self.trained_items = torch.as_tensor(trained)

    def _encode_contexts(self, sequences: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(E, Wc) context ids/values of every event of ``sequences`` (cached per table)."""
        if self._context_cache is not None and self._context_cache[0] is sequences:
            return self._context_cache[1], self._context_cache[2]
        ctx = _flat_contexts(sequences)
        ids, vals = self.context_enc.encode(ctx, None, len(ctx))
        self._context_cache = (sequences, ids, vals)
        return ids, vals

    def _user_side(self, sequences: pa.Table, rows: np.ndarray, pos: np.ndarray, owners: np.ndarray,
                   drop_user_id: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """User-side features of requests reading events [0, pos) of ``rows``: (B, W) ids, values."""
        lay = self.layout
        owners = np.asarray(owners, dtype=np.int64)
        in_range = (owners >= 0) & (owners < lay.n_users)
        safe = np.where(in_range, owners, 0)
        known = in_range & self.known_users.numpy()[safe]
        if drop_user_id is not None:
            known &= ~drop_user_id
        parts_ids = [np.where(known, lay.user_id(safe), 0)[:, None]]
        parts_vals = [known.astype(np.float32)[:, None]]
        uid, uval = self.user_feats
        parts_ids.append(np.where(in_range[:, None], uid.numpy()[safe], 0))
        parts_vals.append(np.where(in_range[:, None], uval.numpy()[safe], 0.0))
        flat = flat_events(sequences)
        if self.context_enc.n_features:
            cid, cval = self._encode_contexts(sequences)
            has = pos > 0
            last = np.where(has, flat.offsets[rows] + pos - 1, 0)
            parts_ids.append(np.where(has[:, None], cid[last], 0))
            parts_vals.append(np.where(has[:, None], cval[last], 0.0))
        if self.config.history_length:
            hist, n = last_items(flat, rows, pos, self.config.history_length)
            parts_ids.append(np.where(hist >= 0, lay.history_offset + hist, 0))
            parts_vals.append(np.where(hist >= 0, 1.0 / np.maximum(n, 1)[:, None], 0.0))
        ids = torch.as_tensor(np.concatenate(parts_ids, 1), device=self.device)
        vals = torch.as_tensor(np.concatenate(parts_vals, 1).astype(np.float32), device=self.device)
        return ids, vals

    # ------------------------------------------------------------------ training

    def fit(self, data: TrainData) -> None:
        t0 = time.perf_counter()
        cfg = self.config
        flat = flat_events(data.sequences)
        if len(flat.item) == 0:
            raise BaselineError("no training events: the FM needs at least one (user, item) event")
        row = flat.row  # (E,)
        owner = flat.owner[row]
        position = np.arange(len(row)) - flat.offsets[row]
        self._fit_features(data, flat.owner)
        self._items_cache, self._context_cache = None, None
        model = FMModel.initialised(self.layout.n_features, cfg.factors, cfg.init_std, data.seed).to(self.device)
        self.model = model
        trained = self.trained_items.numpy()
        sampler = AliasSampler(trained.astype(np.float64), alpha=1.0, smoothing=0.0, seed=data.seed, device=self.device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        item_ids, item_vals = (t.to(self.device) for t in self.item_feats)
        target = torch.as_tensor(flat.item, device=self.device)
        rng = np.random.default_rng(data.seed)
        self.losses = []
        model.train()
        for epoch in range(cfg.epochs):
            perm = rng.permutation(len(row))
            total, steps = 0.0, 0
            for start in range(0, len(perm), cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                b = len(idx)
                drop_user = rng.random(b) < cfg.user_id_dropout
                uids, uvals = self._user_side(data.sequences, row[idx], position[idx], owner[idx], drop_user)
                U = model.user_vector(uids, uvals)  # (B, d)
                neg = sampler.draw(b * cfg.negatives_per_positive)[0].view(b, -1)  # (B, K)
                cand = torch.cat([target[idx].unsqueeze(1), neg], 1)  # (B, 1 + K): positive first
                # Item sides of the distinct candidates, with and without their item id; a triple
                # (positive and its negatives together) drops its ids with P = item_id_dropout.
                uniq, inv = torch.unique(cand, return_inverse=True)  # (N,), (B, 1 + K)
                ids, vals = item_ids[uniq], item_vals[uniq]  # (N, W)
                V_id, base_id = model.item_side(ids, vals)  # (N, d), (N,)
                V_meta, base_meta = model.item_side(ids[:, 1:], vals[:, 1:])
                keep_id = torch.as_tensor(rng.random(b) >= cfg.item_id_dropout, device=self.device).view(b, 1)
                V = torch.where(keep_id.unsqueeze(-1), V_id[inv], V_meta[inv])  # (B, 1 + K, d)
                base = torch.where(keep_id, base_id[inv], base_meta[inv])  # (B, 1 + K)
                y = (V * U.unsqueeze(1)).sum(-1) + base  # (B, 1 + K)
                loss = -F.logsigmoid(y[:, :1] - y[:, 1:]).mean()
                total += optimizer_step(opt, loss, "FM", epoch, "lower lr or raise weight_decay")
                steps += 1
            self.losses.append(total / max(steps, 1))
        model.eval()
        self.fit_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """V (n_items, d) and lin + pair (n_items,) of every item (cold items: metadata only)."""
        if self._items_cache is None:
            ids, vals = (t.to(self.device) for t in self.item_feats)
            self._items_cache = self.model.item_side(ids, vals)
        return self._items_cache

    @torch.no_grad()
    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self.model is None:
            raise BaselineError("score() before fit(): fit the scorer or load a saved one")
        V, base = self.item_vectors()
        ids, vals = self._user_side(batch.sequences, np.asarray(batch.rows, dtype=np.int64),
                                    np.asarray(batch.pos, dtype=np.int64), batch.owners)
        U = self.model.user_vector(ids, vals)  # (B, d)
        return U @ V.T + base  # (B, n_items)

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path) -> None:
        if self.model is None:
            raise BaselineError("save() before fit()")
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state.update(user_ids=self.user_feats[0], user_vals=self.user_feats[1], item_ids=self.item_feats[0],
                     item_vals=self.item_feats[1], known_users=self.known_users, trained_items=self.trained_items)
        meta = {"config": asdict(self.config), "layout": self.layout.to_dict(), "users": self.user_enc.to_dict(),
                "context": self.context_enc.to_dict(), "items": self.item_enc.to_dict()}
        save_files(folder, self.name, meta, state)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> FMScorer:
        meta, state = load_files(folder, cls.name)
        scorer = cls(device=device, **meta["config"])
        scorer.layout = Layout(**meta["layout"])
        scorer.user_enc = FieldEncoder.from_dict(meta["users"])
        scorer.context_enc = FieldEncoder.from_dict(meta["context"])
        scorer.item_enc = FieldEncoder.from_dict(meta["items"])
        model = FMModel(scorer.layout.n_features, scorer.config.factors)
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        scorer.model = model.to(scorer.device).eval()
        scorer.user_feats = (state["user_ids"], state["user_vals"])
        scorer.item_feats = (state["item_ids"], state["item_vals"])
        scorer.known_users = state["known_users"]
        scorer.trained_items = state["trained_items"]
        return scorer


def _flat_contexts(sequences: pa.Table) -> pa.Array:
    """The ``contexts`` of every event, flat (a map array, null where an event has none)."""
    col = sequences["contexts"]
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.list_flatten(col)
