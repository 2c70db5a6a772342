"""Warm start: a new model that begins as the champion, on a newer snapshot (``train(..., init_from=...)``).

Two steps, both before the first epoch (``hrnn_core.train.trainer._prepare`` calls them):

1. **features** (``extend_features``): the champion's ``FeatureSpace`` *extended* by the snapshot, never
   refit. Every vocabulary keeps its values in their places and appends the new ones (items and users by
   their stable ids, metadata and context values, event types); numeric scalers (means, standard
   deviations, the event value's), field widths, time-delta buckets and the set of fields stay the
   champion's, so an old row encodes exactly as before. docs/warm_start.md says what is refit and why.
2. **weights** (``warm_start``): the champion's parameters copied into the network built on the extended
   space; tables indexed by a vocabulary are copied row by row through the id maps. New rows:
   an item the champion never trained on (new, or cold then) gets ``w_j = w(f_j)``, ``b_j = b(f_j)`` (the
   decoder's metadata side of eq. 2, so it scores as its metadata did at every lambda) and a zero input
   row (as training gives items without events); a new user gets a zero id vector (what an unknown user
   had: the learned initial state alone); a new event type the unknown type's row; a new categorical
   value a zero row.

Before any fine-tuning, the warm model gives every old owner the champion's scores on the old items
(``tests/test_warm.py``). With ``train.init_shrink`` < 1 (the retrain's ``warm_shrink``) the trainer first
multiplies the champion's weights by it (``shrink``), so the fine-tune starts from the champion's directions at
a smaller scale.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from hrnn_core.config import ModelConfig
from hrnn_core.model.checkpoint import Checkpoint, load_checkpoint
from hrnn_core.model.features import USER_ID_FIELD, FeatureSpace, FieldGroup
from hrnn_core.model.network import HRNNMeta
from hrnn_core.train.batches import TrainError


class WarmStartError(TrainError):
    """The champion cannot seed this training (another model config, items missing from the catalogue...)."""


def load_champion(path: Path, model_cfg: ModelConfig) -> Checkpoint:
    """The checkpoint to start from; its model config must be ``model_cfg`` (the same network)."""
    ck = load_checkpoint(Path(path), "cpu")
    if dataclasses.asdict(ck.model_config) != dataclasses.asdict(model_cfg):
        changed = sorted(k for k, v in dataclasses.asdict(model_cfg).items()
                         if dataclasses.asdict(ck.model_config).get(k) != v)
        raise WarmStartError(f"{path} has another model config ({', '.join(changed)}); a warm start needs the same "
                             "network: train from scratch (retrain.mode = 'full')")
    return ck


def _extend_vocab(old: list[str], fresh: list[str], cap: int) -> list[str]:
    """``old`` in place, then the values of ``fresh`` it lacks (in ``fresh``'s order), up to ``cap`` values."""
    known = set(old)
    added = [v for v in fresh if v not in known]
    return list(old) + added[: max(0, cap - len(old))]


def extend_group(old: FieldGroup, fresh: FieldGroup, cap: int) -> FieldGroup:
    """``old``'s fields with their vocabularies extended by ``fresh``'s values (fit on the new snapshot).

    Kept from ``old``: the fields (a field new in the data waits for a full retrain), the slots per row
    (a wider row would add values to old rows), the numeric fields, their scalers and bucket edges (a champion
    from before the buckets keeps having none until a full retrain).
    """
    new_vocabs = []
    for key, vocab in zip(old.cat_fields, old.vocabs, strict=True):
        fresh_vocab = fresh.vocabs[fresh.cat_fields.index(key)] if key in fresh.cat_fields else []
        new_vocabs.append(_extend_vocab(vocab, fresh_vocab, max(cap, len(vocab))))
    return dataclasses.replace(old, vocabs=new_vocabs, cat_fields=list(old.cat_fields), widths=list(old.widths),
                               num_fields=list(old.num_fields), num_mean=list(old.num_mean),
                               num_std=list(old.num_std))


def extend_features(old: FeatureSpace, snapshot_dir: Path, cfg: ModelConfig) -> FeatureSpace:
    """The champion's feature space extended by ``snapshot_dir`` (module docstring); items keep their rows
    where the snapshot keeps the stable index (the warehouse's ``item_index`` never renumbers)."""
    fresh = FeatureSpace.fit(snapshot_dir, cfg)
    lost = set(old.item_ids) - set(fresh.item_ids)
    if lost:
        raise WarmStartError(f"{len(lost)} of the champion's items are not in snapshot {fresh.snapshot_id}'s "
                             f"catalogue (e.g. {sorted(lost)[:3]}); train from scratch")
    return dataclasses.replace(
        old, item_ids=list(fresh.item_ids), event_types=_extend_vocab(old.event_types, fresh.event_types, 1 << 30),
        users=extend_group(old.users, fresh.users, cfg.max_categories),
        items=extend_group(old.items, fresh.items, cfg.max_categories),
        context=extend_group(old.context, fresh.context, cfg.max_categories), snapshot_id=fresh.snapshot_id)


def _token_map(old: FieldGroup, new: FieldGroup, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(new ids, old ids) of every old token, padding 0 included; ``rows``: only ids below it (a FieldBags
    table cut to its first fields)."""
    new_ids, old_ids = [0], [0]
    for f, vocab in enumerate(old.vocabs):
        new_ids.extend(range(new.offsets[f], new.offsets[f] + len(vocab)))
        old_ids.extend(range(old.offsets[f], old.offsets[f] + len(vocab)))
    new_t, old_t = torch.tensor(new_ids), torch.tensor(old_ids)
    if rows is not None:
        keep = old_t < rows
        new_t, old_t = new_t[keep], old_t[keep]
    return new_t, old_t


def _copy_rows(table: torch.Tensor, source: torch.Tensor, new_ids: torch.Tensor, old_ids: torch.Tensor,
               fill: torch.Tensor | float = 0.0) -> None:
    """``table`` (a new parameter) := ``fill`` everywhere, then its ``new_ids`` rows := ``source``'s ``old_ids``."""
    table[:] = fill.to(table.device) if isinstance(fill, torch.Tensor) else fill
    table[new_ids.to(table.device)] = source[old_ids].to(table.device, table.dtype)


def _item_rows(old: FeatureSpace, new: FeatureSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """(new rows, old rows) of the champion's items in the extended catalogue (by item id)."""
    where = {item: j for j, item in enumerate(new.item_ids)}
    return torch.tensor([where[i] for i in old.item_ids], dtype=torch.long), torch.arange(len(old.item_ids))


def _bag_maps(model: HRNNMeta, old: FeatureSpace, new: FeatureSpace) -> dict[str, tuple]:
    """Per FieldBags / id table of ``model``: (new ids, old ids) of the champion's tokens."""
    maps = {}
    groups = {"user_bags": (model.user_bags, old.users, new.users), "ctx_bags": (model.ctx_bags, old.context, new.context)}
    if model.meta_in is not None:
        groups["meta_in.bags"] = (model.meta_in.bags, old.items, new.items)
    if model.meta_out is not None:
        groups["meta_out.bags"] = (model.meta_out.bags, old.items, new.items)
    for name, (bags, og, ng) in groups.items():
        if bags is not None and bags.weight is not None:
            maps[f"{name}.weight"] = _token_map(og, ng, rows=old.users.offsets[bags.n_fields]
                                                if name == "user_bags" and bags.n_fields < len(og.slots) else None)
    if model.user_out is not None:
        maps["user_out.weight"] = _token_map(old.users, new.users)
    return maps


def shrink(model: HRNNMeta, factor: float) -> None:
    """Every parameter of ``model`` (the champion's, before ``warm_start`` copies them) times ``factor``; buffers
    (item metadata, the calibrated priors) untouched. Ash & Adams (2020): a warm start shrunk toward zero
    fine-tunes to a model that generalizes like one trained from scratch; docs/evaluation/warm_start.md."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)


def warm_start(model: HRNNMeta, champion: Checkpoint, features: FeatureSpace) -> dict:
    """Load ``champion``'s weights into ``model`` (built on ``features``, ``extend_features`` of the champion's
    space) as the module docstring says; returns counts of what grew (for the run's report)."""
    old_fs, old_state = champion.features, champion.model.state_dict()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows_new, rows_old = _item_rows(old_fs, features)
    n_old, n_new = old_fs.n_items, features.n_items
    maps = _bag_maps(model, old_fs, features)
    with torch.no_grad():
        for key, value in state.items():
            src = old_state.get(key)
            if src is None:
                raise WarmStartError(f"the champion has no parameter {key}; train from scratch")
            if key in maps:
                _copy_rows(value, src, *maps[key])
            elif key == "item_in.weight":  # + row n: "no previous item"
                _copy_rows(value, src, torch.cat([rows_new, torch.tensor([n_new])]),
                           torch.cat([rows_old, torch.tensor([n_old])]))
            elif key in ("item_w.weight", "item_b.weight"):
                _copy_rows(value, src, rows_new, rows_old)
            elif key == "type_in.weight":  # new event types act as the unknown type did
                _copy_rows(value, src, torch.arange(len(src)), torch.arange(len(src)), fill=src[0])
            elif key in ("item_cat", "item_num"):
                continue  # the new catalogue's metadata, encoded with the extended space
            elif value.shape != src.shape:
                raise WarmStartError(f"parameter {key} has shape {tuple(src.shape)} in the champion, "
                                     f"{tuple(value.shape)} here; train from scratch")
            else:
                value.copy_(src)
        model.load_state_dict(state)
        trained = torch.zeros(n_new, dtype=torch.bool)
        trained[rows_new] = torch.as_tensor(champion.item_freq) > 0
        fresh = torch.nonzero(~trained).flatten()  # new items and the champion's cold ones: eq. (2)'s metadata side
        if model.meta_out is not None and len(fresh):
            dev = model.item_w.weight.device
            w, b = model.meta_vectors(model.item_cat[fresh.to(dev)], model.item_num[fresh.to(dev)])
            model.item_w.weight[fresh.to(dev)] = w
            model.item_b.weight[fresh.to(dev)] = b[:, None]
    users = USER_ID_FIELD in old_fs.users.cat_fields
    return {"items_added": n_new - n_old, "items_from_metadata": int(len(fresh)),
            "users_added": len(features.users.vocabs[-1]) - len(old_fs.users.vocabs[-1]) if users else 0,
            "event_types_added": len(features.event_types) - len(old_fs.event_types)}
