"""SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"), as a ``Scorer`` ("sasrec").

Model (section 3): the owner's last n items, ``E_t = M_{s_t} + P_t`` (item table M, learned positions P), then
``blocks`` blocks ``x + Dropout(SA(LN(x)))``, ``x + Dropout(FFN(LN(x)))`` with a causal mask (position t attends
to positions <= t: no future item reaches an earlier position), a last layer norm, and ``r_{j,t} = F_t . M_j``
(eq. 6, M shared). Short histories are padded on the left; padding has a zero item vector and no position, and
no real position attends to it. "Nothing read yet" (an owner's first event, an empty history) is one padding
step, so it is one learned state wherever it sits in the window.

Training: each owner's training events form windows of n steps from the newest back (the paper keeps only the
newest window); step t reads the items before event t and predicts it. Full softmax cross-entropy over the
catalogue (Klenitskiy & Vasilev, RecSys 2023), or past ``trainer.DENSE_MAX_ITEMS`` items the project's
importance-sampled softmax with the log-q correction (``losses.sampled_softmax_loss``, ``sampler.AliasSampler``).
As in HRNN-meta's trainer: where owners never repeat items the dense softmax leaves out each event's earlier
items (``resolve_exclude_seen``'s rule), and equal-timestamp events are trained in a fresh order each epoch
(``batches.tie_order``). Adam; early stopping on validation NDCG@10 (the best epoch is kept): the protocol's
validation targets where the harness gives them (leave_one_out), else the held-out last event of up to
``val_owners`` owners.

Scoring: the case's last n readable items -> ``F_n . M_j``. Items without training events have untrained rows and
no metadata to score them from: they rank below every trained item (the row's lowest score minus 1, as BPR; a
finite logit, so PPL stays defined).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.evaluation.baselines.features import BaselineError, FlatEvents, flat_events, last_items, load_files, save_files
from hrnn_core.model.checkpoint import resolve_device

SAMPLED_CHUNK = 2048  # sampled softmax: positions whose (rows x candidates) scores are formed at once


@dataclass(frozen=True)
class SASRecConfig:
    hidden: int = 64  # d: item/position embedding and block width (the paper's 50; 64 as HRNN-meta's smallest; 128 untried)
    blocks: int = 2  # self-attention blocks (the paper's 2)
    heads: int = 1  # attention heads (the paper: one head was as good)
    dropout: float = 0.3  # on embeddings, attention weights and block outputs (paper: 0.2 dense data, 0.5 sparse); 0.3
    # had the best validation NDCG@10 averaged over ml-100k's two protocols and yoochoose (docs/evaluation/sasrec.md)
    max_len: int = 50  # n, the owner's last items read (older events train as further windows); 0 = from the
    # data (max_len_percentile of training history lengths, capped): 50 was ahead of the data's 200 on ml-100k
    # validation (docs/evaluation/sasrec.md); it also keeps attention, O(n^2), 16x cheaper than n = 200
    max_len_percentile: float = 0.9  # history length percentile that sets n when max_len = 0
    max_len_cap: int = 200  # n never exceeds this (the paper's 200 for MovieLens-1M; attention is O(n^2))
    output: str = "auto"  # "dense" full softmax CE, "sampled" (log-q corrected); auto: trainer.DENSE_MAX_ITEMS rule
    n_negatives: int = 1024  # sampled output: shared negatives per chunk of positions, drawn from q
    sampler_alpha: float = 0.75  # q_j ~ freq_j ** alpha, as HRNN-meta's sampler
    exclude_seen: str = "auto"  # dense softmax leaves out the owner's earlier items: "auto" (ratings), "on", "off"
    shuffle_ties: bool = True  # equal-timestamp events of an owner in a fresh order each epoch (they have none)
    batch_size: int = 128  # windows per step
    lr: float = 3e-3  # Adam learning rate (ml-100k validation: ahead of the paper's 1e-3, and of 1e-2, uncapped)
    weight_decay: float = 0.0  # AdamW decoupled decay on matrices (0: the paper's plain Adam)
    epochs: int = 200  # most passes over the training windows (early stopping ends sooner)
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping (per-epoch values are noisy)
    min_epochs: int = 5  # never stop before this
    max_seconds: float = 0.0  # stop after the epoch that passes this much fitting time (0: no limit; bounded runs)
    val_owners: int = 1000  # owners whose last event validates, when the protocol gives no validation targets
    early_stopping_metric: str = "ndcg@10"  # what early stopping maximises (harness.best_epoch reads it)
    threads: int = 0  # torch CPU threads (0: torch's default; 1 on a shared small machine)
    score_batch: int = 256  # cases per forward pass when scoring
    progress: bool = False  # print each epoch's metrics (long fits)

    def __post_init__(self) -> None:
        counts = (self.hidden, self.blocks, self.heads, self.batch_size, self.epochs, self.patience, self.n_negatives,
                  self.score_batch, self.max_len_cap)
        for ok, msg in [
            (min(counts) >= 1 and self.hidden % self.heads == 0, "sizes, epochs and patience must be >= 1, "
             "hidden a multiple of heads"),
            (0.0 <= self.dropout < 1.0 and 0.0 < self.max_len_percentile <= 1.0, "dropout in [0, 1), max_len_percentile in (0, 1]"),
            (self.max_len >= 0 and self.lr > 0 and self.val_owners >= 0, "max_len >= 0 (0: from the data), lr > 0, val_owners >= 0"),
            (self.output in ("auto", "dense", "sampled") and self.exclude_seen in ("auto", "on", "off"),
             "output must be auto, dense or sampled; exclude_seen auto, on or off"),
            (self.early_stopping_metric == "ndcg@10", "early_stopping_metric must be 'ndcg@10'")]:
            if not ok:
                raise BaselineError(f"sasrec config: {msg}")


# --------------------------------------------------------------------------- the network


class Block(nn.Module):
    """One self-attention block (3.3): pre-LN causal multi-head attention, then a pointwise ReLU FFN."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln_att, self.ln_ffn = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)  # W^Q, W^K, W^V
        self.out = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, n, d), allowed (B, 1, n, n) bool (query attends key) -> (B, n, d)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln_att(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, n, d/h) each
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, n, d)))  # (B, n, d)
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class SASRec(nn.Module):
    def __init__(self, n_items: int, max_len: int, cfg: SASRecConfig):
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=n_items)  # M; row n_items = padding (zero)
        self.pos = nn.Embedding(max_len, cfg.hidden)  # P
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.blocks)])
        self.ln = nn.LayerNorm(cfg.hidden)
        with torch.no_grad():  # small init, as for the other baselines' factors
            self.item.weight.normal_(0.0, cfg.hidden ** -0.5)
            self.item.weight[n_items].zero_()
            self.pos.weight.normal_(0.0, 0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, n) item ids, padding = n_items on the left -> F (B, n, d); position t reads s_1..s_t only."""
        n = seq.shape[1]
        real = seq != self.n_items  # (B, n)
        x = self.item(seq) + self.pos.weight[self.max_len - n:].unsqueeze(0) * real.unsqueeze(-1)  # (B, n, d)
        x = self.drop(x)
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()  # (n, n) key <= query
        eye = torch.eye(n, dtype=torch.bool, device=seq.device)
        allowed = (causal & real[:, None, :]) | eye  # (B, n, n): real keys up to the query, and itself
        for block in self.blocks:
            x = block(x, allowed.unsqueeze(1))
        return self.ln(x)

    def item_table(self) -> torch.Tensor:
        """(n_items, d) the output item vectors (M, shared with the input, eq. 6)."""
        return self.item.weight[: self.n_items]


# --------------------------------------------------------------------------- training data


class Windows(NamedTuple):
    """Training windows: owner row (W,), inputs (W, n) (padding = n_items), targets (W, n) (-1: none), each
    step's position in its row (W, n)."""

    row: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray
    position: np.ndarray


def _events(offsets: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, position in the row, flat index) of every event in ``[offsets[r], ends[r])`` of each row r."""
    lengths = ends - offsets[:-1]
    row = np.repeat(np.arange(len(lengths)), lengths)
    p = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return row, p, offsets[:-1][row] + p


def make_windows(offsets: np.ndarray, items: np.ndarray, ends: np.ndarray, n_items: int, n: int) -> Windows:
    """Windows of ``n`` steps over each row's events ``[offsets[r], ends[r])``, newest first: the step of
    event p reads item p - 1 (padding for a row's first event) and predicts item p."""
    row, p, idx = _events(offsets, ends)
    back = ends[row] - 1 - idx  # 0 = the row's newest training event
    chunk = back // n
    key = np.unique(row.astype(np.int64) * (int(chunk.max(initial=0)) + 1) + chunk, return_inverse=True)[1]
    w = key.reshape(-1)
    n_w = int(w.max()) + 1 if len(w) else 0
    slot = n - 1 - back % n
    inputs = np.full((n_w, n), n_items, dtype=np.int64)
    targets = np.full((n_w, n), -1, dtype=np.int64)
    position = np.full((n_w, n), -1, dtype=np.int64)
    inputs[w, slot] = np.where(p > 0, items[idx - 1], n_items)
    targets[w, slot] = items[idx]
    position[w, slot] = p
    win_row = np.zeros(n_w, dtype=np.int64)
    win_row[w] = row
    return Windows(win_row, inputs, targets, position)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 16) -> list[np.ndarray]:
    """Index batches in a random order, each drawn from a random pool of ``pool`` batches sorted by length, so
    a batch's windows have similar lengths and little padding is computed."""
    order = rng.permutation(len(lengths))
    batches = []
    for lo in range(0, len(order), batch_size * pool):
        group = order[lo:lo + batch_size * pool]
        group = group[np.argsort(lengths[group], kind="stable")]
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def first_positions(offsets: np.ndarray, items: np.ndarray, ends: np.ndarray, n_items: int):
    """CSR of each row's first position of each of its items: (indptr (rows + 1,), item, position)."""
    row, p, idx = _events(offsets, ends)
    keys, first = np.unique(row.astype(np.int64) * n_items + items[idx], return_index=True)
    indptr = np.searchsorted(keys // n_items, np.arange(len(ends) + 1))
    return indptr, keys % n_items, p[first]


class Validation(NamedTuple):
    """Validation cases: histories (a sequences table), rows, readable events, target items."""

    sequences: pa.Table
    rows: np.ndarray
    pos: np.ndarray
    target: np.ndarray


def validation_split(data: TrainData, val_owners: int, seed: int) -> tuple[np.ndarray, Validation]:
    """(per training row the end of its training events, the validation cases). The protocol's validation
    targets when the harness gives them (leave_one_out), else the held-out last event of up to
    ``val_owners`` random owners with two events or more (like HRNN-meta's trainer)."""
    flat = flat_events(data.sequences)
    ends = flat.offsets[1:].copy()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    es = data.early_stopping_snapshot_dir
    if es is not None and (Path(es) / "holdout.parquet").exists():
        seqs = pq.read_table(Path(es) / "sequences.parquet")
        rows = pq.read_table(Path(es) / "holdout.parquet")["row"].to_numpy().astype(np.int64)
        rows = np.sort(rng.permutation(rows)[:val_owners])
        vflat = flat_events(seqs)
        pos = vflat.offsets[rows + 1] - vflat.offsets[rows] - 1
        return ends, Validation(seqs, rows, pos, vflat.item[vflat.offsets[rows] + pos])
    eligible = np.flatnonzero(np.diff(flat.offsets) >= 2)
    rows = np.sort(rng.permutation(eligible)[:val_owners])
    ends[rows] -= 1  # the held-out last event is never trained on
    pos = ends[rows] - flat.offsets[rows]
    return ends, Validation(data.sequences, rows, pos, flat.item[ends[rows]])


def tie_shuffled(flat: FlatEvents, ends: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(E,) the items with each owner's equal-timestamp training events in a random order (``tie_order``)."""
    from hrnn_core.train.batches import tie_order  # noqa: PLC0415 - the trainer's rule, one owner

    delta = np.diff(flat.timestamp, prepend=np.nan)
    delta[flat.offsets[:-1][np.diff(flat.offsets) > 0]] = np.nan  # an owner's first event starts a group
    segments = np.stack([flat.offsets[:-1], ends], axis=1)
    return flat.item[tie_order(delta, segments, rng)]


# --------------------------------------------------------------------------- the scorer


class SASRecScorer(Scorer):
    """SASRec behind the harness's interface. See the module docstring."""

    name = "sasrec"
    outputs_distribution = True  # logits of the full softmax over the catalogue (PPL is defined)

    def __init__(self, device: str = "auto", **config):
        try:
            self.config = SASRecConfig(**config)
        except TypeError as e:
            raise BaselineError(f"SASRecScorer: {e}; valid keys: {sorted(SASRecConfig.__dataclass_fields__)}") from e
        self.device = resolve_device(device)
        self.model: SASRec | None = None
        self.trained_items: torch.Tensor | None = None  # (n_items,) bool: item had training events
        self.history: list[dict] = []  # one dict per epoch: epoch, train_loss, ndcg@10, hit@10, val_loss, seconds
        self.fit_seconds = 0.0
        self.exclude_seen = False  # resolved in fit: seen items out of the training softmax

    @property
    def train_cfg(self) -> SASRecConfig:
        """What ``harness``/``trainer.best_epoch`` read the early-stopping metric from."""
        return self.config

    # ------------------------------------------------------------------ training

    def _resolve(self, data: TrainData, ends: np.ndarray) -> tuple[int, str]:
        """(n, the output) for this data: n from the training history lengths, the output from the catalogue
        size; also whether seen items leave the dense softmax (HRNN-meta's trainer's rule)."""
        from hrnn_core.evaluation.splits import repeat_share  # noqa: PLC0415
        from hrnn_core.train.trainer import DENSE_MAX_ITEMS, EXCLUDE_SEEN_MAX_REPEATS  # noqa: PLC0415

        cfg = self.config
        lengths = ends - flat_events(data.sequences).offsets[:-1]
        n = cfg.max_len or int(math.ceil(np.quantile(lengths[lengths > 0], cfg.max_len_percentile)))
        n = max(2, min(n, cfg.max_len_cap))
        output = cfg.output if cfg.output != "auto" else ("dense" if data.n_items <= DENSE_MAX_ITEMS else "sampled")
        auto = repeat_share(data.sequences) <= EXCLUDE_SEEN_MAX_REPEATS
        self.exclude_seen = output == "dense" and (cfg.exclude_seen == "on" or (cfg.exclude_seen == "auto" and auto))
        return n, output

    def fit(self, data: TrainData) -> None:
        t0 = time.perf_counter()
        cfg = self.config
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        flat = flat_events(data.sequences)
        ends, val = validation_split(data, cfg.val_owners, data.seed)
        if int((ends - flat.offsets[:-1]).sum()) == 0:
            raise BaselineError("no training events: SASRec needs at least one owner with events")
        n, output = self._resolve(data, ends)
        trained = np.ones(len(flat.item), dtype=bool)
        trained[ends[ends < flat.offsets[1:]]] = False  # the held-out validation events
        freq = np.bincount(flat.item[trained], minlength=data.n_items)
        torch.manual_seed(data.seed)
        self.model = SASRec(data.n_items, n, cfg).to(self.device)
        self.trained_items = torch.as_tensor(freq > 0, device=self.device)
        sampler = None
        if output == "sampled":
            from hrnn_core.model.sampler import AliasSampler  # noqa: PLC0415

            sampler = AliasSampler(freq, cfg.sampler_alpha, seed=data.seed, device=self.device)
        decay = [p for name, p in self.model.named_parameters() if p.dim() >= 2 and not name.startswith(("item", "pos"))]
        rest = [p for name, p in self.model.named_parameters() if not (p.dim() >= 2 and not name.startswith(("item", "pos")))]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
        self.history, best, best_state, bad = [], -1.0, None, 0
        for epoch in range(cfg.epochs):
            rng = np.random.default_rng(np.random.SeedSequence(data.seed, spawn_key=(2, epoch)))
            items = tie_shuffled(flat, ends, rng) if cfg.shuffle_ties else flat.item
            loss = self._epoch(flat.offsets, items, ends, data.n_items, rng, opt, sampler, epoch)
            metrics = {"epoch": epoch + 1, "train_loss": loss, **self._validate(val),
                       "seconds": round(time.perf_counter() - t0, 2)}
            self.history.append(metrics)
            if cfg.progress:
                print(f"sasrec epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)
            if metrics.get("ndcg@10", 0.0) > best or best_state is None:
                best, bad = metrics.get("ndcg@10", 0.0), 0
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                bad += 1
            out_of_time = 0 < cfg.max_seconds < time.perf_counter() - t0
            if len(val.rows) == 0 or (bad >= cfg.patience and epoch + 1 >= cfg.min_epochs) or out_of_time:
                break
        self.model.load_state_dict(best_state)  # the best epoch's weights
        self.model.eval()
        self.fit_seconds = time.perf_counter() - t0

    def _epoch(self, offsets: np.ndarray, items: np.ndarray, ends: np.ndarray, n_items: int,
               rng: np.random.Generator, opt: torch.optim.Optimizer, sampler, epoch: int) -> float:
        """One pass over the training windows in a random order; the mean loss per predicted event."""
        model, cfg, dev = self.model, self.config, self.device
        win = make_windows(offsets, items, ends, n_items, model.max_len)
        seen = first_positions(offsets, items, ends, n_items) if self.exclude_seen else None
        model.train()
        total, count = 0.0, 0
        for sel in length_batches((win.targets >= 0).sum(1), cfg.batch_size, rng):
            width = int((win.targets[sel] >= 0).sum(1).max())  # the batch's longest window: the rest is padding
            target = torch.as_tensor(win.targets[sel, -width:], device=dev)  # (B, w)
            valid = target >= 0
            h = model(torch.as_tensor(win.inputs[sel, -width:], device=dev))[valid]  # (N, d)
            y = target[valid]  # (N,)
            if sampler is None:
                logits = h @ model.item_table().T  # (N, n_items), eq. (6)
                if seen is not None:
                    mask = self._seen_mask(seen, win.row[sel], win.position[sel, -width:], valid, y)
                    logits = logits.masked_fill(mask, float("-inf"))
                loss = F.cross_entropy(logits, y, reduction="sum")
            else:
                loss = self._sampled_loss(h, y, sampler)
            n = int(y.numel())
            if not torch.isfinite(loss):
                raise BaselineError(f"SASRec loss is {loss.item()} at epoch {epoch + 1}; lower lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            (loss / max(n, 1)).backward()
            opt.step()
            total, count = total + float(loss.detach()), count + n
        return total / max(count, 1)

    def _seen_mask(self, seen, rows: np.ndarray, position: np.ndarray, valid: torch.Tensor, y: torch.Tensor
                   ) -> torch.Tensor:
        """(N, n_items) bool: the items the owner had before each predicted event (never its own target);
        ``rows`` (B,) the windows' rows, ``position`` (B, w) each step's position in its row."""
        indptr, item, first = seen
        starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
        which = np.repeat(np.arange(len(rows)), lengths)
        idx = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        first_pos = torch.full((len(rows), self.model.n_items), np.iinfo(np.int32).max, dtype=torch.int32)
        first_pos[torch.as_tensor(which), torch.as_tensor(item[idx])] = torch.as_tensor(first[idx], dtype=torch.int32)
        p = torch.as_tensor(position, dtype=torch.int32, device=self.device)  # (B, w)
        mask = (first_pos.to(self.device)[:, None, :] < p[:, :, None])[valid]  # (N, n_items)
        mask[torch.arange(len(y), device=self.device), y] = False
        return mask

    def _sampled_loss(self, h: torch.Tensor, y: torch.Tensor, sampler) -> torch.Tensor:
        """Summed importance-sampled softmax CE (eq. 4 of HRNN-meta's paper, ``sampled_softmax_loss``), over
        chunks of positions: each chunk's positives, plus shared negatives drawn from q, log-q corrected."""
        from hrnn_core.model.losses import sampled_softmax_loss  # noqa: PLC0415

        table, total = self.model.item_table(), h.new_zeros(())
        for lo in range(0, len(y), SAMPLED_CHUNK):
            pos = y[lo:lo + SAMPLED_CHUNK]
            neg, _ = sampler.draw(self.config.n_negatives)
            cand = torch.cat([pos, neg])  # (c + S,) positives first: the diagonal
            log_incl = sampler.log_inclusion(len(cand))  # log P(item among the draws): log q_j + const for rare j
            w = table[cand]  # (c + S, d): no bias
            total = total + sampled_softmax_loss(h[lo:lo + SAMPLED_CHUNK], w, w.new_zeros(len(cand)), cand,
                                                 log_incl[cand]).ce.sum()
        return total

    @torch.no_grad()
    def _validate(self, val: Validation) -> dict:
        """NDCG@10, Hit@10 (full ranking, seen items out where training leaves them out) and the full-softmax
        loss of the validation targets with training events."""
        from hrnn_core.evaluation.metrics import rank_metrics, target_ranks  # noqa: PLC0415

        if len(val.rows) == 0:
            return {}
        self.model.eval()
        ndcg = hit = ce = 0.0
        warm = self.trained_items.cpu()[torch.as_tensor(val.target)]  # a cold target's score is a floor: not in the loss
        for lo in range(0, len(val.rows), self.config.score_batch):
            sl = slice(lo, lo + self.config.score_batch)
            batch = ScoreBatch(val.sequences, val.rows[sl], val.pos[sl], np.zeros(len(val.rows[sl])), np.zeros(len(val.rows[sl])))
            s = self.score(batch)
            y = torch.as_tensor(val.target[sl])
            ce += float(F.cross_entropy(s[warm[sl]], y[warm[sl]], reduction="sum"))
            exclude = [np.asarray(batch.history(i)) for i in range(len(y))] if self.exclude_seen else None
            m = rank_metrics(target_ranks(s, y, exclude), ks=(10,))
            ndcg, hit = ndcg + float(m["ndcg@10"].sum()), hit + float(m["hit@10"].sum())
        n = len(val.rows)
        self.model.train()
        return {"ndcg@10": ndcg / n, "hit@10": hit / n, "val_loss": ce / max(int(warm.sum()), 1)}

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self.model is None:
            raise BaselineError("score() before fit(): fit the scorer or load a saved one")
        model, n_items = self.model, self.model.n_items
        w, cold = model.item_table().float(), ~self.trained_items.cpu()
        hist, n = last_items(flat_events(batch.sequences), np.asarray(batch.rows), np.asarray(batch.pos), model.max_len)
        order = np.argsort(n, kind="stable")  # similar lengths together: little padding computed
        out = torch.zeros(len(order), n_items)
        for lo in range(0, len(order), self.config.score_batch):
            sel = order[lo:lo + self.config.score_batch]
            part = hist[sel, -max(1, int(n[sel].max())):]  # (b, w) the newest w items, -1 = padding
            seq = torch.as_tensor(np.where((part >= 0) & (part < n_items), part, n_items), device=self.device)
            out[torch.as_tensor(sel)] = (model(seq)[:, -1].float() @ w.T).cpu()  # F at the newest item, eq. (6)
        if cold.any() and (~cold).any():  # untrained rows: below every trained item, a finite logit (PPL), as BPR
            out[:, cold] = out[:, ~cold].min(dim=1, keepdim=True).values - 1.0
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path) -> None:
        if self.model is None:
            raise BaselineError("save() before fit()")
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state["trained_items"] = self.trained_items
        save_files(folder, self.name, {"config": asdict(self.config), "n_items": self.model.n_items,
                                       "max_len": self.model.max_len, "history": self.history}, state)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> SASRecScorer:
        meta, state = load_files(folder, cls.name)
        scorer = cls(device=device, **meta["config"])
        model = SASRec(meta["n_items"], meta["max_len"], scorer.config)
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        scorer.model = model.to(scorer.device).eval()
        scorer.trained_items = state["trained_items"].to(scorer.device)
        scorer.history = meta.get("history", [])
        return scorer
