"""The HTML report of one evaluation: one self-contained page (inline CSS, charts as ``data:`` PNGs, no link
off the page), written beside every retrain's run (``retrain.write_report``) and by ``hrnn evaluate``.

Sections: the leaderboard with 95% intervals and paired tests against HRNN-meta; the gate's decision and the
numbers it compared; per-epoch training and validation curves of each trained model; metrics by user segment
and by the target's popularity (``evaluation/breakdowns.py``); cold items; the snapshot's data and how item
popularity moved since the previous snapshot (``evaluation/snapshot_stats.py``). The page is a Jinja2 template
(``evaluation/templates/report.html.j2``, package data) filled from ``build_context``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from hrnn_core.evaluation import breakdowns, report_charts, snapshot_stats
from hrnn_core.evaluation.harness import ModelResult, chart_figure
from hrnn_core.evaluation.metrics import mean_interval, paired_test
from hrnn_core.evaluation.splits import Split

TEMPLATE = "report.html.j2"
METRICS = ("ndcg@10", "recall@10", "mrr@10")  # the per-event arrays every run keeps
SECTIONS = ("leaderboard", "gate", "training", "segments", "popularity", "cold-items", "data")  # the page's ids


def gate_section(candidate: str, candidate_metrics: dict, others: dict[str, dict], metric: str, ok: bool,
                 reason: str, *, verdict: str, paired_test_vs: str | None = None, paired_test: dict | None = None,
                 note: str | None = None) -> dict:
    """What the report shows of a gate: its verdict, its reason and the numbers it compared (``metric`` of the
    candidate and of every rival, with the margins), and the paired test against the strongest rival."""
    value = candidate_metrics.get(metric)
    compared = [{"name": k, "value": v.get(metric),
                 "margin": None if value is None or v.get(metric) is None else value - v.get(metric)}
                for k, v in sorted(others.items(), key=lambda kv: -(kv[1].get(metric) or 0.0))]
    return {"candidate": candidate, "value": value, "metric": metric, "ok": bool(ok), "reason": reason,
            "verdict": verdict, "compared": compared, "paired_test_vs": paired_test_vs, "paired_test": paired_test,
            "note": note}


def _leaderboard(split: Split, results: dict[str, ModelResult], reference: str, title: str) -> dict:
    """Rows best first, each metric's mean with its interval (users resampled), and paired tests vs ``reference``."""
    owners = split.test.owner
    rows = []
    for name, r in results.items():
        intervals = {m: mean_interval(r.per_event[m], clusters=owners) for m in METRICS if m in r.per_event}
        rows.append({"name": name, "intervals": intervals, "metrics": r.metrics, "fit_seconds": r.fit_seconds})
    rows.sort(key=lambda row: -row["metrics"].get("ndcg@10", 0.0))
    paired = []
    if reference in results:
        for name, r in results.items():
            if name == reference:
                continue
            for m in ("ndcg@10", "recall@10"):
                a, b = results[reference].per_event.get(m), r.per_event.get(m)
                if a is None or b is None or len(a) != len(b):  # not scored on the same cases: nothing to pair
                    continue
                test = paired_test(a, b, clusters=owners)
                paired.append({"vs": name, "metric": m, **test})
    rolling = any(r.frames for r in results.values())
    return {"rows": rows, "paired": paired, "reference": reference, "metrics": METRICS,
            "image": report_charts.interval_chart(rows, ("ndcg@10", "recall@10")),
            "frames_image": report_charts.data_uri(chart_figure(results, title), dpi=90) if rolling else None,
            "columns": [c for c in ("coverage@10", "ppl") if any(c in r.metrics for r in results.values())]}


def _training(results: dict[str, ModelResult]) -> dict:
    """A curves chart per model trained in epochs; the names of the others (fit without epochs)."""
    trained, untrained = [], []
    for name, r in results.items():
        if not r.history:
            untrained.append(name)
            continue
        best = r.metrics.get("best_epoch")
        has_val = any("val_loss" in h or "ndcg@10" in h for h in r.history)
        trained.append({"name": name, "epochs": len(r.history), "best_epoch": best, "validated": has_val,
                        "image": report_charts.curves_chart(name, r.history, int(best) if best else None)})
    return {"trained": trained, "untrained": untrained}


def _grouped(results: dict[str, ModelResult], groups: dict[str, np.ndarray], title: str | None = None) -> dict:
    """Each model's means per group (``table[model][group]``), the groups' sizes and, with ``title``, a chart."""
    table = {name: breakdowns.group_means({m: r.per_event[m] for m in METRICS if m in r.per_event}, groups)
             for name, r in results.items()}
    return {"table": table, "groups": list(groups), "n": {g: int(mask.sum()) for g, mask in groups.items()},
            "image": report_charts.groups_chart(table, "ndcg@10", title) if title else None}


def _breakdowns(split: Split, results: dict[str, ModelResult]) -> dict:
    """Metrics by user segment, by the target's training popularity, and on cold targets."""
    out = {"segments": _grouped(results, breakdowns.user_segments(split), "NDCG@10 by user segment")}
    buckets = breakdowns.popularity_buckets(split)
    if buckets is None:
        out["popularity"] = out["cold"] = None  # several targets per case: no one target popularity
        return out
    buckets = {label: mask for label, mask in buckets.items() if mask.any()}  # e.g. no 1000+ item in a small set
    out["popularity"] = _grouped(results, buckets, "NDCG@10 by the target's training events")
    cold = breakdowns.cold_targets(split)
    targets = split.test.target
    train_items = split.train_items
    candidates = split.candidate_mask if split.candidate_mask is not None else np.ones(split.n_items, dtype=bool)
    out["cold"] = {
        "cases": int(cold.sum()), "share": float(cold.mean()) if len(cold) else 0.0,
        "cold_items": int(len(np.unique(targets[cold]))),
        "catalogue_cold": int((~train_items & candidates).sum()), "catalogue": int(candidates.sum()),
        **_grouped(results, {"cold targets": cold, "warm targets": ~cold}),
    }
    return out


def _data(split: Split) -> dict | None:
    """The snapshot's counts, what is new since the previous snapshot, and the popularity shift (one number, one
    plot): previous snapshot vs the events since; without a previous snapshot, this split's training events vs
    its test targets."""
    folder = split.data.folder
    if folder is None:
        return None
    out = {"summary": snapshot_stats.summary(folder), "changes": None}
    previous = snapshot_stats.previous_snapshot(folder)
    if previous is not None:
        ch = snapshot_stats.changes(folder, previous)
        before, after = ch.pop("before"), ch.pop("since")
        out["changes"] = ch
        labels = (f"snapshot {ch['previous_id']}", "events since")
    else:
        before = np.asarray(split.item_frequency, dtype=np.int64)
        after = np.bincount(split.test.target_items, minlength=split.n_items)
        labels = ("training events", "test targets")
    tvd = snapshot_stats.popularity_shift(before, after)
    out["shift"] = {"value": tvd, "before": labels[0], "after": labels[1], "image": None if tvd is None else
                    report_charts.shift_chart(before, after, labels[0], labels[1], tvd)}
    return out


def build_context(split: Split, results: dict[str, ModelResult], *, title: str, gate: dict | None = None,
                  reference: str = "hrnn") -> dict:
    """Everything the template shows (``render``)."""
    if not results:
        raise ValueError("a report needs at least one model's results")
    as_of = split.data.as_of
    return {
        "title": title, "protocol": split.describe(), "snapshot_id": split.data.snapshot_id,
        "as_of": dt.datetime.fromtimestamp(as_of, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if as_of else None,
        "n_cases": len(split.test), "n_users": split.test.n_users, "sections": SECTIONS,
        "leaderboard": _leaderboard(split, results, reference, title), "gate": gate,
        "training": _training(results), **_breakdowns(split, results), "data": _data(split),
    }


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def render(context: dict) -> str:
    """The page's HTML (Jinja2, autoescaped)."""
    import jinja2  # noqa: PLC0415 - only the report needs it

    env = jinja2.Environment(loader=jinja2.PackageLoader("hrnn_core.evaluation", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = lambda v, digits=1: "–" if v is None else f"{100.0 * v:.{digits}f} %"
    return env.get_template(TEMPLATE).render(**context)


def write_report(path: Path, split: Split, results: dict[str, ModelResult], *, title: str,
                 gate: dict | None = None, reference: str = "hrnn") -> Path:
    """Render the page for ``results`` on ``split`` and write it to ``path`` (written whole: a temporary file
    renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = render(build_context(split, results, title=title, gate=gate, reference=reference))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
