"""HRNN-meta (Ma et al., KDD 2020): a GRU over user events with contextual inputs and a
metadata-aware decoder.

One step of the network is one *request*: the moment event ``k`` happens. Its input is what was
known then (section 2.2, Figure 3):

* the previous item (id embedding, and its metadata when ``use_item_meta``),
* the **time-delta control input**: a learned embedding of the log-bucketed seconds since the
  owner's previous event; it replaces the hierarchical GRU of HGRU (section 2.2),
* the previous event's **feedback**: its event type embedding and standardized event value,
* static **user features** and the request's **context** fields.

Each field is projected by its own small MLP, the projections are concatenated and mixed by
another MLP (field-aware inputs), and a stacked GRU turns the sequence into states ``h_k``.
The decoder scores every item with eq. (2),

    phi~_j(h) = (1 - lambda) (w_j . h + b_j) + lambda (w(f_j) . h + b(f_j)),

where ``w(.)``, ``b(.)`` embed the item's metadata ``f_j`` (multi-valued categorical fields as
embedding means, numeric fields through a linear layer). Because eq. (2) is linear in ``h`` the
mixed item vectors are formed first and one matrix product scores all items.

The recurrence is one fused ``torch.nn.GRU`` call over a whole window (cuDNN on a GPU, ATen's C++
loop on a CPU; no per-step Python). A window's rows each follow one owner: an owner starts only at a
row's first step (``StepInputs.reset``), and rows shorter than the window are packed by their
``lengths``, so padding is never computed and the carried state is each row's own last one. The
training batches (``hrnn_core.train.batches.owner_windows``), validation, the evaluation scorer, the
batch export's replay and the service's one-event update all run this same call; the one-event
update is a window of length 1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hrnn_core.config import ModelConfig
from hrnn_core.model.features import USER_ID_FIELD, FeatureSpace, FieldGroup

__all__ = ["HRNNMeta", "ModelConfig", "StepInputs"]


@dataclass
class StepInputs:
    """Inputs of a (B, T) block of requests; see ``hrnn_core.model.features.EncodedEvents``."""

    prev_item: torch.Tensor  # (B, T) previous item_idx; n_items = no previous event
    prev_type: torch.Tensor  # (B, T) previous event type index (0 = none)
    prev_value: torch.Tensor  # (B, T, 2) previous standardized event value, present flag
    time_bucket: torch.Tensor  # (B, T) log-bucketed time since the previous event (0 = none)
    context: torch.Tensor  # (B, T, Fc) request context ids
    user_cat: torch.Tensor  # (B, T, Wu) user categorical ids
    user_num: torch.Tensor  # (B, T, 2 Fu) user numeric features
    reset: torch.Tensor  # (B,) bool: the row's first step starts a new owner (from its learned initial state)
    lengths: torch.Tensor | None = None  # (B,) real steps of each row, right padding after; None: all T

    def to(self, device: torch.device) -> StepInputs:
        """The inputs on ``device``; to a GPU through pinned host memory with non-blocking copies (the next
        window is gathered on the CPU while the GPU still runs this one)."""
        device = torch.device(device)
        cuda = device.type == "cuda"
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if name != "lengths" and value.device != device:  # packing reads the lengths on the CPU
                moved[name] = (value.pin_memory() if cuda else value).to(device, non_blocking=cuda)
        return StepInputs(**moved)


class FieldBags(nn.Module):
    """Per-field mean of value embeddings (EmbeddingBag "mean") for one group of fields.

    ``n_fields``: only the group's first fields (their tokens come first in the group's id space). The
    table is drawn at the whole group's size and cut, so the random stream after it does not depend on
    how many fields are kept.
    """

    def __init__(self, group: FieldGroup, dim: int, n_fields: int | None = None):
        super().__init__()
        n_fields = len(group.slots) if n_fields is None else n_fields
        self.slots = group.slots[:n_fields]
        self.dim = dim
        rows = group.offsets[n_fields] if n_fields < len(group.slots) else group.n_tokens
        table = torch.randn(group.n_tokens, dim) * 0.05 if group.slots else None
        self.weight = nn.Parameter(table[:rows].clone()) if self.slots else None

    @property
    def n_fields(self) -> int:
        return len(self.slots)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (..., W) -> (..., F, dim); padding id 0 is left out of each mean."""
        lead = ids.shape[:-1]
        flat = ids.reshape(-1, ids.shape[-1])  # (N, W)
        out = [F.embedding_bag(flat[:, lo:hi], self.weight, mode="mean", padding_idx=0) for lo, hi in self.slots]
        return torch.stack(out, dim=1).reshape(*lead, len(self.slots), self.dim)  # (..., F, dim)


class ItemMeta(nn.Module):
    """Item metadata -> a vector: the sum of its fields' embedding means and a linear map of
    its numeric features."""

    def __init__(self, group: FieldGroup, dim: int):
        super().__init__()
        self.bags = FieldBags(group, dim)
        self.numeric = nn.Linear(group.num_width, dim, bias=False) if group.num_width else None
        self.n_numeric = len(group.num_fields)  # num's first 2 * n_numeric columns are [value, present] pairs
        self.enabled = bool(self.bags.n_fields or self.numeric is not None)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """cat (N, Wi), num (N, num_width) -> (N, dim)."""
        out = torch.zeros(cat.shape[0], self.bags.dim, device=num.device, dtype=num.dtype)
        if self.bags.n_fields:
            out = out + self.bags(cat).sum(dim=1)
        if self.numeric is not None:
            out = out + self.numeric(num)
        return out


def _field_mlp(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU())


def _drop_inputs(linear: nn.Linear, cols: slice) -> None:
    """Remove input columns ``cols`` of ``linear`` (its initialisation is drawn before, at the full width)."""
    keep = torch.ones(linear.in_features, dtype=torch.bool)
    keep[cols] = False
    linear.weight = nn.Parameter(linear.weight.detach()[:, keep].clone())
    linear.in_features = int(keep.sum())


def rename_gru_cells(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict saved when the recurrence was one ``GRUCell`` per layer (``cells.{i}.weight_ih``, ...)
    in the fused ``nn.GRU``'s names (``gru.weight_ih_l{i}``, ...): the same gates and the same weights.
    Other state dicts are returned as they are."""
    if not any(k.startswith("cells.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.startswith("cells."):
            _, layer, name = key.split(".")
            key = f"gru.{name}_l{layer}"
        out[key] = value
    return out


def drop_user_id_inputs(state: dict[str, torch.Tensor], model: HRNNMeta) -> dict[str, torch.Tensor]:
    """A state dict saved while the user id also held an input field (its bag rows and a zeroed block of
    the user MLP's and the initial state's inputs, never trained) with those parameters removed: the
    same function, in the current layout. Other state dicts are returned as they are."""
    old = state.get("user_bags.weight")
    kept = model.user_bags.weight if model.user_bags is not None else None
    if model.user_id_input is None or old is None or (kept is not None and old.shape[0] == kept.shape[0]):
        return state
    state = dict(state)
    if kept is None:  # the id was the only user field
        del state["user_bags.weight"]
    else:
        state["user_bags.weight"] = old[: kept.shape[0]]
    for key in ("fields.user.0.weight", "init_proj.weight"):
        if key in state:
            keep = torch.ones(state[key].shape[1], dtype=torch.bool)
            keep[model.user_id_input] = False
            state[key] = state[key][:, keep]
    return state


class HRNNMeta(nn.Module):
    """The HRNN-meta network: field-aware inputs -> stacked GRU -> eq. (2) decoder."""

    def __init__(self, cfg: ModelConfig, fs: FeatureSpace, item_cat: torch.Tensor, item_num: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.n_items = n = fs.n_items
        d, hs = cfg.field_dim, cfg.hidden_size
        # Item metadata of the catalog; row n (all padding) is "no item". Buffers: saved with weights.
        self.register_buffer("item_cat", torch.cat([item_cat, item_cat.new_zeros(1, item_cat.shape[1])]).int())
        self.register_buffer("item_num", torch.cat([item_num, item_num.new_zeros(1, item_num.shape[1])]).float())

        # ---- inputs: one small MLP per field (field-aware), then a mixing MLP
        self.item_in = nn.Embedding(n + 1, d)  # (n_items + 1, d); row n = no previous item
        mlps: dict[str, nn.Module] = {"item": _field_mlp(d, d)} if cfg.use_item_id else {}
        self.meta_in = ItemMeta(fs.items, d) if cfg.use_item_meta else None
        if self.meta_in is not None and self.meta_in.enabled:
            mlps["item_meta"] = _field_mlp(d, d)
        if cfg.use_time_delta:
            self.time_in = nn.Embedding(cfg.time_delta_buckets, d)
            mlps["time_delta"] = _field_mlp(d, d)
        if cfg.use_feedback:
            self.type_in = nn.Embedding(fs.n_event_types, d)
            mlps["feedback"] = _field_mlp(d + 2, d)
        # ModelConfig.use_user_id: the id (the user group's last field) is no input; its own vector u (zero at
        # start, zero for the padding id) is added to the state before the decoder (hrnn_core.model.features)
        n_user = len(fs.users.cat_fields) if cfg.use_user_features else 0
        has_id = n_user > 0 and fs.users.cat_fields[-1] == USER_ID_FIELD
        self.user_bags = FieldBags(fs.users, d, n_user - has_id) if cfg.use_user_features else None
        full_width = n_user * d + fs.users.num_width if cfg.use_user_features else 0
        # the id's block of the user vector, as laid out when the id was also an input (dropped after drawing)
        self.user_id_input = slice((n_user - 1) * d, n_user * d) if has_id else None
        self.user_out = None
        if has_id:
            self.user_id_col = fs.users.slots[-1][0]
            self.user_out = nn.Embedding(fs.users.n_tokens, hs, padding_idx=0)
            nn.init.zeros_(self.user_out.weight)
        if full_width:  # with the id alone this MLP has no inputs: its output is a learned constant
            mlps["user"] = _field_mlp(full_width, d)
            if has_id:
                _drop_inputs(mlps["user"][0], self.user_id_input)
        self.ctx_bags = FieldBags(fs.context, d) if cfg.use_context else None
        self.ctx_width = len(fs.context.cat_fields) * d if cfg.use_context else 0
        if self.ctx_width:
            mlps["context"] = _field_mlp(self.ctx_width, d)
        if not mlps:  # every input switched off: the state is the learned initial one (a popularity model)
            mlps["constant"] = _field_mlp(1, d)
        self.fields = nn.ModuleDict(mlps)
        self.mix = _field_mlp(len(mlps) * d, cfg.input_size)
        self.drop = nn.Dropout(cfg.dropout)

        # ---- recurrent core: the initial state is learned and conditioned on user + context
        # dropout between stacked layers as on the input and output (nn.GRU applies none after the last layer)
        self.gru = nn.GRU(cfg.input_size, hs, num_layers=cfg.num_layers, batch_first=True,
                          dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.init_bias = nn.Parameter(torch.zeros(cfg.num_layers * hs))
        init_in = full_width + self.ctx_width
        self.init_proj = nn.Linear(init_in, cfg.num_layers * hs, bias=False) if init_in else None
        if self.init_proj is not None and has_id:
            _drop_inputs(self.init_proj, self.user_id_input)

        # ---- decoder, eq. (2): id part (w_j, b_j) and metadata part (w(f_j), b(f_j))
        self.item_w = nn.Embedding(n, hs)  # (n_items, H)
        self.item_b = nn.Embedding(n, 1)  # (n_items, 1)
        nn.init.normal_(self.item_w.weight, std=hs ** -0.5)
        nn.init.zeros_(self.item_b.weight)
        meta = ItemMeta(fs.items, hs + 1) if cfg.use_item_meta else None
        self.meta_out = meta if meta is not None and meta.enabled else None
        # log prior of an item with no training events (hrnn_core.model.scoring's cold-item policy), set by
        # training's calibration (``calibrate_cold_prior``); saved with the weights
        self.register_buffer("cold_log_prior", torch.zeros(()))
        # log prior added to the items of the owner's own history (hrnn_core.model.scoring's repeat term),
        # calibrated like the cold prior; 0 = no term (models trained with exclude_seen: seen items never rank)
        self.register_buffer("repeat_log_prior", torch.zeros(()))
        # added on top of it to the owner's latest item: chosen after each validation for NDCG@10
        # (hrnn_core.model.scoring.choose_latest_prior); 0 = none
        self.register_buffer("latest_log_prior", torch.zeros(()))

    # ------------------------------------------------------------------ inputs and recurrence

    def _raw_user_ctx(self, x: StepInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        user = ctx = None
        if "user" in self.fields:
            parts = [self.user_bags(x.user_cat).flatten(-2)] if self.user_bags.n_fields else []  # (B, T, Fu * d)
            user = torch.cat(parts + [x.user_num], dim=-1)  # (B, T, (Fu - id) * d + 2 Fu_num)
        if self.ctx_width:
            ctx = self.ctx_bags(x.context).flatten(-2)  # (B, T, Fc * d)
        return user, ctx

    def encode_inputs(self, x: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Field-aware input vectors (B, T, input_size) and initial states (B, T', L, H): at the first step
        only (T' = 1), or at every step without ``use_sequence`` (each event starts from its own)."""
        user, ctx = self._raw_user_ctx(x)
        f = [self.fields["item"](self.item_in(x.prev_item))] if "item" in self.fields else []  # (B, T, d)
        if "constant" in self.fields:
            f.append(self.fields["constant"](torch.zeros(*x.prev_item.shape, 1, device=self.init_bias.device)))
        if "item_meta" in self.fields:
            flat = x.prev_item.reshape(-1)
            meta = self.meta_in(self.item_cat[flat], self.item_num[flat]).reshape(*x.prev_item.shape, -1)
            f.append(self.fields["item_meta"](meta))
        if "time_delta" in self.fields:
            f.append(self.fields["time_delta"](self.time_in(x.time_bucket)))
        if "feedback" in self.fields:
            f.append(self.fields["feedback"](torch.cat([self.type_in(x.prev_type), x.prev_value], dim=-1)))
        if user is not None:
            f.append(self.fields["user"](user))
        if ctx is not None:
            f.append(self.fields["context"](ctx))
        inp = self.drop(self.mix(torch.cat(f, dim=-1)))  # (B, T, input_size)
        steps = slice(None) if not self.cfg.use_sequence else slice(0, 1)
        b, t = x.prev_item[:, steps].shape
        h0 = self.init_bias.expand(b, t, -1)  # (B, T', L * H)
        if self.init_proj is not None:
            h0 = h0 + self.init_proj(torch.cat([v[:, steps] for v in (user, ctx) if v is not None], dim=-1))
        return inp, torch.tanh(h0).reshape(b, t, self.cfg.num_layers, self.cfg.hidden_size)

    def forward(self, x: StepInputs, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the GRU over a (B, T) window in one fused call.

        Returns the top layer's states (B, T, H) - ``out[:, k]`` scores the item of request k (zero at
        padding) - and each row's last hidden state (L, B, H) to carry into the next window (truncated
        BPTT). A row starts from its owner's learned initial state where ``x.reset`` is set, and every
        row does when ``hidden`` is None; owners never change inside a row (``StepInputs``).
        """
        inp, h0 = self.encode_inputs(x)
        b, t = x.prev_item.shape
        n_layers, hs = self.cfg.num_layers, self.cfg.hidden_size
        if not self.cfg.use_sequence:  # no memory: every event is one step from its own initial state
            start = h0.reshape(b * t, n_layers, hs).transpose(0, 1).contiguous()  # (L, B * T, H)
            top, last = self.gru(inp.reshape(b * t, 1, -1), start)
            top, hidden = top.reshape(b, t, hs), last.reshape(n_layers, b, t, hs)[:, :, -1]
        else:
            start = h0[:, 0].transpose(0, 1)  # (L, B, H)
            if hidden is not None:
                start = torch.where(x.reset[None, :, None].to(start.device), start, hidden)
            lengths = x.lengths
            if lengths is not None and bool((lengths < t).any()):  # padded rows: pack, never compute padding
                packed = pack_padded_sequence(inp, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
                top, hidden = self.gru(packed, start.contiguous())
                top = pad_packed_sequence(top, batch_first=True, total_length=t)[0]  # (B, T, H)
            else:
                top, hidden = self.gru(inp, start.contiguous())  # (B, T, H), (L, B, H)
        if self.user_out is not None:  # + u, the owner's id vector (zero for the padding id)
            top = top + self.user_out(x.user_cat[..., self.user_id_col])  # (B, T, H)
        return self.drop(top), hidden  # (B, T, H), (L, B, H)

    # ------------------------------------------------------------------ decoder, eq. (2)

    def meta_vectors(self, cat: torch.Tensor, num: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w(f_j) (N, H) and b(f_j) (N,) of eq. (2) from encoded item metadata."""
        wb = self.meta_out(cat, num)  # (N, H + 1)
        return wb[:, :-1], wb[:, -1]

    def has_metadata(self, cat: torch.Tensor | None = None, num: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) bool: the item carries metadata the decoder reads (a known category value or a numeric
        field present); default: every catalogue item. False everywhere without a metadata decoder."""
        cat = self.item_cat[:-1] if cat is None else cat
        num = self.item_num[:-1] if num is None else num
        if self.meta_out is None:
            return torch.zeros(len(cat), dtype=torch.bool, device=cat.device)
        present = torch.zeros(len(cat), dtype=torch.bool, device=cat.device)
        if self.meta_out.bags.n_fields:
            present |= (cat != 0).any(dim=1)
        if self.meta_out.numeric is not None:
            present |= (num[:, 1:2 * self.meta_out.n_numeric:2] != 0).any(dim=1)
        return present

    def item_vectors(self, items: torch.Tensor | None = None, mix: float | torch.Tensor = 0.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed decoder vectors of eq. (2) for ``items`` (C,) or the whole catalog.

        ``mix`` is lambda: a float, or a (C,) tensor of per-item lambdas. lambda = 1 uses only
        metadata and never reads the id embeddings (cold-start items, section 2.3).
        """
        full = items is None
        if self.meta_out is None:
            mix = 0.0  # no metadata: eq. (2) reduces to the plain decoder
        scalar = not isinstance(mix, torch.Tensor)
        w = b = None
        if not (scalar and mix == 1.0):
            w = self.item_w.weight if full else self.item_w(items)  # (C, H)
            b = (self.item_b.weight if full else self.item_b(items)).squeeze(-1)  # (C,)
        if scalar and mix == 0.0:
            return w, b
        cat = self.item_cat[:-1] if full else self.item_cat[items]
        num = self.item_num[:-1] if full else self.item_num[items]
        wm, bm = self.meta_vectors(cat, num)  # (C, H), (C,)
        if scalar and mix == 1.0:
            return wm, bm
        lam = mix if scalar else mix[:, None]  # scalar or (C, 1)
        w_mix = (1 - lam) * w + lam * wm  # eq. (2), as mixed vectors: (C, H)
        b_mix = (1 - mix) * b + mix * bm  # (C,)
        if scalar:
            return w_mix, b_mix
        meta_only = mix == 1.0  # these never read their id rows (0 * a non-finite row is not 0)
        return torch.where(meta_only[:, None], wm, w_mix), torch.where(meta_only, bm, b_mix)

    def scores(self, h: torch.Tensor, items: torch.Tensor | None = None, mix: float | torch.Tensor = 0.0) -> torch.Tensor:
        """phi~(h) of eq. (2): h (N, H) -> (N, C) scores of ``items`` (default: all items)."""
        w, b = self.item_vectors(items, mix)
        return h @ w.T + b  # (N, C)
