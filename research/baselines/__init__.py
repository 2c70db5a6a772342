"""Research baselines: models the leaderboards compare HRNN-meta with that the product never trains, gates
with or serves (SASRec, issue 20's modern baseline; HGRU, the paper's Table 3; uniform random, Table 7's floor). ``register()`` adds them to
the evaluation harness (``hrnn_core.evaluation.harness.register_scorer``); ``hrnn-research evaluate`` (the
product's ``hrnn evaluate`` with these models known) calls it."""

from __future__ import annotations


def _sasrec(**kw):
    from research.baselines.sasrec import SASRecScorer  # noqa: PLC0415

    return SASRecScorer(**kw)


def _hgru(**kw):
    from research.baselines.hgru import HGRUScorer  # noqa: PLC0415

    return HGRUScorer(**kw)


def _random(**kw):
    from research.baselines.uniform import UniformRandomScorer  # noqa: PLC0415

    return UniformRandomScorer(**kw)


def register() -> None:
    """Make ``sasrec`` and ``hgru`` known to the harness, with the options ``hrnn evaluate`` gives them: SASRec
    its device and threads as HRNN-meta's, HGRU the model and train configs (its sizes and recipe are the
    plain GRU's)."""
    from hrnn_core.evaluation.harness import register_scorer  # noqa: PLC0415

    register_scorer("sasrec", _sasrec, lambda cfg: {"device": cfg.train.device, "threads": cfg.train.threads})
    register_scorer("hgru", _hgru, lambda cfg: {"model": cfg.model, "train": cfg.train})
    register_scorer("random", _random)  # uniform random: the floor of the cold-start table (Table 7)
