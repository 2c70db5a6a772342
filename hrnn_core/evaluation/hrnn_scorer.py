"""HRNN-meta (and its plain-GRU ablation) behind the evaluation ``Scorer`` interface.

``fit`` trains on the protocol's training snapshot (``hrnn_core.train.trainer``); ``score`` runs the
model over each case's readable history plus one request step at the case's time, in padded
batches, and returns logits of the full-catalogue softmax (eq. 1-2), so PPL is defined.

The request step of a case is exactly the training-time input of the target event when the
target is the next event of the history (leave_one_out, temporal, rolling, user_holdout): the
previous item and its feedback, the time since it (the control input of section 2.2) and the
request's context. Otherwise (cold_start_items, where the history holds warm events only) it
is built from the last readable event and the case's time, with no request context.

Scores come from ``hrnn_core.model.scoring.CatalogueScorer``, the function the batch export and the
service score with (eq. 2 at the model's lambda, its cold-item policy, eq. 5's trend term), so the
numbers that promote a model describe the model that is served. ``q(t)`` of the trend term counts
the events of ``ScoreBatch.sequences`` (the protocol's ``full`` table: every owner's events, known to
a real-time system once they happened) before the case's bucket; the plain GRU has no term.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.model.checkpoint import load_checkpoint, resolve_device
from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.errors import HrnnError
from hrnn_core.model.features import EncodedEvents, encode_tables, time_delta_bucket
from hrnn_core.model.network import StepInputs
from hrnn_core.model.scoring import CatalogueScorer, popularity
from hrnn_core.model.steps import gather_steps
from hrnn_core.model.trend import WindowedPopularity

PLAIN_GRU = {  # the ablation the paper compares against: items and order only
    "use_time_delta": False, "use_feedback": False, "use_user_features": False, "use_user_id": False,
    "use_context": False, "use_item_meta": False, "trend_weight": 0.0,
}


class HRNNScorer(Scorer):
    name = "hrnn"
    outputs_distribution = True

    def __init__(self, model: ModelConfig | dict | None = None, train: TrainConfig | dict | None = None,
                 plain_gru: bool = False, device: str = "auto", checkpoint: Path | None = None,
                 max_history: int | None = None, batch_size: int = 256, run_dir: Path | None = None,
                 init_from: Path | None = None):
        model_cfg = model if isinstance(model, ModelConfig) else ModelConfig(**(model or {}))
        train_cfg = train if isinstance(train, TrainConfig) else TrainConfig(**(train or {}))
        if plain_gru:
            model_cfg = dataclasses.replace(model_cfg, **PLAIN_GRU)
        self.model_cfg = model_cfg
        self.train_cfg = dataclasses.replace(train_cfg, device=device)
        self.device = resolve_device(device)
        self.max_history = max_history  # read at most this many latest events per case (None: all)
        self.batch_size = batch_size
        self.checkpoint_path: Path | None = None
        # fit trains into run_dir (kept: e.g. the retrain's run folder), else into a temporary folder
        # that lives as long as the scorer (``close``), so checkpoint_path stays readable for ``save``
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._run_tmp: weakref.finalize | None = None  # removes the temporary folder (close, or collected)
        self._encoded: dict[int, tuple[EncodedEvents, np.ndarray, np.ndarray]] = {}
        self._snapshot_dir: Path | None = None  # the training snapshot (its users.parquet, if fit got none)
        self._users: pa.Table | None = None  # users.parquet of the training data (user features)
        self._item_frequency: np.ndarray | None = None  # training events per item
        self.catalog_size: int | None = None  # the evaluated catalogue (may exceed the model's)
        self.history: list[dict] = []
        self._trend_key: int | None = None  # id of the histories table the scorer's q(t) counts
        self.pretrained = checkpoint is not None
        self.init_from = Path(init_from) if init_from is not None else None  # fit: a warm start from it (train)
        if checkpoint is not None:
            self._load(Path(checkpoint))

    # ------------------------------------------------------------------ fit / load / save

    def fit(self, data: TrainData) -> None:
        from hrnn_core.train.trainer import train  # noqa: PLC0415

        if data.snapshot_dir is None:
            raise HrnnError("HRNN-meta trains from a snapshot folder: TrainData.snapshot_dir is missing")
        # leave_one_out: train on the training events, early-stop on the protocol's validation
        # targets (held out by the trainer); otherwise the trainer holds out events of its own
        es_dir = data.early_stopping_snapshot_dir if self.train_cfg.val_owners > 0 else None
        self._snapshot_dir = Path(es_dir or data.snapshot_dir)
        self._users, self._item_frequency = data.users, np.asarray(data.item_frequency)
        self.catalog_size = data.n_items
        if self.pretrained:
            # A trained model (e.g. the current champion) evaluated on newer data: no training.
            # Items added to the catalogue since it was trained get no score (ranked last).
            self._encoded.clear()
            return
        if self.run_dir is not None:
            run_dir = self.run_dir
        else:
            self.close()  # a scorer fit again drops its previous temporary run
            run_dir = Path(tempfile.mkdtemp(prefix="hrnn-run-"))
            self._run_tmp = weakref.finalize(self, shutil.rmtree, run_dir, ignore_errors=True)
        cfg = dataclasses.replace(self.train_cfg, seed=data.seed)
        if cfg.processes > 1 and self.init_from is None:  # data-parallel over local processes (torchrun)
            from hrnn_core.train.distributed import train_distributed  # noqa: PLC0415

            result = train_distributed(self._snapshot_dir, run_dir, self.model_cfg, cfg)
        else:
            result = train(self._snapshot_dir, run_dir, self.model_cfg, cfg, init_from=self.init_from)
        self.history = result.history
        self._load(result.best_checkpoint if result.best_checkpoint.exists() else result.last_checkpoint)

    def _load(self, path: Path) -> None:
        ck = load_checkpoint(path, self.device)
        self.checkpoint_path = path
        self.model = ck.model.to(self.device).eval()
        self.features = ck.features
        self.n_items = self.features.n_items
        self.scorer = CatalogueScorer(self.model, ck.item_freq)  # the serving path's scoring function
        self._trend_key = None
        self._encoded.clear()

    def save(self, folder: Path) -> None:
        """``folder/model.pt``: the checkpoint this scorer scores with. One it trained is hard-linked
        where the file system allows (the trained file itself, e.g. in the retrain's run folder); a
        loaded one (``checkpoint=``, e.g. from the model store) is copied."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "model.pt"
        target.unlink(missing_ok=True)
        if not self.pretrained:
            try:
                os.link(self.checkpoint_path, target)
                return
            except OSError:  # another file system (or no hard links): a copy
                pass
        shutil.copy2(self.checkpoint_path, target)

    def close(self) -> None:
        """Remove the temporary training folder (fit without ``run_dir``); ``save`` needs it, scoring
        does not (the model is in memory). Also done when the scorer is garbage-collected."""
        if self._run_tmp is not None:
            self._run_tmp()  # a finalizer runs once: at close, else when collected or at exit
            self._run_tmp = None

    # ------------------------------------------------------------------ scoring

    def _encode(self, sequences: pa.Table) -> tuple[EncodedEvents, np.ndarray, np.ndarray]:
        """Encode a histories table once (cached per table): (events, flat timestamps, flat ids)."""
        key = id(sequences)
        if key not in self._encoded:
            if self._snapshot_dir is None:
                raise HrnnError("score needs the training snapshot (fit first)")
            unknown = None
            item_col = pc.list_flatten(sequences["item_idx"]).to_numpy(zero_copy_only=False)
            if len(item_col) and item_col.max() >= self.n_items:
                # Items newer than the model: encode as item 0, then mark them "no item" below.
                unknown = item_col >= self.n_items
                flat = np.where(unknown, 0, item_col).astype(np.int32)
                lists = pa.ListArray.from_arrays(
                    pa.array(np.concatenate([[0], np.cumsum(sequences["n_events"].to_numpy())]), pa.int32()),
                    pa.array(flat, pa.int32()))
                sequences_enc = sequences.set_column(sequences.schema.get_field_index("item_idx"), "item_idx", lists)
            else:
                sequences_enc = sequences
            if self._users is None:  # fit got no users table (or a loaded scorer was pointed at a snapshot)
                self._users = pq.read_table(self._snapshot_dir / "users.parquet")
            enc = encode_tables(sequences_enc, self._users, self.features, self.train_cfg.max_impressions,
                                self._item_frequency)
            if unknown is not None:
                nxt = np.flatnonzero(unknown) + 1
                nxt = nxt[nxt < len(item_col)]
                starts = set(enc.owner_start[:-1].tolist())
                nxt = np.array([i for i in nxt if i not in starts], dtype=np.int64)
                enc.prev_item[torch.from_numpy(nxt)] = self.n_items
                enc.target[torch.from_numpy(np.flatnonzero(unknown))] = self.n_items
            ts = pc.list_flatten(sequences["timestamps"]).to_numpy(zero_copy_only=False).astype(np.float64)
            ids = pc.list_flatten(sequences["event_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)
            self._encoded = {key: (enc, ts, ids)}  # keep one table: the harness scores one at a time
        return self._encoded[key]

    @torch.no_grad()
    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self.scorer.trend_weight and self._trend_key != id(batch.sequences):
            self.scorer.trend = self.popularity(batch.sequences)
            self._trend_key = id(batch.sequences)
        out = []
        for lo, h in zip(range(0, len(batch.rows), self.batch_size), self._request_state_blocks(batch)):
            sl = slice(lo, lo + self.batch_size)
            seen = self._seen(batch.sequences, batch.rows[sl], batch.pos[sl]) if self.scorer.uses_seen else None
            out.append(self._scores(h, batch.target_timestamp[sl], seen))
        return torch.cat(out) if out else torch.zeros(0, self.catalog_size or self.n_items)

    @property
    def trend_weight(self) -> float:
        """Eq. (5)'s weight the scorer adds the trend term with (the model's; 0 = none)."""
        return self.scorer.trend_weight if hasattr(self, "scorer") else self.model_cfg.trend_weight

    @trend_weight.setter
    def trend_weight(self, value: float) -> None:  # studies score one trained model with several weights
        self.scorer.trend_weight = float(value)
        self._trend_key = None

    @property
    def trend_window_seconds(self) -> float:
        return self.model.cfg.trend_window_seconds if hasattr(self, "model") else self.model_cfg.trend_window_seconds

    def popularity(self, sequences: pa.Table) -> WindowedPopularity:
        """q(t) of the trend term: every event of the histories table counts (by its time)."""
        ts = pc.list_flatten(sequences["timestamps"]).to_numpy(zero_copy_only=False)
        items = pc.list_flatten(sequences["item_idx"]).to_numpy(zero_copy_only=False)
        return popularity(self.model, ts, items)

    @torch.no_grad()
    def request_states(self, batch: ScoreBatch) -> torch.Tensor:
        """(B, H) top-layer state h_k of each case's request step, on CPU: the very state ``score``
        ranks the catalogue from (eq. 2), e.g. for a rating head (``hrnn_core.rating``)."""
        out = [h.float().cpu() for h in self._request_state_blocks(batch)]
        return torch.cat(out) if out else torch.zeros(0, self.model.cfg.hidden_size)

    def row_inputs(self, enc: EncodedEvents, rows: np.ndarray) -> tuple[StepInputs, np.ndarray, np.ndarray]:
        """Inputs of whole rows of an encoded table (``_encode``): StepInputs (B, L) on the device,
        the flat event index of each step (B, L) and the mask of real (not padding) steps (B, L).
        Step k of a row is the request of its event k, as in training (``encode_events``)."""
        lengths = enc.owner_start[rows + 1] - enc.owner_start[rows]
        length = max(1, int(lengths.max()) if len(rows) else 1)
        n_events = int(enc.owner_start[-1])
        flat = np.minimum(enc.owner_start[rows][:, None] + np.arange(length)[None, :], max(n_events - 1, 0))  # (B, L)
        valid = np.arange(length)[None, :] < lengths[:, None]  # (B, L)
        return gather_steps(enc, flat, enc.owner_user[rows], lengths=lengths).to(self.device), flat, valid

    def _request_state_blocks(self, batch: ScoreBatch):
        enc, ts, ids = self._encode(batch.sequences)
        for lo in range(0, len(batch.rows), self.batch_size):
            sl = slice(lo, lo + self.batch_size)
            yield self._state_block(enc, ts, ids, batch.rows[sl], batch.pos[sl], batch.target_timestamp[sl],
                                    None if batch.target_event_id is None else batch.target_event_id[sl])

    def _state_block(self, enc: EncodedEvents, ts: np.ndarray, ids: np.ndarray, rows: np.ndarray,
                     pos: np.ndarray, t: np.ndarray, target_ids: np.ndarray | None) -> torch.Tensor:
        """(B, H) states at the request step of each case (history read, then one request step)."""
        n_items, fs = self.n_items, self.features
        starts = enc.owner_start[rows]
        ends = enc.owner_start[rows + 1]
        first = starts.copy()
        if self.max_history is not None:
            first = np.maximum(starts, starts + pos - self.max_history)
        hist_len = starts + pos - first  # history steps read per case
        length = int(hist_len.max()) + 1 if len(rows) else 1
        b = len(rows)
        # flat index of each (case, step); the request step is filled in below
        steps = np.arange(length)[None, :]
        flat = np.minimum(first[:, None] + steps, len(ts) - 1)  # (B, L) clipped (padding is ignored)
        x = gather_steps(enc, flat, enc.owner_user[rows], lengths=hist_len + 1)  # new tensors: request steps overwritten
        prev_item, prev_type, prev_value, time_bucket, context = (
            x.prev_item, x.prev_type, x.prev_value, x.time_bucket, x.context)
        # The first read step of a truncated history restarts like an owner's first event.
        trunc = first > starts
        prev_item[torch.from_numpy(trunc), 0] = n_items
        for i in range(b):
            k = int(hist_len[i])  # index of the request step
            e = int(starts[i] + pos[i])  # flat index of the target if it is the next event
            is_next = e < ends[i] and (target_ids is None or ids[e] == target_ids[i]) and ts[e] == t[i]
            if is_next:
                prev_item[i, k], prev_type[i, k] = enc.prev_item[e], enc.prev_type[e]
                prev_value[i, k], time_bucket[i, k], context[i, k] = enc.prev_value[e], enc.time_bucket[e], enc.context[e]
                continue
            last = e - 1
            context[i, k] = 0  # the request's context is unknown here
            if pos[i] == 0:
                prev_item[i, k], prev_type[i, k], time_bucket[i, k] = n_items, 0, 0
                prev_value[i, k] = 0.0
            else:
                prev_item[i, k] = enc.target[last]
                prev_type[i, k] = enc.event_type[last]
                value = float(enc.event_value[last])
                prev_value[i, k] = torch.tensor([value, float(value != 0.0)])
                time_bucket[i, k] = int(time_delta_bucket(np.array([t[i] - ts[last]]), fs.time_delta_buckets,
                                                          fs.time_delta_log_base)[0])
        h, _ = self.model(x.to(self.device))  # (B, L, H); padding after the request step is never computed
        return h[torch.arange(b), torch.from_numpy(hist_len).to(self.device)]  # (B, H)

    def _seen(self, sequences: pa.Table, rows: np.ndarray, pos: np.ndarray) -> list[list[int]]:
        """Per case: the model's items among the owner's events before the request, oldest first (the repeat
        term's ``seen``, as the service's ``UserState.seen`` holds every event of the user)."""
        enc, _, _ = self._encode(sequences)
        items, starts = enc.target.numpy(), enc.owner_start[rows]
        return [[j for j in items[s:s + p].tolist() if j < self.n_items] for s, p in zip(starts, pos, strict=True)]

    def _scores(self, h_req: torch.Tensor, times: np.ndarray, seen: list[list[int]] | None = None) -> torch.Tensor:
        """(B, H) request states at ``times`` -> (B, catalogue) scores on CPU (``hrnn_core.model.scoring``)."""
        b = h_req.shape[0]
        scores = self.scorer.scores(h_req, times, seen=seen).cpu()  # (B, n_items)
        if self.catalog_size and self.catalog_size > self.n_items:  # items newer than the model: ranked last
            pad = torch.full((b, self.catalog_size - self.n_items), -1e9)
            scores = torch.cat([scores, pad], dim=1)
        return scores
