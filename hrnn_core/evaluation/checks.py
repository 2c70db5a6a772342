"""Checks of what a run is told to do, before it reads, ingests or trains anything.

A command or a DAG task calls these first, so that a model name, a protocol parameter, a gate
metric or a device that cannot work fails in a second with one clear line (an ``HrnnError``),
not after an ingest and an hour of training. Each check raises the error the later step would
have raised, with the same wording.
"""

from __future__ import annotations

from typing import Iterable

from hrnn_core.config import Config
from hrnn_core.errors import ConfigError, HrnnError
from hrnn_core.evaluation.harness import EvaluationError, scorer_factories
from hrnn_core.evaluation.protocols import check_protocol


def known_models() -> list[str]:
    """Every model name the evaluation harness can fit (``harness.scorer_factories``)."""
    return sorted(scorer_factories())


def check_models(names: Iterable[str], where: str = "") -> list[str]:
    """``names`` as a list: not empty, no name twice, every name known to the harness."""
    names = [str(n) for n in names]
    prefix = f"{where}: " if where else ""
    if not names:
        raise EvaluationError(f"{prefix}no models given; choose from {', '.join(known_models())}")
    known = set(scorer_factories())
    for name in names:
        if name not in known:
            raise EvaluationError(f"{prefix}unknown model {name!r}; known: {', '.join(known_models())}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EvaluationError(f"{prefix}model(s) listed more than once: {', '.join(twice)}")
    return names


def gate_metrics() -> list[str]:
    """The metrics the promotion gate can compare: those with per-event values (paired test)."""
    import torch  # noqa: PLC0415 - metrics are torch code

    from hrnn_core.evaluation.metrics import DEFAULT_KS, rank_metrics  # noqa: PLC0415

    return sorted(rank_metrics(torch.ones(1, dtype=torch.int64), DEFAULT_KS))


def check_gate_metric(metric: str) -> str:
    if metric not in gate_metrics():
        raise ConfigError(f"retrain config: unknown gate_metric {metric!r}; choose one of {', '.join(gate_metrics())}")
    return metric


def check_device(device: str, where: str = "--device", present: bool = True) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; with ``present``, a cuda device must exist here
    (not for a DAG check: its training task may run on another worker)."""
    if device == "auto":
        return device
    import torch  # noqa: PLC0415

    usage = f"{where}: unknown device {device!r}; use auto, cpu, cuda or cuda:N"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise HrnnError(usage) from None
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise HrnnError(usage)
    if not present:
        return device
    if not torch.cuda.is_available():
        raise HrnnError(f"{where}: {device!r} asked for, but no CUDA device is available here; use cpu or auto")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise HrnnError(f"{where}: {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def check_retrain_config(cfg: Config) -> None:
    """What the nightly retrain will use, checked before its snapshot: model names, the gate
    metric, the temporal protocol's parameters and the training device's name (not whether it is
    present: HRNN-meta may train on another worker, ``retrain.hrnn_queue``)."""
    check_models(cfg.retrain.models, where="retrain config: models")
    check_gate_metric(cfg.retrain.gate_metric)
    horizon = cfg.retrain.test_horizon_hours
    check_protocol("temporal", {"test_fraction": cfg.retrain.test_fraction,
                                "valid_fraction": cfg.retrain.valid_fraction,
                                "horizon": horizon * 3600.0 if horizon is not None else None})
    check_device(cfg.train.device, where="train config: device", present=False)
