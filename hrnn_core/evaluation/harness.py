"""The evaluation harness: fit models on a protocol's training data, rank the whole catalogue for
every test case, and report metrics with per-event arrays for significance tests.

``run_evaluation`` is what ``hrnn evaluate`` and the nightly retrain call:
snapshot -> ``protocols.build_split`` -> for each model: ``fit(TrainData)`` -> ``score`` the
test cases in batches -> ``metrics.Accumulator`` -> leaderboard, JSON, PNG chart (the HTML page:
``hrnn_core.evaluation.report``).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow.parquet as pq

from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.errors import HrnnError
from hrnn_core.evaluation.metrics import DEFAULT_KS, Accumulator, paired_test
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import Cases, SnapshotData, Split
from hrnn_core.model.scoring import rows_per_batch

DEFAULT_MODELS = ("hrnn", "pop", "recent_pop", "bpr", "fm", "gru")
HEADLINE = ("ndcg@10", "recall@10", "mrr@10", "precision@10", "coverage@10", "ppl")


class EvaluationError(HrnnError):
    """The evaluation cannot run (unknown model, empty test set...)."""


def scorer_factories() -> dict[str, Callable[..., Scorer]]:
    """name -> factory(**options) of every model the harness knows (imports are lazy)."""

    def pop(**kw):
        from hrnn_core.evaluation.baselines.popularity import PopularityScorer  # noqa: PLC0415

        return PopularityScorer(**kw)

    def recent_pop(**kw):
        from hrnn_core.evaluation.baselines.popularity import RecentPopularityScorer  # noqa: PLC0415

        return RecentPopularityScorer(**kw)

    def bpr(**kw):
        from hrnn_core.evaluation.baselines.bpr import BPRScorer  # noqa: PLC0415

        return BPRScorer(**kw)

    def fm(**kw):
        from hrnn_core.evaluation.baselines.fm import FMScorer  # noqa: PLC0415

        return FMScorer(**kw)

    def hrnn(**kw):
        from hrnn_core.evaluation.hrnn_scorer import HRNNScorer  # noqa: PLC0415

        return HRNNScorer(**kw)

    def gru(**kw):
        from hrnn_core.evaluation.hrnn_scorer import HRNNScorer  # noqa: PLC0415

        return HRNNScorer(plain_gru=True, **kw)

    return {"pop": pop, "recent_pop": recent_pop, "bpr": bpr, "fm": fm, "hrnn": hrnn, "gru": gru,
            **{name: factory for name, (factory, _) in _REGISTERED.items()}}


_REGISTERED: dict[str, tuple[Callable[..., Scorer], Callable | None]] = {}  # register_scorer's models


def register_scorer(name: str, factory: Callable[..., Scorer], options: Callable | None = None) -> None:
    """Make a model outside the product known to the harness (``research.baselines.register``): ``factory``
    builds its scorer, ``options(cfg)`` gives its scorer options from a ``Config`` (``hrnn evaluate``)."""
    _REGISTERED[name] = (factory, options)


def registered_options(cfg) -> dict[str, dict]:
    """The scorer options of the registered models, from ``cfg``."""
    return {name: opt(cfg) for name, (_, opt) in _REGISTERED.items() if opt is not None}


def make_scorer(name: str, **options) -> Scorer:
    factories = scorer_factories()
    if name not in factories:
        raise EvaluationError(f"unknown model {name!r}; known: {', '.join(factories)}")
    scorer = factories[name](**options)
    scorer.name = name
    return scorer


@dataclass
class ModelResult:
    name: str
    metrics: dict  # summary: "ndcg@10", ..., "n_events", "n_users" (+ "ppl" for distributions)
    per_event: dict[str, np.ndarray]  # metric -> (n_events,) in case order, for paired tests
    fit_seconds: float
    score_seconds: float
    frames: list[dict] = field(default_factory=list)  # rolling: per-frame summaries
    history: list[dict] = field(default_factory=list)  # trained models: one dict per epoch ("epoch", "train_loss", ...)


def _train_speed(history: list[dict]) -> dict:
    """A trained model's median training events/s over its epochs (its cost, e.g. HGRU vs HRNN-meta), for the
    report beside ``fit_seconds``: a timing, so never among the metrics that are registered and compared."""
    speeds = [h["events_per_s"] for h in history if "events_per_s" in h]
    return {"train_events_per_s": float(np.median(speeds))} if speeds else {}


def training_history(scorer: Scorer) -> list[dict]:
    """Per-epoch numbers of a fitted scorer: the trainer's history (HRNN-meta, GRU: train and validation),
    or the epoch losses of a baseline trained for a fixed number of epochs (BPR, FM); [] for the others."""
    history = getattr(scorer, "history", None)
    if history:
        return [dict(h) for h in history]
    losses = getattr(scorer, "losses", None) or []
    return [{"epoch": i + 1, "train_loss": float(v)} for i, v in enumerate(losses)]


def train_data(split: Split, part: str = "train", seed: int = 0, work_dir: Path | None = None) -> TrainData:
    """TrainData for ``part`` of a split (train, or valid_train for tuning).

    With ``work_dir`` the data is also written as snapshot folders for the HRNN trainer:
    ``snapshot_dir``, and for leave_one_out's train part ``early_stopping_snapshot_dir`` (train +
    the validation targets, marked held out; see ``Split.train_valid``).
    """
    folder = split.data.folder
    items = pq.read_table(folder / "items.parquet") if folder else None
    users = pq.read_table(folder / "users.parquet") if folder else None
    seqs, freq = (split.train, split.item_frequency) if part == "train" else (split.valid_train, split.valid_item_frequency)
    snapshot_dir = es_dir = None
    if work_dir is not None and folder is not None:
        snapshot_dir = split.write_snapshot(Path(work_dir) / part, part=part)
        if part == "train" and split.train_valid is not None:
            es_dir = split.write_snapshot(Path(work_dir) / "train_valid", part="train_valid")
    return TrainData(seqs, freq, split.n_items, items, users, seed=seed, snapshot_dir=snapshot_dir,
                     early_stopping_snapshot_dir=es_dir)


def score_cases(scorer: Scorer, cases: Cases, n_items: int, batch_size: int = 512,
                catalog_size: int | None = None, ks: Sequence[int] = DEFAULT_KS) -> tuple[Accumulator, float]:
    """Rank the catalogue for every case; (accumulator with per-event metrics at ``ks``, seconds)."""
    acc = Accumulator(n_items, ks=ks, catalog_size=catalog_size)
    started = time.perf_counter()
    n = len(cases)
    # rows x catalogue matrices (scores, float64 log-softmax for PPL, masks) stay ~1 GB each: on
    # a 1M-item catalogue 512 rows would need 4 GB per copy and tens of GB in all
    batch_size = rows_per_batch(batch_size, n_items)
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(n, lo + batch_size))
        b = cases.batch(idx)
        batch = ScoreBatch(cases.sequences, b["rows"], b["pos"], b["owners"], b["target_timestamp"],
                           target_event_id=cases.target_event_id[idx])
        scores = scorer.score(batch)
        logits = scores if scorer.outputs_distribution and cases.candidate_mask is None else None
        acc.add(scores, b["targets"], exclude=b["exclude"], owners=b["owners"], logits=logits)
    return acc, time.perf_counter() - started


def evaluate_split(split: Split, models: list[str], *, seed: int = 0, model_options: dict | None = None,
                   batch_size: int = 512, progress: Callable[[str], None] | None = None,
                   keep_scorers: dict | None = None) -> dict[str, ModelResult]:
    """Fit each model on the split's training data and score its test cases.

    ``keep_scorers``: a dict that receives the fitted scorers (to save them afterwards; the caller
    closes them); scorers not kept are closed here.
    ``model_options[name]["kind"]``: evaluate a variant of a known model under another name
    (e.g. ``{"item_only": {"kind": "hrnn", "model": ...}}``, the ablation's rows).
    """
    say = progress or (lambda _msg: None)
    if len(split.test) == 0:
        raise EvaluationError(f"{split.protocol}: the test set is empty; check the protocol parameters")
    catalog = int(split.candidate_mask.sum()) if split.candidate_mask is not None else None
    results: dict[str, ModelResult] = {}
    with tempfile.TemporaryDirectory(prefix="hrnn-eval-") as work:
        data = train_data(split, "train", seed, Path(work))
        for name in models:
            options = dict((model_options or {}).get(name, {}))
            scorer = make_scorer(options.pop("kind", name), **options)  # "kind": a variant under its own name
            scorer.name = name
            say(f"fit {name} ...")
            t = time.perf_counter()
            scorer.fit(data)
            fit_s = time.perf_counter() - t
            say(f"score {name} on {len(split.test):,} cases ...")
            frames = []
            if split.frames:
                for frame in split.frames:
                    facc, _ = score_cases(scorer, frame.cases, split.n_items, batch_size, catalog)
                    frames.append({"start": frame.start, "end": frame.end, **facc.summary()})
            acc, score_s = score_cases(scorer, split.test, split.n_items, batch_size, catalog)
            per_event = {m: acc.per_event(m) for m in ("ndcg@10", "recall@10", "mrr@10", "mrr@20")}
            summary = acc.summary()
            history = getattr(scorer, "history", None)
            if history:  # trained networks (HRNN-meta, GRU): how long early stopping let them train
                from hrnn_core.train.trainer import best_epoch  # noqa: PLC0415 - torch is loaded for these anyway

                summary["epochs_run"] = len(history)
                summary["best_epoch"] = best_epoch(history, scorer.train_cfg)
            if getattr(scorer, "trend_weight", None) is not None:  # the eq. (5) term it scored with (0: none)
                summary["trend_weight"] = float(scorer.trend_weight)
                if scorer.trend_weight:
                    summary["trend_window_hours"] = float(scorer.trend_window_seconds) / 3600.0
            results[name] = ModelResult(name, summary, per_event, fit_s, score_s, frames, training_history(scorer))
            if keep_scorers is not None:
                keep_scorers[name] = scorer
            elif hasattr(scorer, "close"):  # e.g. HRNN-meta's temporary training folder
                scorer.close()
            say(f"{name}: ndcg@10 {results[name].metrics.get('ndcg@10', float('nan')):.4f} "
                f"({fit_s:.1f} s fit, {score_s:.1f} s score)")
    return results


def significance(results: dict[str, ModelResult], metric: str = "ndcg@10", reference: str = "hrnn") -> dict:
    """Paired tests of ``reference`` against every other model on per-event ``metric``."""
    if reference not in results:
        return {}
    out = {}
    a = np.asarray(results[reference].per_event[metric], dtype=np.float64)
    for name, res in results.items():
        if name == reference:
            continue
        b = np.asarray(res.per_event[metric], dtype=np.float64)
        out[f"{reference}_vs_{name}"] = {k: float(v) for k, v in paired_test(a, b).items()}
    return out


def leaderboard(results: dict[str, ModelResult]) -> str:
    cols = [c for c in HEADLINE if any(c in r.metrics for r in results.values())]
    head = f"{'model':<12}" + "".join(f"{c:>14}" for c in cols) + f"{'fit s':>9}"
    lines = [head, "-" * len(head)]
    for name, r in sorted(results.items(), key=lambda kv: -kv[1].metrics.get("ndcg@10", 0.0)):
        cells = "".join(
            f"{r.metrics[c]:>14.4f}" if isinstance(r.metrics.get(c), float) else f"{'-':>14}" for c in cols
        )
        lines.append(f"{name:<12}{cells}{r.fit_seconds:>9.1f}")
    return "\n".join(lines)


def chart_figure(results: dict[str, ModelResult], title: str):
    """A matplotlib Figure: headline metrics per model (bars), or per-frame NDCG@10 lines for rolling."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - no pyplot: no global backend state

    rolling = any(r.frames for r in results.values())
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    if rolling:
        for name, r in results.items():
            if not r.frames:
                continue
            xs = [(f["start"] - r.frames[0]["start"]) / 3600 for f in r.frames]
            ax.plot(xs, [f.get("ndcg@10", np.nan) for f in r.frames], marker=".", label=name)
        ax.set_xlabel("hours after the cut")
        ax.set_ylabel("NDCG@10 per frame")
    else:
        metrics = ["ndcg@10", "recall@10", "mrr@10"]
        names = list(results)
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            vals = [results[name].metrics.get(m, 0.0) for m in metrics]
            ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, metrics)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def chart(results: dict[str, ModelResult], path: Path, title: str) -> Path:
    """``chart_figure`` as a PNG file (``hrnn evaluate --chart``; the HTML report embeds the same figure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chart_figure(results, title).savefig(path, dpi=110)
    return path


def run_evaluation(snapshot_dir: Path, protocol: str, models: list[str], *, dataset: str = "",
                   protocol_params: dict | None = None, model_options: dict | None = None, seed: int = 0,
                   output: Path | None = None, chart_path: Path | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Build the split, evaluate ``models``, and return (and optionally write) the report."""
    data = SnapshotData.load(Path(snapshot_dir))
    split = build_split(protocol, data, **(protocol_params or {}))
    if progress:
        progress(split.describe())
    results = evaluate_split(split, models, seed=seed, model_options=model_options, progress=progress)
    first = next(iter(results.values()))
    report = {
        "dataset": dataset,
        "protocol": protocol,
        "protocol_description": split.describe(),
        "snapshot_id": data.snapshot_id,
        "n_events": int(first.metrics.get("n_events", len(split.test))),
        "n_users": first.metrics.get("n_users"),
        "models": {name: {**r.metrics, "fit_seconds": round(r.fit_seconds, 2), "score_seconds": round(r.score_seconds, 2),
                          **_train_speed(r.history)} for name, r in results.items()},
        "significance": significance(results),
        "significance_recall@10": significance(results, "recall@10"),
    }
    if any(r.frames for r in results.values()):
        report["frames"] = {name: r.frames for name, r in results.items()}
    if output:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, default=float) + "\n")
        np.savez_compressed(output.with_suffix(".per_event.npz"),
                            **{f"{n}__{m}": v for n, r in results.items() for m, v in r.per_event.items()})
    if chart_path:
        chart(results, Path(chart_path), f"{dataset or data.snapshot_id} - {protocol}")
    report["_results"] = results  # in-process callers (retrain gate) use the per-event arrays
    report["_split"] = split  # and the split (the HTML report's breakdowns)
    return report
