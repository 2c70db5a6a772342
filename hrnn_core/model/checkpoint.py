"""Checkpoints: the weights with everything needed to use them, loadable with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitive values (no pickled objects):
``model_state`` (state_dict, item metadata buffers included), ``model_config`` and
``train_config`` (dicts of the frozen dataclasses), ``features`` (vocabularies, scalings and
the item id map, ``FeatureSpace.to_dict``), ``snapshot_id``, ``item_freq`` (training events per
item: cold-item detection and the default trend), and the training position (``epoch``,
``step``, ``history``, ``best``, optionally ``optimizer``) used by ``resume``.
Files are written to a temporary name and renamed, so a killed run never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hrnn_core.config import RETIRED_FIELDS, ModelConfig, TrainConfig
from hrnn_core.errors import HrnnError
from hrnn_core.model.features import USER_ID_FIELD, FeatureSpace
from hrnn_core.model.network import HRNNMeta, drop_user_id_inputs, rename_gru_cells

FORMAT_VERSION = 1


class CheckpointError(HrnnError):
    """A checkpoint is missing, unreadable or from an incompatible version."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Checkpoint:
    model: HRNNMeta
    features: FeatureSpace
    model_config: ModelConfig
    train_config: TrainConfig
    snapshot_id: str
    item_freq: torch.Tensor  # (n_items,) training events per item
    raw: dict[str, Any]  # the whole loaded dict (epoch, step, history, optimizer, ...)


def save_checkpoint(path: Path, model: HRNNMeta, features: FeatureSpace, train_config: TrainConfig,
                    item_freq: torch.Tensor, **extra: Any) -> Path:
    """Write a checkpoint atomically; ``extra`` holds training position entries."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": dataclasses.asdict(model.cfg),
        "train_config": dataclasses.asdict(train_config),
        "features": features.to_dict(),
        "snapshot_id": features.snapshot_id,
        "item_freq": torch.as_tensor(item_freq, dtype=torch.long).cpu(),
        **extra,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


# Settings older checkpoints carry that the code no longer has (the behaviour they chose is now the code's):
# dropped on load so a registered champion stays loadable after an upgrade.
RETIRED_MODEL_FIELDS = RETIRED_FIELDS["model"]
RETIRED_TRAIN_FIELDS = RETIRED_FIELDS["train"]


def _known(cls: type, values: dict, retired: tuple[str, ...]) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names or k not in retired}


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load with ``torch.load(weights_only=True)`` and rebuild the model on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train a model first (`hrnn train`)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if raw.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {raw.get('format')}, expected {FORMAT_VERSION}; retrain")
    model_cfg = ModelConfig(**_known(ModelConfig, raw["model_config"], RETIRED_MODEL_FIELDS))
    train_cfg = TrainConfig(**_known(TrainConfig, raw["train_config"], RETIRED_TRAIN_FIELDS))
    fs = FeatureSpace.from_dict(raw["features"])
    if raw["model_config"].get("user_id_output") is False and USER_ID_FIELD in fs.users.cat_fields:
        raise CheckpointError(f"{path} reads the user id as an input field (model.user_id_output = false), which "
                              "this version no longer has (the id is an output vector); retrain")
    # older checkpoints: no cold prior and no repeat term (0)
    state = {"cold_log_prior": torch.zeros(()), "repeat_log_prior": torch.zeros(()), "latest_log_prior": torch.zeros(()),
             **raw["model_state"]}
    model = HRNNMeta(model_cfg, fs, state["item_cat"][:-1], state["item_num"][:-1])
    model.load_state_dict(drop_user_id_inputs(rename_gru_cells(state), model))
    model.to(resolve_device(device)).eval()
    return Checkpoint(model, fs, model_cfg, train_cfg, raw["snapshot_id"], raw["item_freq"], raw)
